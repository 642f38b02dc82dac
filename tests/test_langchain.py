"""LangChain's chat classes pointed at the gateway (issue 19): each of
`ChatOpenAI` (Chat Completions and `use_responses_api=True`), `ChatAnthropic`,
`ChatGoogleGenerativeAI`, `ChatBedrockConverse` and `ChatCohere` does
`.invoke`, `.stream` and a tool round trip (`bind_tools`, the simulated vendor
calls the tool, the `ToolMessage` goes back, the final text comes out) through
a pool whose one member speaks another vendor protocol, with the default
`unsupported` policy (no `drop`).  Each client meets a different vendor, so
the six clients cover the six vendor protocols.  LangSmith tracing is off; the
simulated vendors are the only network.
"""
from __future__ import annotations

import json

import pytest

from busbar.mock import MockVendor
from harness import gateway_with, sdk

REPLY = "Hi from the simulated vendor."
KEY = "sk-busbar-agent-key-0123456789"
TOOL_RESULT = "sunny and 21C in Paris"

# client -> the vendor protocol of the pool's one member (never its own)
TARGETS = {"openai": "anthropic", "responses": "gemini", "anthropic": "openai",
           "gemini": "bedrock", "bedrock": "cohere", "cohere": "responses"}
MODULES = {"openai": "langchain_openai", "responses": "langchain_openai", "anthropic": "langchain_anthropic",
           "gemini": "langchain_google_genai", "bedrock": "langchain_aws", "cohere": "langchain_cohere"}


def _config(vendor: str) -> dict:
    provider = {"protocol": vendor, "base_url": "{a}/v1" if vendor in ("openai", "responses") else "{a}"}
    if vendor == "bedrock":
        provider.update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
    else:
        provider["key"] = "vendor-key"
    return {"providers": {"up": provider},
            "pools": {"agent": {"members": [{"provider": "up", "model": f"{vendor}-model"}]}},
            "auth": {"keys": [{"id": "agent-key", "key": KEY}],
                     "aws_credentials": [{"access_key_id": "AKIDGATEWAY", "secret_access_key": "gateway-secret",
                                          "key_id": "agent-key"}]}}


def _chat(client: str, url: str):
    """The LangChain chat model for `client`, its base URL at the gateway."""
    if client in ("openai", "responses"):
        from langchain_openai import ChatOpenAI
        return ChatOpenAI(model="agent", api_key=KEY, base_url=url + "/v1", max_retries=0,
                          use_responses_api=client == "responses")
    if client == "anthropic":
        from langchain_anthropic import ChatAnthropic
        return ChatAnthropic(model="agent", api_key=KEY, base_url=url, max_retries=0)
    if client == "gemini":
        from langchain_google_genai import ChatGoogleGenerativeAI
        return ChatGoogleGenerativeAI(model="agent", google_api_key=KEY, base_url=url, max_retries=0)
    if client == "bedrock":
        import boto3
        from langchain_aws import ChatBedrockConverse
        runtime = boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1",
                               aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")
        # "agent" is no Bedrock model id it knows: say it streams (else `.stream` falls back to Converse)
        return ChatBedrockConverse(model="agent", provider="anthropic", region_name="us-east-1", client=runtime,
                                   disable_streaming=False)
    from langchain_cohere import ChatCohere
    return ChatCohere(model="agent", cohere_api_key=KEY, base_url=url, max_retries=0)


@pytest.fixture(autouse=True)
def _no_tracing(monkeypatch):
    for name in ("LANGCHAIN_TRACING_V2", "LANGCHAIN_TRACING", "LANGSMITH_TRACING"):
        monkeypatch.setenv(name, "false")
    for name in ("LANGCHAIN_API_KEY", "LANGSMITH_API_KEY", "LANGSMITH_ENDPOINT", "LANGCHAIN_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


def _needs(client: str):
    where = ("`pip install --no-deps langchain-cohere` (its cohere<6 pin would downgrade the SDK; .ci/run does it)"
             if client == "cohere" else "the test extra")
    pytest.importorskip(MODULES[client], reason=f"{MODULES[client]} not installed: {where}")


def _all_answered(gw, mock: MockVendor, vendor: str) -> None:
    records = gw.gateway.recent
    assert records, "the client sent the gateway nothing"
    bad = [r for r in records if r["status"] != 200]
    assert not bad, json.dumps(bad, default=str)[:2000]
    assert mock.received and all(r["protocol"] == vendor for r in mock.received)


CASES = [pytest.param(c, v, id=f"{c}->{v}") for c, v in TARGETS.items()]
# tool round trips (where translation has the most to say) meet a second vendor each
SECOND = {"openai": "gemini", "responses": "bedrock", "anthropic": "cohere",
          "gemini": "openai", "bedrock": "anthropic", "cohere": "openai"}
TOOL_CASES = CASES + [pytest.param(c, v, id=f"{c}->{v}") for c, v in SECOND.items()]


@pytest.mark.sdk
@pytest.mark.parametrize("client,vendor", CASES)
async def test_invoke(client, vendor):
    _needs(client)
    mock = MockVendor(reply=REPLY, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_config(vendor), a=mock) as gw:
        llm = _chat(client, gw.url)
        answer = await sdk(lambda: llm.invoke("say hi"))
        _all_answered(gw, mock, vendor)
    assert answer.text == REPLY
    assert "say hi" in mock.received[-1]["raw"]


@pytest.mark.sdk
@pytest.mark.parametrize("client,vendor", CASES)
async def test_stream(client, vendor):
    _needs(client)
    mock = MockVendor(reply=REPLY, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_config(vendor), a=mock) as gw:
        llm = _chat(client, gw.url)
        chunks = await sdk(lambda: list(llm.stream("say hi")))
        _all_answered(gw, mock, vendor)
    assert "".join(c.text for c in chunks) == REPLY
    assert mock.received[-1]["stream"] is True, [c.text for c in chunks]
    assert len([c for c in chunks if c.text]) > 1, [c.text for c in chunks]


@pytest.mark.sdk
@pytest.mark.parametrize("client,vendor", TOOL_CASES)
async def test_tool_round_trip(client, vendor):
    """The vendor calls the tool (its required string argument filled in
    with "Paris"), LangChain runs it, the `ToolMessage` reaches the vendor
    and its final answer quotes the result."""
    _needs(client)
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        return TOOL_RESULT if city == "Paris" else "unknown city"

    mock = MockVendor(reply=REPLY, use_tools=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_config(vendor), a=mock) as gw:
        llm = _chat(client, gw.url).bind_tools([get_weather])
        question = HumanMessage("What is the weather in Paris?")
        called = await sdk(lambda: llm.invoke([question]))
        assert [(c["name"], c["args"]) for c in called.tool_calls] == [("get_weather", {"city": "Paris"})], called
        result = get_weather.invoke(called.tool_calls[0])          # a ToolMessage with the call's id
        final = await sdk(lambda: llm.invoke([question, called, result]))
        _all_answered(gw, mock, vendor)
    # ChatCohere sends a tool's output as a Cohere document `{"output": ...}` (its own
    # encoding), which reaches the vendor as that JSON text; the others send the bare string
    expected = json.dumps({"output": TOOL_RESULT}, separators=(",", ":")) if client == "cohere" else TOOL_RESULT
    assert final.text == f"tool said: {expected}"
    assert len(mock.received) == 2 and TOOL_RESULT in mock.received[-1]["raw"]
    assert "get_weather" in mock.received[0]["raw"]
