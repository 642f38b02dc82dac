"""Spend per client key through the gateway (issue 15): the usage ledger in
`/admin/usage` and `busbar usage` priced at read time (a price fixed by a
reload re-prices history), and the Prometheus series
`busbar_spend_usd_total{key,pool}` / `busbar_key_limited_total{key,reason}`,
with SDK clients (buffered, streamed, a translated pair)."""
from __future__ import annotations

import json
import logging

import httpx
import openai
import pytest
import trio
import yaml

from busbar.cli import main as cli
from busbar.mock import MockVendor
from clients import anthropic_messages, openai_chat
from harness import gateway_with, sdk
from redis_support import redis_server  # noqa: F401  (fixture)

ADMIN = {"authorization": "Bearer admin-secret"}


def config(db, vendor_url="{a}", price=2.5):
    return {
        "providers": {"oai": {"protocol": "openai", "base_url": vendor_url + "/v1", "key": "sk-upstream"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o",
                                         "price": {"input": price, "output": 4 * price, "cached_input": price / 2}}]}},
        "auth": {"keys": [{"id": "team-a", "key": "client-secret-a", "team": "platform", "limits": {"rpm": 50},
                           "budget": {"usd": 0.0002, "period": "month", "alert": 0.01}},
                          {"id": "team-b", "key": "client-secret-b", "limits": {"rpm": 1}}],
                 "teams": {"platform": {}}, "keys_db": "off"},
        "admin": {"enabled": True, "key": "admin-secret", "usage_db": str(db)},
    }


def metric(text: str, name: str, **labels) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def price_of(usage, price):
    return ((usage.input_tokens - usage.cached_tokens) * price + usage.cached_tokens * price / 2
            + usage.output_tokens * 4 * price) / 1e6


@pytest.mark.sdk
async def test_spend_ledger_prices_at_read_time_and_metrics_label_by_key_id(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="busbar")
    db = tmp_path / "usage.sqlite"
    vendor = MockVendor(reply="one two three")
    async with gateway_with(config(db), a=vendor) as gw:
        await sdk(lambda: openai_chat(gw.url, "smart", "hello", api_key="client-secret-a"))
        await sdk(lambda: openai_chat(gw.url, "smart", "hello there", stream=True, api_key="client-secret-a"))
        await sdk(lambda: anthropic_messages(gw.url, "smart", "a translated pair", api_key="client-secret-a"))
        # the third crossed the budget (0.0002 USD): the next is the vendor's exhausted-quota error
        with pytest.raises(openai.RateLimitError) as info:
            await sdk(lambda: openai_chat(gw.url, "smart", "hello", api_key="client-secret-a"))
        assert info.value.code == "insufficient_quota"
        with pytest.raises(openai.RateLimitError) as info:             # team-b: rpm 1
            for _ in range(2):
                await sdk(lambda: openai_chat(gw.url, "smart", "hello", api_key="client-secret-b"))
        assert info.value.code == "rate_limit_exceeded"
        with trio.fail_after(5):
            while gw.gateway.in_flight or len(gw.gateway.recent_records) < 6:
                await trio.sleep(0.005)
        answered = [r for r in gw.gateway.recent_records if r.status == 200 and r.tenant == "team-a"]
        assert len(answered) == 3 and all(r.usage.output_tokens for r in answered)
        expected = sum(price_of(r.usage, 2.5) for r in answered)
        assert sum(r.cost_usd for r in answered) == pytest.approx(expected, rel=1e-12)
        async with httpx.AsyncClient(base_url=gw.url) as http:
            r = await http.get("/admin/usage", headers=ADMIN,
                               params={"group_by": "client_key,team,pool,model,month"})
            assert r.status_code == 200, r.text
            row, other = r.json()["rows"]
            assert other["client_key"] == "team-b" and other["team"] == "-" and other["requests"] == 1
            assert (row["client_key"], row["team"], row["pool"], row["model"]) == ("team-a", "platform", "smart",
                                                                                   "gpt-4o")
            assert row["requests"] == 3 and row["usd"] == pytest.approx(expected, rel=1e-9)
            assert row["input_tokens"] == sum(r.usage.input_tokens for r in answered)
            metrics = (await http.get("/metrics", headers=ADMIN)).text
            assert metric(metrics, "busbar_spend_usd_total", key="team-a", pool="smart") == pytest.approx(expected)
            assert metric(metrics, "busbar_key_limited_total", key="team-a", reason="budget") == 1
            assert metric(metrics, "busbar_key_limited_total", key="team-b", reason="rpm") == 1
            assert metric(metrics, "busbar_budget_alerts_total", level="team-a") == 1
            bad = await http.get("/admin/usage", headers=ADMIN, params={"group_by": "pool,secret"})
            assert bad.status_code == 400 and "client_key" in bad.json()["error"]
            # a fixed price is a reload: the ledger re-prices what was used, /metrics keeps what was charged
            path = tmp_path / "busbar.yaml"
            path.write_text(yaml.safe_dump({**config(db, vendor.url, price=5.0),
                                            "admin": {**config(db)["admin"], "listen": "public"}}))
            gw.app.config_path = str(path)
            assert (await http.post("/admin/reload", headers=ADMIN)).status_code == 200
            row, _ = (await http.get("/admin/usage", headers=ADMIN, params={"group_by": "client_key"})).json()["rows"]
            assert row["usd"] == pytest.approx(2 * expected, rel=1e-9)
            metrics = (await http.get("/metrics", headers=ADMIN)).text
            assert metric(metrics, "busbar_spend_usd_total", key="team-a", pool="smart") == pytest.approx(expected)
            listed = (await http.get("/admin/keys", headers=ADMIN)).json()["keys"]
            assert listed[0]["id"] == "team-a" and listed[0]["spent"] == pytest.approx(expected)
            usage_text = (await http.get("/admin/usage", headers=ADMIN)).text
    # `busbar usage` prices the same ledger with a config's prices
    assert cli(["usage", "--db", str(db), "--config", str(path), "--group-by", "client_key,month", "--json"]) == 0
    for text in (metrics, usage_text, caplog.text):
        assert "client-secret-a" not in text and "client-secret-b" not in text


@pytest.mark.pure
def test_busbar_usage_cli_shows_usd_with_a_config(tmp_path, capsys):
    from busbar.admin.usage import UsageStore
    from busbar.gateway import AttemptRecord, RequestRecord
    from busbar.ir import Usage
    db = tmp_path / "u.sqlite"
    store = UsageStore(str(db))
    rec = RequestRecord("id", "openai", pool="smart", status=200, usage=Usage(input_tokens=1_000_000,
                                                                               output_tokens=100_000))
    rec.attempts = [AttemptRecord("smart/oai/gpt-4o", "oai#0", outcome="ok")]
    rec.tenant = "team-a"
    store.observe(rec)
    store.flush_sync()
    store.close()
    path = tmp_path / "busbar.yaml"
    path.write_text(yaml.safe_dump(config(db, "http://127.0.0.1:9")))
    assert cli(["usage", "--db", str(db), "--config", str(path), "--group-by", "client_key,model"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[-1] == "usd" and out[1].split()[:2] == ["team-a", "gpt-4o"]
    assert out[1].split()[-1] == "3.500000"                       # 1M x 2.5 + 0.1M x 10 per 1M
    assert cli(["usage", "--db", str(db), "--config", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"][0]["usd"] == pytest.approx(3.5)


def _alerts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "busbar.alert" and "has used" in r.getMessage()]


def alert_config(**auth) -> dict:
    return {
        "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
        "auth": {"keys": [{"id": "metered", "key": "client-secret-m",
                           "budget": {"tokens": 100000, "period": "month", "alert": 0.001}}], **auth},
        "admin": {"enabled": True, "key": "admin-secret", "usage_db": "off"},
    }


async def _until_alerted(gw, caplog, want: int) -> None:
    for _ in range(20):
        await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key="client-secret-m"))
        if len(_alerts(caplog)) >= want:
            return
    raise AssertionError("the budget alert never fired")


async def _past_threshold(gw, requests: int = 3) -> float:
    """A few more requests; the level's spend (over the threshold, so each settle checks the marker)."""
    for _ in range(requests):
        await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key="client-secret-m"))
    return (await gw.app.gateway.tenancy.usage_of("metered"))["budget"]["spent"]


@pytest.mark.sdk
async def test_a_budget_alert_fires_once_per_period_across_a_hot_reload_and_a_restart(tmp_path, caplog):
    """The marker lives in the embedded store (the key store's SQLite file):
    neither a reload (a new Tenancy) nor a restart (memory counters start at
    zero and cross the threshold again) fires it a second time."""
    caplog.set_level(logging.WARNING, logger="busbar.alert")
    cfg = alert_config(keys_db=str(tmp_path / "keys.sqlite"))
    vendor = MockVendor(reply="hi")
    async with gateway_with(cfg, a=vendor) as gw:
        await _until_alerted(gw, caplog, 1)
        assert await _past_threshold(gw) >= 100           # later settles over the threshold: no second alert
        gw.app.reload({**cfg, "providers": {"oai": {**cfg["providers"]["oai"], "base_url": vendor.url + "/v1"}}})
        assert gw.app.gateway.tenancy.alerted == set()    # a new Tenancy: its own memory is empty
        await _past_threshold(gw)
        assert len(_alerts(caplog)) == 1
    async with gateway_with(cfg, a=vendor) as gw:         # a restart: the memory counters begin at 0
        assert (await gw.app.gateway.tenancy.usage_of("metered"))["budget"]["spent"] == 0
        spent = await _past_threshold(gw, 8)
        assert spent >= 100                               # crossed the threshold again ...
        assert len(_alerts(caplog)) == 1                  # ... and the marker said it had fired this period


@pytest.mark.sdk
async def test_a_budget_alert_fires_once_across_replicas_sharing_redis_and_their_restart(redis_server, caplog):
    caplog.set_level(logging.WARNING, logger="busbar.alert")
    cfg = alert_config()
    cfg["state"] = {"backend": "redis", "url": redis_server.url, "prefix": "alerts", "timeout_ms": 1000}
    vendor = MockVendor(reply="hi")
    async with gateway_with(cfg, a=vendor) as one, gateway_with(cfg, a=vendor) as two:
        await _until_alerted(one, caplog, 1)
        await _past_threshold(two)                        # the shared counter is past it on two as well
        assert len(_alerts(caplog)) == 1
    async with gateway_with(cfg, a=vendor) as three:
        await _past_threshold(three)
    assert len(_alerts(caplog)) == 1
