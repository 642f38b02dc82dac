"""Admin and metrics on their own listener (`admin.listen`, default
127.0.0.1:9901): the public port never answers /admin* or /metrics;
/metrics there needs no key unless `metrics_need_key`; the page and API keep
their key; `listen: public` keeps the same-port mode (the demo's).  Metrics
and usage accounting are on by default, the page off unless enabled."""
from __future__ import annotations

import copy

import httpx
import pytest

from busbar.admin import DEFAULT_LISTEN, Admin
from busbar.config import parse_config
from busbar.mock import MockVendor
from harness import gateway_with

CONFIG = {
    "providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-a"}},
    "pools": {"smart": {"members": [{"provider": "a", "model": "m"}]}},
}
CHAT = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}


def with_admin(**admin) -> dict:
    config = copy.deepcopy(CONFIG)
    config["admin"] = admin
    return config


def admin_url(gw) -> str:
    host, port = gw.app.admin_addrs[0][:2]
    return f"http://{host}:{port}"


@pytest.fixture(autouse=True)
def no_usage_db(monkeypatch):
    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")


@pytest.mark.pure
def test_defaults_metrics_on_page_off_on_loopback():
    class FakeGateway:
        config = parse_config({"providers": {"a": {"protocol": "openai", "base_url": "http://x/v1", "key": "k"}},
                               "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}}})
    admin = Admin(FakeGateway())
    assert DEFAULT_LISTEN == "127.0.0.1:9901" and admin.listen == DEFAULT_LISTEN
    assert admin.observing and not admin.enabled and not admin.on_public_port
    assert admin.serves(b"/metrics") and not admin.serves(b"/admin")


@pytest.mark.integration
async def test_separate_listener_serves_admin_and_metrics_public_port_never_does():
    config = with_admin(listen="127.0.0.1:0", enabled=True, key="admin-secret")
    async with gateway_with(config, a=MockVendor()) as gw:
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.post(gw.url + "/v1/chat/completions", json=CHAT)).status_code == 200
            # the public port: the gateway's usual 404 in the caller's protocol, with or without the key
            for path in ("/metrics", "/admin", "/admin/api/state"):
                r = await client.get(gw.url + path, headers={"authorization": "Bearer admin-secret"})
                assert r.status_code == 404, path
                assert "admin" not in r.text.lower() or "no route" in r.text.lower()
            internal = admin_url(gw)
            assert internal.rsplit(":", 1)[1] != str(gw.port)
            metrics = await client.get(internal + "/metrics")        # no key needed by default
            assert metrics.status_code == 200
            assert 'busbar_requests_total{' in metrics.text and 'pool="smart"' in metrics.text
            assert (await client.get(internal + "/admin/api/state")).status_code == 401   # the API keeps its key
            state = await client.get(internal + "/admin/api/state", headers={"authorization": "Bearer admin-secret"})
            assert state.status_code == 200 and "smart" in state.json()["pools"]
            page = await client.get(internal + "/admin?key=admin-secret")
            assert page.status_code == 200 and "<html" in page.text.lower()
            other = await client.get(internal + "/v1/models")
            assert other.status_code == 404                          # the admin listener serves nothing else


@pytest.mark.integration
async def test_metrics_key_is_configurable_and_page_is_off_unless_enabled():
    config = with_admin(listen="127.0.0.1:0", key="admin-secret", metrics_need_key=True)
    async with gateway_with(config, a=MockVendor()) as gw:
        async with httpx.AsyncClient(timeout=30) as client:
            internal = admin_url(gw)
            assert (await client.get(internal + "/metrics")).status_code == 401
            assert (await client.get(internal + "/metrics",
                                     headers={"authorization": "Bearer admin-secret"})).status_code == 200
            # not enabled: no page, no API, even with the key
            assert (await client.get(internal + "/admin",
                                     headers={"authorization": "Bearer admin-secret"})).status_code == 404


@pytest.mark.integration
async def test_same_port_mode_for_the_demo():
    config = with_admin(listen="public", enabled=True)
    async with gateway_with(config, a=MockVendor()) as gw:
        assert gw.app.admin_server is None and gw.app.admin_addrs == []
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(gw.url + "/admin")).status_code == 200
            assert (await client.get(gw.url + "/metrics")).status_code == 200


@pytest.mark.integration
async def test_metrics_can_be_turned_off():
    config = with_admin(listen="127.0.0.1:0", metrics=False)
    async with gateway_with(config, a=MockVendor()) as gw:
        assert not gw.gateway.admin.observing and gw.gateway.admin.on_finish not in gw.gateway.listeners
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.get(admin_url(gw) + "/metrics")).status_code == 404


@pytest.mark.integration
async def test_an_admin_address_in_use_is_a_located_config_error():
    import trio

    from busbar.config import ConfigError
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(BaseException) as exc:
            async with gateway_with(with_admin(listen=f"127.0.0.1:{port}"), a=MockVendor()):
                pass
    errors = exc.value.exceptions if isinstance(exc.value, BaseExceptionGroup) else [exc.value]
    while any(isinstance(e, BaseExceptionGroup) for e in errors):
        errors = [x for e in errors for x in (e.exceptions if isinstance(e, BaseExceptionGroup) else [e])]
    config_errors = [e for e in errors if isinstance(e, ConfigError)]
    assert config_errors and config_errors[0].where.endswith("admin.listen")
    assert f"127.0.0.1:{port}" in config_errors[0].message and "public" in config_errors[0].message
