"""Claude on Anthropic and on Bedrock, the common failover pair (issue 19):
prompt-cache breakpoints survive it (`cache_control` <-> `cachePoint`)."""
from __future__ import annotations

import orjson
import pytest

from busbar.mock import MockVendor
from busbar.protocols import get_dialect
from harness import gateway_with, sdk
from test_translation_e2e import config_for

AN, BR = get_dialect("anthropic"), get_dialect("bedrock")
EPH = {"type": "ephemeral"}
ANTHROPIC_CACHED = {
    "model": "m", "max_tokens": 50,
    "system": [{"type": "text", "text": "long system prompt", "cache_control": EPH}],
    "tools": [{"name": "f", "input_schema": {"type": "object"}, "cache_control": EPH}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "long document", "cache_control": EPH},
                                              {"type": "text", "text": "question"}]}]}


def to_bedrock(obj):
    body, warnings = BR.render_request(AN.parse_request(obj, {}), "claude", unsupported="reject")
    return orjson.loads(body), warnings


@pytest.mark.pure
def test_cache_control_reaches_bedrock_as_cache_points_and_back():
    body, warnings = to_bedrock(ANTHROPIC_CACHED)
    assert warnings == []
    assert body["system"] == [{"text": "long system prompt"}, {"cachePoint": {"type": "default"}}]
    assert body["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default"}}
    assert body["messages"][0]["content"] == [{"text": "long document"}, {"cachePoint": {"type": "default"}},
                                              {"text": "question"}]
    back, _ = AN.render_request(BR.parse_request(body, {"model": "m", "action": "converse"}), "claude")
    back = orjson.loads(back)
    assert back["system"] == [{"type": "text", "text": "long system prompt", "cache_control": EPH}]
    assert back["tools"][0]["cache_control"] == EPH and len(back["tools"]) == 1
    assert back["messages"][0]["content"] == ANTHROPIC_CACHED["messages"][0]["content"]


@pytest.mark.pure
def test_bedrock_cache_points_round_trip_through_bedrock():
    body, _ = to_bedrock(ANTHROPIC_CACHED)
    again, _ = BR.render_request(BR.parse_request(body, {"model": "m", "action": "converse"}), "claude")
    assert orjson.loads(again) == body


@pytest.mark.integration
async def test_anthropic_sdk_cache_control_to_a_bedrock_member():
    import anthropic
    mock = MockVendor(reply="cached", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config_for("bedrock"), a=mock) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
        raw = await sdk(lambda: client.messages.with_raw_response.create(
            model="smart", max_tokens=50, system=ANTHROPIC_CACHED["system"], tools=ANTHROPIC_CACHED["tools"],
            messages=ANTHROPIC_CACHED["messages"]))
    assert raw.parse().content[0].text == "cached"
    assert "cache_control" not in (raw.headers.get("x-busbar-warning") or "")
    body = mock.received[-1]["body"]
    assert {"cachePoint": {"type": "default"}} in body["system"]
    assert body["messages"][0]["content"][1] == {"cachePoint": {"type": "default"}}


@pytest.mark.integration
async def test_boto3_cache_point_to_an_anthropic_member():
    import boto3
    mock = MockVendor(reply="cached")
    config = {**config_for("anthropic"), "auth": {"aws_credentials": [
        {"access_key_id": "AKIDGATEWAY", "secret_access_key": "gateway-secret"}]}}
    async with gateway_with(config, a=mock) as gw:
        client = boto3.client("bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1",
                              aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")
        result = await sdk(lambda: client.converse(
            modelId="smart", system=[{"text": "long system prompt"}, {"cachePoint": {"type": "default"}}],
            messages=[{"role": "user", "content": [{"text": "doc"}, {"cachePoint": {"type": "default"}},
                                                   {"text": "q"}]}]))
    assert result["output"]["message"]["content"][0]["text"] == "cached"
    body = mock.received[-1]["body"]
    assert body["system"] == [{"type": "text", "text": "long system prompt", "cache_control": EPH}]
    assert body["messages"][0]["content"][0] == {"type": "text", "text": "doc", "cache_control": EPH}


@pytest.mark.pure
@pytest.mark.parametrize("client", ["anthropic", "bedrock"])
def test_reasoning_content_kept_both_ways_for_openai_compatible_servers(client):
    """DeepSeek-style servers send `reasoning_content` and require it back on
    assistant turns with tool calls: it survives a client of another protocol
    that replays the turn as it received it."""
    oa, cl = get_dialect("openai"), get_dialect(client)
    server = {"id": "x", "model": "deepseek-reasoner", "choices": [{"index": 0, "finish_reason": "tool_calls",
              "message": {"role": "assistant", "content": None, "reasoning_content": "I should call f.",
                          "tool_calls": [{"id": "call_1", "type": "function",
                                          "function": {"name": "f", "arguments": "{}"}}]}}],
              "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}
    shown = orjson.loads(cl.render_response(oa.parse_response(server), "deepseek-reasoner"))
    if client == "anthropic":
        wire = {"model": "pool", "max_tokens": 100, "tools": [{"name": "f", "input_schema": {"type": "object"}}],
                "messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": shown["content"]},
                             {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                                           "content": "ok"}]}]}
        params = {}
    else:
        wire = {"toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]},
                "messages": [{"role": "user", "content": [{"text": "go"}]}, shown["output"]["message"],
                             {"role": "user", "content": [{"toolResult": {"toolUseId": "call_1",
                                                                          "content": [{"text": "ok"}]}}]}]}
        params = {"model": "pool", "action": "converse"}
    body = orjson.loads(oa.render_request(cl.parse_request(wire, params), "deepseek-reasoner")[0])
    assistant = next(m for m in body["messages"] if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "I should call f."
    assert assistant["tool_calls"][0]["function"]["name"] == "f"
    assert orjson.loads(oa.render_response(oa.parse_response(server), "m"))["choices"][0]["message"][
        "reasoning_content"] == "I should call f."


def _thinking_history(sig):
    return [{"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "call the tool", "signature": sig},
                                              {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}]


@pytest.mark.pure
def test_thinking_signatures_cross_between_anthropic_and_claude_on_bedrock():
    """Three turns, both directions: the signed block reaches the other Claude
    family each time; a non-Claude Bedrock model does not get it."""
    req = {"model": "m", "max_tokens": 4000, "thinking": {"type": "enabled", "budget_tokens": 2000},
           "tools": [{"name": "f", "input_schema": {"type": "object"}}], "messages": _thinking_history("SIG_AN")}
    body, warnings = BR.render_request(AN.parse_request(req, {}), "us.anthropic.claude-sonnet-4-v1:0")
    body = orjson.loads(body)
    assert body["messages"][1]["content"][0] == {"reasoningContent": {"reasoningText": {
        "text": "call the tool", "signature": "SIG_AN"}}}
    assert not [w for w in warnings if "reasoning" in w]
    # the Bedrock client's next turn (its own history) to an Anthropic member
    back = orjson.loads(AN.render_request(BR.parse_request(body, {"model": "m", "action": "converse"}),
                                          "claude-sonnet-4")[0])
    assert back["messages"][1]["content"][0] == {"type": "thinking", "thinking": "call the tool",
                                                 "signature": "SIG_AN"}
    nova, warnings = BR.render_request(AN.parse_request(req, {}), "amazon.nova-pro-v1:0")
    assert b"SIG_AN" not in nova and any("reasoning" in w for w in warnings)
