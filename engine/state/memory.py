"""The embedded state backend: dicts in this process, no I/O, injected clock.

Exactly the semantics of the Redis scripts (busbar.state.redis), so a pure test of a
limit against MemoryState says what the cluster does, minus cross-replica sharing.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable

from busbar.state import QUOTA_WINDOW, QuotaAsk, QuotaTaken, Taken, negate

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
        self._quota: dict[str, list] = {}   # "<key id>:<scope>" -> [deque of [at, uid, tokens], token sum]
        self._uids = itertools.count(1)

    shared = False     # one process: the router's own KeyQuota counts are exact, nobody asks this

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

    # -- batches (busbar.state.take_all / apply_all, answered without awaiting each op) --

    async def take_all(self, ops: list[tuple], reads: list[str] = ()) -> tuple[tuple[int, Taken] | None, list[float]]:
        return self.take_all_now(ops, reads)

    def take_all_now(self, ops: list[tuple], reads: list[str] = ()) -> tuple[tuple[int, Taken] | None, list[float]]:
        """Synchronous twin of take_all (busbar.state.take_all's contract)."""
        # one clock reading for the batch, the bucket and counter laws inlined (the hot path of
        # tenancy: a key and its team); the same laws as take_bucket_now / take_counter_now
        now = self._now()
        buckets, counters = self._buckets, self._counters
        for i, (kind, key, amount, a, b) in enumerate(ops):
            if kind == "bucket":            # a: rate, b: burst
                tokens, at, _ = buckets.get(key) or (b, now, now)
                tokens = min(b, tokens + (now - at) * a) if now > at else min(b, tokens)
                if tokens < amount:
                    self.apply_now([negate(o) for o in reversed(ops[:i])], now)
                    return (i, Taken(False, tokens, bucket_retry_after(tokens, amount, a, b))), []
                tokens -= amount
                buckets[key] = (tokens, now, now + (b - tokens) / a if a > 0 else math.inf)
            else:                           # a: limit (None: none), b: ttl_s
                total, expires_at = counters.get(key) or (0.0, 0.0)
                if expires_at <= now:
                    total, expires_at = 0.0, 0.0
                if a is not None and total + amount > a:
                    self.apply_now([negate(o) for o in reversed(ops[:i])], now)
                    return (i, Taken(False, total, expires_at - now if expires_at else math.inf)), []
                counters[key] = (total + amount, max(expires_at, now + b))
        if ops:
            self._wrote(now, len(ops))
        return None, [self._total(key, now)[0] for key in reads] if reads else []

    async def apply_all(self, ops: list[tuple]) -> list[float]:
        return self.apply_now(ops)

    def apply_now(self, ops: list[tuple], now: float | None = None) -> list[float]:
        """Synchronous twin of apply_all."""
        now = self._now() if now is None else now
        buckets, counters, out = self._buckets, self._counters, []
        for kind, key, amount, a, b in ops:
            if kind == "bucket":            # settle: may go below 0 (a debt), capped at the burst
                tokens, at, _ = buckets.get(key) or (b, now, now)
                tokens = min(b, min(b, tokens + max(0.0, now - at) * a) - amount)
                buckets[key] = (tokens, now, now + (b - tokens) / a if a > 0 else math.inf)
                out.append(tokens)
            else:
                total, expires_at = counters.get(key) or (0.0, 0.0)
                if expires_at <= now:
                    total, expires_at = 0.0, 0.0
                total += amount
                counters[key] = (total, max(expires_at, now + b))
                out.append(total)
        if ops:
            self._wrote(now, len(ops))
        return out

    async def get_counters(self, keys: list[str]) -> list[float]:
        return self.counters_now(keys)

    def counters_now(self, keys: list[str]) -> list[float]:
        now = self._now()
        return [self._total(key, now)[0] for key in keys]

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

    # -- upstream key quotas: the same laws as QUOTA_TAKE_LUA (busbar.state.redis) -------

    def _quota_log(self, name: str, now: float) -> list:
        log = self._quota.setdefault(name, [deque(), 0.0])
        entries, edge = log[0], now - QUOTA_WINDOW
        while entries and entries[0][0] <= edge:
            log[1] -= entries.popleft()[2]
        return log

    def _day(self, ask: QuotaAsk) -> str:
        return f"quota:{ask.name}:day:{ask.day_end}"

    async def take_quota(self, asks: list[QuotaAsk]) -> QuotaTaken:
        return self.take_quota_now(asks)

    def take_quota_now(self, asks: list[QuotaAsk]) -> QuotaTaken:
        now = self._now()
        best, best_room, frees, used = None, -math.inf, [], []
        for i, ask in enumerate(asks):
            log = self._quota_log(ask.name, now)
            entries, tokens = log[0], log[1]
            count, today = len(entries), self._total(self._day(ask), now)[0]
            free, room = quota_free_and_room(ask, count, tokens, today, [(e[0], e[2]) for e in entries], now)
            frees.append(free)
            used.append((float(count), float(tokens), float(today)))
            if free <= 0 and room > best_room + 1e-9:
                best, best_room = i, room
        uid = ""
        if best is not None:
            ask = asks[best]
            uid = f"m{next(self._uids)}"
            if ask.rpm is not None or ask.tpm is not None:
                log = self._quota[ask.name]
                log[0].append([now, uid, ask.tokens])
                log[1] += ask.tokens
            if ask.rpd is not None:
                self.take_counter_now(self._day(ask), 1, None, ask.day_left_s + 60)
        return QuotaTaken(best, uid, tuple(frees), tuple(used))

    async def settle_quota(self, ask: QuotaAsk, uid: str, tokens: int) -> None:
        log = self._quota_log(ask.name, self._now())
        for entry in log[0]:
            if entry[1] == uid:
                log[1] += tokens - entry[2]
                entry[2] = tokens
                return

    async def read_quota(self, asks: list[QuotaAsk]) -> list[tuple[float, float, float, float]]:
        now = self._now()
        out = []
        for ask in asks:
            entries, tokens = self._quota_log(ask.name, now)
            oldest = entries[0][0] + QUOTA_WINDOW - now if entries else 0.0
            out.append((float(len(entries)), float(tokens), self._total(self._day(ask), now)[0], oldest))
        return out

    # -- housekeeping --------------------------------------------------------------

    def _wrote(self, now: float, n: int = 1) -> None:
        before = self._writes
        self._writes += n
        if self._writes // _SWEEP_EVERY != before // _SWEEP_EVERY:
            self.sweep(now)

    def sweep(self, now: float | None = None) -> None:
        """Drop expired counters and buckets that have refilled to full (indistinguishable
        from absent ones)."""
        now = self._now() if now is None else now
        self._counters = {k: v for k, v in self._counters.items() if v[1] > now}
        self._buckets = {k: v for k, v in self._buckets.items() if v[2] > now}
        for name in [n for n, log in self._quota.items() if not self._quota_log(n, now)[0]]:
            del self._quota[name]

    def status(self) -> dict:
        return {"backend": "memory", "degraded": False}

    async def aclose(self) -> None:
        return None


def bucket_retry_after(tokens: float, amount: float, rate: float, burst: float) -> float:
    """Seconds until `amount` fits in a bucket now holding `tokens` (inf when it never will)."""
    if amount > burst or rate <= 0:
        return math.inf
    return (amount - tokens) / rate


def quota_free_and_room(ask: QuotaAsk, count: int, tokens: float, today: float,
                        entries: list[tuple[float, float]], now: float) -> tuple[float, float]:
    """(seconds until `ask` has room, the share of its tightest window left after it) for a
    key holding `count` requests and `tokens` tokens in the minute (`entries`: (at, tokens),
    oldest first) and `today` requests today.  The Lua script computes the same."""
    free, room = 0.0, 1.0
    if ask.rpm is not None:
        if count >= ask.rpm:
            free = max(free, entries[count - ask.rpm][0] + QUOTA_WINDOW - now)
        room = min(room, (ask.rpm - count - 1) / ask.rpm)
    if ask.tpm is not None:
        excess = tokens - (ask.tpm - min(ask.tokens, ask.tpm))
        if excess > 0:
            for at, amount in entries:
                excess -= amount
                if excess <= 0:
                    free = max(free, at + QUOTA_WINDOW - now)
                    break
        room = min(room, (ask.tpm - tokens - ask.tokens) / ask.tpm)
    if ask.rpd is not None:
        if today >= ask.rpd:
            free = max(free, ask.day_left_s)
        room = min(room, (ask.rpd - today - 1) / ask.rpd)
    return free, room
