"""The response cache's cost and gain (ADR 0016), short (well under a minute).

1. In process: the cache's own work per request (canonical key + lookup on a
   hit; key + lookup + store on a miss), memory store, µs per request.
2. Over sockets (wrk, one gateway process, the instant simulated vendor):
   latency at c=1 and RPS at c=8 for a cache hit vs the same request passed
   through to the upstream (an uncached pool), and for misses (every request
   new) vs the uncached pool, so the miss path's extra cost shows.
The semantic cache's index and lookup cost: bench/bench_semantic.py (ADR 0020).

    python bench/bench_cache.py [--duration 3] [--runs 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import cpu_seconds, free_port, lua_for, med, start, stop_all, wait_port, wrk  # noqa: E402

from busbar import ir  # noqa: E402
from busbar.cache import CachePolicy, Caches, ResponseCache  # noqa: E402
from busbar.protocols import get_dialect  # noqa: E402

BODY = {"model": "{pool}", "max_tokens": 32, "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Say hello in one short sentence."}]}

# wrk: a new question per request (every one a miss)
VARYING = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
counter = 0
request = function()
  counter = counter + 1
  return wrk.format(nil, nil, nil, [[%s]] .. counter .. [[%s]])
end
"""


def in_process(n: int = 20000) -> dict:
    import trio
    dialect = get_dialect("openai")
    obj = json.loads(json.dumps(BODY).replace("{pool}", "cached"))
    cache = ResponseCache({"cached": CachePolicy("cached")}, Caches())
    response = ir.Response("r", "m", [ir.Text("Hello! How can I help you today?")], usage=ir.Usage(20, 9))

    async def run():
        req = dialect.parse_request(obj, {})
        lookup = cache.decide("cached", [], req, "-")
        await cache.put(lookup, response, "m")
        out = {}
        t0 = time.perf_counter()
        for _ in range(n):
            dialect.parse_request(obj, {})
        out["parse_ir_us"] = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for _ in range(n):
            await cache.get(cache.decide("cached", [], req, "-"))
        out["hit_key_and_get_us"] = (time.perf_counter() - t0) / n * 1e6
        t0 = time.perf_counter()
        for i in range(n):
            miss = cache.decide("cached", [], ir.Request([ir.Message("user", [ir.Text(f"q{i}")])], max_tokens=32), "-")
            await cache.get(miss)
            await cache.put(miss, response, "m")
        out["miss_key_get_put_us"] = (time.perf_counter() - t0) / n * 1e6
        return out
    runs = [trio.run(run) for _ in range(5)]
    return {k: med([r[k] for r in runs]) for k in runs[0]}


def sockets(duration: float, runs: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="busbar-bench-cache-"))
    vendor, gw = free_port(), free_port()
    (tmp / "cache.yaml").write_text(
        "providers:\n"
        f"  fast: {{protocol: openai, base_url: 'http://127.0.0.1:{vendor}/v1', key: sk-bench}}\n"
        "admin: {listen: public}\n"
        "pools:\n"
        "  plain: {members: [{provider: fast, model: m}]}\n"
        "  cached: {members: [{provider: fast, model: m}], cache: {mode: exact, ttl: 3600, max_entries: 100000}}\n")
    procs = [start(["mock", "--port", str(vendor), "--reply", "Hello! How can I help you today?", "--no-record"]),
             start(["serve", "--config", str(tmp / "cache.yaml"), "--port", str(gw)])]
    gateway = procs[1]
    out: dict = {}
    try:
        wait_port(vendor)
        wait_port(gw)
        url = f"http://127.0.0.1:{gw}/v1/chat/completions"
        same = {pool: lua_for(tmp, pool, json.dumps(BODY).replace("{pool}", pool)) for pool in ("plain", "cached")}
        varying = {}
        for pool in ("plain", "cached"):
            head, tail = json.dumps(BODY).replace("{pool}", pool).split("Say hello in one short sentence.")
            path = tmp / f"vary-{pool}.lua"
            path.write_text(VARYING % (head + "Question ", tail))
            varying[pool] = str(path)
        wrk(url, 4, 1, same["cached"])       # warm: the entry exists, connections are up
        wrk(url, 4, 1, same["plain"])
        cases = {"passthrough": same["plain"], "hit": same["cached"],
                 "uncached_new_questions": varying["plain"], "miss": varying["cached"]}
        for c in (1, 8):
            row = {}
            samples = {name: [] for name in cases}
            cpu = {name: [] for name in cases}
            for _ in range(runs):               # interleaved, so the box's load hits every case alike
                for name, script in cases.items():
                    cpu0 = cpu_seconds(gateway.pid)
                    r = wrk(url, c, duration, script)
                    cpu[name].append((cpu_seconds(gateway.pid) - cpu0) / max(1, r["requests"]) * 1e6)
                    samples[name].append(r)
            for name in cases:
                row[name] = {"p50_ms": med([r["p50_ms"] for r in samples[name]]),
                             "rps": med([r["rps"] for r in samples[name]]),
                             "cpu_us_per_request": med(cpu[name]),
                             "errors": sum(r["errors"] for r in samples[name])}
            out[f"c{c}"] = row
    finally:
        stop_all(procs)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    import os
    results = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_avg": os.getloadavg()[0]}
    results["in_process"] = in_process()
    for name, (value, spread) in results["in_process"].items():
        print(f"in process  {name:22s} {value:7.2f} µs  (spread {spread:.2f})")
    results["sockets"] = sockets(args.duration, args.runs)
    for c, row in results["sockets"].items():
        for name, r in row.items():
            print(f"{c:3s} {name:24s} p50 {r['p50_ms'][0]:6.3f} ms ±{r['p50_ms'][1]:.3f}  "
                  f"rps {r['rps'][0]:8.0f} ±{r['rps'][1]:.0f}  cpu {r['cpu_us_per_request'][0]:6.0f} µs/req "
                  f"±{r['cpu_us_per_request'][1]:.0f}  errors {r['errors']}")
    results["load_avg_after"] = os.getloadavg()[0]
    print(f"load average {results['load_avg']:.1f} -> {results['load_avg_after']:.1f}")
    out = Path(__file__).resolve().parent / "results" / f"cache-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
