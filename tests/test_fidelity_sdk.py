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
