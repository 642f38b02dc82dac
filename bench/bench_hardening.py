"""Load probe for docs/reliability.md (issue 12): everything in one trio
process on loopback (gateway, a simulated vendor, a misbehaving upstream).

    python bench/bench_hardening.py                # burst 5,000 connections, 60 s soak
    python bench/bench_hardening.py --quick        # CI smoke: a few seconds

Phases:
1. baseline: p50/p99 of buffered chat requests at --concurrency.
2. misbehaving: the same while --bad streams to an upstream whose one SSE
   `data:` line never ends run beside it (each ends at the 8 MiB event cap
   as the member's fault); other requests' p99 should stay flat.
3. burst: --burst connections opened at once, each sends one request; counts
   answered, and open fds / in-flight after they close.
4. soak: --soak seconds of traffic at --concurrency; RSS before and after.
Figures are printed as JSON (medians and p99 in ms); nothing is asserted.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time

import trio

from busbar.cli import run_gateway
from busbar.config import parse_config
from busbar.mock import MockVendor
from busbar.server import HttpServer

CHAT = b'{"model":"p","messages":[{"role":"user","content":"hi"}]}'
BAD = b'{"model":"bad","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _endless(request, responder):
    await responder.start(200, [(b"content-type", b"text/event-stream")])
    await responder.write(b"data: ")
    while True:
        await responder.write(b"z" * 16384)
        await trio.sleep(0.002)


def _request(body: bytes) -> bytes:
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body) + body)


async def _one(stream, body: bytes) -> float:
    t0 = time.perf_counter()
    await stream.send_all(_request(body))
    buf = b""
    while True:
        data = await stream.receive_some(65536)
        if not data:
            raise ConnectionError("closed")
        buf += data
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0]) if b"content-length" in head.lower() else None
            if length is not None and len(rest) >= length:
                return (time.perf_counter() - t0) * 1000
            if length is None and rest.endswith(b"0\r\n\r\n"):
                return (time.perf_counter() - t0) * 1000


async def _traffic(port: int, concurrency: int, seconds: float) -> list[float]:
    times: list[float] = []
    end = trio.current_time() + seconds

    async def worker():
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        while trio.current_time() < end:
            times.append(await _one(stream, CHAT))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker)
    return times


def _summary(times: list[float]) -> dict:
    if not times:
        return {"n": 0}
    ordered = sorted(times)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3)}


async def main(args) -> dict:
    results: dict = {}
    async with trio.open_nursery() as nursery:
        vendor = MockVendor(record=False)
        await nursery.start(vendor.serve, "127.0.0.1", 0)
        bad = HttpServer(_endless)
        bad_addr = (await nursery.start(bad.serve, "127.0.0.1", 0))[0]
        config = parse_config({
            "providers": {"a": {"protocol": "openai", "base_url": vendor.url + "/v1", "key": "k"},
                          "bad": {"protocol": "openai", "base_url": f"http://127.0.0.1:{bad_addr[1]}/v1", "key": "k"}},
            "pools": {"p": {"members": [{"provider": "a", "model": "m"}]},
                      "bad": {"members": [{"provider": "bad", "model": "m"}]}}}, "bench")
        gateway, server, addrs, app = await nursery.start(
            functools.partial(run_gateway, handle_signals=False), config, "127.0.0.1", 0)
        port = addrs[0][1]
        results["baseline"] = _summary(await _traffic(port, args.concurrency, args.phase))

        async def misbehave():
            with trio.move_on_after(args.phase + 5):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(_request(BAD))
                while await stream.receive_some(65536):
                    pass

        async with trio.open_nursery() as side:
            for _ in range(args.bad):
                side.start_soon(misbehave)
            await trio.sleep(0.2)
            results["beside_misbehaving"] = _summary(await _traffic(port, args.concurrency, args.phase))
            side.cancel_scope.cancel()

        fds_before = _fds()
        answered = failed = 0

        async def burst_one():
            nonlocal answered, failed
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                try:
                    with trio.fail_after(60):
                        await _one(stream, CHAT)
                    answered += 1
                finally:
                    await stream.aclose()
            except Exception:
                failed += 1

        t0 = time.perf_counter()
        async with trio.open_nursery() as burst:
            for _ in range(args.burst):
                burst.start_soon(burst_one)
        await trio.sleep(0.5)
        results["burst"] = {"connections": args.burst, "answered": answered, "failed": failed,
                            "seconds": round(time.perf_counter() - t0, 2),
                            "fds_before": fds_before, "fds_after": _fds(),
                            "in_flight_after": app.gateway.in_flight}
        rss0 = _rss_kib()
        soak = await _traffic(port, args.concurrency, args.soak)
        results["soak"] = {**_summary(soak), "seconds": args.soak, "rss_kib_before": rss0,
                           "rss_kib_after": _rss_kib(), "in_flight_after": app.gateway.in_flight}
        nursery.cancel_scope.cancel()
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--burst", type=int, default=5000)
    parser.add_argument("--soak", type=float, default=60.0)
    parser.add_argument("--phase", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--bad", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.burst, args.soak, args.phase, args.concurrency = 200, 2.0, 1.5, 4
    print(json.dumps(trio.run(main, args), indent=2))
