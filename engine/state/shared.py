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
connection), not only the one that later looks the id up.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import orjson
import trio

from busbar.item_store import key_of, turn_key
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


class ResponseDeletions:
    """Every replica's copies of a deleted response dropped at once: the drop script
    publishes each deletion on `<prefix>:items:deleted`, which this follows on the cluster's
    subscribed connection (`busbar.cluster.RoutingSync.follow`), and each heard one replaces
    the turn and items held here by the `DELETED` mark.  A (re)subscribe cannot say what was
    missed while away, so every copy held then is doubtful (`ItemStore.doubtful`: checked
    against the cluster copy on use, `Exchange._recheck`) until the deletions counter shows
    nothing was deleted since this replica last heard (`run`)."""

    def __init__(self, store, state, kind: str = "items"):
        self.store, self.state = store, state
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

    async def run(self) -> None:
        """After each (re)subscribe, read the deletions counter: unmoved since this replica
        last heard one, nothing was missed and no copy is doubtful.  Moved (or unreadable),
        the copies stay doubtful, each checked on its next use."""
        while True:
            await self._check.wait()
            self._check = trio.Event()
            since = self._since
            try:
                counter = int(await self.state.command("GET", self._counter) or 0)
            except (RedisUnavailable, RespError, ValueError):
                continue
            if since is not None and counter == since and not self._check.is_set():
                self.store.doubtful.clear()
            self.heard = max(self.heard or 0, counter)
            self.counter_reads += 1

    def status(self) -> dict:
        """For /admin/api/state."""
        return {"channel": self.channel, "subscribed": self.subscribed, "received": self.received,
                "applied": self.applied, "ignored": self.ignored, "copies_dropped": self.copies_dropped,
                "counter": self.heard, "resubscribed": self.resubscribed, "counter_reads": self.counter_reads,
                "doubtful": len(self.store.doubtful), "rechecked": self.store.rechecked}
