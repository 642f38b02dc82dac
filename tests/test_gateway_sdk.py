"""End to end: the official openai and anthropic SDKs through the gateway to
simulated vendors over real sockets (same-protocol passthrough)."""
from __future__ import annotations

import anthropic
import openai
import pytest

from busbar.mock import MockVendor
from harness import gateway_with, last_record, sdk

OPENAI_ONLY = {
    "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "keys": ["sk-1", "sk-2"]}},
    "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
}
ANTHROPIC_ONLY = {
    "providers": {"ant": {"protocol": "anthropic", "base_url": "{a}", "key": "ak-1"}},
    "pools": {"claude": {"members": [{"provider": "ant", "model": "claude-sonnet-4"}]}},
}


def oai(url, **kw):
    return openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0, **kw)


def ant(url, **kw):
    return anthropic.Anthropic(base_url=url, api_key="client-key", max_retries=0, **kw)


@pytest.mark.sdk
async def test_openai_buffered_passthrough():
    vendor = MockVendor(reply="Hello from upstream")
    async with gateway_with(OPENAI_ONLY, a=vendor) as gw:
        result = await sdk(lambda: oai(gw.url).chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], temperature=0.25))
    assert result.choices[0].message.content == "Hello from upstream"
    assert result.choices[0].finish_reason == "stop"
    seen = vendor.received[-1]
    assert seen["model"] == "gpt-4o"                      # pool name rewritten to the member's model
    assert seen["body"]["temperature"] == 0.25            # everything else passed through
    assert seen["key"] in ("sk-1", "sk-2")                # the provider's key, never the client's
    assert seen["path"] == "/v1/chat/completions"


@pytest.mark.sdk
async def test_openai_stream_passthrough():
    vendor = MockVendor(reply="one two three four")
    async with gateway_with(OPENAI_ONLY, a=vendor) as gw:
        def run():
            stream = oai(gw.url).chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "hi"}], stream=True,
                stream_options={"include_usage": True})
            chunks = list(stream)
            return chunks
        chunks = await sdk(run)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.sdk
async def test_keys_rotate_round_robin():
    vendor = MockVendor()
    async with gateway_with(OPENAI_ONLY, a=vendor) as gw:
        client = oai(gw.url)
        for _ in range(4):
            await sdk(lambda: client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}]))
    assert sorted(r["key"] for r in vendor.received) == ["sk-1", "sk-1", "sk-2", "sk-2"]


@pytest.mark.sdk
async def test_anthropic_buffered_and_stream():
    vendor = MockVendor(reply="Bonjour tout le monde")
    async with gateway_with(ANTHROPIC_ONLY, a=vendor) as gw:
        client = ant(gw.url)
        message = await sdk(lambda: client.messages.create(
            model="claude", max_tokens=64, messages=[{"role": "user", "content": "salut"}]))
        assert message.content[0].text == "Bonjour tout le monde"
        assert message.stop_reason == "end_turn"

        def run_stream():
            with client.messages.stream(model="claude", max_tokens=64,
                                        messages=[{"role": "user", "content": "salut"}]) as stream:
                text = "".join(stream.text_stream)
                return text, stream.get_final_message()
        text, final = await sdk(run_stream)
    assert text == "Bonjour tout le monde"
    assert final.stop_reason == "end_turn"
    assert vendor.received[-1]["key"] == "ak-1"
    assert vendor.received[-1]["headers"]["anthropic-version"]   # the client's version, forwarded
    assert vendor.received[-1]["model"] == "claude-sonnet-4"


@pytest.mark.sdk
async def test_anthropic_x_api_key_and_bearer_both_accepted():
    config = {**ANTHROPIC_ONLY, "auth": {"keys": ["gw-secret"]}}
    vendor = MockVendor(reply="ok")
    async with gateway_with(config, a=vendor) as gw:
        by_key = await sdk(lambda: anthropic.Anthropic(base_url=gw.url, api_key="gw-secret", max_retries=0)
                           .messages.create(model="claude", max_tokens=8, messages=[{"role": "user", "content": "a"}]))
        by_token = await sdk(lambda: anthropic.Anthropic(base_url=gw.url, auth_token="gw-secret", max_retries=0)
                             .messages.create(model="claude", max_tokens=8, messages=[{"role": "user", "content": "a"}]))
        assert by_key.content[0].text == by_token.content[0].text == "ok"
        with pytest.raises(anthropic.AuthenticationError):
            await sdk(lambda: anthropic.Anthropic(base_url=gw.url, api_key="wrong", max_retries=0)
                      .messages.create(model="claude", max_tokens=8, messages=[{"role": "user", "content": "a"}]))
    assert all(r["key"] == "ak-1" for r in vendor.received)   # the gateway key never reaches the vendor


@pytest.mark.sdk
async def test_unknown_pool_is_not_found_in_each_protocol():
    async with gateway_with({**OPENAI_ONLY, "providers": {**OPENAI_ONLY["providers"],
                                                          "ant": {"protocol": "anthropic", "base_url": "{a}"}}},
                            a=MockVendor()) as gw:
        with pytest.raises(openai.NotFoundError) as oe:
            await sdk(lambda: oai(gw.url).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}]))
        assert "nope" in str(oe.value)
        with pytest.raises(anthropic.NotFoundError) as ae:
            await sdk(lambda: ant(gw.url).messages.create(model="nope", max_tokens=5,
                                                           messages=[{"role": "user", "content": "x"}]))
        assert ae.value.body["error"]["type"] == "not_found_error"


@pytest.mark.sdk
async def test_direct_provider_model_route():
    vendor = MockVendor(reply="direct")
    async with gateway_with(dict(OPENAI_ONLY, server={"direct_routes": True}), a=vendor) as gw:
        result = await sdk(lambda: oai(gw.url).chat.completions.create(
            model="oai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]))
    assert result.choices[0].message.content == "direct"
    assert vendor.received[-1]["model"] == "gpt-4o-mini"


@pytest.mark.sdk
async def test_direct_routes_are_off_unless_configured():
    vendor = MockVendor(reply="direct")
    async with gateway_with(OPENAI_ONLY, a=vendor) as gw:
        with pytest.raises(openai.NotFoundError) as exc:
            await sdk(lambda: oai(gw.url).chat.completions.create(
                model="oai/gpt-4o-mini", messages=[{"role": "user", "content": "x"}]))
    assert "gpt-4o-mini" in str(exc.value)
    assert vendor.received == []


@pytest.mark.sdk
async def test_models_list_names_pools():
    async with gateway_with(OPENAI_ONLY, a=MockVendor()) as gw:
        models = await sdk(lambda: oai(gw.url).models.list())
    assert [m.id for m in models.data] == ["smart"]


@pytest.mark.sdk
@pytest.mark.parametrize("spelling", ["pool auth: false", "deprecated pipeline received.checks"])
async def test_top_level_auth_decides_and_a_pool_may_opt_out(spelling):
    open_pool = {"members": [{"provider": "oai", "model": "m"}]}
    pipelines = {"plain": {"retry": {"max_attempts": 2}}}
    if spelling == "pool auth: false":
        open_pool["auth"] = False
    else:
        pipelines["public"] = {"received": {"checks": ["max_body"]}}
        open_pool["pipeline"] = "public"
    config = {"auth": {"keys": ["gw-key"]},
              "providers": OPENAI_ONLY["providers"],
              "pipelines": pipelines,
              # a pipeline that lists no checks at all no longer opens its pool
              "pools": {"open": open_pool,
                        "closed": {"pipeline": "plain", "members": [{"provider": "oai", "model": "m"}]}}}
    async with gateway_with(config, a=MockVendor(reply="hi")) as gw:
        anonymous = openai.OpenAI(base_url=gw.url + "/v1", api_key="not-a-gateway-key", max_retries=0)
        result = await sdk(lambda: anonymous.chat.completions.create(
            model="open", messages=[{"role": "user", "content": "x"}]))
        assert result.choices[0].message.content == "hi"
        with pytest.raises(openai.AuthenticationError):
            await sdk(lambda: anonymous.chat.completions.create(model="closed", messages=[{"role": "user", "content": "x"}]))
        member = openai.OpenAI(base_url=gw.url + "/v1", api_key="gw-key", max_retries=0)
        await sdk(lambda: member.chat.completions.create(model="closed", messages=[{"role": "user", "content": "x"}]))
        record = await last_record(gw)
    assert record["state"] == "done"


@pytest.mark.sdk
@pytest.mark.parametrize("client_protocol", ["openai", "anthropic"])
async def test_vendor_echoing_our_key_never_reaches_the_client(client_protocol):
    secret = "sk-live-very-secret-key-123"
    config = {"providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": secret}},
              "pools": {"smart": {"members": [{"provider": "oai", "model": "m"}]}}}
    vendor = MockVendor()
    vendor.always = {"error": "invalid", "message": f"Incorrect API key provided: {secret}."}
    async with gateway_with(config, a=vendor) as gw:
        if client_protocol == "openai":
            with pytest.raises(openai.BadRequestError) as exc:
                await sdk(lambda: oai(gw.url).chat.completions.create(
                    model="smart", messages=[{"role": "user", "content": "x"}]))
        else:
            with pytest.raises(anthropic.BadRequestError) as exc:
                await sdk(lambda: ant(gw.url).messages.create(
                    model="smart", max_tokens=5, messages=[{"role": "user", "content": "x"}]))
        record = await last_record(gw)
    assert secret not in str(exc.value.body) and "[redacted]" in str(exc.value.body)
    assert secret not in str(record)


@pytest.mark.sdk
async def test_openai_usage_chunk_only_when_asked_for_across_protocols():
    config = {"providers": {"ant": {"protocol": "anthropic", "base_url": "{a}", "key": "k"}},
              "pools": {"smart": {"members": [{"provider": "ant", "model": "c"}]}}}
    async with gateway_with(config, a=MockVendor(reply="one two")) as gw:
        def run(include):
            kwargs = {"stream_options": {"include_usage": True}} if include else {}
            return list(oai(gw.url).chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "x"}], stream=True, **kwargs))
        with_usage = await sdk(lambda: run(True))
        without = await sdk(lambda: run(False))
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens > 0
    assert all(chunk.usage is None for chunk in without)


@pytest.mark.integration
async def test_gemini_key_by_header_or_query_parameter():
    import httpx
    config = {"auth": {"keys": ["gw-key"]}, "providers": OPENAI_ONLY["providers"],
              "pools": {"smart": {"members": [{"provider": "oai", "model": "m"}]}}}
    body = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    async with gateway_with(config, a=MockVendor(reply="gemini ok")) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            by_header = await http.post("/v1beta/models/smart:generateContent", json=body,
                                        headers={"x-goog-api-key": "gw-key"})
            by_query = await http.post("/v1beta/models/smart:generateContent?key=gw-key", json=body)
            wrong = await http.post("/v1beta/models/smart:generateContent?key=nope", json=body)
    assert by_header.status_code == by_query.status_code == 200
    assert by_query.json()["candidates"][0]["content"]["parts"][0]["text"] == "gemini ok"
    assert wrong.status_code == 401 and wrong.json()["error"]["status"] == "UNAUTHENTICATED"
