"""The response cache: answers to repeated requests without an upstream call.

Opt-in per pool (`cache:` in the pool's config, ADR 0016).  The driver asks
it once per request, in `Exchange._dispatch` before the plan's first step:

* `decide(pool, request_headers, ir_request, scope)` -> a `Lookup` (the key
  and what to do: look up and store, only store, or nothing), or None when
  the pool has no cache;
* `get(lookup)` -> an `Entry` on a hit (replayed by the exchange in the
  client's protocol, buffered or as a stream);
* `put(lookup, response, member)` after a miss was answered and settled.

A pool in `semantic` mode (ADR 0020) goes one step further on an exact miss:
the exchange embeds the request's last user text through the pool's
`embed_pool` (a pool of this same gateway, `Gateway.embed`) and asks
`nearest(lookup, vector)`: the closest cached prompt of the same partition
(`busbar.cache.semantic`), served when its cosine reaches `threshold`.  An
embedding that fails or takes longer than `embed_timeout_ms` is a miss.

The key is the canonical form of the request's IR (`busbar.cache.canonical`:
the same question through any client protocol), the pool, and the client's
gateway key id (`*` when the pool says `shared: true`).  Requests asking for
variety (temperature above the pool's `max_temperature`, default 0) are not
cached; an absent temperature is the pool's default and is cached.

Entries live in this process (`MemoryStore`, LRU + TTL) or, when the app's
state backend is Redis, in Redis (`RedisStore`) so replicas share hits.  The
stores and counters are kept by `Caches`, which the app holds across config
reloads like its state backend.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from busbar import ir
from busbar.cache.canonical import canonical, digest, semantic_split
from busbar.cache.entry import STORABLE, Entry
from busbar.cache.store import MemoryStore, RedisStore, VectorFeed

# request header values that skip the cache: `bypass` (or Cache-Control:
# no-store) neither reads nor stores, `refresh` (or no-cache) stores a fresh answer
HEADER = b"x-busbar-cache"
LOOKUP, REFRESH, BYPASS, SKIP = "lookup", "refresh", "bypass", "skip"
# a semantic partition scanned in a worker thread from this many floats (rows x
# dimensions; ~1 ms of matrix-vector product on one core, ADR 0020)
OFFLOAD_FLOATS = 4_000_000


@dataclass(frozen=True, slots=True)
class CachePolicy:
    pool: str
    mode: str = "exact"
    ttl: float = 3600.0
    max_entries: int = 100_000
    shared: bool = False
    max_temperature: float = 0.0
    replay_delay_ms: float = 0.0
    embed_pool: str | None = None
    threshold: float = 0.95
    embed_timeout_ms: float = 1000.0
    max_bytes: int = 0            # bytes of encoded entries kept for the pool (0: no bound but max_entries)

    @classmethod
    def from_config(cls, pool: str, spec: dict) -> "CachePolicy":
        return cls(pool, spec.get("mode", "exact"), float(spec.get("ttl", 3600)), int(spec.get("max_entries", 100_000)),
                   bool(spec.get("shared", False)), float(spec.get("max_temperature", 0.0)),
                   float(spec.get("replay_delay_ms", 0.0)), spec.get("embed_pool"), float(spec.get("threshold", 0.95)),
                   float(spec.get("embed_timeout_ms", 1000.0)), int(spec.get("max_bytes", 0)))

    @property
    def semantic(self) -> bool:
        return self.mode == "semantic" and bool(self.embed_pool)


@dataclass(slots=True)
class PoolStats:
    """One pool's cache counters (for /metrics)."""
    hits: int = 0
    misses: int = 0
    bypassed: int = 0
    skipped: int = 0              # not cacheable: temperature, an incomplete answer
    stored: int = 0
    hit_bytes: int = 0            # bytes of answers served from the cache
    stored_bytes: int = 0
    saved_input_tokens: int = 0
    saved_output_tokens: int = 0
    saved_usd: float = 0.0
    # semantic mode: exact misses looked up by embedding (hit / miss), and
    # those the embedding pool could not embed in time (unavailable: a miss)
    semantic_hits: int = 0
    semantic_misses: int = 0
    semantic_unavailable: int = 0
    embed_seconds: float = 0.0    # summed time of the embedding calls (count: the three above)
    search_seconds: float = 0.0   # summed time of the index searches (count: hits + misses)


@dataclass(slots=True)
class Lookup:
    """One request's cache decision, carried from the lookup to the store."""
    policy: CachePolicy
    key: str
    action: str                   # LOOKUP (read, store a miss) | REFRESH (store) | BYPASS | SKIP (neither)
    status: str = "miss"          # what the x-busbar-cache response header says
    partition: str | None = None  # semantic: the digest a match must share (None: exact only)
    text: str | None = None       # semantic: the last user text, embedded
    vector: object = None         # semantic: its unit embedding, stored with the answer
    similarity: float | None = None   # a semantic hit's cosine


@dataclass
class Caches:
    """The stores and counters of every pool, kept across config reloads."""
    now: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    memory: dict[str, MemoryStore] = field(default_factory=dict)
    stats: dict[str, PoolStats] = field(default_factory=dict)
    indexes: dict = field(default_factory=dict)          # pool -> busbar.cache.semantic.SemanticIndex
    feed_ids: dict[str, bytes] = field(default_factory=dict)   # pool -> last Redis vector-feed id read

    def semantic_index(self, pool: str, max_entries: int):
        from busbar.cache.semantic import SemanticIndex
        index = self.indexes.get(pool)
        if index is None:
            index = self.indexes[pool] = SemanticIndex(max_entries)
        index.max_entries = max_entries
        return index

    def memory_store(self, pool: str) -> MemoryStore:
        store = self.memory.get(pool)
        if store is None:
            store = self.memory[pool] = MemoryStore(self.now)
        return store

    def pool_stats(self, pool: str) -> PoolStats:
        stats = self.stats.get(pool)
        if stats is None:
            stats = self.stats[pool] = PoolStats()
        return stats


class ResponseCache:
    """The cache as one gateway (one config) sees it."""

    def __init__(self, policies: dict[str, CachePolicy], caches: Caches, state=None):
        self.policies = policies
        self.caches = caches
        shared_redis = state is not None and state.status().get("backend") == "redis"
        self.stores = {pool: RedisStore(state, pool) if shared_redis else caches.memory_store(pool)
                       for pool in policies}
        self.stats = {pool: caches.pool_stats(pool) for pool in policies}
        # semantic pools: the prompt index (kept across reloads); in Redis mode
        # the vector feed other replicas' fills arrive by
        self.indexes = {pool: caches.semantic_index(pool, p.max_entries) for pool, p in policies.items() if p.semantic}
        self.feeds = {pool: VectorFeed(state, pool) for pool in self.indexes} if shared_redis else {}
        for pool, index in self.indexes.items():
            store = self.stores[pool]
            if isinstance(store, MemoryStore):
                store.dropped = index.discard      # an evicted or expired entry leaves the index too

    @classmethod
    def from_config(cls, pools: dict, caches: Caches | None = None, state=None) -> "ResponseCache":
        policies = {name: CachePolicy.from_config(name, pool["cache"]) for name, pool in pools.items()
                    if pool.get("cache")}
        return cls(policies, caches or Caches(), state)

    def decide(self, pool: str, headers, request: ir.Request | None, scope: str,
               varying: tuple[bytes, ...] = ()) -> Lookup | None:
        """This request's lookup (None when the pool keeps no cache).  Its
        `action` is `lookup`, `refresh` (store only), or `bypass` / `skip`
        (neither: asked by a header; too much temperature, or a request the
        IR cannot hold, `request` None).  `varying`: the names of the client
        protocol's request headers that change the answer (their values join
        the key)."""
        policy = self.policies.get(pool)
        if policy is None:
            return None
        action = _requested(headers)
        stats = self.stats[pool]
        if action == BYPASS:
            stats.bypassed += 1
            return Lookup(policy, "", BYPASS, BYPASS)
        if request is None or (request.temperature is not None and request.temperature > policy.max_temperature):
            stats.skipped += 1
            return Lookup(policy, "", SKIP, SKIP)
        vary = b"".join(b"%s:%s\0" % (k, v.strip()) for k, v in headers if k in varying) if varying else b""
        where = pool.encode() + b"\0" + ("*" if policy.shared else scope).encode() + b"\0" + vary
        lookup = Lookup(policy, digest(where + canonical(request)), action, "miss" if action == LOOKUP else REFRESH)
        if policy.semantic:
            split = semantic_split(request)
            if split is not None:
                # the embedding pool is part of it: vectors of two models are never compared
                lookup.partition = digest(where + policy.embed_pool.encode() + b"\0" + split[0].encode())
                lookup.text = split[1]
        return lookup

    async def get(self, lookup: Lookup) -> Entry | None:
        """The exact entry; a miss of a semantic lookup is counted by `nearest`."""
        if lookup.action != LOOKUP:
            return None
        entry = await self.stores[lookup.policy.pool].get(lookup.key)
        stats = self.stats[lookup.policy.pool]
        if entry is None:
            if lookup.text is None:
                stats.misses += 1
            return None
        lookup.status = "hit"
        stats.hits += 1
        return entry

    async def nearest(self, lookup: Lookup, vector, embed_seconds: float = 0.0) -> Entry | None:
        """After an exact miss of a semantic lookup: the entry of the nearest
        cached prompt of the lookup's partition when its cosine reaches the
        threshold.  `vector`: the prompt's embedding, None when the embedding
        pool failed or timed out (a miss).  A refresh only keeps the vector."""
        from busbar.cache.semantic import unit
        policy = lookup.policy
        pool = policy.pool
        stats = self.stats[pool]
        stats.embed_seconds += embed_seconds
        q = lookup.vector = unit(vector) if vector is not None else None
        if q is None:
            if lookup.action == LOOKUP:
                stats.semantic_unavailable += 1
                stats.misses += 1
            return None
        index = self.indexes[pool]
        t0 = time.perf_counter()
        await self._pull(pool, index)
        if lookup.action != LOOKUP:
            return None
        entry = None
        for _ in range(3):          # a candidate whose entry expired is forgotten and the next one tried
            if index.size(lookup.partition) >= OFFLOAD_FLOATS:
                import trio         # a large partition is scanned off the event loop
                best = await trio.to_thread.run_sync(index.scan, lookup.partition, q)
            else:
                best = index.scan(lookup.partition, q)
            found = index.confirm(lookup.partition, best[0], q, policy.threshold) \
                if best is not None and best[1] >= policy.threshold else None
            if found is None:
                break
            entry = await self.stores[pool].get(found[0])
            if entry is not None:
                lookup.similarity = found[1]
                break
            index.discard(found[0])
        stats.search_seconds += time.perf_counter() - t0
        if entry is None:
            stats.semantic_misses += 1
            stats.misses += 1
            return None
        lookup.status = "hit"
        stats.semantic_hits += 1
        stats.hits += 1
        return entry

    async def _pull(self, pool: str, index) -> None:
        """Redis mode: index what other replicas stored since the last look."""
        feed = self.feeds.get(pool)
        if feed is None:
            return
        last, rows = await feed.pull(self.caches.feed_ids.get(pool))
        if last is not None:
            self.caches.feed_ids[pool] = last
        for key, partition, vector in rows:
            index.add(partition, key, vector)

    def count_hit(self, lookup: Lookup, entry: Entry, nbytes: int, price) -> None:
        """What a hit saved: the upstream's tokens and, with the answering
        member's `price`, its spend."""
        stats = self.stats[lookup.policy.pool]
        usage = entry.response.usage
        stats.hit_bytes += nbytes
        stats.saved_input_tokens += usage.input_tokens
        stats.saved_output_tokens += usage.output_tokens
        if price is not None:
            stats.saved_usd += price.cost(usage)

    async def put(self, lookup: Lookup, response: ir.Response | None, member: str) -> bool:
        """Store an answered miss; an incomplete or unfinished answer is not kept."""
        stats = self.stats[lookup.policy.pool]
        if lookup.action not in (LOOKUP, REFRESH):
            return False
        if response is None or response.stop_reason not in STORABLE:
            stats.skipped += 1
            return False
        policy = lookup.policy
        size = await self.stores[policy.pool].put(lookup.key, Entry(response, member, self.caches.wall()),
                                                  policy.ttl, policy.max_entries, policy.max_bytes)
        if size:
            stats.stored += 1
            stats.stored_bytes += size
            if lookup.vector is not None and lookup.partition is not None:
                self.indexes[policy.pool].add(lookup.partition, lookup.key, lookup.vector)
                feed = self.feeds.get(policy.pool)
                if feed is not None:
                    await feed.push(lookup.key, lookup.partition, lookup.vector, policy.ttl, policy.max_entries)
        return bool(size)

    async def clear(self, pool: str | None = None) -> dict[str, int | None]:
        """Invalidate: drop every entry of `pool` (None: of every cached pool)
        and its semantic index.  Per pool, how many entries went (None: Redis
        is unavailable and nothing was dropped there).  In Redis mode every
        replica loses them at once; the other replicas' indexes forget their
        vectors as lookups find the entries gone."""
        out: dict[str, int | None] = {}
        for name in [pool] if pool is not None else list(self.policies):
            store = self.stores[name]
            out[name] = store.clear() if isinstance(store, MemoryStore) else await store.clear()
            index = self.indexes.get(name)
            if index is not None:
                index.clear()
        return out

    def bytes_held(self, pool: str) -> int | None:
        """Encoded bytes held in this process (None: they are in Redis)."""
        store = self.stores.get(pool)
        return store.bytes if isinstance(store, MemoryStore) else None

    def entries(self, pool: str) -> int | None:
        """Entries held in this process (None: they are in Redis)."""
        store = self.stores.get(pool)
        return len(store) if isinstance(store, MemoryStore) else None


def _requested(headers) -> str:
    """LOOKUP, REFRESH or BYPASS, as the request headers ask."""
    for name, value in headers:
        if name == HEADER:
            value = value.strip().lower()
            if value == b"bypass":
                return BYPASS
            if value == b"refresh":
                return REFRESH
        elif name == b"cache-control":
            directives = {d.strip() for d in value.lower().split(b",")}
            if b"no-store" in directives:
                return BYPASS
            if b"no-cache" in directives:
                return REFRESH
    return LOOKUP


__all__ = ["CachePolicy", "Caches", "Lookup", "ResponseCache", "PoolStats", "Entry", "HEADER"]
