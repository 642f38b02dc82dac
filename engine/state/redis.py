"""The Redis state backend: the same laws as MemoryState, shared by every replica and worker.

Each take is one Lua script (atomic in Redis, clock from Redis' TIME so replicas with
skewed clocks agree), so counters are exact across replicas: the overshoot bound while
Redis answers is 0. A request never waits on Redis beyond `timeout_s` (default 5 ms):
past it, or while Redis is down, the take is answered by policy `on_unavailable`:
  open   (default) admit, as if the limit had room (logged once per outage);
  local  this process's own MemoryState (each replica limits alone: overshoot <= N x limit);
  closed refuse (retry_after 1 s).
Counter amounts applied locally during an outage are replayed into Redis when it
returns (reconcile), so budgets and usage totals lose nothing.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable

import trio

from busbar.state import Taken
from busbar.state.memory import MemoryState, bucket_retry_after
from busbar.state.resp import RespConnection, RespError, parse_redis_url

log = logging.getLogger("busbar.state")

# KEYS[1] bucket hash; ARGV amount, rate, burst, force ("1": take even past empty: settle)
BUCKET_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local amount, rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1]) or burst
local at = tonumber(v[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local ok = 0
if ARGV[4] == '1' or tokens >= amount then
  tokens = math.min(burst, tokens - amount)
  ok = 1
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'at', string.format('%.17g', now))
if rate > 0 then
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
end
return {ok, string.format('%.17g', tokens)}
"""

# KEYS[1] counter; ARGV amount, limit ("" none), ttl_ms
COUNTER_LUA = """
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
local amount = tonumber(ARGV[1])
if ARGV[2] ~= '' and total + amount > tonumber(ARGV[2]) then
  return {0, string.format('%.17g', total), redis.call('PTTL', KEYS[1])}
end
local after = redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[3])
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return {1, after, 0}
"""

_SHA = {lua: hashlib.sha1(lua.encode()).hexdigest() for lua in (BUCKET_LUA, COUNTER_LUA)}

POLICIES = ("open", "local", "closed")


class RedisUnavailable(Exception):
    pass


class RedisState:
    """StateBackend over Redis with a bounded wait and a degraded mode (see module doc)."""

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        prefix: str = "busbar",
        *,
        timeout_s: float = 0.005,
        connect_timeout_s: float = 0.05,
        retry_every_s: float = 1.0,
        on_unavailable: str = "open",
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_unavailable not in POLICIES:
            raise ValueError(f"state.on_unavailable must be one of {', '.join(POLICIES)}")
        self.host, self.port, self.db, self._password = parse_redis_url(url)
        self.prefix = prefix
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retry_every_s, self.on_unavailable = retry_every_s, on_unavailable
        self._now = now
        self._idle: list[RespConnection] = []
        self._down_since: float | None = None
        self._next_try = 0.0
        self.local = MemoryState(now=now)
        self._pending: dict[str, tuple[float, float]] = {}  # counter key -> (amount, ttl_s) to replay
        self.degraded_total = 0       # outages seen (for /metrics)
        self.fallback_ops_total = 0   # takes answered without Redis

    # -- status (admin, /metrics) ----------------------------------------------------

    @property
    def degraded(self) -> bool:
        return self._down_since is not None

    def status(self) -> dict:
        return {
            "backend": "redis", "redis": f"{self.host}:{self.port}/{self.db}", "prefix": self.prefix,
            "degraded": self.degraded, "on_unavailable": self.on_unavailable,
            "outages_total": self.degraded_total, "fallback_ops_total": self.fallback_ops_total,
            "pending_replay": len(self._pending),
        }

    # -- the protocol ------------------------------------------------------------------

    async def take_bucket(self, key: str, amount: float, rate: float, burst: float) -> Taken:
        try:
            ok, level = await self._script(BUCKET_LUA, key, amount, rate, burst, "0")
        except RedisUnavailable:
            return self._fallback_bucket(key, amount, rate, burst)
        level = float(level)
        if ok:
            return Taken(True, level, 0.0)
        return Taken(False, level, bucket_retry_after(level, amount, rate, burst))

    async def settle_bucket(self, key: str, amount: float, rate: float, burst: float) -> float:
        try:
            _, level = await self._script(BUCKET_LUA, key, amount, rate, burst, "1")
            return float(level)
        except RedisUnavailable:
            return await self.local.settle_bucket(key, amount, rate, burst)

    async def take_counter(self, key: str, amount: float, limit: float | None, ttl_s: float) -> Taken:
        try:
            ok, total, pttl = await self._script(
                COUNTER_LUA, key, amount, "" if limit is None else limit, max(1, int(ttl_s * 1000)))
        except RedisUnavailable:
            return self._fallback_counter(key, amount, limit, ttl_s)
        if ok:
            return Taken(True, float(total), 0.0)
        return Taken(False, float(total), pttl / 1000 if pttl > 0 else math.inf)

    async def add_counter(self, key: str, amount: float, ttl_s: float) -> float:
        try:
            _, total, _ = await self._script(COUNTER_LUA, key, amount, "", max(1, int(ttl_s * 1000)))
            return float(total)
        except RedisUnavailable:
            self._remember(key, amount, ttl_s)
            return await self.local.add_counter(key, amount, ttl_s)

    async def get_counter(self, key: str) -> float:
        try:
            value = await self._call("GET", self.prefix + ":" + key)
        except RedisUnavailable:
            return await self.local.get_counter(key)
        return float(value) if value is not None else 0.0

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().aclose()

    # -- degraded answers --------------------------------------------------------------

    def _fallback_bucket(self, key, amount, rate, burst) -> Taken:
        self.fallback_ops_total += 1
        if self.on_unavailable == "local":
            return self.local.take_bucket_now(key, amount, rate, burst)
        return Taken(self.on_unavailable == "open", 0.0, 0.0 if self.on_unavailable == "open" else 1.0)

    def _fallback_counter(self, key, amount, limit, ttl_s) -> Taken:
        self.fallback_ops_total += 1
        if self.on_unavailable == "closed":
            return Taken(False, 0.0, 1.0)
        taken = self.local.take_counter_now(key, amount, limit if self.on_unavailable == "local" else None, ttl_s)
        if taken.ok:
            self._remember(key, amount, ttl_s)
        return Taken(True, taken.level, 0.0) if self.on_unavailable == "open" else taken

    def _remember(self, key: str, amount: float, ttl_s: float) -> None:
        pending, _ = self._pending.get(key, (0.0, 0.0))
        self._pending[key] = (pending + amount, ttl_s)

    # -- talking to Redis --------------------------------------------------------------

    async def _script(self, lua: str, key: str, *args):
        full_key = self.prefix + ":" + key
        try:
            return await self._call("EVALSHA", _SHA[lua], 1, full_key, *args)
        except RespError as error:
            if not str(error).startswith("NOSCRIPT"):   # flushed or restarted: load it again
                raise
            return await self._call("EVAL", lua, 1, full_key, *args)

    async def _call(self, *args):
        now = self._now()
        if self._down_since is not None and now < self._next_try:
            raise RedisUnavailable
        conn = None
        try:
            with trio.fail_after(self.timeout_s if self._idle else max(self.timeout_s, self.connect_timeout_s)):
                conn = self._idle.pop() if self._idle else await RespConnection.open(
                    self.host, self.port, self.db, self._password)
                reply = await conn.call(*args)
        except RespError:
            self._idle.append(conn)
            raise
        except (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as error:
            if conn is not None:
                conn_to_close, conn = conn, None
                with trio.CancelScope(shield=True):
                    await conn_to_close.aclose()
            self._went_down(now, error)
            raise RedisUnavailable from error
        self._idle.append(conn)
        if self._down_since is not None:
            await self._came_back()
        return reply

    def _went_down(self, now: float, error: Exception) -> None:
        self._next_try = now + self.retry_every_s
        if self._down_since is None:
            self._down_since = now
            self.degraded_total += 1
            log.warning("state: redis %s:%s unavailable (%s); serving from local state, limits %s "
                        "until it returns", self.host, self.port, type(error).__name__ or error,
                        {"open": "fail open", "local": "per replica", "closed": "fail closed"}[self.on_unavailable])

    async def _came_back(self) -> None:
        outage = self._now() - (self._down_since or self._now())
        self._down_since = None
        pending, self._pending = self._pending, {}
        for key, (amount, ttl_s) in pending.items():
            try:
                await self._script(COUNTER_LUA, key, amount, "", max(1, int(ttl_s * 1000)))
            except (RedisUnavailable, RespError):
                self._remember(key, amount, ttl_s)
        log.warning("state: redis %s:%s back after %.1f s; %d counters reconciled",
                    self.host, self.port, outage, len(pending) - len(self._pending))

