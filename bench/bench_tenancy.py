"""Cost of tenancy on the hot path: admit + settle per request (memory backend);
with --redis, how fast a minted key's creation and revocation reach another
replica's cache (two MintedKeys behind two RoutingSyncs, one real redis-server,
in one process: from the start of A's write to B's cache changing).

    python bench/bench_tenancy.py            # median µs per request over several runs; goal <= 10 µs
    python bench/bench_tenancy.py --redis    # + propagation p50/p99 (needs redis-server)
    python bench/bench_tenancy.py --callgrind  # instructions per admit+settle (key + team), load-proof
    python bench/bench_tenancy.py --redis-admit [N]  # admit+settle on the Redis backend: round trips
                                             # per request, wall and CPU µs (needs redis-server)
"""
import statistics
import time

import trio

from busbar.ir import Usage
from busbar.tenancy import Price, Tenancy

AUTH = {"teams": {"plat": {"limits": {"rpm": 10**9}, "budget": {"usd": 10**9, "period": "month"}}},
        "keys": [{"id": "a", "key": "client-key-a", "team": "plat", "pools": ["smart"],
                  "limits": {"rpm": 10**9, "tpm": 10**12, "parallel": 1000},
                  "budget": {"usd": 10**9, "period": "month"}}]}
N = 20000


async def one_run(tenancy, price, usage) -> float:
    t0 = time.perf_counter()
    for _ in range(N):
        adm = await tenancy.admit("client-key-a", "smart", 300)
        await tenancy.settle(adm, usage, price)
    return (time.perf_counter() - t0) / N * 1e6


def main():
    tenancy = Tenancy.from_config(AUTH)
    price, usage = Price(2.5, 10.0, 1.25), Usage(200, 100, cached_tokens=50)
    runs = [trio.run(one_run, tenancy, price, usage) for _ in range(7)]
    print(f"admit+settle (key + team, rpm+tpm+parallel+usd budget): median {statistics.median(runs):.2f} µs, "
          f"min {min(runs):.2f}, max {max(runs):.2f} over {len(runs)} x {N}")
    plain = Tenancy.from_config({"keys": ["plain-key"]})
    runs = [trio.run(lambda: _plain(plain)) for _ in range(7)]
    print(f"admit+settle (plain key, no limits): median {statistics.median(runs):.2f} µs")
    minted = _minted_tenancy()
    runs = [trio.run(lambda: _plain(minted, "bb-minted-secret")) for _ in range(7)]
    print(f"admit+settle (minted key, SQLite-backed registry, no limits): median {statistics.median(runs):.2f} µs, "
          f"min {min(runs):.2f}, max {max(runs):.2f}")


def _minted_tenancy():
    """A minted key as the registry holds it (in memory; SQLite is never read on the request path)."""
    from busbar.tenancy import hash_secret
    from busbar.tenancy.minted import MintedKeys
    registry = MintedKeys(None)
    registry.apply(0, {"id": "app-1", "key_sha256": hash_secret("bb-minted-secret"), "created": 0, "revoked": None})
    return Tenancy.from_config({"keys": ["plain-key"]}, minted=registry)


async def _plain(tenancy, secret="plain-key") -> float:
    t0 = time.perf_counter()
    for _ in range(N):
        await tenancy.settle(await tenancy.admit(secret, "smart", 300))
    return (time.perf_counter() - t0) / N * 1e6


def propagation(n: int = 200) -> None:
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gateway import free_port, wait_port
    from busbar.cluster import RoutingSync
    from busbar.state.redis import RedisState
    from busbar.tenancy.minted import MintedKeys, RedisKeyStore
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        redis = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--save", "", "--dir", tmp],
                                 stdout=subprocess.DEVNULL)
        try:
            wait_port(port)

            async def run():
                url = f"redis://127.0.0.1:{port}/0"
                replicas = []
                async with trio.open_nursery() as nursery:
                    for _ in range(2):
                        keys = MintedKeys(RedisKeyStore(RedisState(url, "bench", timeout_s=1.0)))
                        sync = RoutingSync(url, "bench", timeout_s=1.0)
                        keys.follow(sync)
                        await nursery.start(sync.run)
                        nursery.start_soon(keys.run)
                        replicas.append(keys)
                    a, b = replicas
                    minted, revoked = [], []
                    for i in range(n):
                        t = time.perf_counter()
                        record, _ = await a.create({"id": f"k{i}"})
                        while f"k{i}" not in b.records:
                            await trio.sleep(0)
                        minted.append(time.perf_counter() - t)
                        t = time.perf_counter()
                        await a.revoke(f"k{i}")
                        while record["key_sha256"] in b.by_hash:
                            await trio.sleep(0)
                        revoked.append(time.perf_counter() - t)
                    nursery.cancel_scope.cancel()
                return minted, revoked
            minted, revoked = trio.run(run)
        finally:
            redis.kill()
            redis.wait()

    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] * 1e6
    for name, values in (("mint", minted), ("revoke", revoked)):
        print(f"{name} on A (from the start of its write) -> B's cache: p50 {pct(values, 0.5):.0f} µs, "
              f"p99 {pct(values, 0.99):.0f} µs, max {max(values) * 1e6:.0f} µs (n={len(values)})")


def _redis_server():
    """A redis-server on a free loopback port in a temp dir: (process, url, temp dir)."""
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_gateway import free_port, wait_port
    port, tmp = free_port(), tempfile.TemporaryDirectory()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", tmp.name], stdout=subprocess.DEVNULL)
    wait_port(port)
    return proc, f"redis://127.0.0.1:{port}/0", tmp


def redis_admit(n: int = 1000, runs: int = 7) -> None:
    """The key+team stack's admit + settle on RedisState against a real redis-server:
    Redis commands per request (its own INFO stats), wall and CPU µs per request,
    sequential requests on one connection; median of `runs` x `n` with the spread."""
    from busbar.state.redis import RedisState
    proc, url, tmp = _redis_server()

    async def evalsha_calls() -> int:       # redis-server's own count (scripts cannot call EVALSHA)
        from busbar.state.resp import RespConnection
        conn = await RespConnection.open("127.0.0.1", int(url.rsplit(":", 1)[1].split("/")[0]))
        info = (await conn.call("INFO", "commandstats")).decode()
        await conn.aclose()
        return int(info.split("cmdstat_evalsha:calls=")[1].split(",")[0]) if "cmdstat_evalsha:" in info else 0

    async def run():
        state = RedisState(url, "bench", timeout_s=1.0)
        round_trips, call = [0], state._call

        async def counted(*args, **kw):             # every command the backend sends is one round trip
            round_trips[0] += 1
            return await call(*args, **kw)
        state._call = counted
        tenancy = Tenancy.from_config(AUTH, state)
        price, usage = Price(2.5, 10.0, 1.25), Usage(200, 100, cached_tokens=50)
        for _ in range(200):                              # scripts loaded, connection warm
            await tenancy.settle(await tenancy.admit("client-key-a", "smart", 300), usage, price)
        walls, cpus, per_request = [], [], []
        for _ in range(runs):
            before, scripts = round_trips[0], await evalsha_calls()
            t, c = time.perf_counter(), time.process_time()
            for _ in range(n):
                await tenancy.settle(await tenancy.admit("client-key-a", "smart", 300), usage, price)
            walls.append((time.perf_counter() - t) / n * 1e6)
            cpus.append((time.process_time() - c) / n * 1e6)
            per_request.append(((round_trips[0] - before) / n, (await evalsha_calls() - scripts) / n))
        await state.aclose()
        return walls, cpus, per_request
    try:
        walls, cpus, per_request = trio.run(run)
    finally:
        proc.kill()
        proc.wait()
        tmp.cleanup()
    print(f"redis admit+settle (key + team, rpm+tpm+parallel+usd budget): "
          f"{statistics.median(r[0] for r in per_request):.2f} round trips "
          f"({statistics.median(r[1] for r in per_request):.2f} EVALSHA) per request; "
          f"wall median {statistics.median(walls):.1f} µs (spread {min(walls):.1f}-{max(walls):.1f}), "
          f"CPU median {statistics.median(cpus):.1f} µs (spread {min(cpus):.1f}-{max(cpus):.1f}) "
          f"over {len(walls)} x {n}")


def instructions() -> None:
    """Instructions per request under callgrind: (runs of 2,500 - runs of 500) / 2,000,
    so start-up and import costs cancel out."""
    import re
    import subprocess
    import sys
    counts = []
    for n in (500, 2500):
        out = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
                              __file__, "--one-run", str(n)], capture_output=True, text=True).stderr
        counts.append(int(re.search(r"Collected : (\d+)", out).group(1)))
    print(f"admit+settle (key + team, rpm+tpm+parallel+usd budget): {(counts[1] - counts[0]) / 2000:,.0f} "
          "instructions per request (callgrind)")


if __name__ == "__main__":
    import sys
    if "--one-run" in sys.argv:
        N = int(sys.argv[sys.argv.index("--one-run") + 1])
        trio.run(one_run, Tenancy.from_config(AUTH), Price(2.5, 10.0, 1.25), Usage(200, 100, cached_tokens=50))
        sys.exit(0)
    if "--redis-admit" in sys.argv:
        rest = sys.argv[sys.argv.index("--redis-admit") + 1:]
        redis_admit(int(rest[0]) if rest and rest[0].isdigit() else 1000)
        sys.exit(0)
    if "--callgrind" in sys.argv:
        instructions()
        sys.exit(0)
    main()
    if "--redis" in sys.argv:
        propagation()
