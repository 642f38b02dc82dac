"""Usage accounting: requests and tokens per pool, member, key, client and
client key (tenancy id and team), by the minute, in SQLite; spend in USD
priced at read time.

On the hot path `observe(record)` only adds to an in-memory table keyed by
(minute, pool, member, key id, client id): its size is bounded by the
distinct combinations in one flush interval, not by traffic.  `flush()` hands
the batch to a worker thread (`trio.to_thread.run_sync`) that upserts it in
one transaction; the Admin's task flushes every second and once more on
shutdown, and every query flushes first so answers are current.

Keys are named by their ids (`provider#index:sha256-prefix`), gateway
clients by a hash of their key (`busbar.routing.fingerprint`) and by the
tenancy key id and team (`client_key`, `team`); no secret is ever written.

The ledger keeps tokens by price class (input, cache reads, cache writes,
output, reasoning) per member, never dollars: a query prices each member's
tokens with the member's *current* `price` (`busbar.tenancy.Price`), so
fixing a price is a config reload, not a re-bill.

    busbar usage --db busbar-usage.sqlite --since 24h --group-by client_key,month --config busbar.yaml
"""
from __future__ import annotations

import re
import sqlite3
import threading
import time
from datetime import datetime, timezone

DEFAULT_DB = "busbar-usage.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    minute INTEGER NOT NULL,            -- unix seconds, start of the minute
    pool TEXT NOT NULL,
    member TEXT NOT NULL,
    key_id TEXT NOT NULL,               -- provider#index:hash, never the key
    client_id TEXT NOT NULL,            -- hash of the gateway client key, '-' without auth
    requests INTEGER NOT NULL DEFAULT 0,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens INTEGER NOT NULL DEFAULT 0,
    client_key TEXT NOT NULL DEFAULT '-',   -- the tenancy key id (auth.keys[].id or minted), never the secret
    team TEXT NOT NULL DEFAULT '-',
    cache_write_tokens INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (minute, pool, member, key_id, client_id, client_key, team)
)
"""
# a database written before client_key/team/cache_write_tokens existed: rebuilt once with them
MIGRATE = """
ALTER TABLE usage RENAME TO usage_before_tenancy;
{schema};
INSERT INTO usage (minute, pool, member, key_id, client_id, requests, input_tokens, output_tokens,
                   cached_tokens, reasoning_tokens)
SELECT minute, pool, member, key_id, client_id, requests, input_tokens, output_tokens, cached_tokens,
       reasoning_tokens FROM usage_before_tenancy;
DROP TABLE usage_before_tenancy;
"""
UPSERT = """
INSERT INTO usage (minute, pool, member, key_id, client_id, client_key, team, requests, input_tokens,
                   output_tokens, cached_tokens, reasoning_tokens, cache_write_tokens)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (minute, pool, member, key_id, client_id, client_key, team) DO UPDATE SET
    requests = requests + excluded.requests,
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cached_tokens = cached_tokens + excluded.cached_tokens,
    reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens
"""
VALUES = ("requests", "input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cache_write_tokens")
# group_by names -> SQL expression (a fixed list: nothing from the query string reaches SQL)
GROUPS = {
    "pool": "pool", "member": "member", "key": "key_id", "client": "client_id",
    "client_key": "client_key", "team": "team",
    "model": None,                     # the member's model, resolved at read time (the config knows it)
    "minute": "strftime('%Y-%m-%dT%H:%M:00Z', minute, 'unixepoch')",
    "hour": "strftime('%Y-%m-%dT%H:00:00Z', minute, 'unixepoch')",
    "day": "strftime('%Y-%m-%d', minute, 'unixepoch')",
    # the budget periods (busbar.tenancy.period_bounds): ISO week starting Monday, calendar month, UTC
    "week": "date(minute, 'unixepoch', 'weekday 0', '-6 days')",
    "month": "strftime('%Y-%m', minute, 'unixepoch')",
}
DEFAULT_GROUP_BY = ("pool", "member", "key")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class UsageError(ValueError):
    """A bad `since` / `group_by`: the message says what is allowed."""


def parse_since(value: str | float | None, now: float | None = None) -> float | None:
    """`since` as unix seconds: a number (unix seconds), a duration back from
    now (`90s`, `15m`, `24h`, `7d`, `2w`) or an ISO-8601 date/time (UTC unless
    it says otherwise)."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    now = time.time() if now is None else now
    m = _RELATIVE.match(text)
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"since={value!r}: give unix seconds, a duration like 24h / 7d, "
                         "or an ISO date such as 2024-06-01T00:00:00Z") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def parse_group_by(value: str | list | tuple | None) -> tuple[str, ...]:
    if value is None or value == "":
        return DEFAULT_GROUP_BY
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [n for n in names if n not in GROUPS]
    if bad:
        raise UsageError(f"group_by: unknown {', '.join(map(repr, bad))}; allowed: {', '.join(GROUPS)}")
    return tuple(dict.fromkeys(names))


def open_db(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=10)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(SCHEMA)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
    if "client_key" not in columns:
        conn.executescript("BEGIN;" + MIGRATE.format(schema=SCHEMA.strip()) + "COMMIT;")
    return conn


def query_db(conn: sqlite3.Connection, since: float | None = None, until: float | None = None,
             group_by: tuple[str, ...] = DEFAULT_GROUP_BY, prices: dict | None = None,
             models: dict | None = None) -> list[dict]:
    """Sums of requests and tokens per group, biggest token users first.
    With `prices` (member id -> Price) each row gets `usd`: every member's
    tokens priced at its current rates (members without a price count 0)."""
    per_member = prices is not None or "model" in group_by
    if not per_member:
        return _query(conn, since, until, group_by)
    sql_groups = tuple(g for g in group_by if g != "model") + (() if "member" in group_by else ("member",))
    out: dict[tuple, dict] = {}
    models = models or {}
    for row in _query(conn, since, until, sql_groups):
        member = row["member"]
        row["model"] = models.get(member) or member.rsplit("/", 1)[-1]
        group = tuple(row[g] for g in group_by)
        total = out.get(group)
        if total is None:
            total = out[group] = {**{g: row[g] for g in group_by}, **{v: 0 for v in VALUES}, "usd": 0.0}
        for v in VALUES:
            total[v] += row[v]
        price = (prices or {}).get(member)
        if price is not None:
            total["usd"] += price.cost(_Tokens(row))
    rows = list(out.values())
    for row in rows:
        row["usd"] = round(row["usd"], 9)
        if prices is None:
            del row["usd"]
    rows.sort(key=lambda r: (-(r["input_tokens"] + r["output_tokens"]), -r["requests"],
                             *(str(r[g]) for g in group_by)))
    return rows


class _Tokens:
    """A ledger row as `Price.cost` reads a usage."""

    __slots__ = ("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "cache_creation_tokens")

    def __init__(self, row: dict):
        self.input_tokens, self.output_tokens = row["input_tokens"], row["output_tokens"]
        self.cached_tokens, self.reasoning_tokens = row["cached_tokens"], row["reasoning_tokens"]
        self.cache_creation_tokens = row["cache_write_tokens"]


def _query(conn, since, until, group_by) -> list[dict]:
    cols = [f"{GROUPS[g]} AS {g}" for g in group_by]
    sums = [f"SUM({v}) AS {v}" for v in VALUES]
    where, params = [], []
    if since is not None:
        where.append("minute >= ?")
        params.append(int(since // 60 * 60))
    if until is not None:
        where.append("minute < ?")
        params.append(int(until))
    sql = f"SELECT {', '.join(cols + sums)} FROM usage"
    if where:
        sql += " WHERE " + " AND ".join(where)
    if group_by:
        sql += " GROUP BY " + ", ".join(group_by)
    sql += " ORDER BY input_tokens + output_tokens DESC, requests DESC"
    if group_by:
        sql += ", " + ", ".join(group_by)
    conn.row_factory = sqlite3.Row
    rows = [dict(r) for r in conn.execute(sql, params)]
    return [r for r in rows if r["requests"] is not None]


class UsageStore:
    """The Admin's usage table: in-memory batch + SQLite file."""

    def __init__(self, path: str):
        self.path = path
        self.pending: dict[tuple, list[int]] = {}
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()       # one writer/reader on the connection at a time
        self._flushing = None               # trio.Lock, made on first use (inside trio)
        self.flushed_rows = 0

    # ---- hot path ------------------------------------------------------------
    def observe(self, record) -> None:
        attempts = record.attempts
        if not attempts:
            return     # never reached a member: nothing was used
        final = attempts[-1]
        for a in attempts:
            if a.outcome == "ok":
                final = a
        k = (int(record.started) // 60 * 60, record.pool or "-", final.member, final.key or "-",
             record.client_key_id or "-", record.tenant or "-", record.team or "-")
        row = self.pending.get(k)
        if row is None:
            row = self.pending[k] = [0, 0, 0, 0, 0, 0]
        row[0] += 1
        usage = record.usage
        if usage is not None:
            row[1] += usage.input_tokens
            row[2] += usage.output_tokens
            row[3] += usage.cached_tokens
            row[4] += usage.reasoning_tokens
            row[5] += usage.cache_creation_tokens

    # ---- off the hot path ------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = open_db(self.path)
        return self._conn

    def _write(self, batch: dict) -> None:
        rows = [(*k, *v) for k, v in batch.items()]
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                conn.executemany(UPSERT, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self.flushed_rows += len(rows)

    def flush_sync(self) -> None:
        """Write the pending batch now, on this thread (shutdown, tests)."""
        batch, self.pending = self.pending, {}
        if batch:
            try:
                self._write(batch)
            except Exception:
                self._restore(batch)
                raise

    def _restore(self, batch: dict) -> None:
        # a failed write: keep the counts for the next flush
        for k, v in batch.items():
            row = self.pending.setdefault(k, [0, 0, 0, 0, 0, 0])
            for i, n in enumerate(v):
                row[i] += n

    async def flush(self) -> None:
        """Write the pending batch in a worker thread; one flush at a time."""
        import trio
        if self._flushing is None:
            self._flushing = trio.Lock()
        async with self._flushing:
            batch, self.pending = self.pending, {}
            if not batch:
                return
            try:
                await trio.to_thread.run_sync(self._write, batch)
            except BaseException:
                self._restore(batch)
                raise

    async def query(self, since: float | None = None, until: float | None = None,
                    group_by: tuple[str, ...] = DEFAULT_GROUP_BY, prices: dict | None = None,
                    models: dict | None = None) -> list[dict]:
        import trio
        await self.flush()

        def run():
            with self._lock:
                return query_db(self._connection(), since, until, group_by, prices, models)

        return await trio.to_thread.run_sync(run)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


# ---------------------------------------------------------------------------
# `busbar usage`
# ---------------------------------------------------------------------------
def main(args) -> int:
    """`busbar usage --db FILE [--since 24h] [--until T] [--group-by pool,member,key] [--config FILE] [--json]`
    (with --config: USD from its members' prices, and the `model` group from its pools)."""
    import os
    import sys

    import orjson

    if not os.path.exists(args.db):
        print(f"busbar: no usage database at {args.db} (the gateway writes it when admin is enabled; "
              "see docs/observability.md)", file=sys.stderr)
        return 1
    try:
        since = parse_since(args.since)
        until = parse_since(args.until)
        group_by = parse_group_by(args.group_by)
    except UsageError as exc:
        print(f"busbar: {exc}", file=sys.stderr)
        return 2
    prices = models = None
    if getattr(args, "config", None):
        from busbar.config import ConfigError, load_config
        from busbar.tenancy import member_models, member_prices
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"busbar: {exc}", file=sys.stderr)
            return 2
        prices, models = member_prices(config.pools), member_models(config.pools)
    conn = open_db(args.db)
    try:
        rows = query_db(conn, since, until, group_by, prices, models)
    finally:
        conn.close()
    if args.json:
        sys.stdout.write(orjson.dumps({"since": since, "until": until, "group_by": list(group_by),
                                       "rows": rows}, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    values = VALUES + (("usd",) if prices is not None else ())
    headers = list(group_by) + ["requests", "input", "output", "cached", "reasoning", "cache_write"] + \
        (["usd"] if prices is not None else [])
    show = lambda v, n: f"{n:.6f}" if v == "usd" else str(n)
    table = [[str(r[g]) for g in group_by] + [show(v, r[v]) for v in values] for r in rows]
    total = [sum(r[v] for r in rows) for v in values]
    if rows and group_by:
        table.append(["total"] + [""] * (len(group_by) - 1) + [show(v, t) for v, t in zip(values, total)])
    widths = [max([len(h)] + [len(row[i]) for row in table]) for i, h in enumerate(headers)]
    nums = len(group_by)
    fmt = lambda row: "  ".join(c.rjust(w) if i >= nums else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    print(fmt(headers))
    for row in table:
        print(fmt(row))
    if not rows:
        print("(no usage recorded in that period)")
    return 0
