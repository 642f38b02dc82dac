"""The Redis state backend: the same laws as MemoryState, shared by every replica and worker.

Each take, and each batch of a request's limits (busbar.state.take_all / apply_all), is
one Lua script, one round trip (atomic in Redis, clock from Redis' TIME so replicas with
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
import itertools
import logging
import math
import os
import time
from collections.abc import Callable

import trio

from busbar.state import QUOTA_WINDOW, QuotaAsk, QuotaTaken, Taken, negate
from busbar.state.memory import MemoryState, bucket_retry_after
from busbar.state.resp import RespConnection, RespError, parse_redis_url

log = logging.getLogger("busbar.state")

# The client-key limits (busbar.tenancy) and every single bucket / counter op: a batch of ops as
# one script, one round trip, atomic in Redis (the same laws as MemoryState.take_all_now /
# apply_now).  KEYS: the ops' keys, then counters to read; ARGV: mode ("take": all or nothing,
# "apply": unconditional, amounts may be < 0), the op count, then per op kind ("b" bucket, "c"
# counter), amount, rate | limit ("" none), burst | ttl_ms.  A take that refuses op i gives
# back ops i-1..1 (reverse order, as MemoryState does) and returns {i, level, pttl}; otherwise
# {0, levels after each op, totals read}.  Numbers travel as '%.17g' strings (exact doubles).
LIMITS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local forced, n = ARGV[1] == 'apply', tonumber(ARGV[2])
local function fmt(x) return string.format('%.17g', x) end
local function op(i, amount, force)
  local key, b = KEYS[i], 3 + (i - 1) * 4
  if ARGV[b] == 'b' then
    local rate, burst = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
    local v = redis.call('HMGET', key, 'tokens', 'at')
    local tokens = tonumber(v[1]) or burst
    local at = tonumber(v[2]) or now
    tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
    if not force and tokens < amount then return false, fmt(tokens), 0 end
    tokens = math.min(burst, tokens - amount)
    redis.call('HSET', key, 'tokens', fmt(tokens), 'at', fmt(now))
    if rate > 0 then redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1000) end
    return true, fmt(tokens), 0
  end
  local total = tonumber(redis.call('GET', key) or '0')
  local limit, ttl = ARGV[b + 2], tonumber(ARGV[b + 3])
  if not force and limit ~= '' and total + amount > tonumber(limit) then
    return false, fmt(total), redis.call('PTTL', key)
  end
  local after = redis.call('INCRBYFLOAT', key, fmt(amount))
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  return true, after, 0
end
local levels = {}
for i = 1, n do
  local ok, level, pttl = op(i, tonumber(ARGV[4 + (i - 1) * 4]), forced)
  if not ok then
    for j = i - 1, 1, -1 do op(j, -tonumber(ARGV[4 + (j - 1) * 4]), true) end
    return {i, level, pttl}
  end
  levels[i] = level
end
local totals = {}
for i = n + 1, #KEYS do totals[i - n] = redis.call('GET', KEYS[i]) or '0' end
return {0, levels, totals}
"""

# Upstream key quotas (ADR 0017).  Per ask i: KEYS log (ZSET of "<uid>|<tokens>" scored by
# issue time), tok (the log's token sum), day (today's request count); ARGV n, uid, window,
# then per ask rpm, tpm, rpd ("" none), tokens, day_left_ms.  Takes on the ask with room and
# the most headroom (ties: the earlier); returns {index or 0, frees[], used[]} (strings).
# Same laws as busbar.state.memory.quota_free_and_room.
QUOTA_TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local n, uid, window = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local edge = now - window
local best, best_room = 0, -math.huge
local frees, used = {}, {}
local function amount(member) return tonumber(string.match(member, '|([^|]*)$')) end
for i = 1, n do
  local log, tok, day = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local b = 3 + (i-1)*5
  local rpm, tpm, rpd = tonumber(ARGV[b+1]), tonumber(ARGV[b+2]), tonumber(ARGV[b+3])
  local tokens, day_left = tonumber(ARGV[b+4]), tonumber(ARGV[b+5]) / 1000
  local old = redis.call('ZRANGEBYSCORE', log, '-inf', edge)
  if #old > 0 then
    local gone = 0
    for _, m in ipairs(old) do gone = gone + amount(m) end
    redis.call('ZREMRANGEBYSCORE', log, '-inf', edge)
    redis.call('INCRBYFLOAT', tok, -gone)
  end
  local count = redis.call('ZCARD', log)
  local sum = tonumber(redis.call('GET', tok) or '0')
  local today = tonumber(redis.call('GET', day) or '0')
  local free, room = 0, 1
  if rpm then
    if count >= rpm then
      local e = redis.call('ZRANGE', log, count - rpm, count - rpm, 'WITHSCORES')
      free = math.max(free, tonumber(e[2]) + window - now)
    end
    room = math.min(room, (rpm - count - 1) / rpm)
  end
  if tpm then
    local excess = sum - (tpm - math.min(tokens, tpm))
    if excess > 0 then
      local entries = redis.call('ZRANGE', log, 0, -1, 'WITHSCORES')
      for j = 1, #entries, 2 do
        excess = excess - amount(entries[j])
        if excess <= 0 then free = math.max(free, tonumber(entries[j+1]) + window - now) break end
      end
    end
    room = math.min(room, (tpm - sum - tokens) / tpm)
  end
  if rpd then
    if today >= rpd then free = math.max(free, day_left) end
    room = math.min(room, (rpd - today - 1) / rpd)
  end
  frees[i] = string.format('%.6f', free)
  used[i] = {tostring(count), string.format('%.17g', sum), tostring(today)}
  if free <= 0 and room > best_room + 1e-9 then best, best_room = i, room end
end
if best > 0 then
  local log, tok, day = KEYS[3*best-2], KEYS[3*best-1], KEYS[3*best]
  local b = 3 + (best-1)*5
  local tokens = ARGV[b+4]
  if ARGV[b+1] ~= '' or ARGV[b+2] ~= '' then
    redis.call('ZADD', log, now, uid .. '|' .. tokens)
    redis.call('INCRBYFLOAT', tok, tokens)
    redis.call('PEXPIRE', log, window * 1000 + 1000)
    redis.call('PEXPIRE', tok, window * 1000 + 1000)
  end
  if ARGV[b+3] ~= '' then
    redis.call('INCR', day)
    redis.call('PEXPIRE', day, tonumber(ARGV[b+5]) + 60000)
  end
end
return {best, frees, used}
"""

# KEYS log, tok; ARGV uid, actual tokens: the entry's estimate replaced by what was used
QUOTA_SETTLE_LUA = """
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local prefix = ARGV[1] .. '|'
for j = 1, #entries, 2 do
  if string.sub(entries[j], 1, #prefix) == prefix then
    local before = tonumber(string.sub(entries[j], #prefix + 1))
    redis.call('ZREM', KEYS[1], entries[j])
    redis.call('ZADD', KEYS[1], entries[j+1], prefix .. ARGV[2])
    redis.call('INCRBYFLOAT', KEYS[2], tonumber(ARGV[2]) - before)
    return 1
  end
end
return 0
"""

# Per ask i: KEYS log, tok, day; ARGV window. Returns per ask {count, tokens, today, oldest_in_s}.
QUOTA_READ_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local edge = now - tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS / 3 do
  local log, tok, day = KEYS[3*i-2], KEYS[3*i-1], KEYS[3*i]
  local live = redis.call('ZRANGEBYSCORE', log, '(' .. edge, '+inf', 'WITHSCORES')
  local sum = 0
  for j = 1, #live, 2 do sum = sum + tonumber(string.match(live[j], '|([^|]*)$')) end
  local oldest = 0
  if #live > 0 then oldest = tonumber(live[2]) + tonumber(ARGV[1]) - now end
  out[i] = {tostring(#live / 2), string.format('%.17g', sum), redis.call('GET', day) or '0',
            string.format('%.6f', oldest)}
end
return out
"""

_SHA = {lua: hashlib.sha1(lua.encode()).hexdigest()
        for lua in (LIMITS_LUA, QUOTA_TAKE_LUA, QUOTA_SETTLE_LUA, QUOTA_READ_LUA)}

POLICIES = ("open", "local", "closed")
_REPLAY_BATCH = 200     # counters per replay script: each well inside the timeout of a busy Redis


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
        self._node = os.urandom(4).hex()              # this process's part of a quota entry's uid
        self._uids = itertools.count(1)
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

    shared = True      # every replica and worker counts in the same Redis

    # -- the protocol ------------------------------------------------------------------

    async def take_bucket(self, key: str, amount: float, rate: float, burst: float) -> Taken:
        op = ("bucket", key, amount, rate, burst)
        try:
            refused, levels, _ = await self._limits("take", [op])
        except RedisUnavailable:
            return self._fallback_bucket(*op[1:])
        return refused[1] if refused else Taken(True, levels[0], 0.0)

    async def settle_bucket(self, key: str, amount: float, rate: float, burst: float) -> float:
        return (await self.apply_all([("bucket", key, amount, rate, burst)]))[0]

    async def take_counter(self, key: str, amount: float, limit: float | None, ttl_s: float) -> Taken:
        op = ("counter", key, amount, limit, ttl_s)
        try:
            refused, levels, _ = await self._limits("take", [op])
        except RedisUnavailable:
            return self._fallback_counter(*op[1:])
        return refused[1] if refused else Taken(True, levels[0], 0.0)

    async def add_counter(self, key: str, amount: float, ttl_s: float) -> float:
        return (await self.apply_all([("counter", key, amount, None, ttl_s)]))[0]

    async def get_counter(self, key: str) -> float:
        return (await self.get_counters([key]))[0]

    # -- batches (busbar.state.take_all / apply_all): one script, one round trip ---------

    async def take_all(self, ops: list[tuple], reads: list[str] = ()) -> tuple[tuple[int, Taken] | None, list[float]]:
        if not ops and not reads:
            return None, []
        try:
            refused, _, totals = await self._limits("take", ops, reads)
        except RedisUnavailable:
            return self._fallback_take_all(ops, reads)
        return refused, totals

    async def apply_all(self, ops: list[tuple]) -> list[float]:
        if not ops:
            return []
        try:
            return (await self._limits("apply", ops))[1]
        except RedisUnavailable:
            return self._fallback_apply(ops)

    async def get_counters(self, keys: list[str]) -> list[float]:
        if not keys:
            return []
        try:
            values = await self._call("MGET", *(self.prefix + ":" + key for key in keys))
        except RedisUnavailable:
            return self.local.counters_now(keys)
        return [float(value) if value is not None else 0.0 for value in values]

    async def _limits(self, mode: str, ops: list[tuple], reads: list[str] = ()):
        """LIMITS_LUA on `ops` (then `reads`): (refused (index, Taken) | None, levels, totals)."""
        prefix = self.prefix + ":"
        keys, args = [prefix + op[1] for op in ops], [mode, len(ops)]
        for kind, _, amount, a, b in ops:
            if kind == "bucket":
                args += ("b", amount, a, b)
            else:
                args += ("c", amount, "" if a is None else a, max(1, int(b * 1000)))
        keys += [prefix + key for key in reads]
        reply = await self._script_keys(LIMITS_LUA, keys, *args)
        if reply[0]:
            kind, _, amount, a, b = ops[reply[0] - 1]
            level = float(reply[1])
            if kind == "bucket":
                retry = bucket_retry_after(level, amount, a, b)
            else:
                retry = reply[2] / 1000 if reply[2] > 0 else math.inf
            return (reply[0] - 1, Taken(False, level, retry)), [], []
        return None, [float(v) for v in reply[1]], [float(v) for v in reply[2]]

    # -- upstream key quotas (one EVALSHA per request on a key with limits) -------------

    def _quota_keys(self, ask: QuotaAsk) -> list[str]:
        base = f"{self.prefix}:quota:{ask.name}"
        return [base + ":log", base + ":tok", f"{base}:day:{ask.day_end}"]

    async def take_quota(self, asks: list[QuotaAsk]) -> QuotaTaken | None:
        keys, args = [], [len(asks), f"{self._node}.{next(self._uids)}", int(QUOTA_WINDOW)]
        for ask in asks:
            keys += self._quota_keys(ask)
            args += [_opt(ask.rpm), _opt(ask.tpm), _opt(ask.rpd), int(ask.tokens), max(1, int(ask.day_left_s * 1000))]
        try:
            best, frees, used = await self._script_keys(QUOTA_TAKE_LUA, keys, *args)
        except RedisUnavailable:
            self.fallback_ops_total += 1
            return None      # degraded: the router's per-replica counts stand (logged once per outage)
        return QuotaTaken(best - 1 if best else None, args[1], tuple(float(f) for f in frees),
                          tuple((float(a), float(b), float(c)) for a, b, c in used))

    async def settle_quota(self, ask: QuotaAsk, uid: str, tokens: int) -> None:
        try:
            await self._script_keys(QUOTA_SETTLE_LUA, self._quota_keys(ask)[:2], uid, int(tokens))
        except RedisUnavailable:
            self.fallback_ops_total += 1

    async def read_quota(self, asks: list[QuotaAsk]) -> list[tuple[float, float, float, float]] | None:
        keys = [k for ask in asks for k in self._quota_keys(ask)]
        if not keys:
            return []
        try:
            rows = await self._script_keys(QUOTA_READ_LUA, keys, int(QUOTA_WINDOW))
        except RedisUnavailable:
            return None
        return [tuple(float(v) for v in row) for row in rows]

    async def aclose(self) -> None:
        while self._idle:
            await self._idle.pop().aclose()

    # -- degraded answers (the policy per op; a batch is the generic form over them) -----

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

    def _fallback_take_all(self, ops: list[tuple], reads: list[str]):
        for i, op in enumerate(ops):
            taken = (self._fallback_bucket if op[0] == "bucket" else self._fallback_counter)(*op[1:])
            if not taken.ok:
                self._fallback_apply([negate(o) for o in reversed(ops[:i])])
                return (i, taken), []
        return None, self.local.counters_now(reads) if reads else []

    def _fallback_apply(self, ops: list[tuple]) -> list[float]:
        for kind, key, amount, _, ttl_s in ops:
            if kind == "counter":
                self._remember(key, amount, ttl_s)
        return self.local.apply_now(ops)

    def _remember(self, key: str, amount: float, ttl_s: float) -> None:
        pending, _ = self._pending.get(key, (0.0, 0.0))
        self._pending[key] = (pending + amount, ttl_s)

    # -- talking to Redis --------------------------------------------------------------

    async def _script_keys(self, lua: str, keys: list[str], *args, timeout_s: float | None = None):
        try:
            return await self._call("EVALSHA", _SHA[lua], len(keys), *keys, *args, timeout_s=timeout_s)
        except RespError as error:
            if not str(error).startswith("NOSCRIPT"):   # flushed or restarted: load it again
                raise
            return await self._call("EVAL", lua, len(keys), *keys, *args, timeout_s=timeout_s)

    async def run_script(self, lua: str, keys: tuple[str, ...], *args, timeout_s: float | None = None):
        """A Lua script of another user of the shared Redis (the response
        cache) on `keys` (prefixed here); raises RedisUnavailable while it is
        down.  `timeout_s`: a longer bound than the backend's for calls that
        move more data (the semantic cache's vectors) or run off the request
        path (clearing a pool)."""
        if lua not in _SHA:
            _SHA[lua] = hashlib.sha1(lua.encode()).hexdigest()
        return await self._script_keys(lua, [self.prefix + ":" + key for key in keys], *args, timeout_s=timeout_s)

    async def command(self, *args, timeout_s: float | None = None):
        """One Redis command on the backend's connections (other stores on the
        same Redis: minted client keys).  Raises RedisUnavailable like a take
        would see it; `timeout_s` for calls off the request path."""
        return await self._call(*args, timeout_s=timeout_s)

    async def _call(self, *args, timeout_s: float | None = None):
        now = self._now()
        if self._down_since is not None and now < self._next_try:
            raise RedisUnavailable
        conn = None
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            with trio.fail_after(wait if self._idle else max(wait, self.connect_timeout_s)):
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
            log.warning("state: redis %s:%s unavailable (%s); serving from local state, limits %s, "
                        "upstream key quotas counted per replica until it returns", self.host, self.port,
                        type(error).__name__ or error,
                        {"open": "fail open", "local": "per replica", "closed": "fail closed"}[self.on_unavailable])

    async def _came_back(self) -> None:
        outage = self._now() - (self._down_since or self._now())
        self._down_since = None
        pending, self._pending = self._pending, {}
        ops = [("counter", key, amount, None, ttl_s) for key, (amount, ttl_s) in pending.items()]
        reconciled = 0
        for i in range(0, len(ops), _REPLAY_BATCH):       # a script per batch of counters the outage moved
            batch = ops[i:i + _REPLAY_BATCH]
            try:
                await self._limits("apply", batch)
                reconciled += len(batch)
            except (RedisUnavailable, RespError):
                for _, key, amount, _, ttl_s in batch:
                    self._remember(key, amount, ttl_s)
        log.warning("state: redis %s:%s back after %.1f s; %d counters reconciled",
                    self.host, self.port, outage, reconciled)



def _opt(limit: int | None) -> str | int:
    return "" if limit is None else int(limit)
