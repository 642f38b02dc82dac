"""Hedging and stream resume (issue 16, ADR 0015), short (well under a minute).

1. Time to first token for a pool whose first member is occasionally slow to
   its first byte (every 10th request stalls `--stall` seconds before its
   head; the default 0.5 s stands in for the issue's 2 s to keep the run
   short), the second member always quick: hedging off vs on
   (`dispatch.hedge: {after_ms: 50}`), p50/p99 over `--requests` sequential
   streamed requests through the real gateway on loopback.
2. The resume bookkeeping a normal stream pays per relayed chunk: with resume
   off, the relay's `journal is not None` checks; with it on, the journal's
   `extend` and its `full` bound (busbar.resume.Journal), in ns per chunk.

    python bench/bench_resume_hedge.py [--requests 100] [--stall 0.5]
"""
from __future__ import annotations

import argparse
import functools
import statistics
import time
import timeit

import httpx
import trio

from busbar import ir
from busbar.app import run_gateway
from busbar.config import parse_config
from busbar.mock import MockVendor
from busbar.resume import Journal

BODY = {"model": "smart", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


def config(a: str, b: str, hedge: bool) -> dict:
    cfg = {"providers": {"first": {"protocol": "openai", "base_url": a, "key": "k"},
                         "second": {"protocol": "openai", "base_url": b, "key": "k"}},
           "pools": {"smart": {"strategy": "ordered", "members": [
               {"provider": "first", "model": "m1", "priority": 0},
               {"provider": "second", "model": "m2", "priority": 1}]}},
           "admin": {"listen": "public"}}
    if hedge:
        cfg["pipelines"] = {"default": {"dispatch": {"hedge": {"after_ms": 50, "max": 1, "budget": 0.2}}}}
    return cfg


async def ttft_run(hedge: bool, requests: int, stall: float) -> list[float]:
    first, second = MockVendor(reply="slow one"), MockVendor(reply="quick one")
    async with trio.open_nursery() as nursery:
        for vendor in (first, second):
            await nursery.start(vendor.serve, "127.0.0.1", 0)
        parsed = parse_config(config(first.url, second.url, hedge), "bench")
        _, _, addrs, _ = await nursery.start(functools.partial(run_gateway, handle_signals=False),
                                             parsed, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{addrs[0][1]}/v1/chat/completions"
        out = []
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(requests):
                if i % 10 == 5:
                    first.fail_next({"stall": stall, "model": "m1"})
                t0 = time.perf_counter()
                first_token = None
                async with http.stream("POST", url, json=BODY) as response:
                    async for line in response.aiter_lines():     # read to the end: the stream is whole
                        if first_token is None and '"content":"' in line.replace(" ", ""):
                            first_token = time.perf_counter() - t0
                out.append(first_token)
        nursery.cancel_scope.cancel()
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def bookkeeping_ns(chunks: int = 200_000) -> tuple[float, float]:
    events = [ir.TextDelta(0, "word ")]
    journal = None

    def off():
        for _ in range(chunks):
            if journal is not None:
                journal.extend(events)

    def on():
        j = Journal()
        for _ in range(chunks):
            if j is not None:
                j.extend(events)
                if j.full:
                    break

    return (min(timeit.repeat(off, number=1, repeat=5)) / chunks * 1e9,
            min(timeit.repeat(on, number=1, repeat=5)) / chunks * 1e9)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--stall", type=float, default=0.5)
    args = ap.parse_args()
    for hedge in (False, True):
        ttft = trio.run(ttft_run, hedge, args.requests, args.stall)
        print(f"hedging {'on ' if hedge else 'off'}: TTFT p50 {statistics.median(ttft) * 1000:7.2f} ms   "
              f"p99 {pct(ttft, 99) * 1000:7.2f} ms   max {max(ttft) * 1000:7.2f} ms   ({len(ttft)} streams, "
              f"every 10th first byte stalled {args.stall} s)")
    off, on = bookkeeping_ns()
    print(f"resume bookkeeping per relayed chunk: off {off:.0f} ns (None checks), on {on:.0f} ns "
          f"(journal extend + bound); difference {on - off:.0f} ns")


if __name__ == "__main__":
    main()
