"""Where cached answers live: this process (the default) or Redis.

`MemoryStore` is an LRU with a TTL per entry and an injected clock, no I/O:
the entry objects themselves are kept (a hit decodes nothing).  `RedisStore`
keeps the encoded entry under the state backend's prefix with Redis' own
expiry, and an LRU index per pool (a sorted set scored by last use) that
trims the pool to `max_entries`; each get and put is one Lua script, so
replicas sharing the Redis share hits.  While Redis is unavailable a lookup
is a miss and a store is skipped: the cache never fails a request.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from busbar.cache.entry import Entry, decode, encode
from busbar.state.redis import RedisUnavailable
from busbar.state.resp import RespError


class MemoryStore:
    """LRU + TTL over an OrderedDict (oldest use first).  `now`: seconds."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self._now = now
        self._entries: OrderedDict[str, tuple[float, int, Entry]] = OrderedDict()   # key -> (expires, bytes, entry)
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get_now(self, key: str) -> Entry | None:
        item = self._entries.get(key)
        if item is None:
            return None
        if item[0] <= self._now():
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return item[2]

    def put_now(self, key: str, entry: Entry, ttl: float, max_entries: int, size: int) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self._now() + ttl, size, entry)
        self.bytes += size
        while len(self._entries) > max_entries:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        self.bytes -= self._entries.pop(key)[1]

    def sweep(self) -> int:
        """Drop expired entries (lookups drop them lazily; this bounds the
        memory of entries nobody asks for again).  Returns how many."""
        now = self._now()
        dead = [k for k, (expires, _, _) in self._entries.items() if expires <= now]
        for key in dead:
            self._drop(key)
        return len(dead)

    # the store protocol (awaited by the cache; nothing to wait for here)
    async def get(self, key: str) -> Entry | None:
        return self.get_now(key)

    async def put(self, key: str, entry: Entry, ttl: float, max_entries: int) -> int:
        size = len(encode(entry))
        self.put_now(key, entry, ttl, max_entries, size)
        return size


# KEYS[1] entry, KEYS[2] the pool's LRU index; ARGV none
GET_LUA = """
local v = redis.call('GET', KEYS[1])
if v then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], 'XX', tonumber(t[1]) + tonumber(t[2]) / 1000000, KEYS[1])
end
return v
"""

# KEYS[1] entry, KEYS[2] index; ARGV value, ttl_ms, max_entries
PUT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl / 1000)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  local victims = redis.call('ZRANGE', KEYS[2], 0, over - 1)
  redis.call('DEL', unpack(victims))
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
redis.call('PEXPIRE', KEYS[2], ttl)
return over
"""


class RedisStore:
    """The store over the app's RedisState (its connections, prefix, timeout
    and outage handling)."""

    def __init__(self, state, pool: str):
        self.state = state
        self.index = f"cache:{pool}:lru"
        self.prefix = f"cache:{pool}:"

    async def get(self, key: str) -> Entry | None:
        try:
            data = await self.state.run_script(GET_LUA, (self.prefix + key, self.index))
        except (RedisUnavailable, RespError):
            return None
        return decode(data) if data is not None else None

    async def put(self, key: str, entry: Entry, ttl: float, max_entries: int) -> int:
        data = encode(entry)
        try:
            await self.state.run_script(PUT_LUA, (self.prefix + key, self.index), data,
                                        max(1, int(ttl * 1000)), max_entries)
        except (RedisUnavailable, RespError):
            return 0
        return len(data)
