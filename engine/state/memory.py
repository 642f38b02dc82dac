"""The embedded state backend: dicts in this process, no I/O, injected clock.

Exactly the semantics of the Redis scripts (busbar.state.redis), so a pure test of a
limit against MemoryState says what the cluster does, minus cross-replica sharing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from busbar.state import Taken

# Expired entries are dropped lazily on access and by a sweep every this many writes,
# so a stream of one-off keys (per-period counters) cannot grow memory without bound.
_SWEEP_EVERY = 4096


class MemoryState:
    """StateBackend for one process. `now` is a monotonic clock in seconds (injected in tests)."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self._now = now
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (tokens, at, full_at)
        self._counters: dict[str, tuple[float, float]] = {}  # key -> (total, expires_at)
        self._writes = 0

    # -- token buckets -------------------------------------------------------------

    def _refilled(self, key: str, rate: float, burst: float, now: float) -> float:
        tokens, at, _ = self._buckets.get(key, (burst, now, now))
        return min(burst, tokens + max(0.0, now - at) * rate)

    def _store_bucket(self, key: str, tokens: float, rate: float, burst: float, now: float) -> None:
        full_at = now + (burst - tokens) / rate if rate > 0 else math.inf
        self._buckets[key] = (tokens, now, full_at)

    async def take_bucket(self, key: str, amount: float, rate: float, burst: float) -> Taken:
        return self.take_bucket_now(key, amount, rate, burst)

    def take_bucket_now(self, key: str, amount: float, rate: float, burst: float) -> Taken:
        """Synchronous twin of take_bucket (memory has nothing to wait for)."""
        now = self._now()
        tokens = self._refilled(key, rate, burst, now)
        if tokens >= amount:
            tokens -= amount
            self._store_bucket(key, tokens, rate, burst, now)
            self._wrote(now)
            return Taken(True, tokens, 0.0)
        return Taken(False, tokens, bucket_retry_after(tokens, amount, rate, burst))

    async def settle_bucket(self, key: str, amount: float, rate: float, burst: float) -> float:
        now = self._now()
        tokens = min(burst, self._refilled(key, rate, burst, now) - amount)
        self._store_bucket(key, tokens, rate, burst, now)
        self._wrote(now)
        return tokens

    # -- period counters -----------------------------------------------------------

    def _total(self, key: str, now: float) -> tuple[float, float]:
        total, expires_at = self._counters.get(key, (0.0, 0.0))
        if expires_at <= now:
            return 0.0, 0.0
        return total, expires_at

    async def take_counter(self, key: str, amount: float, limit: float | None, ttl_s: float) -> Taken:
        return self.take_counter_now(key, amount, limit, ttl_s)

    def take_counter_now(self, key: str, amount: float, limit: float | None, ttl_s: float) -> Taken:
        now = self._now()
        total, expires_at = self._total(key, now)
        if limit is not None and total + amount > limit:
            retry = expires_at - now if expires_at else math.inf
            return Taken(False, total, retry)
        total += amount
        self._counters[key] = (total, max(expires_at, now + ttl_s))
        self._wrote(now)
        return Taken(True, total, 0.0)

    async def add_counter(self, key: str, amount: float, ttl_s: float) -> float:
        now = self._now()
        total, expires_at = self._total(key, now)
        total += amount
        self._counters[key] = (total, max(expires_at, now + ttl_s))
        self._wrote(now)
        return total

    async def get_counter(self, key: str) -> float:
        return self._total(key, self._now())[0]

    # -- housekeeping --------------------------------------------------------------

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            self.sweep(now)

    def sweep(self, now: float | None = None) -> None:
        """Drop expired counters and buckets that have refilled to full (indistinguishable
        from absent ones)."""
        now = self._now() if now is None else now
        self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}

    def status(self) -> dict:
        return {"backend": "memory", "degraded": False}

    async def aclose(self) -> None:
        return None


def bucket_retry_after(tokens: float, amount: float, rate: float, burst: float) -> float:
    """Seconds until `amount` fits in a bucket now holding `tokens` (inf when it never will)."""
    if amount > burst or rate <= 0:
        return math.inf
    return (amount - tokens) / rate
