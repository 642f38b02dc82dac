"""Direct `provider/model` routes per client key (issue 12, ADR 0009): a
key's `direct: true` allows them even when `server.direct_routes` is off, its
`direct: false` refuses them even when it is on, and a key that says neither
follows the server's flag.  Refusals are the caller's protocol's permission
error naming the route; the vendor never sees a refused request."""
from __future__ import annotations

import anthropic
import openai
import pytest

from busbar.mock import MockVendor
from harness import gateway_with, sdk

ROUTE = "oai/gpt-direct"


def _config(server_flag: bool) -> dict:
    return {"server": {"direct_routes": server_flag},
            "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-up"}},
            "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
            "auth": {"keys": [{"id": "key-on", "key": "client-key-on", "direct": True},
                              {"id": "key-off", "key": "client-key-off", "direct": False},
                              {"id": "key-unset", "key": "client-key-unset"}]}}


def _openai(url, key):
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    answer = client.chat.completions.create(model=ROUTE, messages=[{"role": "user", "content": "hi"}])
    return answer.choices[0].message.content


def _anthropic(url, key):
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    answer = client.messages.create(model=ROUTE, max_tokens=32, messages=[{"role": "user", "content": "hi"}])
    return answer.content[0].text


# (server.direct_routes, key) -> allowed
CASES = [(False, "on", True), (False, "unset", False), (False, "off", False),
         (True, "on", True), (True, "unset", True), (True, "off", False)]


@pytest.mark.sdk
@pytest.mark.parametrize("server_flag", [False, True])
async def test_a_keys_direct_decides_over_the_server_flag(server_flag):
    vendor = MockVendor(reply="direct answer")
    async with gateway_with(_config(server_flag), a=vendor) as gw:
        for flag, key, allowed in CASES:
            if flag != server_flag:
                continue
            for name, call, refused_type in (("openai", _openai, openai.PermissionDeniedError),
                                             ("anthropic", _anthropic, anthropic.PermissionDeniedError)):
                before = len(vendor.received)
                if allowed:
                    assert await sdk(lambda: call(gw.url, f"client-key-{key}")) == "direct answer", (name, key)
                    assert vendor.received[-1]["model"] == "gpt-direct"
                    continue
                with pytest.raises(refused_type) as refused:
                    await sdk(lambda: call(gw.url, f"client-key-{key}"))
                message = str(refused.value)
                assert ROUTE in message and f"key-{key}" in message, message
                assert ("direct: false" in message) if key == "off" else ("server.direct_routes is off" in message)
                assert f"client-key-{key}" not in message
                if name == "anthropic":
                    assert refused.value.body["error"]["type"] == "permission_error"
                assert len(vendor.received) == before, (name, key)     # never reached the vendor
        # the pools keep working for every key
        for key in ("on", "off", "unset"):
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key=f"client-key-{key}", max_retries=0)
            answer = await sdk(lambda: client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "hi"}]))
            assert answer.choices[0].message.content == "direct answer"
        # a route a key may use is labelled by name in /metrics even with the server flag off
        import httpx
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(gw.url + "/metrics")).text
        assert f'pool="{ROUTE}"' in metrics


@pytest.mark.sdk
async def test_without_client_keys_the_server_flag_alone_decides():
    config = _config(False)
    del config["auth"]
    async with gateway_with(config, a=MockVendor(reply="direct answer")) as gw:
        with pytest.raises(openai.NotFoundError) as missing:
            await sdk(lambda: _openai(gw.url, "any"))
        assert ROUTE in str(missing.value)
