"""Cost of tenancy on the hot path: admit + settle per request (memory backend).

    python bench/bench_tenancy.py      # median µs per request over several runs; goal <= 10 µs
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
    registry._index([{"id": "app-1", "key_sha256": hash_secret("bb-minted-secret"), "created": 0, "revoked": None}])
    return Tenancy.from_config({"keys": ["plain-key"]}, minted=registry)


async def _plain(tenancy, secret="plain-key") -> float:
    t0 = time.perf_counter()
    for _ in range(N):
        await tenancy.settle(await tenancy.admit(secret, "smart", 300))
    return (time.perf_counter() - t0) / N * 1e6


if __name__ == "__main__":
    main()
