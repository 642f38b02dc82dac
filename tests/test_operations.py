"""Operating the gateway: hot reload, drain, graceful shutdown."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
import trio

from clients import openai_chat
from busbar.config import ConfigError
from busbar.mock import MockVendor
from harness import free_port, gateway_with, sdk, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def two_vendor_config(first="{a}", second="{b}"):
    return {"providers": {"pa": {"protocol": "openai", "base_url": first + "/v1", "key": "ka"},
                          "pb": {"protocol": "openai", "base_url": second + "/v1", "key": "kb"}},
            "pools": {"smart": {"members": [{"provider": "pa", "model": "ma"}]}}}


@pytest.mark.sdk
async def test_reload_swaps_config_and_inflight_requests_finish_on_old_one():
    a, b = MockVendor(reply="from a", latency=0.4), MockVendor(reply="from b")
    async with gateway_with(two_vendor_config(), a=a, b=b) as gw:
        async with trio.open_nursery() as nursery:
            results = []

            async def slow_call():
                results.append(await sdk(lambda: openai_chat(gw.url, "smart", "x")))

            nursery.start_soon(slow_call)
            with trio.fail_after(5):
                while not a.received:
                    await trio.sleep(0.01)
            new = two_vendor_config(a.url, b.url)
            new["pools"]["smart"]["members"] = [{"provider": "pb", "model": "mb"}]
            gw.app.reload(new)
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "from b"
        assert results == ["from a"]           # started before the reload, finished on the old config


@pytest.mark.sdk
async def test_bad_reload_is_rejected_and_old_config_keeps_serving():
    a, b = MockVendor(reply="still a"), MockVendor()
    async with gateway_with(two_vendor_config(), a=a, b=b) as gw:
        broken = two_vendor_config(a.url, b.url)
        broken["pools"]["smart"]["members"] = [{"provider": "ghost", "model": "x"}]
        with pytest.raises(ConfigError):
            gw.app.reload(broken)
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "still a"


@pytest.mark.sdk
async def test_reload_with_a_bad_bedrock_rule_is_rejected(tmp_path):
    """The SIGHUP path (reload from the file): a provider whose error rule
    does not compile is a rejected config, not a dead server."""
    a, b = MockVendor(reply="still a"), MockVendor()
    async with gateway_with(two_vendor_config(), a=a, b=b) as gw:
        path = tmp_path / "busbar.yaml"
        path.write_text(f"providers:\n  pa: {{protocol: openai, base_url: '{a.url}/v1', key: ka}}\n"
                        "  br: {protocol: bedrock, base_url: 'http://127.0.0.1:9', access_key_id: AKID,\n"
                        "       secret_access_key: s, errors: [{match: 'Throttl(ing', class: rate}]}\n"
                        "pools:\n  smart:\n    members:\n      - {provider: br, model: m}\n")
        gw.app.config_path = str(path)
        with pytest.raises(ConfigError) as exc:
            gw.app.reload()
        assert "providers.br.errors[0].match" in str(exc.value)
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "still a"


@pytest.mark.sdk
async def test_reload_wraps_any_build_error_as_a_rejected_config(monkeypatch):
    a, b = MockVendor(reply="still a"), MockVendor()
    async with gateway_with(two_vendor_config(), a=a, b=b) as gw:
        import busbar.gateway

        def broken(name, spec, *defaults):
            raise RuntimeError("cannot build provider " + name)
        monkeypatch.setattr(busbar.gateway, "build_provider", broken)
        with pytest.raises(ConfigError) as exc:
            gw.app.reload(two_vendor_config(a.url, b.url))
        assert "cannot build provider pa" in str(exc.value)
        monkeypatch.undo()
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "still a"


@pytest.mark.sdk
async def test_reload_keeps_breaker_and_key_state():
    a, b = MockVendor(), MockVendor(reply="b")
    a.always = {"status": 500}
    config = two_vendor_config()
    config["pools"]["smart"]["members"].append({"provider": "pb", "model": "mb"})
    config["pools"]["smart"]["strategy"] = "ordered"
    config["pools"]["smart"]["members"][1]["priority"] = 1
    async with gateway_with(config, a=a, b=b) as gw:
        for _ in range(6):
            await sdk(lambda: openai_chat(gw.url, "smart", "x"))
        member = gw.gateway.router.snapshot(trio.current_time())["pools"]["smart"]["members"][0]
        assert member["breaker"]["state"] == "open"
        reloaded = two_vendor_config(a.url, b.url)
        reloaded["pools"] = config["pools"]
        gw.app.reload(reloaded)
        member = gw.gateway.router.snapshot(trio.current_time())["pools"]["smart"]["members"][0]
        assert member["breaker"]["state"] == "open"


@pytest.mark.sdk
async def test_drain_stops_new_requests_and_undrain_restores():
    a, b = MockVendor(reply="a"), MockVendor(reply="b")
    config = two_vendor_config()
    config["pools"]["smart"]["members"].append({"provider": "pb", "model": "mb"})
    config["pools"]["smart"]["strategy"] = "ordered"
    config["pools"]["smart"]["members"][1]["priority"] = 1
    async with gateway_with(config, a=a, b=b) as gw:
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "a"
        assert gw.app.drain("smart/pa/ma") == ["smart/pa/ma"]
        assert [await sdk(lambda: openai_chat(gw.url, "smart", "x")) for _ in range(3)] == ["b", "b", "b"]
        gw.app.drain("smart/pa/ma", False)
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "a"


@pytest.mark.sdk
async def test_drain_lets_inflight_stream_finish():
    a, b = MockVendor(reply="one two three four five", chunk_delay=0.05), MockVendor(reply="b")
    config = two_vendor_config()
    config["pools"]["smart"]["members"].append({"provider": "pb", "model": "mb", "priority": 1})
    config["pools"]["smart"]["strategy"] = "ordered"
    async with gateway_with(config, a=a, b=b) as gw:
        async with trio.open_nursery() as nursery:
            out = []

            async def stream():
                out.append(await sdk(lambda: openai_chat(gw.url, "smart", "x", stream=True)))
            nursery.start_soon(stream)
            with trio.fail_after(5):
                while not a.received:
                    await trio.sleep(0.01)
            gw.app.drain("smart/pa/ma")
        assert out == ["one two three four five"]
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "b"


@pytest.mark.integration
@pytest.mark.slow
def test_sigterm_lets_streams_finish_then_exits_zero(tmp_path):
    mock_port, gw_port = free_port(), free_port()
    config = tmp_path / "c.yaml"
    config.write_text(f"providers:\n  m: {{protocol: openai, base_url: 'http://127.0.0.1:{mock_port}/v1', key: k}}\n"
                      f"pools:\n  smart:\n    members:\n      - {{provider: m, model: x}}\n"
                      "admin: {listen: '127.0.0.1:0'}\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    mock = subprocess.Popen([sys.executable, "-m", "busbar.cli", "mock", "--port", str(mock_port),
                             "--chunk-delay", "0.1", "--chunks", "10"], env=env, stdout=subprocess.DEVNULL)
    gateway = subprocess.Popen([sys.executable, "-m", "busbar.cli", "serve", "--config", str(config),
                                "--port", str(gw_port)], env=env, stderr=subprocess.PIPE)
    try:
        wait_port(mock_port)
        wait_port(gw_port)
        with httpx.Client(timeout=10) as client:
            with client.stream("POST", f"http://127.0.0.1:{gw_port}/v1/chat/completions",
                               json={"model": "smart", "stream": True,
                                     "messages": [{"role": "user", "content": "abcdefghij"}]}) as response:
                chunks = response.iter_bytes()
                first = next(chunks)
                gateway.send_signal(signal.SIGTERM)
                time.sleep(0.2)
                with pytest.raises(OSError):       # no longer accepting
                    socket.create_connection(("127.0.0.1", gw_port), 0.5).close()
                rest = b"".join(chunks)
        assert (first + rest).rstrip().endswith(b"data: [DONE]")
        assert gateway.wait(10) == 0
    finally:
        for proc in (gateway, mock):
            if proc.poll() is None:
                proc.kill()


@pytest.mark.sdk
async def test_admin_api_drain_and_reload(tmp_path):
    a, b = MockVendor(reply="a"), MockVendor(reply="b")
    config = two_vendor_config()
    config["pools"]["smart"]["members"].append({"provider": "pb", "model": "mb", "priority": 1})
    config["pools"]["smart"]["strategy"] = "ordered"
    config["admin"] = {"enabled": True, "key": "admin-secret", "usage_db": "off"}
    async with gateway_with(config, a=a, b=b) as gw:
        admin = {"authorization": "Bearer admin-secret"}
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.post("/admin/members/smart%2Fpa%2Fma/drain")).status_code == 401
            r = await http.post("/admin/members/smart%2Fpa%2Fma/drain", headers=admin)
            assert r.status_code == 200 and r.json()["members"] == ["smart/pa/ma"]
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "b"
            state = (await http.get("/admin/api/state", headers=admin)).json()
            assert "drained" in str(state)
            r = await http.post("/admin/members/smart%2Fpa%2Fma/undrain", headers=admin)
            assert r.status_code == 200
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "a"
            assert (await http.post("/admin/members/nope/drain", headers=admin)).status_code == 404
            # reload from a file: a broken file is rejected, a good one swaps the pools
            path = tmp_path / "busbar.yaml"
            gw.app.config_path = str(path)
            path.write_text("providers: {}\npools: {}\n")
            r = await http.post("/admin/reload", headers=admin)
            assert r.status_code == 400 and "keeps serving" in r.json()["error"]
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "a"
            import yaml
            new = two_vendor_config(a.url, b.url)
            new["pools"]["smart"]["members"] = [{"provider": "pb", "model": "mb"}]
            new["admin"] = config["admin"]
            path.write_text(yaml.safe_dump(new))
            r = await http.post("/admin/reload", headers=admin)
            assert r.status_code == 200, r.text
            assert await sdk(lambda: openai_chat(gw.url, "smart", "x")) == "b"
