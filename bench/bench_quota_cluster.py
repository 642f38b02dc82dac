"""ADR 0017's cluster measurement: what sharing upstream key quotas through Redis costs per request.

Against a redis-server started here on a free loopback port, with the Redis backend itself
(busbar.state.redis.RedisState): `take_quota` round trip (wall µs per sequential op) and CPU
µs per op, for 1 and 3 candidate keys with rpm (+tpm) limits, plus the pure routing side of it
(Plan.quota_asks + Plan.cluster_answer).  Limits are set high so every take succeeds (the
steady state); median of 5 runs x N.  Requests of providers without key limits make no Redis
call at all (checked here: the counter of script calls stays 0).

Usage: python bench/bench_quota_cluster.py [N]
"""

import statistics
import sys
import time

import trio

from busbar.routing import Router
from busbar.routing.router import Needs
from busbar.state import QuotaAsk
from busbar.state.redis import RedisState

import redis_proc  # bench/redis_proc.py: a redis-server for the cluster rows


def report(label: str, runs: list[tuple[float, float]], n: int) -> None:
    rt = [r[0] for r in runs]
    cpu = [r[1] for r in runs]
    print(f"{label:44s} wall {statistics.median(rt):7.1f} µs (spread {min(rt):.1f}-{max(rt):.1f})   "
          f"cpu {statistics.median(cpu):6.1f} µs/op   (median of 5 x {n})")


async def measure(label: str, op, n: int) -> None:
    for _ in range(200):
        await op()
    runs = []
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            await op()
        runs.append(((time.perf_counter() - t) / n * 1e6, (time.process_time() - c) / n * 1e6))
    report(label, runs, n)


def routing_side(n: int, limits: bool, shared: bool = True) -> None:
    """start + next + (asks + cluster answer) + report: the pure routing of one request."""
    key = {"key": "s", "limits": {"rpm": 10**9, "tpm": 10**12}} if limits else "s"
    router = Router.from_config({
        "providers": {"gem": {"protocol": "gemini", "base_url": "http://x", "keys": [key, key | {"key": "t"}
                                                                                    if limits else "t", "u"]}},
        "pools": {"fast": {"members": [{"provider": "gem", "model": "flash"}]}}})
    router.shared_quota = shared
    from busbar.state import QuotaTaken
    taken = QuotaTaken(0, "u1", (0.0, 0.0, 0.0), ((0, 0, 0),) * 3)
    runs = []
    now = 0.0
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            now += 0.001
            plan = router.start("fast", Needs(tokens=100), now)
            attempt = plan.next(now)
            if attempt.candidates:
                asks = plan.quota_asks(attempt, now)
                plan.cluster_answer(attempt, asks, taken, now)
            plan.report(attempt, None, now, tokens=120)
        runs.append(((time.perf_counter() - t) / n * 1e6, (time.process_time() - c) / n * 1e6))
    what = "keys with limits" + (", shared (+asks, answer)" if shared else ", one process") if limits else "plain keys"
    report(f"routing per request, {what}", runs, n)


async def main(port: int, n: int) -> None:
    state = RedisState(f"redis://127.0.0.1:{port}/0", "bench", timeout_s=1.0)
    day = int(time.time()) + 3600
    one = [QuotaAsk("gem#0:abcd:flash", 10**9, None, None, 100, day, 3600.0)]
    three = [QuotaAsk(f"gem#{i}:abcd:flash", 10**9, 10**12, None, 100, day, 3600.0) for i in range(3)]
    await measure("reference: take_counter (ADR 0010's script)", lambda: state.take_counter("c", 1, None, 60), n)
    await measure("take_quota, 1 key (rpm)", lambda: state.take_quota(one), n)
    await measure("take_quota, 3 candidate keys (rpm + tpm)", lambda: state.take_quota(three), n)
    await state.aclose()
    routing_side(n * 5, limits=False)
    routing_side(n * 5, limits=True, shared=False)
    routing_side(n * 5, limits=True)


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with redis_proc.redis_server() as port:
        if port is None:
            sys.exit("redis-server not installed")
        trio.run(main, port, n)
