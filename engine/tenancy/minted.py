"""Client keys minted at run time (`POST /admin/keys`, `busbar keys create`).

A minted key is the same thing as an `auth.keys` entry (id, pools, direct,
team, expires, limits, budget, over_budget) whose secret the gateway made up
and showed once; only its sha256 is stored.  `MintedKeys` is the registry the
tenancy core reads (`by_hash`, synchronous, in memory) in front of a store
that outlives restarts and hot reloads (the App owns it, like `busbar.state`):

* `SqliteKeyStore` (default): a `client_keys` table in a SQLite file, every
  call in a worker thread (`trio.to_thread`).  This process sees its own
  changes at once; other workers on the same file within `REFRESH_EVERY`.
* `RedisKeyStore` (`state.backend: redis`): two hashes under the state
  prefix, shared by every replica.  Every write is one Lua script that stamps
  the record with a revision (`INCR`), stores it as "rev\\njson" (the routing
  hash's "rank\\nvalue" shape) and PUBLISHes it on `<prefix>:client_keys`.

The request path never waits on a store: `by_hash` is this process's cache of
the whole table.  With Redis it is kept current by the cluster sync's
subscribed connection (`busbar.cluster.RoutingSync.follow`: the messages as
they come; a full reload each time the subscription is (re)made, so nothing
published while it was away is missed) and a reconcile every
`RECONCILE_EVERY` (one GET of the revision counter; a reload when it moved).
A key the cache does not know is refused (401) without asking Redis: a key
minted on another replica works here once its message arrived.

The file is created by the first mint, never by merely starting up.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import sqlite3
import threading
import time

import orjson
import trio

log = logging.getLogger("busbar.tenancy")

REFRESH_EVERY = 1.0          # seconds between re-reads of a SQLite store (other workers on the same file)
RECONCILE_EVERY = 30.0       # seconds between checks of a Redis store's revision (a lost message's safety net)
SECRET_PREFIX = "bb-"        # minted secrets are recognisable (secret scanners, our own log greps)
FIELDS = ("pools", "direct", "team", "expires", "limits", "budget", "over_budget")
DEFAULT_DB = "busbar-keys.sqlite"


class KeyStoreError(Exception):
    """The store could not be read or written (the admin API answers 503)."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# SigV4 pairs of minted keys (Bedrock clients): the access key id is random and
# stored with the key (it is not secret); its secret is derived, never stored.
ACCESS_KEY_PREFIX = "BBKA"


def new_access_key_id() -> str:
    """20 characters like an AWS access key id: BBKA + 16 of base32."""
    return ACCESS_KEY_PREFIX + base64.b32encode(secrets.token_bytes(10)).decode()


def derive_aws_secret(master: str, access_key_id: str) -> str:
    """The pair's secret: HMAC-SHA256(auth.aws_master_secret, access key id),
    40 characters of base64 like an AWS secret access key."""
    digest = hmac.new(master.encode(), b"busbar sigv4 secret\n" + access_key_id.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()[:40]


# ---------------------------------------------------------------------------
# Stores: records are dicts {id, key_sha256, created, revoked, <FIELDS>}
# ---------------------------------------------------------------------------
class SqliteKeyStore:
    SCHEMA = """CREATE TABLE IF NOT EXISTS client_keys (
        id TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,     -- the secret's hash; the secret itself is never stored
        record TEXT NOT NULL,            -- JSON: the key's fields as auth.keys spells them
        created REAL NOT NULL,
        revoked REAL                     -- unix seconds, NULL while the key is live
    )"""

    def __init__(self, path: str):
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _connection(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is None:
            if not create and not os.path.exists(self.path):
                return None
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(self.SCHEMA)
            self._conn = conn
        return self._conn

    def _run(self, fn, create: bool = False):
        def call():
            with self._lock:
                try:
                    conn = self._connection(create)
                    return fn(conn) if conn is not None else None
                except sqlite3.Error as exc:
                    raise KeyStoreError(f"key store {self.path}: {exc}") from exc
        return trio.to_thread.run_sync(call)

    refresh_every = REFRESH_EVERY
    channel = None                   # no messages: other workers' changes come with the next re-read

    async def load(self) -> list[tuple[int, dict]]:
        """Every record, with its revision (SQLite keeps none: 0, the re-read always wins)."""
        rows = await self._run(lambda c: c.execute("SELECT record, created, revoked FROM client_keys").fetchall())
        return [(0, {**orjson.loads(r), "created": c, "revoked": v}) for r, c, v in rows or ()]

    async def revision(self) -> int | None:
        return None                      # unknown: always re-read

    async def insert(self, record: dict) -> int | None:
        """The record's revision, None when the id or the hash is taken."""
        def write(conn):
            try:
                conn.execute("INSERT INTO client_keys (id, sha256, record, created, revoked) VALUES (?, ?, ?, ?, ?)",
                             (record["id"], record["key_sha256"], _body(record), record["created"], None))
            except sqlite3.IntegrityError:
                return None
            return 0
        return await self._run(write, create=True)

    async def update(self, record: dict) -> int:
        await self._run(lambda c: c.execute("UPDATE client_keys SET record = ?, revoked = ? WHERE id = ?",
                                            (_body(record), record["revoked"], record["id"])), create=True)
        return 0

    async def claim_alert(self, mark: str, ttl_s: float, wall: float) -> bool:
        """True for the first claim of a budget alert `mark` (level + period);
        marks past their period are dropped on the way."""
        def claim(conn):
            conn.execute(self.ALERTS)
            conn.execute("DELETE FROM budget_alerts WHERE expires < ?", (wall,))
            return conn.execute("INSERT OR IGNORE INTO budget_alerts (mark, expires) VALUES (?, ?)",
                                (mark, wall + ttl_s)).rowcount == 1
        return bool(await self._run(claim, create=True))

    ALERTS = """CREATE TABLE IF NOT EXISTS budget_alerts (
        mark TEXT PRIMARY KEY,           -- level id and budget period: its soft alert fired
        expires REAL NOT NULL            -- unix seconds: the period's end plus a grace
    )"""

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# Every write: the next revision, the record as "rev\njson" in the records hash, the live
# index, and a PUBLISH of "rev\njson" on the channel, atomically (the shape of
# busbar.cluster's PUBLISH_LUA).  KEYS records, live, rev; ARGV id, sha256, json, channel, mode
# (insert: only if neither the id nor the hash is taken, else 0; revoke: drop the hash from
# the live index; update).  Returns the revision.
_WRITE_LUA = """
if ARGV[5] == 'insert' and (redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
                            or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1) then return 0 end
local rev = redis.call('INCR', KEYS[3])
redis.call('HSET', KEYS[1], ARGV[1], rev .. '\\n' .. ARGV[3])
if ARGV[5] == 'revoke' then redis.call('HDEL', KEYS[2], ARGV[2]) else redis.call('HSET', KEYS[2], ARGV[2], ARGV[1]) end
redis.call('PUBLISH', ARGV[4], rev .. '\\n' .. ARGV[3])
return rev
"""


def parse_entry(raw: bytes) -> tuple[int, dict]:
    """A records-hash value or a message: "rev\\njson" (plain JSON from before revisions: 0)."""
    if raw[:1] != b"{":
        rev, _, raw = raw.partition(b"\n")
        return int(rev), orjson.loads(raw)
    return 0, orjson.loads(raw)


class RedisKeyStore:
    """`{prefix}:client_keys` id -> "rev\\njson", `{prefix}:client_keys:live` sha256 -> id (live
    keys only), `{prefix}:client_keys:rev` the last revision; changes on the channel
    `{prefix}:client_keys`."""

    refresh_every = RECONCILE_EVERY

    def __init__(self, state, *, timeout_s: float = 1.0):
        self.state = state             # busbar.state.redis.RedisState: its connections and outage handling
        self.timeout_s = timeout_s
        self.records_key = self.channel = f"{state.prefix}:client_keys"
        self.live_key = f"{state.prefix}:client_keys:live"
        self.rev_key = f"{state.prefix}:client_keys:rev"

    async def _call(self, *args, timeout_s: float | None = None):
        from busbar.state.redis import RedisUnavailable
        try:
            return await self.state.command(*args, timeout_s=timeout_s or self.timeout_s)
        except RedisUnavailable as exc:
            raise KeyStoreError(f"key store redis {self.state.host}:{self.state.port} unavailable") from exc

    async def load(self) -> list[tuple[int, dict]]:
        flat = await self._call("HGETALL", self.records_key) or []
        return [parse_entry(flat[i + 1]) for i in range(0, len(flat), 2)]

    async def revision(self) -> int | None:
        return int(await self._call("GET", self.rev_key) or 0)

    async def claim_alert(self, mark: str, ttl_s: float, wall: float) -> bool:
        """True for the first claim of a budget alert `mark` on any replica."""
        reply = await self._call("SET", f"{self.records_key}:alerted:{mark}", 1, "NX", "PX",
                                 max(1, int(ttl_s * 1000)))
        return reply is not None

    async def _write(self, record: dict, mode: str) -> int:
        return int(await self._call("EVAL", _WRITE_LUA, 3, self.records_key, self.live_key, self.rev_key,
                                    record["id"], record["key_sha256"], orjson.dumps(record), self.channel, mode))

    async def insert(self, record: dict) -> int | None:
        return await self._write(record, "insert") or None

    async def update(self, record: dict) -> int:
        return await self._write(record, "update" if record.get("revoked") is None else "revoke")

    def close(self) -> None:
        return None


def _body(record: dict) -> bytes:
    return orjson.dumps({k: v for k, v in record.items() if k not in ("created", "revoked")})


def build_store(auth: dict, admin: dict | None, state) -> "SqliteKeyStore | RedisKeyStore | None":
    """Redis when the state backend is Redis; else SQLite at `auth.keys_db`
    (default: the usage database's file, else busbar-keys.sqlite); None for
    `keys_db: off` (no minting)."""
    if getattr(state, "status", None) and state.status().get("backend") == "redis":
        return RedisKeyStore(state)
    path = auth.get("keys_db") or os.environ.get("BUSBAR_KEYS_DB")
    if path is None:
        from busbar.admin.usage import DEFAULT_DB as USAGE_DB
        usage = (admin or {}).get("usage_db", os.environ.get("BUSBAR_USAGE_DB", USAGE_DB))
        path = usage if usage and usage not in ("off", "none") else DEFAULT_DB
    if path in ("off", "none"):
        return None
    return SqliteKeyStore(path)


# ---------------------------------------------------------------------------
# The registry
# ---------------------------------------------------------------------------
class MintedKeys:
    """Minted keys in memory (by hash, for the request path) over a store.

    The cache is the whole table; each record carries the store's revision
    and a newer revision always wins, so messages, reloads and this process's
    own writes can arrive in any order and agree."""

    def __init__(self, store, *, wall=time.time):
        self.store = store
        self.wall = wall
        self.records: dict[str, dict] = {}     # id -> record (revoked ones too: ids are never reused)
        self.revs: dict[str, int] = {}         # id -> the store's revision of that record
        self.by_hash: dict = {}                # sha256 -> ClientKey, live keys only
        self.by_id: dict = {}                  # id -> ClientKey, live keys only
        self.by_access_key: dict = {}          # SigV4 access key id -> ClientKey, live keys with a pair
        self.reserved: frozenset = frozenset()  # the config's key ids (the gateway sets them)
        self.reconcile_every = getattr(store, "refresh_every", REFRESH_EVERY)
        self.followed = False                  # a subscription delivers the other replicas' changes
        self.subscribed = False                # ... and is up now
        self.applied_total = 0                 # changes taken from messages
        self.reloads_total = 0
        self._shadowed: set = set()
        self._reload = trio.Event()

    @property
    def active(self) -> bool:
        """Keys were minted here: clients must present one (revoking the last
        minted key never opens the gateway)."""
        return bool(self.records)

    def reserve(self, config_ids: frozenset) -> None:
        """The config's key ids: minted keys never take them (ids are unique)."""
        if config_ids != self.reserved:
            self.reserved = config_ids
            self._index()

    def live_ids(self) -> set:
        return {r["id"] for r in self.records.values() if r.get("revoked") is None}

    # ---- the cache ---------------------------------------------------------------
    def _index(self) -> None:
        self.by_hash, self.by_id, self.by_access_key = {}, {}, {}
        for record in self.records.values():
            self._index_one(record)

    def _index_one(self, record: dict) -> None:
        from busbar.tenancy import key_from_config
        if record.get("revoked") is not None:
            return
        if record["id"] in self.reserved:
            if record["id"] not in self._shadowed:
                self._shadowed.add(record["id"])
                log.warning("minted key %r is shadowed by the config key of the same id; it is not accepted",
                            record["id"])
            return
        key = key_from_config(record, 0, minted=True)
        self.by_hash[key.sha256] = key
        self.by_id[key.id] = key
        if record.get("aws_access_key_id"):
            self.by_access_key[record["aws_access_key_id"]] = key

    def apply(self, rev: int, record: dict) -> bool:
        """One record at a revision: taken when it is not older than the one
        held (False: ignored).  O(1): the other keys stay as they are."""
        key_id = record["id"]
        if rev < self.revs.get(key_id, -1):
            return False
        old = self.records.get(key_id)
        if old is not None:
            self.by_hash.pop(old["key_sha256"].lower(), None)
            self.by_id.pop(key_id, None)
            self.by_access_key.pop(old.get("aws_access_key_id"), None)
        self.records[key_id] = record
        self.revs[key_id] = rev
        self._index_one(record)
        return True

    async def load(self) -> None:
        """The store's whole table, merged by revision (records are never
        deleted, so a merge is a reload), or taken as it is when the store's
        revision went back (a flushed or restarted Redis without persistence:
        what it no longer has is gone for every replica)."""
        if self.store is None:
            return
        known = max(self.revs.values(), default=0)     # before asking: messages may come in meanwhile
        revision = await self.store.revision()
        entries = await self.store.load()
        if revision is not None and revision < known:
            log.warning("minted keys: the store's revision went back (%d < %d); taking its table as it is",
                        revision, known)
            self.records, self.revs = {}, {}
            self._index()
        for rev, record in entries:
            self.apply(rev, record)
        self.reloads_total += 1

    # ---- keeping it current ------------------------------------------------------
    def follow(self, sync) -> None:
        """Take the other replicas' changes from `sync`'s subscribed connection
        (busbar.cluster.RoutingSync), when the store publishes them."""
        channel = getattr(self.store, "channel", None)
        if channel is not None and sync is not None:
            sync.follow(channel, self)
            self.followed = True

    def on_message(self, data: bytes) -> None:
        """A change another replica (or this one) published."""
        try:
            rev, record = parse_entry(data)
            record["id"], record["key_sha256"]
        except (ValueError, KeyError, TypeError):
            log.debug("minted keys: ignored a message this version cannot read")
            return
        if self.apply(rev, record):
            self.applied_total += 1

    def on_subscribed(self, up: bool) -> None:
        """The subscription was made (again: reload now, messages may have been
        missed while it was away) or lost."""
        self.subscribed = up
        if up:
            self._reload.set()

    async def run(self) -> None:
        """Reload when the subscription is (re)made; reconcile every
        `reconcile_every` (with a revision counter: only when it moved)."""
        if self.store is None:
            return
        failing = False
        while True:
            with trio.move_on_after(self.reconcile_every):
                await self._reload.wait()
            full, self._reload = self._reload.is_set(), trio.Event()
            try:
                if not full:
                    known = max(self.revs.values(), default=0)
                    revision = await self.store.revision()
                    full = revision is None or revision != known
                if full:
                    await self.load()
                failing = False
            except KeyStoreError as exc:
                if not failing:
                    log.warning("minted keys: cannot refresh (%s); serving the last known keys", exc)
                failing = True

    def status(self) -> dict:
        return {"keys": len(self.records), "live": len(self.by_hash), "followed": self.followed,
                "subscribed": self.subscribed, "applied_total": self.applied_total,
                "reloads_total": self.reloads_total}

    # ---- admin -------------------------------------------------------------------
    async def create(self, spec: dict, *, aws: bool = False) -> tuple[dict, str]:
        """A new key from `spec` (validated by the caller): (record, secret).
        `aws`: with a SigV4 access key id too (`aws_access_key_id`; its secret
        is `derive_aws_secret`'s, the caller shows it).  Raises KeyError when
        the id is taken (config or minted)."""
        from busbar.tenancy import hash_secret
        key_id = spec.get("id") or f"key-{secrets.token_hex(4)}"
        if key_id in self.reserved or key_id in self.records:
            raise KeyError(key_id)
        secret = new_secret()
        record = {"id": key_id, "key_sha256": hash_secret(secret), "created": round(self.wall(), 3),
                  "revoked": None, **{f: spec[f] for f in FIELDS if f in spec}}
        if aws:
            record["aws_access_key_id"] = new_access_key_id()
        rev = await self.store.insert(record)
        if rev is None:
            await self.load()           # another replica took the id a moment ago
            raise KeyError(key_id)
        self.apply(rev, record)
        return record, secret

    async def update(self, key_id: str, changes: dict) -> dict:
        record = dict(self.records[key_id])
        for name in FIELDS:
            if name in changes:
                if changes[name] is None:
                    record.pop(name, None)
                else:
                    record[name] = changes[name]
        self.apply(await self.store.update(record), record)
        return record

    async def revoke(self, key_id: str) -> dict:
        record = self.records[key_id]
        if record.get("revoked") is None:
            record = {**record, "revoked": round(self.wall(), 3)}
            self.apply(await self.store.update(record), record)
        return record


def public_view(record: dict) -> dict:
    """A record as the admin API shows it: never the hash, never a secret."""
    return {k: v for k, v in record.items() if k != "key_sha256"}
