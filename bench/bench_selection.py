"""Cost of one member pick per strategy: what `least_loaded` adds over the
in-flight strategy (a few attribute reads per member: the scraped load, its
age, queue, KV use) — pure, no I/O.

    python bench/bench_selection.py      # median µs per pick (min..max) over 7 runs, 2/4/8 members
"""
import random
import statistics
import time

from busbar.routing import Router
from busbar.routing.pools import choose
from busbar.selfhosted import BackendLoad

N = 20000
RUNS = 7


def pool(strategy: str, members: int) -> Router:
    providers = {f"p{i}": {"protocol": "openai", "base_url": f"http://p{i}.test", "key": f"k{i}"}
                 for i in range(members)}
    return Router.from_config({"providers": providers, "pools": {"p": {"strategy": strategy, "members": [
        {"provider": f"p{i}", "model": "m", "weight": 1 + i % 2} for i in range(members)]}}},
        rng=random.Random(1))


def one_run(router: Router, rng: random.Random) -> float:
    node, usable, now = router.pools["p"], (lambda leaf: True), 100.0
    t0 = time.perf_counter()
    for _ in range(N):
        choose(node, usable, now, rng)
    return (time.perf_counter() - t0) / N * 1e6


def main():
    rng = random.Random(7)
    print(f"µs per pick, median (min..max) over {RUNS} x {N}")
    for members in (2, 4, 8):
        cells = []
        for strategy, telemetry in (("least_in_flight", None), ("least_loaded", None),
                                    ("least_loaded", "fresh"), ("least_loaded", "stale")):
            router = pool(strategy, members)
            for i, target in enumerate(router.targets.values()):
                target.in_flight = i % 3
                if telemetry:
                    at = 99.0 if telemetry == "fresh" else 0.0
                    target.load = BackendLoad(at, running=float(i), waiting=float(i % 4), kv_usage=0.5 + 0.05 * i,
                                              cold=i == members - 1)
                    target.load_stale_after = 6.0
            runs = [one_run(router, rng) for _ in range(RUNS)]
            label = strategy + (f" ({telemetry} telemetry)" if telemetry else " (no telemetry)" if strategy == "least_loaded" else "")
            cells.append(f"  {label:<38} {statistics.median(runs):6.2f} ({min(runs):.2f}..{max(runs):.2f})")
        print(f"{members} members:")
        print("\n".join(cells))


if __name__ == "__main__":
    main()
