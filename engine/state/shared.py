"""Entries a replica keeps for a client's next turn, shared through the cluster backend.

The item store (`busbar.item_store`: Responses output items by the ids the gateway minted)
and the reasoning store (`busbar.reasoning_store`: signed reasoning by tool-call id) are
per process; with Redis configured they are also written here, so the replica a client's
next turn reaches can resolve what another one minted.  Each value is bytes under
`<prefix>:<kind>:<key>` with Redis' own expiry (the store's TTL); a put of an answer's
entries is one script (one round trip), a lookup one MGET.

Only turns that need an entry the replica does not hold wait on Redis (references,
tool-result turns), never longer than the backend's timeout; while Redis is unavailable
both stores serve from this replica's own entries (logged once per outage).

A deleted response (ADR 0025) is one script too: its turn and items become tombstones, a
counter of deletions goes up, and the deletion is PUBLISHed on `<prefix>:items:deleted`, so
every replica drops its own copies at once (`ResponseDeletions`, on the cluster's subscribed
connection), not only the one that later looks the id up.  A deletion this replica cannot
publish (Redis unreachable from it) is kept in a bounded set (`PendingDeletions`) and replayed,
the same script, as soon as Redis answers again (the resubscribe, or a retry each second).
"""
from __future__ import annotations

import logging
import math
from typing import NamedTuple

import orjson
import trio

from busbar.item_store import DELETED, key_of, turn_key
from busbar.state.redis import RedisUnavailable
from busbar.state.resp import RespError

log = logging.getLogger("busbar.state")

# KEYS the entries, then the ones whose expiry starts over; ARGV the entries' values, then the ttl in ms
PUT_LUA = """
local ttl = ARGV[#ARGV]
local n = #ARGV - 1
for i = 1, n do redis.call('SET', KEYS[i], ARGV[i], 'PX', ttl) end
for i = n + 1, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return n
"""

# PUT_LUA guarded by one key's value (a conversation's header, ADR 0030): KEYS the guard, the
# entries, then the ones whose expiry starts over; ARGV '1' and the value the guard must still
# hold ('0' and '': it must be absent), the entries' values, the ttl in ms.  0: the guard had
# changed, nothing written.
PUT_IF_LUA = """
local cur = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if cur ~= ARGV[2] then return 0 end
elseif cur then return 0 end
local ttl = ARGV[#ARGV]
local n = #ARGV - 3
for i = 1, n do redis.call('SET', KEYS[i + 1], ARGV[i + 2], 'PX', ttl) end
for i = n + 2, #KEYS do redis.call('PEXPIRE', KEYS[i], ttl) end
return 1
"""

# KEYS the deletions counter, then the entries marked gone (a deleted response's turn and its
# items: a mark, not a DEL, so a replica checking a copy it doubts tells "deleted" from "never
# shared"); ARGV the mark, the ttl in ms, the channel, the deletion (`deletion_message`).  Every
# replica hears it at once as `<counter>\n<deletion>` (`ResponseDeletions`).
DROP_LUA = """
local n = redis.call('INCR', KEYS[1])
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2]) end
redis.call('PUBLISH', ARGV[3], n .. '\\n' .. ARGV[4])
return n
"""
DELETIONS = "deletions"              # the counter's name under `<prefix>:<kind>:`
MAX_EPOCH_DIGITS = 19                # the counter is a Redis integer (int64)
MAX_PENDING = 10_000                 # deletions kept unpublished at once (a turn's keys and ids: ~0.5 KB each)
REPLAY_EVERY_S = 1.0                 # while some are pending, retried this often too (Redis back, still subscribed)


class Deletion(NamedTuple):
    """A response deleted through some replica, as published: its scope, id and output items."""
    epoch: int                       # the deletions counter after this one
    scope: str
    response_id: str
    item_ids: tuple[str, ...]

    def keys(self) -> tuple[str, ...]:
        """The item store's keys it removes: the turn, then its items."""
        return (turn_key(self.scope, self.response_id),) + tuple(key_of(self.scope, i) for i in self.item_ids)


def deletions_channel(prefix: str, kind: str = "items") -> str:
    return f"{prefix}:{kind}:deleted"


def deletion_message(scope: str, response_id: str, item_ids) -> bytes:
    """What the drop script publishes after the counter: ids only (a key id, the response's
    and its items'), never a secret or a turn's content."""
    return orjson.dumps({"scope": scope, "response": response_id, "items": list(item_ids)})


def read_deletion(data) -> Deletion | None:
    """A message heard on the deletions channel; None for anything else (another version's
    format, garbage): it is ignored, never raised out of the subscriber."""
    if not isinstance(data, bytes):
        return None
    head, sep, body = data.partition(b"\n")
    if not sep or not head.isdigit() or len(head) > MAX_EPOCH_DIGITS:
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    scope, response_id, items = obj.get("scope"), obj.get("response"), obj.get("items", [])
    if not (isinstance(scope, str) and scope and isinstance(response_id, str) and response_id
            and isinstance(items, list) and all(isinstance(i, str) and i for i in items)):
        return None
    return Deletion(int(head), scope, response_id, tuple(items))


class SharedEntries:
    """One kind of entry (`items`, `reasoning`) over the app's RedisState (its
    connections, prefix, timeout and outage handling)."""

    def __init__(self, state, kind: str):
        self.state = state
        self.kind = kind
        self._base = f"{kind}:"
        self.down = False
        self.fetched = self.missed = self.put_total = 0     # for tests and admin

    async def get_many(self, keys: list[str]) -> dict[str, bytes]:
        """The values Redis holds for `keys` (absent ones left out); {} while it is down."""
        if not keys:
            return {}
        names = [self.state.prefix + ":" + self._base + key for key in keys]
        try:
            values = await self.state.command("MGET", *names)
        except (RedisUnavailable, RespError) as error:
            self._unavailable(error)
            return {}
        self._available()
        found = {key: value for key, value in zip(keys, values) if value is not None}
        self.fetched += len(found)
        self.missed += len(keys) - len(found)
        return found

    async def put_many(self, entries: list[tuple[str, bytes]], ttl_s: float, touch: tuple[str, ...] = ()) -> bool:
        """Write `entries` and start the expiry of the `touch` keys over (the turns of a
        chain a request continued), in one script."""
        if not entries and not touch:
            return True
        keys = tuple(self._base + key for key, _ in entries) + tuple(self._base + key for key in touch)
        try:
            await self.state.run_script(PUT_LUA, keys, *(value for _, value in entries), max(1, int(ttl_s * 1000)))
        except (RedisUnavailable, RespError) as error:
            self._unavailable(error)
            return False
        self._available()
        self.put_total += len(entries)
        return True

    async def put_many_if(self, guard: str, expected: bytes | None, entries: list[tuple[str, bytes]], ttl_s: float,
                          touch: tuple[str, ...] = ()) -> bool | None:
        """`put_many`, done only if `guard` still holds `expected` (None: is absent), in one
        script: True written, False the guard had changed (nothing written), None Redis
        unavailable."""
        keys = (self._base + guard,) + tuple(self._base + key for key, _ in entries) + \
            tuple(self._base + key for key in touch)
        try:
            done = await self.state.run_script(PUT_IF_LUA, keys, b"1" if expected is not None else b"0",
                                               expected or b"", *(value for _, value in entries),
                                               max(1, int(ttl_s * 1000)))
        except (RedisUnavailable, RespError) as error:
            self._unavailable(error)
            return None
        self._available()
        if done:
            self.put_total += len(entries)
        return bool(done)

    async def drop(self, keys: tuple[str, ...], mark: bytes, ttl_s: float, message: bytes) -> bool:
        """Replace each of `keys`' values by `mark` (for `ttl_s`), count one deletion and
        publish it (`message`, after the count) to every replica, in one script."""
        names = (self._base + DELETIONS,) + tuple(self._base + k for k in keys)
        try:
            await self.state.run_script(DROP_LUA, names, mark, max(1, int(ttl_s * 1000)),
                                        deletions_channel(self.state.prefix, self.kind), message)
        except (RedisUnavailable, RespError) as error:
            self._unavailable(error)
            return False
        self._available()
        return True

    def _unavailable(self, error: Exception) -> None:
        if not self.down:
            self.down = True
            log.warning("state: %s entries not shared (redis: %s); this replica serves its own until it "
                        "returns", self.kind, type(error).__name__)

    def _available(self) -> None:
        if self.down:
            self.down = False
            log.warning("state: %s entries shared through redis again", self.kind)


def shared_entries(state, kind: str) -> SharedEntries | None:
    """The shared entries of `kind` when the app's state backend is Redis, else None."""
    if state is None or state.status().get("backend") != "redis":
        return None
    return SharedEntries(state, kind)


class PendingDeletions:
    """Deletions this replica answered but could not publish (the drop script failed: Redis
    unreachable from it, or refusing), in the order they were made, to be replayed by the same
    script once it is back.  For the process's life (not across a restart), at most `limit`:
    when full, a new deletion is refused (the caller gets a 503 and keeps its response, here and
    everywhere) rather than one already answered being forgotten, so no deletion the gateway said
    it made is ever silently lost.  A response deleted twice is one entry.  Pure: the I/O is the
    caller's (`ResponseDeletions`)."""

    def __init__(self, limit: int = MAX_PENDING):
        self.limit = limit
        self._entries: dict[str, tuple[tuple[str, ...], bytes]] = {}     # turn key -> (keys, message)
        self.added = self.replayed = self.refused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, keys: tuple[str, ...], message: bytes) -> bool:
        """Keep one (its keys, the turn's first); False when full (refused, counted)."""
        if keys[0] not in self._entries and len(self._entries) >= self.limit:
            self.refused += 1
            return False
        if keys[0] not in self._entries:
            self.added += 1
        self._entries[keys[0]] = (keys, message)
        return True

    def due(self) -> list[tuple[tuple[str, ...], bytes]]:
        """What to replay, oldest first (a snapshot: adds meanwhile wait for the next round)."""
        return list(self._entries.values())

    def done(self, keys: tuple[str, ...]) -> None:
        """One replayed (published): no longer pending."""
        if self._entries.pop(keys[0], None) is not None:
            self.replayed += 1


class ResponseDeletions:
    """Every replica's copies of a deleted response dropped at once: the drop script
    publishes each deletion on `<prefix>:items:deleted`, which this follows on the cluster's
    subscribed connection (`busbar.cluster.RoutingSync.follow`), and each heard one replaces
    the turn and items held here by the `DELETED` mark.  A (re)subscribe cannot say what was
    missed while away, so every copy held then is doubtful (`ItemStore.doubtful`: checked
    against the cluster copy on use, `Exchange._recheck`) until the deletions counter shows
    nothing was deleted since this replica last heard (`run`).

    Deletions made here go through `delete`: published (the drop script), or kept pending
    while Redis is unreachable from this replica and replayed by `run` after the resubscribe
    (or every `REPLAY_EVERY_S` while any are pending)."""

    def __init__(self, store, state, kind: str = "items", *, pending_limit: int = MAX_PENDING):
        self.store, self.state = store, state
        self.shared = SharedEntries(state, kind)
        self.pending = PendingDeletions(pending_limit)
        self.published = 0                   # deletions made here published at once
        self._refusing = False               # the pending set full (its refusals logged once)
        self.channel = deletions_channel(state.prefix, kind)
        self._counter = f"{state.prefix}:{kind}:{DELETIONS}"
        self.heard: int | None = None        # the deletions counter as this replica last knew it
        self._since: int | None = None       # `heard` when the subscription was last made
        self._check = trio.Event()
        self.subscribed = False
        self.received = self.applied = self.ignored = self.copies_dropped = 0
        self.resubscribed = self.counter_reads = 0

    def on_message(self, data: bytes) -> None:
        self.received += 1
        deletion = read_deletion(data)
        if deletion is None:
            self.ignored += 1
            log.debug("state: ignored a message on %s this version cannot read", self.channel)
            return
        self.copies_dropped += self.store.forget(deletion.keys())
        self.applied += 1
        self.heard = max(self.heard or 0, deletion.epoch)

    def on_subscribed(self, up: bool) -> None:
        self.subscribed = up
        if up:
            self.resubscribed += 1
            self.store.doubt_all()      # a deletion may have gone by while away: no copy is trusted yet
            self._since = self.heard
            self._check.set()

    async def delete(self, keys: tuple[str, ...], message: bytes) -> bool:
        """A deletion made here (its copies already forgotten here, or about to be: the caller
        drops them after a True): published to every replica, else kept pending.  False only
        when it could not be published and the pending set is full (refused)."""
        if await self._drop(keys, message):
            self.published += 1
            return True
        was_empty = not self.pending
        if not self.pending.add(keys, message):
            if not self._refusing:           # once each time it fills
                self._refusing = True
                log.warning("state: a response deletion refused: %d made here are already waiting for redis "
                            "to reach the other replicas (the limit); further ones are refused (503) until it "
                            "returns (%d refused so far)", len(self.pending), self.pending.refused)
            return False
        if was_empty:
            log.warning("state: response deletions not published (redis unreachable); the other replicas "
                        "keep serving their copies until it returns and this replica replays them (held in "
                        "memory: a restart before then loses them)")
        return True

    async def _drop(self, keys: tuple[str, ...], message: bytes) -> bool:
        with trio.CancelScope(shield=True):      # bounded by the backend's timeout
            return await self.shared.drop(keys, DELETED, self.store.ttl_s, message)

    async def replay(self) -> int:
        """Publish the pending deletions, oldest first, until one fails (Redis still away: the
        rest wait for the next try); how many were published.  A turn already gone in Redis
        is tombstoned again (idempotent; the counter counts it once more)."""
        replayed = 0
        for keys, message in self.pending.due():
            if not await self._drop(keys, message):
                break
            self.pending.done(keys)
            replayed += 1
        if replayed:
            self._refusing = False
            log.warning("state: %d response deletions made while redis was unreachable published to the other "
                        "replicas (%d still pending)", replayed, len(self.pending))
        return replayed

    async def run(self) -> None:
        """After each (re)subscribe, replay the deletions pending here, then read the
        deletions counter: unmoved since this replica last heard one (but for its own
        replays), nothing was missed and no copy is doubtful.  Moved (or unreadable), the
        copies stay doubtful, each checked on its next use.  While deletions are pending,
        they are also retried every `REPLAY_EVERY_S` (Redis back without a resubscribe)."""
        while True:
            with trio.move_on_after(REPLAY_EVERY_S if self.pending else math.inf):
                await self._check.wait()
            resubscribed = self._check.is_set()
            if resubscribed:
                self._check = trio.Event()
                since = self._since
            replayed = await self.replay() if self.pending else 0
            if not resubscribed:
                continue
            try:
                counter = int(await self.state.command("GET", self._counter) or 0)
            except (RedisUnavailable, RespError, ValueError):
                continue
            if since is not None and counter == since + replayed and not self._check.is_set():
                self.store.doubtful.clear()
            self.heard = max(self.heard or 0, counter)
            self.counter_reads += 1

    def status(self) -> dict:
        """For /admin/api/state."""
        return {"channel": self.channel, "subscribed": self.subscribed, "received": self.received,
                "applied": self.applied, "ignored": self.ignored, "copies_dropped": self.copies_dropped,
                "counter": self.heard, "resubscribed": self.resubscribed, "counter_reads": self.counter_reads,
                "doubtful": len(self.store.doubtful), "rechecked": self.store.rechecked,
                "published": self.published, "pending": len(self.pending), "pending_added": self.pending.added,
                "replayed": self.pending.replayed, "refused": self.pending.refused,
                "pending_limit": self.pending.limit}
