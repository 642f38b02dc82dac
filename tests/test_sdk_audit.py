"""A new user's first week, over sockets: each official SDK's current recommended
usage against a member of another protocol (ADR 0013, 2026-12-07 audit)."""
from __future__ import annotations

import pytest

from busbar.mock import MockVendor
from harness import gateway_with, sdk
from test_translation_e2e import config_for

pytestmark = pytest.mark.sdk

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.mark.parametrize("vendor", ["anthropic", "gemini", "bedrock"])
async def test_openai_chat_stream_helper_tool_loop(vendor):
    """`chat.completions.stream(...)`, then the final message appended as it is (the SDK's
    accumulated tool calls keep their `index`): the next turn is served, not refused."""
    import openai
    mock = MockVendor(use_tools=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config_for(vendor), a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}]
        messages = [{"role": "user", "content": "Weather in Paris?"}]

        def first():
            with client.chat.completions.stream(model="smart", messages=messages, tools=tools) as stream:
                return stream.get_final_completion()
        completion = await sdk(first)
        message = completion.choices[0].message
        assert completion.choices[0].finish_reason == "tool_calls"
        assert message.tool_calls[0].index == 0          # what the SDK sends back with the message
        messages += [message, {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny"}]
        second = await sdk(lambda: client.chat.completions.create(model="smart", messages=messages, tools=tools))
    assert second.choices[0].message.content == "tool said: sunny"
    assert second.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("vendor", ["openai", "anthropic", "bedrock"])
async def test_genai_python_function_tools(vendor):
    """google-genai's recommended tools: plain Python functions, called by the SDK itself
    (automatic function calling). Their declarations carry the function's result schema
    (`response_json_schema`), which no other protocol has: dropped as a hint, not refused."""
    from google import genai
    from google.genai import types
    mock = MockVendor(use_tools=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})

    def get_weather(city: str) -> str:
        """Weather in a city."""
        return "sunny"
    async with gateway_with(config_for(vendor), a=mock) as gw:
        client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=gw.url))
        result = await sdk(lambda: client.models.generate_content(
            model="smart", contents="Weather in Paris?", config=types.GenerateContentConfig(tools=[get_weather])))
    assert "sunny" in result.text
    assert len(mock.received) == 2          # the call, then the SDK's own function result
