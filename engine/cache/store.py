"""Where cached answers live: this process (the default) or Redis.

`MemoryStore` is an LRU with a TTL per entry and an injected clock, no I/O
(`busbar.lru`): the entry objects themselves are kept (a hit decodes nothing).
`RedisStore` keeps the encoded entry under the state backend's prefix with Redis' own
expiry, and an LRU index per pool (a sorted set scored by last use) that
trims the pool to `max_entries` and, with `max_bytes`, to that many bytes of
encoded entries (a hash of each entry's size and a running total); each get
and put is one Lua script, so replicas sharing the Redis share hits.
`clear` empties a pool (the admin API's invalidation).  While Redis is unavailable a lookup
is a miss and a store is skipped: the cache never fails a request.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from busbar.cache.entry import Entry, decode, encode
from busbar.lru import BoundedTTLMap
from busbar.state.redis import RedisUnavailable
from busbar.state.resp import RespError


class MemoryStore:
    """LRU + TTL (`busbar.lru`: a hit is a use; the pool's bounds come with each put).
    `now`: seconds."""

    def __init__(self, now: Callable[[], float] = time.monotonic):
        self._lru = BoundedTTLMap(max_entries=0, ttl=0.0, now=now, get_renews_order=True)
        self._entries = self._lru.entries        # key -> (expires, bytes, entry), oldest use first (read only)
        self.get_now = self._lru.get              # key -> Entry | None; bound here: no extra call per lookup

    @property
    def dropped(self) -> Callable[[str], None] | None:
        """Told of every key that leaves (the semantic index)."""
        return self._lru.dropped

    @dropped.setter
    def dropped(self, told: Callable[[str], None] | None) -> None:
        self._lru.dropped = told

    @property
    def bytes(self) -> int:
        return self._lru.bytes

    def __len__(self) -> int:
        return len(self._lru)

    def put_now(self, key: str, entry: Entry, ttl: float, max_entries: int, size: int, max_bytes: int = 0) -> bool:
        """Keep `entry` (`size`: its encoded bytes), then drop the least
        recently used past `max_entries` or `max_bytes` (0: no byte bound).
        False: larger than `max_bytes` on its own, not kept."""
        if max_bytes and size > max_bytes:
            return False
        lru = self._lru
        lru.max_entries, lru.max_bytes = max_entries, max_bytes or math.inf   # as of this put: a reload may change them
        lru.put(key, entry, size, ttl)
        return True

    def clear(self) -> int:
        """Drop every entry; returns how many there were."""
        return self._lru.clear()

    def sweep(self) -> int:
        """Drop expired entries (lookups drop them lazily; this bounds the
        memory of entries nobody asks for again).  Returns how many."""
        return self._lru.sweep()

    # the store protocol (awaited by the cache; nothing to wait for here)
    async def get(self, key: str) -> Entry | None:
        return self.get_now(key)

    async def put(self, key: str, entry: Entry, ttl: float, max_entries: int, max_bytes: int = 0) -> int:
        size = len(encode(entry))
        return size if self.put_now(key, entry, ttl, max_entries, size, max_bytes) else 0


# KEYS[1] entry, KEYS[2] the pool's LRU index; ARGV none
GET_LUA = """
local v = redis.call('GET', KEYS[1])
if v then
  local t = redis.call('TIME')
  redis.call('ZADD', KEYS[2], 'XX', tonumber(t[1]) + tonumber(t[2]) / 1000000, KEYS[1])
end
return v
"""

# KEYS[1] entry, KEYS[2] index, KEYS[3] sizes (hash), KEYS[4] total bytes; ARGV value, ttl_ms,
# max_entries, max_bytes (0: none).  Returns 1 when stored, 0 when larger than max_bytes alone.
PUT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local ttl = tonumber(ARGV[2])
local size = string.len(ARGV[1])
local max_bytes = tonumber(ARGV[4])
if max_bytes > 0 and size > max_bytes then return 0 end
local function forget(k)
  local s = redis.call('HGET', KEYS[3], k)
  if s then
    redis.call('HDEL', KEYS[3], k)
    redis.call('DECRBY', KEYS[4], tonumber(s))
  end
end
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - ttl / 1000)
for _, k in ipairs(dead) do forget(k) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl / 1000)
forget(KEYS[1])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
redis.call('ZADD', KEYS[2], now, KEYS[1])
redis.call('HSET', KEYS[3], KEYS[1], size)
local total = redis.call('INCRBY', KEYS[4], size)
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
while over > 0 or (max_bytes > 0 and total > max_bytes) do
  local victim = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not victim or victim == KEYS[1] then break end
  redis.call('DEL', victim)
  redis.call('ZREM', KEYS[2], victim)
  local s = redis.call('HGET', KEYS[3], victim)
  if s then
    redis.call('HDEL', KEYS[3], victim)
    total = redis.call('DECRBY', KEYS[4], tonumber(s))
  end
  over = over - 1
end
for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""

# KEYS[1] index, KEYS[2] sizes, KEYS[3] total, KEYS[4] the vector feed: every entry of the pool
CLEAR_LUA = """
local keys = redis.call('ZRANGE', KEYS[1], 0, -1)
for i = 1, #keys, 1000 do
  redis.call('DEL', unpack(keys, i, math.min(i + 999, #keys)))
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return #keys
"""


class RedisStore:
    """The store over the app's RedisState (its connections, prefix, timeout
    and outage handling)."""

    def __init__(self, state, pool: str):
        self.state = state
        self.index = f"cache:{pool}:lru"
        self.sizes = f"cache:{pool}:sizes"
        self.total = f"cache:{pool}:bytes"
        self.prefix = f"cache:{pool}:"
        self.feed = f"cache:{pool}:vectors"

    async def get(self, key: str) -> Entry | None:
        try:
            data = await self.state.run_script(GET_LUA, (self.prefix + key, self.index))
        except (RedisUnavailable, RespError):
            return None
        return decode(data) if data is not None else None

    async def put(self, key: str, entry: Entry, ttl: float, max_entries: int, max_bytes: int = 0) -> int:
        data = encode(entry)
        try:
            stored = await self.state.run_script(PUT_LUA, (self.prefix + key, self.index, self.sizes, self.total),
                                                 data, max(1, int(ttl * 1000)), max_entries, max_bytes)
        except (RedisUnavailable, RespError):
            return 0
        return len(data) if stored else 0

    async def clear(self) -> int | None:
        """Drop every entry of the pool (all replicas see it); None while Redis is unavailable."""
        try:
            return await self.state.run_script(CLEAR_LUA, (self.index, self.sizes, self.total, self.feed),
                                               timeout_s=5.0)
        except (RedisUnavailable, RespError):
            return None


# KEYS[1] the pool's vector feed (a stream); ARGV key, partition, vector bytes, ttl_ms, max_entries
FEED_PUSH_LUA = """
redis.call('XADD', KEYS[1], 'MAXLEN', '~', tonumber(ARGV[5]), '*', 'k', ARGV[1], 'p', ARGV[2], 'v', ARGV[3])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return 1
"""

# KEYS[1] the feed; ARGV the first id to read ('-' or '(<last id>'), how many
FEED_PULL_LUA = """
return redis.call('XRANGE', KEYS[1], ARGV[1], '+', 'COUNT', tonumber(ARGV[2]))
"""

FEED_BATCH = 64         # feed records read per lookup (a new replica catches up over its first lookups)
FEED_TIMEOUT = 0.25     # seconds: a feed call moves vectors (up to 64 x 6 KiB), more than the backend's usual call


class VectorFeed:
    """The semantic cache's embeddings in Redis, for the other replicas: every
    fill appends (entry key, partition, float32 vector) to the pool's stream
    (trimmed to about `max_entries`, expiring with the entries' TTL); each
    replica reads what is new since its last id before it searches and adds it
    to its own index.  The entries themselves are the RedisStore's."""

    def __init__(self, state, pool: str):
        self.state = state
        self.stream = f"cache:{pool}:vectors"

    async def push(self, key: str, partition: str, vector, ttl: float, max_entries: int) -> bool:
        import numpy as np
        data = np.asarray(vector, dtype="<f4").tobytes()
        try:
            await self.state.run_script(FEED_PUSH_LUA, (self.stream,), key, partition, data,
                                        max(1, int(ttl * 1000)), max_entries, timeout_s=FEED_TIMEOUT)
        except (RedisUnavailable, RespError):
            return False
        return True

    async def pull(self, last: bytes | None, count: int = FEED_BATCH) -> tuple[bytes | None, list]:
        """(the last id read, [(key, partition, vector)]) since `last` (None: from the start)."""
        import numpy as np
        try:
            records = await self.state.run_script(FEED_PULL_LUA, (self.stream,),
                                                  b"-" if last is None else b"(" + last, count,
                                                  timeout_s=FEED_TIMEOUT)
        except (RedisUnavailable, RespError):
            return None, []
        rows = []
        for record_id, fields in records or ():
            last = record_id
            values = dict(zip(fields[::2], fields[1::2]))
            try:
                rows.append((values[b"k"].decode(), values[b"p"].decode(), np.frombuffer(values[b"v"], dtype="<f4")))
            except (KeyError, ValueError, UnicodeDecodeError):
                continue
        return last, rows
