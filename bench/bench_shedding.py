"""What the load-shedding and auth-before-body checks cost per request
(issue 12, docs/reliability.md), measured on the objects the server and the
driver call, without sockets: each is timed over many calls, repeated, and
reported as median µs per request with the spread (max - min of the repeats).

    python bench/bench_shedding.py [--repeats 7] [--calls 200000]

Checks: the concurrency limit (a compare in the server), the keep-alive idle
registry (one dict insert + pop per keep-alive wait), the pool share
(`PoolShares.enter` + `leave`), the upstream slot taken without waiting
(`Semaphore.acquire_nowait`, replacing an `await acquire()`), and the head
check (`Gateway.check_head`: no client keys / a valid key / a wrong key).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402

from busbar.config import parse_config  # noqa: E402
from busbar.gateway import Gateway  # noqa: E402
from busbar.limits import PoolShares  # noqa: E402
from busbar.server import HttpRequest  # noqa: E402

CONFIG = {"providers": {"a": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "key": "k"}},
          "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}},
          "admin": {"usage_db": "off", "metrics": False}}


def per_call_us(fn, calls: int, repeats: int) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(calls)
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs), max(runs) - min(runs)


def baseline(n):
    for _ in range(n):
        pass


def limit_compare(n, active=10, limit=1024):
    for _ in range(n):
        if active >= limit:
            raise AssertionError


def idle_registry(n):
    idle = {}
    obj = object()
    for _ in range(n):
        idle[id(obj)] = obj
        idle.pop(id(obj), None)


def pool_share(n):
    shares = PoolShares(1024, 0.8)
    for _ in range(n):
        shares.enter("p")
        shares.leave("p")


def slot_nowait(n):
    async def main():
        sem = trio.Semaphore(256)
        for _ in range(n):
            sem.acquire_nowait()
            sem.release()
    trio.run(main)


def slot_await(n):
    async def main():
        sem = trio.Semaphore(256)
        for _ in range(n):
            await sem.acquire()
            sem.release()
    trio.run(main)


def head_check(gateway, request):
    def run(n):
        check = gateway.check_head
        for _ in range(n):
            check(request)
    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    open_gw = Gateway(parse_config(CONFIG, "bench"))
    keyed_gw = Gateway(parse_config({**CONFIG, "auth": {"keys": ["client-key-1"]}}, "bench"))
    head = [(b"host", b"x"), (b"content-type", b"application/json"), (b"authorization", b"Bearer client-key-1")]
    good = HttpRequest(b"POST", b"/v1/chat/completions", b"", head, b"")
    bad = HttpRequest(b"POST", b"/v1/chat/completions", b"", head[:2] + [(b"authorization", b"Bearer wrong")], b"")
    loop_cost = per_call_us(baseline, args.calls, args.repeats)[0]
    rows = [
        ("concurrency limit (server compare)", limit_compare, args.calls),
        ("keep-alive idle registry (insert + pop)", idle_registry, args.calls),
        ("pool share (enter + leave)", pool_share, args.calls),
        ("upstream slot, acquire_nowait + release", slot_nowait, args.calls),
        ("  (before: await acquire + release)", slot_await, args.calls // 4),
        ("head check, no client keys", head_check(open_gw, good), args.calls),
        ("head check, valid key (sha256 + compare)", head_check(keyed_gw, good), args.calls // 4),
        ("head check, wrong key (401 rendered)", head_check(keyed_gw, bad), args.calls // 10),
    ]
    print(f"python {sys.version.split()[0]}; {args.repeats} repeats; loop overhead {loop_cost:.3f} µs subtracted")
    print(f"{'check':45} {'µs/request':>11} {'spread':>8}")
    for name, fn, calls in rows:
        median, spread = per_call_us(fn, calls, args.repeats)
        print(f"{name:45} {median - loop_cost:11.3f} {spread:8.3f}")


if __name__ == "__main__":
    main()
