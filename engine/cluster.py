"""Routing state shared between replicas through Redis: the sync task (issue 14, ADR 0010).

The request path never talks to Redis for routing.  Routers stay I/O-free:
they hand each change of shared state (busbar.routing.shared) to
`RoutingSync.emit`, which only files it in a bounded, coalescing queue (one
slot per breaker / key / drain: the newest value wins) and wakes this task.
Here, in the background:

* publish: one Lua script per change writes it into the hash `<prefix>:routing`
  (field -> "rank\\nvalue"; the rank is the deadline for benches, the time of
  the change for breakers and drains; a lower rank never overwrites a higher
  one) and PUBLISHes it on the channel `<prefix>:routing`, atomically;
* apply: a subscribed connection receives the other replicas' changes and
  applies them to this process's router (times travel as wall-clock seconds
  and are converted to this process's monotonic clock on arrival);
* (re)connect: subscribe, republish what this replica knows (changes made while
  Redis was away, and everything still active, so a restarted Redis is rebuilt),
  then load the hash: a replica that starts or reconnects has the current state,
  not only the changes it happened to hear;
* other channels: `follow(channel, follower)` puts another publisher's channel
  on the same subscribed connection (minted client keys,
  busbar.tenancy.minted): its messages go to `follower.on_message(data)`, and
  `follower.on_subscribed(up)` hears each (re)subscribe (reload your snapshot
  now) and each loss of the subscription;
* probes: a past-due breaker asks for a grant; the grant is a lease
  `SET <prefix>:probe:<provider>/<model> <node> NX PX` (short until the probe
  leaves, then extended to the probe's expected answer time, deleted when its
  outcome is published or it is released), so one half-open probe runs
  cluster-wide.  Open breakers are also claimed the moment they fall due.

Every Redis call is bounded by `state.timeout_ms`.  Redis down or slow: the
outage is logged once and shown in /admin/api/state and /metrics; each
replica routes on its own state (probes granted locally, at once), the queue
keeps the newest change per slot, and reconnecting reconciles.
"""
from __future__ import annotations

import heapq
import logging
import math
import os
import time
from collections.abc import Callable

import orjson
import trio

from busbar.routing.shared import BreakerChange, Change, Drain, KeyBench, ProbeOut, ProbeReleased, ProbeWanted
from busbar.state.resp import RespConnection, RespError, parse_redis_url

log = logging.getLogger("busbar.cluster")

# KEYS[1] the state hash, KEYS[2] (breakers) the target's probe lease;
# ARGV field, rank, value, channel, node.  Returns 1 when written (and published).
PUBLISH_LUA = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local rank = tonumber(string.match(cur, '^([^\\n]*)\\n'))
  if rank and rank > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '\\n' .. ARGV[3])
redis.call('PUBLISH', ARGV[4], ARGV[5] .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[5] then redis.call('DEL', KEYS[2]) end
return 1
"""

# KEYS[1] a probe lease; ARGV node, px.  -1: ours (taken or extended); else its PTTL (ms).
CLAIM_LUA = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return -1
end
return redis.call('PTTL', KEYS[1])
"""

# KEYS[1] a probe lease; ARGV node: give it back if it is ours
RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

PING_EVERY = 5.0      # seconds of silence on the subscribed connection before asking Redis
MAX_PENDING = 4096    # queued changes (one per slot); past it a change is dropped and counted
_DOWN = (OSError, ConnectionError, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError)


class Unavailable(Exception):
    pass


class RoutingSync:
    """Shares one process's routing state with the other replicas (see module doc)."""

    def __init__(self, url: str, prefix: str = "busbar", *, timeout_s: float = 0.005,
                 connect_timeout_s: float = 0.05, retry_every_s: float = 1.0, claim_s: float = 2.0,
                 node: str | None = None, now: Callable[[], float] = trio.current_time,
                 wall: Callable[[], float] = time.time) -> None:
        self.host, self.port, self.db, self._password = parse_redis_url(url)
        self.prefix = prefix
        self.hash = self.channel = f"{prefix}:routing"
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.retry_every_s, self.claim_s = retry_every_s, claim_s
        self.node = node or f"{os.getpid()}.{os.urandom(3).hex()}"
        self._now, self._wall = now, wall
        self.router = None
        self._pending: dict[tuple, tuple] = {}           # slot -> what to send (newest wins)
        self._known: dict[str, tuple[float, bytes]] = {}  # field -> (rank, value) last published or applied
        self._claim_after: dict[tuple[str, str], float] = {}   # target -> when asking again is worth it
        self._due: list[tuple[float, str, str]] = []     # open breakers' deadlines: claim them then
        self._wake = trio.Event()
        self._due_changed = trio.Event()
        self._resync = True
        self._followers: dict[bytes, object] = {}          # channel -> follower (see follow)
        self._conn: RespConnection | None = None
        self._down_since: float | None = None
        self.connected = False
        self.published_total = self.applied_total = self.dropped_total = 0
        self.grants_total = self.local_grants_total = self.outages_total = 0

    # -- the router side (synchronous: never waits) -------------------------------------

    def attach(self, router) -> None:
        """Share `router`'s state (at start, and after every reload)."""
        self.router = router
        router.coordinate(self.emit)

    def follow(self, channel: str, follower) -> None:
        """Deliver `channel`'s messages to `follower` (before `run`: the
        channels are subscribed together, on one connection)."""
        self._followers[channel.encode()] = follower

    def emit(self, change: Change) -> None:
        """The router's outbox: file the change and return at once."""
        target = (change.provider, change.model) if not isinstance(change, KeyBench) else None
        if isinstance(change, ProbeWanted):
            if not self.connected:       # Redis away: this replica decides alone, now
                self.local_grants_total += 1
                self.router.grant_probe(change.provider, change.model, self._now() + self.claim_s)
                return
            if self._now() < self._claim_after.get(target, 0.0):
                return
            self._queue(("probe",) + target, ("claim", target, self.claim_s, True))
        elif isinstance(change, ProbeOut):
            if self.connected:       # keep the lease while the probe is out
                self._queue(("probe",) + target, ("claim", target, change.lease + self.claim_s, False))
        elif isinstance(change, ProbeReleased):
            if self.connected:
                self._queue(("probe",) + target, ("release", target))
        else:
            field, rank, value = self._encode(change)
            self._known[field] = (rank, value)
            if isinstance(change, BreakerChange) and change.state == "open":
                self._claim_at(change.until, change.provider, change.model)
            self._queue(("state", field), ("publish", field, rank, value, target))

    def _queue(self, slot: tuple, item: tuple) -> None:
        if slot not in self._pending and len(self._pending) >= MAX_PENDING:
            self.dropped_total += 1
            return
        self._pending.pop(slot, None)         # the newest goes to the back
        self._pending[slot] = item
        self._wake.set()

    # -- the wire format ------------------------------------------------------------------

    def _to_wall(self, t: float) -> float:
        return round(self._wall() + (t - self._now()), 6)

    def _to_local(self, t: float) -> float:
        return self._now() + (t - self._wall())

    def _encode(self, change) -> tuple[str, float, bytes]:
        if isinstance(change, BreakerChange):
            field = ["breaker", change.provider, change.model]
            rank = self._to_wall(change.at)
            value = {"state": change.state, "until": self._to_wall(change.until), "open_for": change.open_for} \
                if change.state == "open" else {"state": "closed"}
        elif isinstance(change, Drain):
            field, rank, value = ["drain", change.provider, change.model], round(self._wall(), 6), {
                "drained": change.drained}
        elif change.kind == "disable":
            rank = self._to_wall(change.until)
            field, value = ["disable", change.key_id], {"until": rank, "reason": change.reason}
        else:
            rank = self._to_wall(change.until)
            field = ["cool", change.key_id] + ([change.model] if change.model is not None else [])
            value = {"until": rank}
        return orjson.dumps(field).decode(), rank, orjson.dumps(value)

    def _decode(self, field: str, value: bytes) -> Change | None:
        kind, *rest = orjson.loads(field)
        v = orjson.loads(value)
        if kind == "breaker":
            if v["state"] == "open":
                return BreakerChange(rest[0], rest[1], "open", self._to_local(v["until"]), v["open_for"])
            return BreakerChange(rest[0], rest[1], "closed")
        if kind == "drain":
            return Drain(rest[0], rest[1], bool(v["drained"]))
        if v["until"] <= self._wall():
            return None                   # a bench that is over
        if kind == "disable":
            return KeyBench(rest[0], "disable", self._to_local(v["until"]), reason=v.get("reason", ""))
        return KeyBench(rest[0], "cool", self._to_local(v["until"]), model=rest[1] if len(rest) > 1 else None)

    def _apply(self, field: str, rank: float, value: bytes) -> None:
        known = self._known.get(field)
        if known is not None and known[0] >= rank:
            return                        # we have this one or a newer one
        try:
            change = self._decode(field, value)
        except (ValueError, KeyError, TypeError, IndexError):
            log.debug("cluster: ignored a routing state field this version cannot read: %.80s", field)
            return
        if change is None or self.router is None:
            return
        self._known[field] = (rank, value)
        if self.router.apply(change, self._now()):
            self.applied_total += 1
            if isinstance(change, BreakerChange) and change.state == "open":
                self._claim_at(change.until, change.provider, change.model)

    def _claim_at(self, until: float, provider: str, model: str) -> None:
        heapq.heappush(self._due, (until, provider, model))
        self._due_changed.set()

    # -- the background side ------------------------------------------------------------

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Connect and load the current state (bounded), then keep syncing until cancelled."""
        with trio.move_on_after(max(self.connect_timeout_s, 10 * self.timeout_s, 0.5)):
            try:
                await self._subscribe_once()
                await self._resync_now()
            except (Unavailable, RespError, *_DOWN) as error:
                self._went_down(error)
        if not self.connected:
            self._went_down(trio.TooSlowError())
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._listen)
                nursery.start_soon(self._work)
                nursery.start_soon(self._claim_when_due)
        finally:
            with trio.CancelScope(shield=True):
                for conn in (self._conn, self._sub):
                    if conn is not None:
                        await conn.aclose()

    _sub: RespConnection | None = None

    async def _subscribe_once(self) -> None:
        conn = await RespConnection.open(self.host, self.port, self.db, self._password)
        try:
            await conn.send("SUBSCRIBE", self.channel, *self._followers)
            for _ in range(1 + len(self._followers)):
                await conn.read()             # ["subscribe", channel, n] for each
        except BaseException:
            await conn.aclose()
            raise
        self._sub = conn
        self._resync = True          # the worker republishes and loads the hash (it owns the other connection)
        self._wake.set()
        for follower in self._followers.values():
            follower.on_subscribed(True)

    async def _listen(self) -> None:
        """The subscribed connection: other replicas' changes, as they happen."""
        while True:
            if self._sub is None:
                try:
                    with trio.fail_after(max(self.timeout_s, self.connect_timeout_s)):
                        await self._subscribe_once()
                except (Unavailable, RespError, *_DOWN) as error:
                    self._went_down(error)
                    await trio.sleep(self.retry_every_s)
                    continue
            try:
                pinged = False
                while True:
                    with trio.move_on_after(PING_EVERY) as idle:
                        await self._sub.wait_readable()     # (a read cancelled mid-reply would desync)
                    if idle.cancelled_caught:     # silence: is Redis still there? (a partition sends no RST)
                        if pinged:
                            raise trio.TooSlowError
                        await self._sub.send("PING")
                        pinged = True
                        continue
                    pinged = False
                    message = await self._sub.read()
                    if isinstance(message, list) and len(message) == 3 and message[0] == b"message":
                        follower = self._followers.get(message[1])
                        if follower is not None:
                            follower.on_message(message[2])
                        else:
                            self._receive(message[2])
            except _DOWN as error:
                await self._sub.aclose()
                self._sub = None
                self._went_down(error)
                for follower in self._followers.values():
                    follower.on_subscribed(False)

    def _receive(self, data: bytes) -> None:
        try:
            node, field, rank, value = data.split(b"\n", 3)
        except ValueError:
            return
        if node.decode() != self.node:
            try:
                rank = float(rank)
            except ValueError:
                return
            self._apply(field.decode(errors="replace"), rank, value)

    async def _resync_now(self) -> None:
        """Republish what this replica knows, then load everyone's state."""
        wall = self._wall()
        for field, (rank, value) in list(self._known.items()):
            if field.startswith('["breaker"') or field.startswith('["drain"') or rank > wall:
                await self._script(PUBLISH_LUA, [self.hash], field, rank, value, self.channel, self.node)
            else:
                del self._known[field]        # a bench that is over
        for slot in [s for s in self._pending if s[0] == "state"]:
            del self._pending[slot]           # just republished from _known
        reply = await self._call("HGETALL", self.hash)
        for i in range(0, len(reply or ()), 2):
            rank, _, value = reply[i + 1].partition(b"\n")
            try:
                self._apply(reply[i].decode(errors="replace"), float(rank), value)
            except ValueError:
                continue
        self._resync = False
        self._came_back()

    async def _work(self) -> None:
        """Drain the queue into Redis, oldest slot first."""
        while True:
            if not self._pending and not self._resync:
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            try:
                if self._resync and self._sub is not None:
                    await self._resync_now()
                while self._pending:
                    slot, item = next(iter(self._pending.items()))
                    await self._send(item)
                    if self._pending.get(slot) is item:
                        del self._pending[slot]
                if self._resync:                  # the subscriber reconnects and resyncs
                    await self._wake.wait()
                    self._wake = trio.Event()
            except (Unavailable, RespError, *_DOWN) as error:
                self._went_down(error)
                for slot in [s for s in self._pending if s[0] == "probe"]:
                    del self._pending[slot]      # probes are decided locally while away
                await trio.sleep(self.retry_every_s)

    async def _send(self, item: tuple) -> None:
        kind = item[0]
        if kind == "publish":
            _, field, rank, value, target = item
            keys = [self.hash] + ([self._lease_key(target)] if field.startswith('["breaker"') else [])
            await self._script(PUBLISH_LUA, keys, field, rank, value, self.channel, self.node)
            self.published_total += 1
        elif kind == "claim":
            _, target, seconds, grant = item
            ttl = await self._script(CLAIM_LUA, [self._lease_key(target)], self.node, max(1, int(seconds * 1000)))
            if ttl == -1:
                if grant:                         # (not the extension of a probe's lease)
                    self.grants_total += 1
                    self.router.grant_probe(*target, self._now() + seconds)
            else:
                self._claim_after[target] = self._now() + max(ttl, 1) / 1000
        else:
            await self._script(RELEASE_LUA, [self._lease_key(item[1])], self.node)

    async def _claim_when_due(self) -> None:
        """Claim an open breaker's probe the moment it falls due, so the first request after it probes."""
        while True:
            with trio.move_on_at(self._due[0][0] if self._due else math.inf):
                await self._due_changed.wait()
                self._due_changed = trio.Event()
                continue
            _, provider, model = heapq.heappop(self._due)
            if self.router is not None:
                self.router.want_probe(provider, model, self._now())

    def _lease_key(self, target: tuple[str, str]) -> str:
        return f"{self.prefix}:probe:{target[0]}/{target[1]}"

    # -- Redis ---------------------------------------------------------------------------

    async def _script(self, lua: str, keys: list[str], *args):
        try:
            return await self._call("EVALSHA", _SHA[lua], len(keys), *keys, *args)
        except RespError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            return await self._call("EVAL", lua, len(keys), *keys, *args)

    async def _call(self, *args):
        try:
            with trio.fail_after(self.timeout_s if self._conn else max(self.timeout_s, self.connect_timeout_s)):
                if self._conn is None:
                    self._conn = await RespConnection.open(self.host, self.port, self.db, self._password)
                return await self._conn.call(*args)
        except RespError:
            raise
        except BaseException:
            conn, self._conn = self._conn, None       # a reply may be half read: never reuse it
            if conn is not None:
                with trio.CancelScope(shield=True):
                    await conn.aclose()
            raise

    def _went_down(self, error: BaseException) -> None:
        self._resync = True
        if self.connected or self._down_since is None:
            self.connected = False
            if self._down_since is None:
                self._down_since = self._now()
                self.outages_total += 1
                log.warning("cluster: redis %s:%s unavailable (%s); routing state is per replica until it "
                            "returns", self.host, self.port, type(error).__name__)

    def _came_back(self) -> None:
        self.connected = True
        if self._down_since is not None:
            log.warning("cluster: redis %s:%s back after %.1f s; routing state reconciled (%d fields)",
                        self.host, self.port, self._now() - self._down_since, len(self._known))
            self._down_since = None

    def status(self) -> dict:
        """For /admin/api/state and /metrics."""
        return {"node": self.node, "redis": f"{self.host}:{self.port}/{self.db}", "prefix": self.prefix,
                "connected": self.connected, "pending": len(self._pending), "published_total": self.published_total,
                "applied_total": self.applied_total, "dropped_total": self.dropped_total,
                "probe_grants_total": self.grants_total, "local_probe_grants_total": self.local_grants_total,
                "outages_total": self.outages_total}


_SHA = {lua: __import__("hashlib").sha1(lua.encode()).hexdigest() for lua in (PUBLISH_LUA, CLAIM_LUA, RELEASE_LUA)}


def build_sync(section: dict | None) -> RoutingSync | None:
    """The sync task the `state:` section asks for (Redis backend), else None."""
    section = section or {}
    if section.get("backend", "memory") != "redis":
        return None
    return RoutingSync(section.get("url", "redis://127.0.0.1:6379/0"), section.get("prefix", "busbar"),
                       timeout_s=section.get("timeout_ms", 5) / 1000)
