"""The admin API over real sockets: auth, state, requests, diagram, events, usage."""
from __future__ import annotations

import httpx
import orjson
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with, last_record

pytestmark = pytest.mark.integration

ADMIN_KEY = "adm-key-for-tests"

CONFIG = {
    "providers": {
        "first": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-first"},
        "second": {"protocol": "openai", "base_url": "{b}/v1", "keys": ["sk-second-1", "sk-second-2"]},
    },
    "pools": {"smart": {"strategy": "ordered", "members": [
        {"provider": "first", "model": "m1", "priority": 0},
        {"provider": "second", "model": "m2", "priority": 1}]}},
    "admin": {"enabled": True, "key": ADMIN_KEY},
}
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


def admin_config(**admin):
    config = orjson.loads(orjson.dumps(CONFIG))
    config["admin"] = {"enabled": True, **admin}
    return config


@pytest.fixture(autouse=True)
def usage_db(tmp_path, monkeypatch):
    path = tmp_path / "usage.sqlite"
    monkeypatch.setenv("BUSBAR_USAGE_DB", str(path))
    return path


async def chat(client: httpx.AsyncClient, url: str, model: str = "smart", **extra) -> httpx.Response:
    return await client.post(url + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hello"}], **extra},
        headers={"authorization": "Bearer client"})


async def test_admin_page_is_404_unless_enabled_metrics_on_by_default():
    config = admin_config()
    config.pop("admin")
    async with gateway_with(config, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient() as client:
            for path in ("/admin", "/admin/api/state", "/admin/events"):
                assert (await client.get(gw.url + path)).status_code == 404
            assert (await client.get(gw.url + "/metrics")).status_code == 200
        assert gw.gateway.listeners == [gw.gateway.admin.on_finish]
    config["admin"] = {"metrics": False}
    async with gateway_with(config, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient() as client:
            assert (await client.get(gw.url + "/metrics")).status_code == 404
        assert gw.gateway.listeners == []        # nothing on the hot path


async def test_key_is_required_by_header_or_query():
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient() as client:
            r = await client.get(gw.url + "/admin/api/state")
            assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
            assert (await client.get(gw.url + "/admin/api/state", headers={"authorization": "Bearer nope"})
                    ).status_code == 401
            assert (await client.get(gw.url + "/metrics")).status_code == 401
            page = await client.get(gw.url + "/admin")
            assert page.status_code == 401 and "<form" in page.text
            assert (await client.get(gw.url + "/admin/api/state", headers=AUTH)).status_code == 200
            assert (await client.get(gw.url + f"/admin/api/state?key={ADMIN_KEY}")).status_code == 200
            r = await client.get(gw.url + f"/admin?key={ADMIN_KEY}")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
            assert "EventSource" in r.text and "content-security-policy" in r.headers
            assert (await client.post(gw.url + "/admin/api/state", headers=AUTH)).status_code == 405
            assert (await client.get(gw.url + "/admin/nope", headers=AUTH)).status_code == 404


async def test_no_key_configured_means_open():
    async with gateway_with(admin_config(), a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient() as client:
            assert (await client.get(gw.url + "/admin/api/state")).status_code == 200


async def test_state_requests_and_request_detail_after_failover():
    a, b = MockVendor(reply="from a"), MockVendor(reply="from b")
    a.fail_next({"status": 500})
    async with gateway_with(CONFIG, a=a, b=b) as gw:
        async with httpx.AsyncClient() as client:
            r = await chat(client, gw.url)
            assert r.status_code == 200
            record = await last_record(gw)
            state = (await client.get(gw.url + "/admin/api/state", headers=AUTH)).json()
            requests = (await client.get(gw.url + "/admin/api/requests", headers=AUTH)).json()["requests"]
            detail = (await client.get(gw.url + f"/admin/api/requests/{record['id']}", headers=AUTH)).json()
            missing = await client.get(gw.url + "/admin/api/requests/nope", headers=AUTH)
    members = {m["id"]: m for m in state["pools"]["smart"]["members"]}
    assert set(members) == {"smart/first/m1", "smart/second/m2"}
    assert members["smart/second/m2"]["samples"] == 1 and members["smart/second/m2"]["p50_ms"] > 0
    assert members["smart/first/m1"]["breaker"]["state"] == "closed"
    assert members["smart/first/m1"]["breaker"]["consecutive_failures"] == 1
    assert state["totals"] == {"requests": 1, "ok": 1, "failed": 0}
    keys = state["providers"]["second"]["keys"]
    assert [k["state"] for k in keys] == ["active", "active"] and all(k["id"].startswith("second#") for k in keys)
    assert state["recent"][0]["id"] == record["id"]
    assert requests[0]["id"] == record["id"]
    assert [s["state"] for s in detail["record"]["path"]] == [
        "received", "routed", "dispatched", "failing_over", "dispatched", "streaming", "done"]
    assert detail["in_flight"] is False and detail["pipeline"] == "default"
    assert "fault: context, rate, billing, auth, server [step 3]" in detail["diagram"]["mermaid"]
    assert "class failing_over visited" in detail["diagram"]["mermaid"]
    assert detail["diagram"]["svg"].startswith("<svg")          # with or without Graphviz
    assert missing.status_code == 404


async def test_key_state_shows_cooling_and_disabled():
    a, b = MockVendor(), MockVendor()
    a.fail_next({"error": "rate", "retry_after": 30})
    b.fail_next({"error": "billing"})
    async with gateway_with(CONFIG, a=a, b=b) as gw:
        async with httpx.AsyncClient() as client:
            assert (await chat(client, gw.url)).status_code == 200
            state = (await client.get(gw.url + "/admin/api/state", headers=AUTH)).json()
    first = state["providers"]["first"]["keys"][0]
    assert first["models_cooling"]["m1"]["remaining_s"] > 20
    assert "until" not in first["models_cooling"]["m1"]          # monotonic times are not shown...
    assert first["models_cooling"]["m1"]["until_epoch"] > state["now"]  # ...wall-clock ones are
    second = {k["state"]: k for k in state["providers"]["second"]["keys"]}
    assert second["disabled"]["reason"].startswith("billing") and second["disabled"]["until_epoch"] > state["now"]
    assert "active" in second


async def test_diagram_route_formats():
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient() as client:
            await chat(client, gw.url)
            await last_record(gw)
            mermaid = await client.get(gw.url + "/admin/api/diagram?pool=smart&format=mermaid", headers=AUTH)
            dot = await client.get(gw.url + "/admin/api/diagram?pool=smart&format=dot", headers=AUTH)
            bad = await client.get(gw.url + "/admin/api/diagram?format=gif", headers=AUTH)
            svg = await client.get(gw.url + "/admin/api/diagram?format=svg", headers=AUTH)
    assert mermaid.text.startswith("---\ntitle: pool smart") and "stateDiagram-v2" in mermaid.text
    assert "×1" in dot.text and "digraph busbar" in dot.text
    assert bad.status_code == 400
    assert svg.headers["content-type"] == "image/svg+xml" and "<svg" in svg.text   # no Graphviz needed


async def test_events_stream_pushes_state_after_a_request():
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient() as client:
            async with client.stream("GET", gw.url + "/admin/events", headers=AUTH) as stream:
                assert stream.headers["content-type"] == "text/event-stream"
                totals = []
                with trio.fail_after(5):
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            totals.append(orjson.loads(line[6:])["totals"]["requests"])
                            if len(totals) == 1:
                                assert (await chat(client, gw.url)).status_code == 200
                            elif totals[-1] == 1:
                                break
    assert totals[0] == 0 and totals[-1] == 1


async def test_usage_is_accounted_and_queryable(usage_db):
    from busbar.ir import Usage
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        gateway = gw.gateway
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                assert (await chat(client, gw.url)).status_code == 200
            await last_record(gw)
            # a record as the gateway makes it once it parsed the upstream's usage
            record = gateway.recent_records[-1]
            assert record.usage is not None and record.usage.input_tokens > 0
            record.usage = Usage(input_tokens=100, output_tokens=40, cached_tokens=30, reasoning_tokens=10)
            record.client_key_id = "c0ffee12"
            gateway.admin.on_finish(record)
            r = await client.get(gw.url + "/admin/usage?since=1h&group_by=pool,client", headers=AUTH)
            bad = await client.get(gw.url + "/admin/usage?group_by=pool,secret", headers=AUTH)
            by_key = (await client.get(gw.url + "/admin/usage?group_by=key,day", headers=AUTH)).json()
    rows = {row["client"]: row for row in r.json()["rows"]}
    assert rows["c0ffee12"] == {"pool": "smart", "client": "c0ffee12", "requests": 1, "input_tokens": 100,
                                "output_tokens": 40, "cached_tokens": 30, "reasoning_tokens": 10,
                                "cache_write_tokens": 0, "usd": 0.0}      # no member price configured
    assert rows["-"]["requests"] == 3
    assert bad.status_code == 400 and "allowed: pool, member, key" in bad.json()["error"]
    assert by_key["rows"][0]["key"].startswith("first#0:") and len(by_key["rows"][0]["day"]) == 10
    assert usage_db.exists()


async def test_admin_task_flushes_usage_every_second_and_on_exit(usage_db):
    import sqlite3
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        admin = gw.gateway.admin
        async with trio.open_nursery() as nursery:
            await nursery.start(admin.run)
            async with httpx.AsyncClient() as client:
                assert (await chat(client, gw.url)).status_code == 200
            await last_record(gw)
            with trio.fail_after(3):
                while admin.usage.pending or not admin.usage.flushed_rows:
                    await trio.sleep(0.05)
            admin.usage.observe(gw.gateway.recent_records[-1])     # one more, left pending
            nursery.cancel_scope.cancel()
    total = sqlite3.connect(usage_db).execute("SELECT SUM(requests) FROM usage").fetchone()[0]
    assert total == 2


async def test_closing_the_admin_ends_event_streams():
    """A graceful shutdown waits for open requests: an admin page left open must not hold it."""
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        async with httpx.AsyncClient() as client:
            async with client.stream("GET", gw.url + "/admin/events", headers=AUTH) as stream:
                with trio.fail_after(3):
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            await gw.gateway.admin.aclose()
                    # the loop ended: the server finished the chunked response


async def test_in_flight_requests_are_shown_when_the_gateway_tracks_them():
    from busbar.gateway import AttemptRecord, RequestRecord
    async with gateway_with(CONFIG, a=MockVendor(), b=MockVendor()) as gw:
        rec = RequestRecord("live-1", "openai", pool="smart")
        rec.lifecycle.fire("route", "smart")
        rec.lifecycle.fire("dispatch", "smart/first/m1")
        rec.attempts.append(AttemptRecord("smart/first/m1", "first#0:abcd"))
        gw.gateway.active = {rec.id: rec}            # the gateway's registry of requests in progress
        async with httpx.AsyncClient() as client:
            detail = (await client.get(gw.url + "/admin/api/requests/live-1", headers=AUTH)).json()
            state = (await client.get(gw.url + "/admin/api/state", headers=AUTH)).json()
    assert detail["in_flight"] is True and detail["record"]["state"] == "dispatched"
    assert "class dispatched visited" in detail["diagram"]["mermaid"]
    assert [r["id"] for r in state["active"]] == ["live-1"]
