"""Token counting and model listing through the gateway with the official
SDKs: Anthropic `messages.count_tokens` and google-genai `count_tokens`,
forwarded to a member that counts, translated to the other protocol that
counts, or estimated (marked `x-busbar-estimate: true`) for members that
cannot; `models.list` in Anthropic's and Gemini's own list shapes."""
from __future__ import annotations

import pytest

from busbar.mock import MockVendor
from busbar.protocols import get_dialect
from busbar.protocols.counting import estimate
from harness import gateway_with, last_record, sdk

CONFIG = {
    "providers": {
        "ant": {"protocol": "anthropic", "base_url": "{v}", "key": "ak"},
        "gem": {"protocol": "gemini", "base_url": "{v}", "key": "gk"},
        "oai": {"protocol": "openai", "base_url": "{v}/v1", "key": "ok"},
    },
    "pools": {
        "claude": {"members": [{"provider": "ant", "model": "claude-sonnet-4"}]},
        "gemini": {"members": [{"provider": "gem", "model": "gemini-2.5-flash"}]},
        "gpt": {"members": [{"provider": "oai", "model": "gpt-4o"}]},
    },
}
MESSAGES = [{"role": "user", "content": "How many tokens is this question, roughly?"}]


def ant(url):
    import anthropic
    return anthropic.Anthropic(base_url=url, api_key="client-key", max_retries=0)


def expected(protocol: str, body: dict) -> int:
    """What the simulated vendor answers: its count of the parsed prompt."""
    return estimate(get_dialect(protocol, "count").parse_request(body, {}))


@pytest.mark.sdk
@pytest.mark.parametrize("pool", ["claude", "gemini", "gpt"])
async def test_anthropic_count_tokens(pool):
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        raw = await sdk(lambda: ant(gw.url).messages.with_raw_response.count_tokens(
            model=pool, system="Be brief.", messages=MESSAGES))
        record = await last_record(gw)
    result = raw.parse()
    assert result.input_tokens == expected("anthropic", {"model": pool, "system": "Be brief.", "messages": MESSAGES})
    assert record["status"] == 200
    if pool == "gpt":       # OpenAI has no counting endpoint: estimated, and it says so
        assert raw.headers.get("x-busbar-estimate") == "true"
        assert vendor.received == []
    else:
        assert raw.headers.get("x-busbar-estimate") is None
        seen = vendor.received[-1]
        if pool == "claude":
            assert seen["path"] == "/v1/messages/count_tokens" and seen["body"]["model"] == "claude-sonnet-4"
        else:   # translated to Gemini's countTokens
            assert seen["path"] == "/v1beta/models/gemini-2.5-flash:countTokens"
            assert seen["body"]["generateContentRequest"]["systemInstruction"]["parts"][0]["text"] == "Be brief."


@pytest.mark.sdk
@pytest.mark.parametrize("pool", ["gemini", "claude", "gpt"])
async def test_genai_count_tokens(pool):
    from google import genai
    from google.genai import types
    vendor = MockVendor()
    async with gateway_with(CONFIG, v=vendor) as gw:
        client = genai.Client(api_key="client-key", http_options=types.HttpOptions(base_url=gw.url))
        result = await sdk(lambda: client.models.count_tokens(model=pool, contents="How many tokens is this?"))
    body = {"contents": [{"role": "user", "parts": [{"text": "How many tokens is this?"}]}]}
    assert result.total_tokens == expected("gemini", body)
    paths = [r["path"] for r in vendor.received]
    assert paths == {"gemini": ["/v1beta/models/gemini-2.5-flash:countTokens"],
                     "claude": ["/v1/messages/count_tokens"], "gpt": []}[pool]


@pytest.mark.sdk
async def test_count_tokens_errors_are_the_callers_protocol_never_a_500():
    import anthropic
    vendor = MockVendor()
    vendor.fail_next({"status": 429})
    async with gateway_with(CONFIG, v=vendor) as gw:
        with pytest.raises(anthropic.NotFoundError):
            await sdk(lambda: ant(gw.url).messages.count_tokens(model="nope", messages=MESSAGES))
        with pytest.raises(anthropic.RateLimitError):     # the vendor's 429, relayed as Anthropic's
            await sdk(lambda: ant(gw.url).messages.count_tokens(model="claude", messages=MESSAGES))
        for pool in ("gpt", "gemini"):                    # parsed by the gateway: its own 400
            with pytest.raises(anthropic.BadRequestError, match="messages"):
                await sdk(lambda: ant(gw.url).messages.count_tokens(model=pool, messages="not a list"))


@pytest.mark.sdk
async def test_models_list_in_each_sdks_shape():
    import anthropic
    import openai
    from google import genai
    from google.genai import types
    async with gateway_with(CONFIG, v=MockVendor()) as gw:
        ant_models = await sdk(lambda: list(ant(gw.url).models.list()))
        one = await sdk(lambda: ant(gw.url).models.retrieve("claude"))
        with pytest.raises(anthropic.NotFoundError):
            await sdk(lambda: ant(gw.url).models.retrieve("nope"))
        client = genai.Client(api_key="client-key", http_options=types.HttpOptions(base_url=gw.url))
        gem_models = await sdk(lambda: list(client.models.list()))
        gem_one = await sdk(lambda: client.models.get(model="gemini"))
        oai = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        oai_models = await sdk(lambda: list(oai.models.list()))
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: oai.models.retrieve("nope"))
    pools = ["claude", "gemini", "gpt"]
    assert [m.id for m in ant_models] == pools and all(m.type == "model" for m in ant_models)
    assert one.id == "claude" and one.display_name == "claude"
    assert [m.name for m in gem_models] == [f"models/{p}" for p in pools]
    assert "countTokens" in gem_models[0].supported_actions and gem_one.name == "models/gemini"
    assert [m.id for m in oai_models] == pools and oai_models[0].owned_by == "busbar"
