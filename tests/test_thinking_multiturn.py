"""Thinking with tools over several turns, over sockets, official SDKs as clients (issue 19):
the simulated vendor (`think=True`) starts every answer with a signed reasoning block and, as
Anthropic does with thinking on, refuses a tool-result turn whose assistant turn lacks it.
Each client sends back the SDK's own response objects, the way its README shows."""
from __future__ import annotations

import boto3
import anthropic
import openai
import pytest

from busbar.mock import MockVendor
from harness import gateway_with, sdk
from test_translation_e2e import config_for

pytestmark = pytest.mark.sdk

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
THINKING = {"type": "enabled", "budget_tokens": 1024}


def _claude_on(vendor: str) -> dict:
    config = config_for(vendor)
    config["pools"]["smart"]["members"][0]["model"] = (
        "us.anthropic.claude-sonnet-4-v1:0" if vendor == "bedrock" else "claude-sonnet-4")
    config["pools"]["smart"]["members"][0]["max_tokens"] = 4096
    return config


@pytest.mark.parametrize("vendor", ["bedrock", "anthropic"])
async def test_anthropic_sdk_thinking_and_tools_three_turns(vendor):
    """Anthropic Messages client; Claude on Bedrock (translated) or on Anthropic (passthrough):
    the vendor gets its signed thinking block back on every tool-result turn."""
    mock = MockVendor(use_tools=True, think=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_claude_on(vendor), a=mock) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)

        def ask(messages):
            return client.messages.create(model="smart", max_tokens=2048, thinking=THINKING, tools=[WEATHER],
                                          messages=messages)

        messages = [{"role": "user", "content": "Weather in Paris?"}]
        first = await sdk(lambda: ask(messages))
        assert [b.type for b in first.content] == ["thinking", "tool_use"]
        assert first.content[0].signature            # the vendor's own signature, as Anthropic shows it
        call = first.content[1]
        messages += [{"role": "assistant", "content": first.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
        second = await sdk(lambda: ask(messages))
        assert [b.type for b in second.content] == ["thinking", "text"] and second.content[1].text == "tool said: sunny"
        messages += [{"role": "assistant", "content": second.content}, {"role": "user", "content": "And tomorrow?"}]
        third = await sdk(lambda: ask(messages))
        call = next(b for b in third.content if b.type == "tool_use")
        messages += [{"role": "assistant", "content": third.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "rain"}]}]
        fourth = await sdk(lambda: ask(messages))
    assert fourth.content[-1].text == "tool said: rain"
    assert mock.thoughts_seen == 2                      # both tool-result turns carried the signed block
    assert len(mock.received) == 4 and all(r["protocol"] == vendor for r in mock.received)


async def test_bedrock_converse_client_thinking_and_tools_to_claude_on_anthropic():
    """boto3 Converse client, Claude on Anthropic: `reasoningContent` with its signature goes
    back as the Anthropic thinking block each turn."""
    mock = MockVendor(use_tools=True, think=True)
    async with gateway_with(_claude_on("anthropic"), a=mock) as gw:
        client = boto3.client("bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1",
                              aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")
        tools = {"tools": [{"toolSpec": {"name": WEATHER["name"], "description": WEATHER["description"],
                                         "inputSchema": {"json": WEATHER["input_schema"]}}}]}
        extra = {"thinking": THINKING}

        def ask(messages):
            return client.converse(modelId="smart", messages=messages, toolConfig=tools,
                                   inferenceConfig={"maxTokens": 2048}, additionalModelRequestFields=extra)

        messages = [{"role": "user", "content": [{"text": "Weather in Paris?"}]}]
        for result in ("sunny", "rain"):
            answer = await sdk(lambda: ask(messages))
            content = answer["output"]["message"]["content"]
            assert "reasoningContent" in content[0] and content[0]["reasoningContent"]["reasoningText"]["signature"]
            call = next(b["toolUse"] for b in content if "toolUse" in b)
            messages += [answer["output"]["message"],
                         {"role": "user", "content": [{"toolResult": {"toolUseId": call["toolUseId"],
                                                                      "content": [{"text": result}]}}]}]
            done = await sdk(lambda: ask(messages))
            text = "".join(b.get("text", "") for b in done["output"]["message"]["content"])
            assert text == f"tool said: {result}"
            messages += [done["output"]["message"], {"role": "user", "content": [{"text": "And tomorrow?"}]}]
    assert mock.thoughts_seen == 2
    thinking = mock.received[1]["body"]["messages"][1]["content"][0]
    assert thinking["type"] == "thinking" and thinking["signature"] == mock.signature


@pytest.mark.parametrize("vendor", ["anthropic", "bedrock", "gemini"])
async def test_chat_client_streams_reasoning_content_from_a_thinking_member(vendor):
    """A Chat Completions client streaming from a member that thinks gets the reasoning as
    `delta.reasoning_content` (as DeepSeek and vLLM stream it), then the answer."""
    mock = MockVendor(reply="Paris is sunny.", think=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config_for(vendor), a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        reasoning, content = [], []
        for chunk in await sdk(lambda: list(client.chat.completions.create(
                model="smart", stream=True, messages=[{"role": "user", "content": "Weather?"}]))):
            if chunk.choices:
                delta = chunk.choices[0].delta
                reasoning.append((delta.model_extra or {}).get("reasoning_content") or "")
                content.append(delta.content or "")
        buffered = await sdk(lambda: client.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "Weather?"}]))
    assert "".join(reasoning) == f"Thinking it over ({mock.name})."
    assert "".join(content) == "Paris is sunny."
    assert buffered.choices[0].message.model_extra["reasoning_content"] == "".join(reasoning)   # one rule, both paths


async def test_the_vendor_refuses_a_tool_result_turn_without_its_signed_thinking():
    """The check above has teeth: drop the thinking block and the vendor says 400."""
    mock = MockVendor(use_tools=True, think=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_claude_on("bedrock"), a=mock) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        first = await sdk(lambda: client.messages.create(model="smart", max_tokens=2048, thinking=THINKING,
                                                         tools=[WEATHER], messages=messages))
        call = first.content[1]
        messages += [{"role": "assistant", "content": [call]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
        with pytest.raises(anthropic.BadRequestError) as info:
            await sdk(lambda: client.messages.create(model="smart", max_tokens=2048, thinking=THINKING,
                                                     tools=[WEATHER], messages=messages))
    assert "thinking block" in str(info.value)
    assert mock.thoughts_seen == 0


CHAT_TOOL = {"type": "function", "function": {"name": WEATHER["name"], "description": WEATHER["description"],
                                              "parameters": WEATHER["input_schema"]}}


def _chat_turns(client, stream: bool):
    """Two tool round trips from a Chat Completions client, sending back the SDK's own
    message objects (`message.model_dump()`), as its docs show."""
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    answers = []

    def ask():
        if not stream:
            return client.chat.completions.create(model="smart", messages=messages, tools=[CHAT_TOOL],
                                                  reasoning_effort="high").choices[0].message
        calls, text = {}, []
        for chunk in client.chat.completions.create(model="smart", messages=messages, tools=[CHAT_TOOL],
                                                    reasoning_effort="high", stream=True):
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                slot = calls.setdefault(call.index, {"id": call.id, "type": "function",
                                                     "function": {"name": call.function.name, "arguments": ""}})
                slot["function"]["arguments"] += call.function.arguments or ""
            if chunk.choices and chunk.choices[0].delta.content:
                text.append(chunk.choices[0].delta.content)
        message = {"role": "assistant", "content": "".join(text) or None}
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return message

    for result in ("sunny", "rain"):
        message = ask()
        as_dict = message if isinstance(message, dict) else message.model_dump(exclude_none=True)
        call = as_dict["tool_calls"][0]
        messages += [as_dict, {"role": "tool", "tool_call_id": call["id"], "content": result}]
        done = ask()
        answers.append(done["content"] if isinstance(done, dict) else done.content)
        messages += [{"role": "assistant", "content": answers[-1]}, {"role": "user", "content": "And tomorrow?"}]
    return answers


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("vendor", ["anthropic", "bedrock", "gemini"])
async def test_chat_client_thinking_and_tools_the_vendor_gets_its_signed_block_every_turn(vendor, stream):
    """A Chat Completions client cannot send a signature back; the gateway keeps the signed
    reasoning by the tool-call ids it returned and gives it back on the tool-result turn."""
    mock = MockVendor(use_tools=True, think=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    config = _claude_on(vendor) if vendor != "gemini" else config_for("gemini")
    async with gateway_with(config, a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        answers = await sdk(lambda: _chat_turns(client, stream))
        store = gw.app.reasoning
    assert answers == ["tool said: sunny", "tool said: rain"]
    assert mock.thoughts_seen == 2                      # the signed block reached the vendor on both tool turns
    assert store.kept >= 2 and store.restored >= 2


async def test_a_pool_can_turn_the_reasoning_store_off():
    mock = MockVendor(use_tools=True, think=True)
    config = _claude_on("anthropic")
    config["pools"]["smart"]["keep_reasoning"] = False
    async with gateway_with(config, a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: _chat_turns(client, False))
        assert len(gw.app.reasoning) == 0
    assert "thinking block" in str(info.value) and mock.thoughts_seen == 0
