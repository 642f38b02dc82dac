"""What SDKs and agents add to their requests, decided by what it means
(issue 19): SDK helper fields and bookkeeping are dropped silently, empty and
default values say nothing, server-side features the target lacks degrade
with a warning unless the pool says `unsupported: reject`."""
from __future__ import annotations

import pytest

from busbar.faults import ClientError
from busbar.protocols import get_dialect

pytestmark = pytest.mark.pure


def translate(src: str, obj: dict, dst: str, unsupported: str = "degrade", params=None):
    req = get_dialect(src).parse_request(obj, params or {"model": "m", "action": "generateContent"})
    return get_dialect(dst).render_request(req, "target-model", unsupported=unsupported)


# What the openai JS SDK's `toResponseInputItems()` of a `finalResponse()` sends
# back, and Codex CLI's bookkeeping.
OPENAI_JS_SECOND_TURN = {
    "model": "pool", "client_metadata": {"session": "abc"},
    "input": [
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
         "arguments": '{"city":"Paris"}', "status": "completed", "parsed_arguments": None},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed", "content": [
            {"type": "output_text", "text": "It is sunny.", "annotations": [], "parsed": None}]},
        {"role": "user", "content": "thanks"}],
    "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": False}]}


@pytest.mark.parametrize("dst", ["openai", "anthropic", "gemini", "bedrock", "cohere"])
@pytest.mark.parametrize("policy", ["reject", "degrade"])
def test_sdk_helper_fields_are_dropped_silently(dst, policy):
    body, warnings = translate("responses", OPENAI_JS_SECOND_TURN, dst, policy)
    assert b"parsed" not in body and b"client_metadata" not in body
    assert not [w for w in warnings if "parsed" in w or "client_metadata" in w], warnings
    # the id/status the SDK echoes on each item it sends back are bookkeeping too
    assert not [w for w in warnings if "status" in w or ".id'" in w], warnings


def test_vercel_eager_input_streaming_is_dropped_silently():
    obj = {"model": "m", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}],
           "tools": [{"name": "f", "input_schema": {"type": "object"}, "eager_input_streaming": True}]}
    body, warnings = translate("anthropic", obj, "openai", "reject")
    assert warnings == [] and b"eager" not in body


def test_langchain_gemini_defaults_say_nothing():
    obj = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "safetySettings": [],
           "generationConfig": {"candidateCount": 1, "temperature": 0.5}}
    body, warnings = translate("gemini", obj, "anthropic", "reject")
    assert warnings == [] and b"candidate" not in body
    obj["generationConfig"]["candidateCount"] = 2      # a real request for two answers is still refused
    with pytest.raises(ClientError) as exc:
        translate("gemini", obj, "anthropic", "reject")
    assert exc.value.param == "generationConfig"


CLAUDE_CODE = {
    "model": "m", "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}],
    "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]},
    "tools": [{"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"},
              {"name": "Read", "input_schema": {"type": "object"}, "defer_loading": True},
              {"name": "Bash", "input_schema": {"type": "object"}}]}


@pytest.mark.parametrize("dst", ["openai", "responses", "gemini", "bedrock", "cohere"])
def test_server_side_features_degrade_with_a_warning(dst):
    body, warnings = translate("anthropic", CLAUDE_CODE, dst, "degrade")
    assert b"Read" in body and b"Bash" in body and b"tool_search" not in body and b"defer" not in body
    degraded = sorted(w.split("'")[1] for w in warnings if w.startswith("degraded"))
    assert degraded == ["context_management", "tools[0].tool_search_tool_regex_20251119",
                        "tools[1].defer_loading"]


def test_server_side_features_rejected_when_the_pool_says_so():
    with pytest.raises(ClientError) as exc:
        translate("anthropic", CLAUDE_CODE, "openai", "reject")
    assert exc.value.status == 400


def test_codex_namespace_tools_are_flattened():
    obj = {"model": "m", "input": "hi", "tools": [
        {"type": "function", "name": "shell", "parameters": {"type": "object"}, "strict": False},
        {"type": "namespace", "name": "mcp__docs", "description": "Docs server", "tools": [
            {"type": "function", "name": "search", "description": "Search docs", "strict": False,
             "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]}]}
    req = get_dialect("responses").parse_request(obj, {})
    assert [t.name for t in req.tools] == ["shell", "search"]
    body, warnings = get_dialect("anthropic").render_request(req, "claude", unsupported="reject")
    assert warnings == [] and b'"search"' in body


def test_codex_hosted_web_search_degrades_and_is_refused_under_reject():
    """Codex CLI offers `{"type": "web_search", "external_web_access": false}` on
    every turn: to a protocol without it, the tool is left out with a warning
    (ADR 0022); a pool with `unsupported: reject` refuses it."""
    obj = {"model": "m", "input": "hi", "tools": [
        {"type": "function", "name": "shell", "parameters": {"type": "object"}, "strict": False},
        {"type": "web_search", "external_web_access": False}]}
    for dst in ("openai", "anthropic", "gemini", "bedrock", "cohere"):
        body, warnings = translate("responses", obj, dst, "degrade")
        assert b"shell" in body and b"web_search" not in body, dst
        assert [w for w in warnings if w.startswith("degraded")] == [
            "degraded 'tools[1].web_search': hosted web search unavailable; the tool is left out"], dst
    with pytest.raises(ClientError) as exc:
        translate("responses", obj, "anthropic", "reject")
    assert exc.value.param == "tools[1].web_search"     # the IR path (the gateway names it in the client's terms)
