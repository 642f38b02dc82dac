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
  prefix.  Shared by every replica; `shared = True` makes the tenancy core
  confirm a minted (or locally unknown) key with Redis on each request, so a
  revocation anywhere takes effect at once everywhere.

The file is created by the first mint, never by merely starting up.
"""
from __future__ import annotations

import logging
import os
import secrets
import sqlite3
import threading
import time

import orjson
import trio

log = logging.getLogger("busbar.tenancy")

REFRESH_EVERY = 1.0          # seconds between re-reads of the store (other workers' / replicas' changes)
SECRET_PREFIX = "bb-"        # minted secrets are recognisable (secret scanners, our own log greps)
FIELDS = ("pools", "direct", "team", "expires", "limits", "budget", "over_budget")
DEFAULT_DB = "busbar-keys.sqlite"


class KeyStoreError(Exception):
    """The store could not be read or written (the admin API answers 503)."""


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


# ---------------------------------------------------------------------------
# Stores: records are dicts {id, key_sha256, created, revoked, <FIELDS>}
# ---------------------------------------------------------------------------
class SqliteKeyStore:
    shared = False

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

    async def load(self) -> list[dict]:
        rows = await self._run(lambda c: c.execute("SELECT record, created, revoked FROM client_keys").fetchall())
        return [{**orjson.loads(r), "created": c, "revoked": v} for r, c, v in rows or ()]

    async def insert(self, record: dict) -> bool:
        """False when the id or the hash is taken."""
        def write(conn):
            try:
                conn.execute("INSERT INTO client_keys (id, sha256, record, created, revoked) VALUES (?, ?, ?, ?, ?)",
                             (record["id"], record["key_sha256"], _body(record), record["created"], None))
            except sqlite3.IntegrityError:
                return False
            return True
        return await self._run(write, create=True)

    async def update(self, record: dict) -> None:
        await self._run(lambda c: c.execute("UPDATE client_keys SET record = ?, revoked = ? WHERE id = ?",
                                            (_body(record), record["revoked"], record["id"])), create=True)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# Lua: insert only if neither the id nor the hash is taken (atomic across replicas)
_INSERT_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 or redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[1])
return 1
"""
# Lua: the record of a live key by hash, in one round trip
_CONFIRM_LUA = """
local id = redis.call('HGET', KEYS[2], ARGV[1])
if not id then return false end
return redis.call('HGET', KEYS[1], id)
"""


class RedisKeyStore:
    """`{prefix}:client_keys` id -> record JSON, `{prefix}:client_keys:live` sha256 -> id (live keys only)."""

    shared = True

    def __init__(self, state, *, timeout_s: float = 1.0):
        self.state = state             # busbar.state.redis.RedisState: its connections and outage handling
        self.timeout_s = timeout_s
        self.records_key = f"{state.prefix}:client_keys"
        self.live_key = f"{state.prefix}:client_keys:live"

    async def _call(self, *args, timeout_s: float | None = None):
        from busbar.state.redis import RedisUnavailable
        try:
            return await self.state.command(*args, timeout_s=timeout_s or self.timeout_s)
        except RedisUnavailable as exc:
            raise KeyStoreError(f"key store redis {self.state.host}:{self.state.port} unavailable") from exc

    async def load(self) -> list[dict]:
        flat = await self._call("HGETALL", self.records_key) or []
        return [orjson.loads(flat[i + 1]) for i in range(0, len(flat), 2)]

    async def insert(self, record: dict) -> bool:
        return bool(await self._call("EVAL", _INSERT_LUA, 2, self.records_key, self.live_key,
                                     record["id"], record["key_sha256"], orjson.dumps(record)))

    async def update(self, record: dict) -> None:
        await self._call("HSET", self.records_key, record["id"], orjson.dumps(record))
        if record.get("revoked") is not None:
            await self._call("HDEL", self.live_key, record["key_sha256"])

    async def confirm(self, digest: str, timeout_s: float) -> dict | None:
        raw = await self._call("EVAL", _CONFIRM_LUA, 2, self.records_key, self.live_key, digest,
                               timeout_s=timeout_s)
        return orjson.loads(raw) if raw else None

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
    """Minted keys in memory (by hash, for the request path) over a store."""

    def __init__(self, store, *, wall=time.time):
        self.store = store
        self.shared = bool(store is not None and store.shared)
        self.wall = wall
        self.records: dict[str, dict] = {}     # id -> record (revoked ones too: ids are never reused)
        self.by_hash: dict = {}                # sha256 -> ClientKey, live keys only
        self.reserved: frozenset = frozenset()  # the config's key ids (the gateway sets them)
        self.confirm_timeout_s = 0.05
        self._shadowed: set = set()

    @property
    def active(self) -> bool:
        """Keys were minted here: clients must present one (revoking the last
        minted key never opens the gateway)."""
        return bool(self.records)

    def reserve(self, config_ids: frozenset) -> None:
        """The config's key ids: minted keys never take them (ids are unique)."""
        if config_ids != self.reserved:
            self.reserved = config_ids
            self._index(list(self.records.values()))

    def live_ids(self) -> set:
        return {r["id"] for r in self.records.values() if r.get("revoked") is None}

    def _index(self, records: list[dict]) -> None:
        from busbar.tenancy import key_from_config
        self.records = {r["id"]: r for r in records}
        self.by_hash = {}
        for r in records:
            if r.get("revoked") is None and r["id"] in self.reserved:
                if r["id"] not in self._shadowed:
                    self._shadowed.add(r["id"])
                    log.warning("minted key %r is shadowed by the config key of the same id; it is not accepted",
                                r["id"])
            elif r.get("revoked") is None:
                key = key_from_config(r, 0, minted=True)
                self.by_hash[key.sha256] = key

    async def load(self) -> None:
        if self.store is not None:
            self._index(await self.store.load())

    async def run(self) -> None:
        """Re-read the store every REFRESH_EVERY (other workers' and replicas' changes)."""
        if self.store is None:
            return
        failing = False
        while True:
            await trio.sleep(REFRESH_EVERY)
            try:
                await self.load()
                failing = False
            except KeyStoreError as exc:
                if not failing:
                    log.warning("minted keys: cannot refresh (%s); serving the last known keys", exc)
                failing = True

    # ---- the request path (shared stores only) ---------------------------------
    async def confirm(self, digest: str):
        """The store's word on a hash (shared stores): the live ClientKey or
        None.  When the store cannot answer, the last known local view."""
        from busbar.tenancy import key_from_config
        try:
            record = await self.store.confirm(digest, self.confirm_timeout_s)
        except KeyStoreError:
            return self.by_hash.get(digest)
        if record is None or record.get("revoked") is not None or record["id"] in self.reserved:
            self.by_hash.pop(digest, None)
            return None
        key = self.by_hash.get(digest)
        if key is None or self.records.get(record["id"]) != record:
            key = key_from_config(record, 0, minted=True)
            self.records[record["id"]] = record
            self.by_hash[digest] = key
        return key

    # ---- admin -------------------------------------------------------------------
    async def create(self, spec: dict) -> tuple[dict, str]:
        """A new key from `spec` (validated by the caller): (record, secret).
        Raises KeyError when the id is taken (config or minted)."""
        from busbar.tenancy import hash_secret
        key_id = spec.get("id") or f"key-{secrets.token_hex(4)}"
        if key_id in self.reserved or key_id in self.records:
            raise KeyError(key_id)
        secret = new_secret()
        record = {"id": key_id, "key_sha256": hash_secret(secret), "created": round(self.wall(), 3),
                  "revoked": None, **{f: spec[f] for f in FIELDS if f in spec}}
        if not await self.store.insert(record):
            await self.load()           # another replica took the id a moment ago
            raise KeyError(key_id)
        self._index(list(self.records.values()) + [record])
        return record, secret

    async def update(self, key_id: str, changes: dict) -> dict:
        record = dict(self.records[key_id])
        for name in FIELDS:
            if name in changes:
                if changes[name] is None:
                    record.pop(name, None)
                else:
                    record[name] = changes[name]
        await self.store.update(record)
        self._index([record if r["id"] == key_id else r for r in self.records.values()])
        return record

    async def revoke(self, key_id: str) -> dict:
        record = self.records[key_id]
        if record.get("revoked") is None:
            record = {**record, "revoked": round(self.wall(), 3)}
            await self.store.update(record)
            self._index([record if r["id"] == key_id else r for r in self.records.values()])
        return record


def public_view(record: dict) -> dict:
    """A record as the admin API shows it: never the hash, never a secret."""
    return {k: v for k, v in record.items() if k != "key_sha256"}
