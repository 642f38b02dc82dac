"""What today's official Python SDKs really send, to members of another
protocol, over real sockets (issue 19)."""
from __future__ import annotations

import base64

import pytest

from busbar.mock import MockVendor
from harness import gateway_with, sdk
from test_translation_e2e import config_for

pytestmark = pytest.mark.sdk
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "bedrock"])
async def test_google_genai_recommended_api_to_another_protocol(vendor):
    """google-genai's current API: `parameters_json_schema` and a snake-cased
    `inline_data` part (the SDK sends them as `parameters_json_schema` and
    `inlineData.mime_type`)."""
    from google import genai
    from google.genai import types
    mock = MockVendor(reply="a red pixel", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config_for(vendor), a=mock) as gw:
        client = genai.Client(api_key="client-key", http_options=types.HttpOptions(base_url=gw.url))
        tool = types.Tool(function_declarations=[types.FunctionDeclaration(
            name="get_weather", description="Weather for a city.",
            parameters_json_schema={"type": "object", "properties": {"city_name": {"type": "string"}},
                                    "required": ["city_name"]})])
        contents = [types.Content(role="user", parts=[
            types.Part(text="What is in this image?"),
            types.Part(inline_data=types.Blob(data=PNG, mime_type="image/png"))])]
        result = await sdk(lambda: client.models.generate_content(
            model="smart", contents=contents, config=types.GenerateContentConfig(
                tools=[tool], thinking_config=types.ThinkingConfig(thinking_budget=2048))))
    assert result.text == "a red pixel"
    body = mock.received[-1]["body"]
    if vendor == "openai":
        assert body["tools"][0]["function"]["parameters"]["properties"] == {"city_name": {"type": "string"}}
        image = body["messages"][0]["content"][1]["image_url"]["url"]
        assert image == "data:image/png;base64," + base64.b64encode(PNG).decode()
    elif vendor == "anthropic":
        assert body["tools"][0]["input_schema"]["required"] == ["city_name"]
        assert body["messages"][0]["content"][1]["source"]["media_type"] == "image/png"
        assert body["thinking"]["budget_tokens"] == 2048
    else:
        assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"] == ["city_name"]
        assert body["messages"][0]["content"][1]["image"]["format"] == "png"


@pytest.mark.parametrize("policy", [None, "reject"])
async def test_claude_code_defaults_degrade_unless_the_pool_rejects(policy):
    """Claude Code's default request (context editing, tool search, deferred
    tools) through an OpenAI pool: served with a warning header, or a 400 in
    Anthropic's shape when the pool says `unsupported: reject`."""
    import anthropic
    config = config_for("openai")
    if policy:
        config["pools"]["smart"]["unsupported"] = policy
    mock = MockVendor(reply="done")
    async with gateway_with(config, a=mock) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)

        def call():
            return client.messages.with_raw_response.create(
                model="smart", max_tokens=64, messages=[{"role": "user", "content": "hi"}],
                tools=[{"name": "Read", "input_schema": {"type": "object"}, "defer_loading": True},
                       {"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"}],
                extra_body={"context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}})
        if policy == "reject":
            with pytest.raises(anthropic.BadRequestError) as exc:
                await sdk(call)
            assert "context_management" in str(exc.value) or "defer_loading" in str(exc.value)
            assert mock.received == []
            return
        raw = await sdk(call)
    assert raw.parse().content[0].text == "done"
    warning = raw.headers["x-busbar-warning"]
    assert "degraded 'context_management'" in warning and "degraded 'tools[0].defer_loading'" in warning
    assert [t["function"]["name"] for t in mock.received[-1]["body"]["tools"]] == ["Read"]


@pytest.mark.parametrize("stream", [False, True])
async def test_stop_sequences_emulated_for_a_responses_member(stream):
    """The Responses API has no `stop`: the gateway cuts the answer at the
    first stop string (streamed: across chunk boundaries) and closes with the
    client's stop-sequence finish reason."""
    import anthropic
    import openai
    mock = MockVendor(reply="The quick brown fox jumps over the lazy dog.", chunks=9)
    async with gateway_with(config_for("responses"), a=mock) as gw:
        oai = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        ant = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        if stream:
            def chat():
                chunks = list(oai.chat.completions.create(model="smart", messages=messages, stop=["fox", "dog"],
                                                          stream=True))
                return ("".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
                        [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason])

            def messages_api():
                with ant.messages.stream(model="smart", max_tokens=50, messages=messages,
                                         stop_sequences=["lazy"]) as s:
                    text = "".join(s.text_stream)
                    final = s.get_final_message()
                return text, final.stop_reason, final.stop_sequence
            text, finishes = await sdk(chat)
            assert (text, finishes) == ("The quick brown ", ["stop"])
            assert await sdk(messages_api) == ("The quick brown fox jumps over the ", "stop_sequence", "lazy")
        else:
            result = await sdk(lambda: oai.chat.completions.create(model="smart", messages=messages, stop="fox"))
            assert result.choices[0].message.content == "The quick brown "
            assert result.choices[0].finish_reason == "stop"
            msg = await sdk(lambda: ant.messages.create(model="smart", max_tokens=50, messages=messages,
                                                        stop_sequences=["lazy"]))
            assert (msg.content[0].text, msg.stop_reason, msg.stop_sequence) == \
                ("The quick brown fox jumps over the ", "stop_sequence", "lazy")
    assert all("stop" not in r["body"] for r in mock.received)


@pytest.mark.parametrize("vendor", ["openai", "anthropic"])
async def test_one_rule_for_the_answers_model(vendor):
    """Passed through or translated, buffered or streamed: the body names the
    model that answered; the pool and member are in response headers."""
    import openai
    mock = MockVendor(reply="hi there")
    async with gateway_with(config_for(vendor), a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        messages = [{"role": "user", "content": "hi"}]
        raw = await sdk(lambda: client.chat.completions.with_raw_response.create(model="smart", messages=messages))
        streamed = await sdk(lambda: [c.model for c in client.chat.completions.create(
            model="smart", messages=messages, stream=True)])
    assert raw.parse().model == "upstream-model"
    assert set(streamed) == {"upstream-model"}
    assert raw.headers["x-busbar-pool"] == "smart"
    assert raw.headers["x-busbar-member"].endswith("upstream-model")


async def test_unknown_bedrock_shaped_paths_answer_in_bedrocks_error_shape():
    """InvokeModel with a body of no model family Busbar serves, and an operation it
    does not serve (ApplyGuardrail): botocore reads a Bedrock error, not OpenAI's;
    GET /inference-profiles, as Claude Code's Bedrock mode calls it, lists the pools."""
    import boto3
    import botocore.exceptions
    async with gateway_with(config_for("openai"), a=MockVendor()) as gw:
        client = boto3.client("bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1",
                              aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            await sdk(lambda: client.invoke_model(modelId="smart", body=b'{"messages": []}'))
        import httpx
        async with httpx.AsyncClient() as http:
            profiles = await http.get(gw.url + "/inference-profiles")
            guardrail = await http.post(gw.url + "/guardrail/g1/version/1/apply", json={})
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert "call Converse" in exc.value.response["Error"]["Message"]
    assert profiles.status_code == 200 and profiles.json()["inferenceProfileSummaries"][0]["inferenceProfileId"] == "smart"
    assert guardrail.status_code == 404 and guardrail.headers["x-amzn-errortype"] == "UnknownOperationException"
