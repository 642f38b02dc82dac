"""Usage accounting: batching, SQLite upserts, queries and `busbar usage`."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone

import pytest

from busbar.admin.usage import UsageError, UsageStore, parse_group_by, parse_since
from busbar.cli import main as cli
from busbar.gateway import AttemptRecord, RequestRecord
from busbar.ir import Usage

pytestmark = pytest.mark.pure


def record(pool="smart", member="smart/p/m", key="p#0:abcd", client=None, usage=None, outcomes=("ok",),
           started=None):
    rec = RequestRecord("id", "openai", pool=pool, status=200, usage=usage, client_key_id=client)
    rec.attempts = [AttemptRecord(f"{member}{'' if o == 'ok' else '-failed'}", key, outcome=o) for o in outcomes]
    if started is not None:
        rec.started = started
    return rec


def test_parse_since_forms():
    now = 1_700_000_000.0
    assert parse_since("24h", now) == now - 86400
    assert parse_since("90s", now) == now - 90
    assert parse_since("2w", now) == now - 2 * 604800
    assert parse_since("1700000000", now) == 1_700_000_000.0
    assert parse_since("2024-06-01T00:00:00Z") == datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp()
    assert parse_since("2024-06-01") == datetime(2024, 6, 1, tzinfo=timezone.utc).timestamp()
    assert parse_since(None) is None and parse_since("") is None
    with pytest.raises(UsageError, match="24h"):
        parse_since("yesterday")


def test_group_by_is_a_fixed_list():
    assert parse_group_by(None) == ("pool", "member", "key")
    assert parse_group_by("client, hour") == ("client", "hour")
    with pytest.raises(UsageError, match="allowed: pool, member, key, client, client_key, team, model, minute, "
                                         "hour, day, week, month"):
        parse_group_by("pool; DROP TABLE usage")


def test_batch_is_bounded_by_combinations_not_traffic(tmp_path):
    store = UsageStore(str(tmp_path / "u.sqlite"))
    now = time.time()
    for _ in range(1000):
        store.observe(record(usage=Usage(input_tokens=10, output_tokens=2), started=now))
    assert len(store.pending) == 1
    assert list(store.pending.values())[0] == [1000, 10000, 2000, 0, 0, 0]
    store.observe(record(outcomes=()))            # never reached a member: not counted
    assert len(store.pending) == 1


def test_failed_over_requests_count_for_the_member_that_answered(tmp_path):
    store = UsageStore(str(tmp_path / "u.sqlite"))
    store.observe(record(outcomes=("server", "ok"), usage=Usage(input_tokens=5, output_tokens=1)))
    ((_, _, member, _, _, _, _),) = store.pending
    assert member == "smart/p/m"


async def test_flush_upserts_and_query_sums(tmp_path):
    path = tmp_path / "u.sqlite"
    store = UsageStore(str(path))
    t = time.time()
    store.observe(record(usage=Usage(input_tokens=100, output_tokens=10, cached_tokens=50, reasoning_tokens=3),
                         client="c1", started=t))
    store.observe(record(usage=Usage(input_tokens=1, output_tokens=1), client="c2", started=t))
    await store.flush()
    store.observe(record(usage=Usage(input_tokens=100, output_tokens=10), client="c1", started=t))
    store.observe(record(pool="cheap", member="cheap/q/n", key="q#0:ffff", started=t - 7200))
    rows = await store.query(group_by=("client",))            # flushes the rest first
    assert rows == [
        {"client": "c1", "requests": 2, "input_tokens": 200, "output_tokens": 20, "cached_tokens": 50,
         "reasoning_tokens": 3, "cache_write_tokens": 0},
        {"client": "c2", "requests": 1, "input_tokens": 1, "output_tokens": 1, "cached_tokens": 0,
         "reasoning_tokens": 0, "cache_write_tokens": 0},
        {"client": "-", "requests": 1, "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0,
         "reasoning_tokens": 0, "cache_write_tokens": 0},
    ]
    recent = await store.query(since=t - 3600, group_by=("pool",))
    assert [r["pool"] for r in recent] == ["smart"]
    everything = await store.query(group_by=())
    assert everything == [{"requests": 4, "input_tokens": 201, "output_tokens": 21, "cached_tokens": 50,
                           "reasoning_tokens": 3, "cache_write_tokens": 0}]
    store.close()


def test_cli_usage_table_and_json(tmp_path, capsys):
    path = tmp_path / "u.sqlite"
    store = UsageStore(str(path))
    store.observe(record(usage=Usage(input_tokens=1234, output_tokens=56)))
    store.observe(record(pool="cheap", member="cheap/q/n", key="q#0:ffff", usage=Usage(input_tokens=7)))
    store.flush_sync()
    store.close()
    assert cli(["usage", "--db", str(path), "--group-by", "pool"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["pool", "requests", "input", "output", "cached", "reasoning", "cache_write"]
    assert out[1].split() == ["smart", "1", "1234", "56", "0", "0", "0"]
    assert out[-1].split() == ["total", "2", "1241", "56", "0", "0", "0"]
    assert cli(["usage", "--db", str(path), "--since", "1h", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["group_by"] == ["pool", "member", "key"] and len(data["rows"]) == 2
    assert cli(["usage", "--db", str(tmp_path / "missing.sqlite")]) == 1
    assert cli(["usage", "--db", str(path), "--group-by", "nope"]) == 2


def test_ledger_keeps_tokens_by_price_class_and_prices_them_at_read_time(tmp_path):
    from busbar.tenancy import Price
    path = tmp_path / "u.sqlite"
    store = UsageStore(str(path))
    t = datetime(2026, 3, 4, 12, tzinfo=timezone.utc).timestamp()          # a Wednesday
    usage = Usage(input_tokens=1000, output_tokens=200, cached_tokens=300, cache_creation_tokens=100,
                  reasoning_tokens=50)
    for tenant, team, member in (("app-1", "platform", "smart/p/m"), ("app-1", "platform", "cheap/q/n"),
                                 ("app-2", None, "smart/p/m")):
        rec = record(member=member, pool=member.split("/")[0], usage=usage, started=t)
        rec.tenant, rec.team = tenant, team
        store.observe(rec)
    store.flush_sync()
    conn = __import__("busbar.admin.usage", fromlist=["open_db"]).open_db(str(path))
    from busbar.admin.usage import query_db
    smart = Price(input=2.0, output=10.0, cached_input=0.5, cache_write=2.5)
    prices = {"smart/p/m": smart}                                          # cheap/q/n has no price: 0
    rows = query_db(conn, group_by=("client_key", "team", "model", "week", "month"), prices=prices,
                    models={"smart/p/m": "gpt-4o", "cheap/q/n": "mini"})
    one = (600 * 2.0 + 300 * 0.5 + 100 * 2.5 + 200 * 10.0) / 1e6          # cache reads/writes never also as input
    assert {(r["client_key"], r["team"], r["model"], r["week"], r["month"]): r["usd"] for r in rows} == {
        ("app-1", "platform", "gpt-4o", "2026-03-02", "2026-03"): pytest.approx(one, rel=1e-12),
        ("app-1", "platform", "mini", "2026-03-02", "2026-03"): 0.0,
        ("app-2", "-", "gpt-4o", "2026-03-02", "2026-03"): pytest.approx(one, rel=1e-12),
    }
    assert all(r["cache_write_tokens"] == 100 and r["cached_tokens"] == 300 for r in rows)
    # a price fixed in the config re-prices history: no re-bill, just a different read
    fixed = {"smart/p/m": Price(input=1.0, output=5.0, cached_input=0.25, cache_write=1.25)}
    (row,) = query_db(conn, group_by=("team",), prices=fixed, models={})[:1]
    assert row["team"] == "platform" and row["usd"] == pytest.approx(one / 2, rel=1e-12)
    (total,) = query_db(conn, group_by=(), prices=prices)
    assert total["requests"] == 3 and total["usd"] == pytest.approx(2 * one, rel=1e-12)
    conn.close()


def test_a_database_from_before_client_keys_is_migrated(tmp_path):
    import sqlite3
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("""CREATE TABLE usage (minute INTEGER NOT NULL, pool TEXT NOT NULL, member TEXT NOT NULL,
        key_id TEXT NOT NULL, client_id TEXT NOT NULL, requests INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0,
        cached_tokens INTEGER NOT NULL DEFAULT 0, reasoning_tokens INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (minute, pool, member, key_id, client_id))""")
    old.execute("INSERT INTO usage VALUES (60, 'smart', 'smart/p/m', 'p#0', '-', 2, 10, 5, 0, 0)")
    old.commit()
    old.close()
    store = UsageStore(str(path))
    rec = record(usage=Usage(input_tokens=1, output_tokens=1), started=90)
    rec.tenant = "app-1"
    store.observe(rec)
    store.flush_sync()
    from busbar.admin.usage import open_db, query_db
    conn = open_db(str(path))
    rows = query_db(conn, group_by=("client_key",))
    assert [(r["client_key"], r["requests"], r["input_tokens"]) for r in rows] == [("-", 2, 10), ("app-1", 1, 1)]
    conn.close()
    store.close()
