"""`/metrics`: Prometheus text fed by the per-request listener and the router."""
from __future__ import annotations

import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from busbar.config import parse_config
from busbar.gateway import AttemptRecord, Gateway, RequestRecord
from busbar.ir import Usage
from busbar.mock import MockVendor
from harness import gateway_with, last_record
from test_admin_api import AUTH, CONFIG, chat


def samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} of every sample."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(all_samples: dict, name: str, **labels) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in all_samples.items() if n == name and want <= ls)


@pytest.fixture(autouse=True)
def no_usage_db(monkeypatch):
    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")


@pytest.mark.integration
async def test_requests_attempts_failovers_latency_and_breaker_gauges():
    config = dict(CONFIG, pipelines={"default": {"breaker": {"failures": 2}}})
    a, b = MockVendor(), MockVendor()
    a.always = {"status": 500}
    async with gateway_with(config, a=a, b=b) as gw:
        async with httpx.AsyncClient() as client:
            for _ in range(3):
                assert (await chat(client, gw.url)).status_code == 200
            assert (await chat(client, gw.url, model="nope")).status_code == 404
            await last_record(gw)
            r = await client.get(gw.url + "/metrics", headers=AUTH)
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = samples(r.text)
    assert value(s, "busbar_requests_total", pool="smart", member="smart/second/m2", client_protocol="openai",
                 upstream_protocol="openai", status="200", fault="none") == 3
    assert value(s, "busbar_requests_total", pool="unknown", status="404", member="-") == 1
    # the breaker opened after two failures: the third request went straight to m2
    assert value(s, "busbar_attempts_total", member="smart/first/m1", outcome="server") == 2
    assert value(s, "busbar_attempts_total", member="smart/second/m2", outcome="ok") == 3
    assert value(s, "busbar_failovers_total", member="smart/first/m1", fault="server") == 2
    assert value(s, "busbar_ttfb_seconds_count", pool="smart", member="smart/second/m2") == 3
    assert value(s, "busbar_ttfb_seconds_bucket", member="smart/second/m2", le="+Inf") == 3
    assert value(s, "busbar_request_duration_seconds_count", pool="smart") == 3
    assert value(s, "busbar_breaker_state", provider="first", model="m1", state="open") == 1
    assert value(s, "busbar_breaker_state", provider="first", model="m1", state="closed") == 0
    assert value(s, "busbar_breaker_state", provider="second", model="m2", state="closed") == 1
    assert value(s, "busbar_breaker_opens_total", provider="first", model="m1") == 1
    assert value(s, "busbar_key_state", provider="second", state="active") == 2
    assert value(s, "busbar_in_flight_requests") == 0
    assert all(name.startswith("busbar_") for name, _ in s)


@pytest.mark.integration
async def test_key_states_and_tokens():
    a, b = MockVendor(), MockVendor()
    a.fail_next({"error": "billing"})
    async with gateway_with(CONFIG, a=a, b=b) as gw:
        async with httpx.AsyncClient() as client:
            assert (await chat(client, gw.url)).status_code == 200
            await last_record(gw)
            r = await client.get(gw.url + "/metrics", headers=AUTH)
    s = samples(r.text)
    assert value(s, "busbar_key_state", provider="first", state="disabled", reason="billing") == 1
    assert value(s, "busbar_key_state", provider="first", state="active") == 0
    assert value(s, "busbar_tokens_total", member="smart/second/m2", kind="input") > 0
    assert value(s, "busbar_tokens_total", member="smart/second/m2", kind="output") > 0


def _gateway(**admin) -> Gateway:
    config = parse_config({"providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1",
                                               "key": "k"}},
                           "pools": {"smart": {"members": [{"provider": "p", "model": "m"}]}},
                           "admin": {"enabled": True, **admin}})
    return Gateway(config)


def _record(i: int = 0) -> RequestRecord:
    rec = RequestRecord(f"r{i}", "openai", pool="smart", status=200, ms=12.5, ttfb_ms=3.2,
                        usage=Usage(input_tokens=20, output_tokens=5))
    rec.attempts = [AttemptRecord("smart/p/m", "p#0:abcd", outcome="server", status=500, ms=1.0),
                    AttemptRecord("smart/p/m", "p#0:abcd", outcome="ok", status=200, ms=3.2)]
    return rec


@pytest.mark.pure
def test_each_gateway_has_its_own_registry():
    one, two = _gateway(), _gateway()
    one.admin.on_finish(_record())
    s1, s2 = samples(one.admin.metrics.render().decode()), samples(two.admin.metrics.render().decode())
    assert value(s1, "busbar_requests_total") == 1 and value(s2, "busbar_requests_total") == 0


@pytest.mark.pure
def test_reload_adoption_keeps_counters_and_one_listener():
    old = _gateway()
    old.admin.on_finish(_record())
    new = _gateway()
    new.listeners.extend(old.listeners)          # what App.reload does
    new.admin.adopt(old.admin)
    assert new.listeners == [new.admin.on_finish]
    new.admin.on_finish(_record())
    old.admin.on_finish(_record())               # a straggler finishing on the old gateway
    assert value(samples(new.admin.metrics.render().decode()), "busbar_requests_total") == 3


@pytest.mark.pure
def test_listener_is_cheap():
    gw = _gateway()
    records = [_record(i) for i in range(2000)]
    listener = gw.admin.on_finish
    start = time.perf_counter()
    for rec in records:
        listener(rec)
    per_request_us = (time.perf_counter() - start) / len(records) * 1e6
    assert per_request_us < 50, per_request_us     # measured ~3 µs; generous for slow CI machines
