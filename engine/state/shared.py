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
"""
from __future__ import annotations

import logging

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

# KEYS the entry marked gone, then the ones removed; ARGV the mark, the ttl in ms (a deleted response:
# its turn's tombstone, so a replica that looks it up learns it is gone, and its items)
DROP_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
for i = 2, #KEYS do redis.call('DEL', KEYS[i]) end
return #KEYS
"""


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

    async def drop(self, key: str, mark: bytes, ttl_s: float, remove: tuple[str, ...] = ()) -> bool:
        """Replace `key`'s value by `mark` (for `ttl_s`) and remove the `remove` keys, in one script."""
        keys = (self._base + key,) + tuple(self._base + k for k in remove)
        try:
            await self.state.run_script(DROP_LUA, keys, mark, max(1, int(ttl_s * 1000)))
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
