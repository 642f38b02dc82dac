"""No secret leaves the gateway: provider keys, gateway client keys and the
admin key appear in no log line, no metrics, no admin output, no usage row."""
from __future__ import annotations

import logging

import httpx
import orjson
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with, last_record

pytestmark = pytest.mark.integration

PROVIDER_A = "sk-PROVIDER-SECRET-aaaa1111"
PROVIDER_B1 = "sk-PROVIDER-SECRET-bbbb2222"
PROVIDER_B2 = "sk-PROVIDER-SECRET-cccc3333"
CLIENT = "gw-CLIENT-SECRET-dddd4444"
WRONG_CLIENT = "gw-WRONG-SECRET-eeee5555"
ADMIN = "adm-ADMIN-SECRET-ffff6666"
SECRETS = [PROVIDER_A, PROVIDER_B1, PROVIDER_B2, CLIENT, WRONG_CLIENT, ADMIN]

CONFIG = {
    "providers": {
        "first": {"protocol": "openai", "base_url": "{a}/v1", "key": PROVIDER_A},
        "second": {"protocol": "openai", "base_url": "{b}/v1", "keys": [PROVIDER_B1, PROVIDER_B2]},
    },
    "pools": {"smart": {"strategy": "ordered", "members": [
        {"provider": "first", "model": "m1", "priority": 0},
        {"provider": "second", "model": "m2", "priority": 1}]}},
    "auth": {"keys": [CLIENT]},
    "admin": {"enabled": True, "key": ADMIN},
}


async def test_secrets_appear_nowhere(caplog, tmp_path, monkeypatch):
    db = tmp_path / "usage.sqlite"
    monkeypatch.setenv("BUSBAR_USAGE_DB", str(db))
    caplog.set_level(logging.INFO)
    a, b = MockVendor(keys=["not-the-configured-key"]), MockVendor()   # a rejects our key: auth fault
    b.fail_next({"error": "rate", "key": PROVIDER_B1})                   # b's first key is rate limited
    admin = {"authorization": f"Bearer {ADMIN}"}
    outputs: dict[str, str] = {}
    async with gateway_with(CONFIG, a=a, b=b) as gw:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"model": "smart", "messages": [{"role": "user", "content": "hi"}]}
            ok = await client.post(gw.url + "/v1/chat/completions", json=body,
                                   headers={"authorization": f"Bearer {CLIENT}"})
            assert ok.status_code == 200
            streamed = await client.post(gw.url + "/v1/chat/completions", json={**body, "stream": True},
                                         headers={"authorization": f"Bearer {CLIENT}"})
            assert streamed.status_code == 200
            denied = await client.post(gw.url + "/v1/chat/completions", json=body,
                                       headers={"authorization": f"Bearer {WRONG_CLIENT}"})
            assert denied.status_code == 401
            record = await last_record(gw)
            ids = [r["id"] for r in gw.gateway.recent]
            # the vendors did see the real keys: the test would catch nothing otherwise
            assert {r["key"] for r in a.received} == {PROVIDER_A}
            assert {r["key"] for r in b.received} >= {PROVIDER_B1, PROVIDER_B2}
            paths = ["/metrics", "/admin", "/admin/api/state", "/admin/api/requests", "/admin/usage",
                     "/admin/usage?group_by=pool,member,key,client,minute", "/admin/api/diagram?format=dot",
                     "/admin/api/diagram?format=mermaid", "/admin/nope", f"/admin/api/state?key={ADMIN}"]
            paths += [f"/admin/api/requests/{i}" for i in ids]
            for path in paths:
                r = await client.get(gw.url + path, headers=admin)
                assert r.status_code in (200, 404), (path, r.status_code)
                outputs[path] = r.text
                outputs[path + " (headers)"] = orjson.dumps(dict(r.headers)).decode()
            async with client.stream("GET", gw.url + "/admin/events", headers=admin) as stream:
                with trio.fail_after(5):
                    async for line in stream.aiter_lines():
                        if line.startswith("data: "):
                            outputs["/admin/events"] = line
                            break
            await gw.gateway.admin.usage.flush()
    # the gateway's own loggers (httpx, the test's client, logs the URLs it was given)
    outputs["access log and every other log line"] = "\n".join(
        r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.startswith("busbar"))
    outputs["usage database"] = db.read_bytes().decode("latin-1")
    assert any(r.name == "busbar.access" for r in caplog.records)
    assert record["status"] == 401
    state = orjson.loads(outputs["/admin/api/state"])
    assert state["providers"]["first"]["keys"][0]["state"] == "disabled"
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked in {where}"
            assert secret[-8:] not in text, f"part of {secret!r} leaked in {where}"
