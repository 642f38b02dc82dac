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


# ---- OpenAI Responses and Bedrock counting (inbound and outbound) -----------
MORE = {
    "providers": {
        **CONFIG["providers"],
        "rsp": {"protocol": "responses", "base_url": "{v}/v1", "key": "rk"},
        "coh": {"protocol": "cohere", "base_url": "{v}", "key": "ck"},
        "aws": {"protocol": "bedrock", "base_url": "{v}", "region": "us-east-1",
                "access_key_id": "AKIDUPSTREAM", "secret_access_key": "upstream-secret"},
        "awsi": {"protocol": "bedrock-invoke", "base_url": "{v}", "region": "us-east-1",
                 "access_key_id": "AKIDUPSTREAM", "secret_access_key": "upstream-secret"},
    },
    "pools": {
        **CONFIG["pools"],
        "resp": {"members": [{"provider": "rsp", "model": "gpt-4.1"}]},
        "command": {"members": [{"provider": "coh", "model": "command-a-03-2025"}]},
        "br-claude": {"members": [{"provider": "aws", "model": "us.anthropic.claude-sonnet-4-20250514-v1:0"}]},
        "br-llama": {"members": [{"provider": "aws", "model": "meta.llama3-70b-instruct-v1:0"}]},
        "br-invoke": {"members": [{"provider": "awsi", "model": "anthropic.claude-3-5-haiku-20241022-v1:0"}]},
    },
}
# where a count reaches the simulated vendors, per pool ([]: estimated by the gateway)
COUNT_PATHS = {
    "resp": ["/v1/responses/input_tokens"],
    "claude": ["/v1/messages/count_tokens"],
    "gemini": ["/v1beta/models/gemini-2.5-flash:countTokens"],
    "br-claude": ["/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/count-tokens"],
    "br-invoke": ["/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/count-tokens"],      # invokeModel input
    "gpt": [], "command": [], "br-llama": [],
}
RESPONSES_INPUT = [{"role": "user", "content": "How many tokens is this question, roughly?"}]


def oai(url):
    import openai
    return openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)


def bedrock_client(url):
    import boto3
    from botocore.config import Config
    return boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret",
                        config=Config(retries={"max_attempts": 1}))


@pytest.mark.sdk
@pytest.mark.parametrize("pool", list(COUNT_PATHS))
async def test_openai_responses_input_tokens_count(pool):
    vendor = MockVendor()
    async with gateway_with(MORE, v=vendor) as gw:
        raw = await sdk(lambda: oai(gw.url).responses.input_tokens.with_raw_response.count(
            model=pool, instructions="Be brief.", input=RESPONSES_INPUT))
        record = await last_record(gw)
    result = raw.parse()
    assert result.object == "response.input_tokens"
    assert result.input_tokens == expected("responses", {"model": pool, "instructions": "Be brief.",
                                                         "input": RESPONSES_INPUT})
    assert record["status"] == 200 and record["pool"] == pool
    assert [r["path"] for r in vendor.received] == COUNT_PATHS[pool]
    assert raw.headers.get("x-busbar-estimate") == (None if COUNT_PATHS[pool] else "true")
    if pool == "resp":          # forwarded: the body as sent, the member's model in it
        assert vendor.received[0]["body"] == {"model": "gpt-4.1", "instructions": "Be brief.",
                                              "input": RESPONSES_INPUT}
    elif pool == "br-claude":   # translated to CountTokens' converse input
        assert vendor.received[0]["body"] == {"input": {"converse": {
            "messages": [{"role": "user", "content": [{"text": RESPONSES_INPUT[0]["content"]}]}],
            "system": [{"text": "Be brief."}]}}}
    elif pool == "br-invoke":   # the InvokeModel body that member would be sent, counted
        import base64
        import json
        body = json.loads(base64.b64decode(vendor.received[0]["body"]["input"]["invokeModel"]["body"]))
        assert body["anthropic_version"] == "bedrock-2023-05-31" and body["system"] == "Be brief."
        assert "AKIDUPSTREAM" in vendor.received[0]["headers"]["authorization"]


CONVERSE = {"messages": [{"role": "user", "content": [{"text": "How many tokens is this question, roughly?"}]}],
            "system": [{"text": "Be brief."}]}


@pytest.mark.sdk
@pytest.mark.parametrize("pool", ["br-claude", "claude", "resp", "gemini", "gpt", "br-llama", "br-invoke"])
async def test_boto3_count_tokens_converse(pool):
    vendor = MockVendor()
    async with gateway_with(MORE, v=vendor) as gw:
        result = await sdk(lambda: bedrock_client(gw.url).count_tokens(modelId=pool, input={"converse": CONVERSE}))
    assert result["inputTokens"] == expected("bedrock", {"input": {"converse": CONVERSE}})
    headers = result["ResponseMetadata"]["HTTPHeaders"]
    assert headers.get("x-busbar-estimate") == (None if COUNT_PATHS[pool] else "true")
    assert [r["path"] for r in vendor.received] == COUNT_PATHS[pool]
    if pool == "br-claude":     # passthrough, signed again with the provider's own credentials
        seen = vendor.received[0]
        assert seen["body"] == {"input": {"converse": CONVERSE}}
        assert "AKIDUPSTREAM" in seen["headers"]["authorization"]
    elif pool == "claude":
        assert vendor.received[0]["body"] == {"model": "claude-sonnet-4", "system": "Be brief.", "messages": [
            {"role": "user", "content": CONVERSE["messages"][0]["content"][0]["text"]}]}


@pytest.mark.sdk
async def test_a_claude_member_named_by_a_pool_arn_is_counted_not_estimated():
    """A Bedrock member whose model id names Claude without the `anthropic.`
    prefix (here the ARN Busbar's own control plane lists for a pool, as a
    gateway in front of another one would use it): counted by the vendor,
    as `bedrock.claude_model` says it is Claude (before: estimated)."""
    arn = "arn:aws:bedrock:us-east-1:000000000000:inference-profile/claude-pool"
    config = {**MORE, "pools": {"br-arn": {"members": [{"provider": "aws", "model": arn}]}}}
    vendor = MockVendor()
    async with gateway_with(config, v=vendor) as gw:
        result = await sdk(lambda: bedrock_client(gw.url).count_tokens(modelId="br-arn", input={"converse": CONVERSE}))
    assert result["inputTokens"] == expected("bedrock", {"input": {"converse": CONVERSE}})
    assert result["ResponseMetadata"]["HTTPHeaders"].get("x-busbar-estimate") is None
    assert [r["path"] for r in vendor.received] == [
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A000000000000%3Ainference-profile%2Fclaude-pool/count-tokens"]


CLAUDE_BODY = {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100, "system": "Be brief.",
               "messages": [{"role": "user", "content": "How many tokens is this question, roughly?"}]}


@pytest.mark.sdk
@pytest.mark.parametrize("pool", ["br-claude", "claude", "resp", "br-llama", "br-invoke"])
async def test_boto3_count_tokens_invoke_model_body(pool):
    import json
    vendor = MockVendor()
    body = json.dumps(CLAUDE_BODY).encode()
    async with gateway_with(MORE, v=vendor) as gw:
        result = await sdk(lambda: bedrock_client(gw.url).count_tokens(
            modelId=pool, input={"invokeModel": {"body": body}}))
    assert result["inputTokens"] == expected("anthropic", {k: v for k, v in CLAUDE_BODY.items()
                                                            if k != "anthropic_version"})
    assert [r["path"] for r in vendor.received] == COUNT_PATHS[pool]
    if pool == "br-claude":     # the blob forwarded untouched
        import base64
        assert json.loads(base64.b64decode(vendor.received[0]["body"]["input"]["invokeModel"]["body"])) == CLAUDE_BODY


@pytest.mark.sdk
@pytest.mark.parametrize("pool", ["resp", "br-claude", "br-invoke"])
async def test_anthropic_count_tokens_to_responses_and_bedrock_members(pool):
    vendor = MockVendor()
    async with gateway_with(MORE, v=vendor) as gw:
        raw = await sdk(lambda: ant(gw.url).messages.with_raw_response.count_tokens(
            model=pool, system="Be brief.", messages=MESSAGES))
    assert raw.parse().input_tokens == expected("anthropic", {"model": pool, "system": "Be brief.",
                                                              "messages": MESSAGES})
    assert raw.headers.get("x-busbar-estimate") is None
    assert [r["path"] for r in vendor.received] == COUNT_PATHS[pool]


@pytest.mark.sdk
async def test_responses_and_bedrock_count_errors_are_the_callers_protocol():
    import openai
    from botocore.exceptions import ClientError as BotoError
    vendor = MockVendor()
    async with gateway_with(MORE, v=vendor) as gw:
        client = oai(gw.url)
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: client.responses.input_tokens.count(model="nope", input="hi"))
        vendor.fail_next({"status": 429})
        with pytest.raises(openai.RateLimitError):       # Anthropic's 429, in OpenAI's shape
            await sdk(lambda: client.responses.input_tokens.count(model="claude", input="hi"))
        with pytest.raises(openai.BadRequestError) as unknown:    # not one the gateway answered (ADR 0024)
            await sdk(lambda: client.responses.input_tokens.count(model="gemini", input="hi",
                                                                  previous_response_id="resp_123"))
        assert unknown.value.body["code"] == "previous_response_not_found"
        assert unknown.value.body["param"] == "previous_response_id"
        with pytest.raises(openai.BadRequestError, match="input"):
            await sdk(lambda: client.responses.input_tokens.count(model="gpt", input=42))
        br = bedrock_client(gw.url)
        with pytest.raises(BotoError) as exc:
            await sdk(lambda: br.count_tokens(modelId="nope", input={"converse": CONVERSE}))
        assert exc.value.response["Error"]["Code"] == "ResourceNotFoundException"
        vendor.fail_next({"status": 429})
        with pytest.raises(BotoError) as exc:            # OpenAI's 429, in Bedrock's shape
            await sdk(lambda: br.count_tokens(modelId="resp", input={"converse": CONVERSE}))
        assert exc.value.response["Error"]["Code"] == "ThrottlingException"
        with pytest.raises(BotoError) as exc:
            await sdk(lambda: br.count_tokens(modelId="gpt", input={"invokeModel": {"body": b"not json"}}))
        assert exc.value.response["Error"]["Code"] == "ValidationException"
        assert "invokeModel" in exc.value.response["Error"]["Message"]
        record = await last_record(gw)
    assert record["status"] == 400


@pytest.mark.sdk
@pytest.mark.parametrize("pool", ["resp", "br-claude", "br-llama"])
async def test_genai_count_tokens_to_responses_and_bedrock_members(pool):
    from google import genai
    from google.genai import types
    vendor = MockVendor()
    async with gateway_with(MORE, v=vendor) as gw:
        client = genai.Client(api_key="client-key", http_options=types.HttpOptions(base_url=gw.url))
        result = await sdk(lambda: client.models.count_tokens(model=pool, contents="How many tokens is this?"))
    body = {"contents": [{"role": "user", "parts": [{"text": "How many tokens is this?"}]}]}
    assert result.total_tokens == expected("gemini", body)
    assert [r["path"] for r in vendor.received] == COUNT_PATHS[pool]
