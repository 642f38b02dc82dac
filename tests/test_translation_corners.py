"""One example per awkward corner (docs/translation.md lists them all)."""
from __future__ import annotations

import base64

import orjson
import pytest

from busbar import ir
from busbar.faults import ClientError
from busbar.protocols import common as c
from busbar.protocols import get_dialect
from tests import strategies as S

pytestmark = pytest.mark.pure

OA, RS, AN, GE, BR, CO = (get_dialect(p) for p in ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere"))


def render(d, req, **kw):
    body, warnings = d.render_request(req, "m", **kw)
    obj = orjson.loads(body)
    S.assert_valid(d.name, "request", obj)
    return obj, warnings


def oa_req(**kw):
    obj = {"model": "gpt", "messages": [{"role": "user", "content": "hi"}], **kw}
    return OA.parse_request(obj, {})


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def tool_conversation(call_id="call_1", args='{"city":"Paris"}'):
    return {"model": "gpt", "tools": [WEATHER_TOOL], "messages": [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": "get_weather", "arguments": args}}]},
        {"role": "tool", "tool_call_id": call_id, "content": "18C"},
    ]}


# ---------------------------------------------------------------------------
# max tokens


def test_anthropic_requires_max_tokens_default_and_pool_default():
    obj, _ = render(AN, oa_req())
    assert obj["max_tokens"] == 4096
    obj, _ = render(AN, oa_req(), max_tokens_default=1000)
    assert obj["max_tokens"] == 1000
    obj, _ = render(AN, oa_req(max_completion_tokens=77), max_tokens_default=1000)
    assert obj["max_tokens"] == 77


def test_anthropic_default_max_tokens_exceeds_thinking_budget():
    req = GE.parse_request({"contents": [{"parts": [{"text": "hi"}]}],
                            "generationConfig": {"thinkingConfig": {"thinkingBudget": 8000}}}, {})
    obj, _ = render(AN, req)
    assert obj["thinking"] == {"type": "enabled", "budget_tokens": 8000}
    assert obj["max_tokens"] > 8000


def test_openai_keeps_the_max_tokens_spelling_the_client_used():
    obj, _ = render(OA, oa_req(max_tokens=10))
    assert obj["max_tokens"] == 10 and "max_completion_tokens" not in obj
    obj, _ = render(OA, AN.parse_request({"model": "c", "max_tokens": 10, "messages": [{"role": "user", "content": "x"}]}, {}))
    assert obj["max_completion_tokens"] == 10


# ---------------------------------------------------------------------------
# system prompt placement and roles


def test_system_and_developer_messages():
    req = OA.parse_request({"model": "g", "messages": [
        {"role": "developer", "content": "rules"}, {"role": "user", "content": "a"},
        {"role": "system", "content": "late rule"}, {"role": "user", "content": "b"}]}, {})
    assert [t.text for t in req.system] == ["rules"]
    assert req.messages[1].role == ir.SYSTEM
    obj, _ = render(OA, req)
    assert obj["messages"][0]["role"] == "developer" and obj["messages"][2]["role"] == "system"
    obj, warnings = render(AN, req)
    assert obj["system"] == [{"type": "text", "text": "rules"}, {"type": "text", "text": "late rule"}]
    assert obj["messages"] == [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert any("messages[1].role" in w for w in warnings)
    obj, _ = render(GE, req)
    assert obj["systemInstruction"] == {"parts": [{"text": "rules"}, {"text": "late rule"}]}
    obj, _ = render(BR, req)
    assert obj["system"] == [{"text": "rules"}, {"text": "late rule"}]
    obj, _ = render(RS, req)
    assert obj["instructions"] == "rules" and obj["input"][1]["role"] == "system"
    obj, _ = render(CO, req)
    assert [m["role"] for m in obj["messages"]] == ["system", "user", "system", "user"]


def test_consecutive_same_role_messages_merge_where_alternation_is_required():
    req = OA.parse_request({"model": "g", "messages": [
        {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"}, {"role": "assistant", "content": "d"}]}, {})
    for d in (AN, GE, BR):
        obj, _ = render(d, req)
        msgs = obj.get("messages") or obj.get("contents")
        assert len(msgs) == 2
    obj, _ = render(OA, req)
    assert len(obj["messages"]) == 4


def test_tool_results_open_the_user_turn_for_anthropic():
    req = ir.Request([ir.Message(ir.USER, [ir.Text("hi")]),
                      ir.Message(ir.ASSISTANT, [ir.ToolCall("call_1", "f", {})]),
                      ir.Message(ir.USER, [ir.Text("also this")]),
                      ir.Message(ir.USER, [ir.ToolResult("call_1", [ir.Text("ok")])])])
    obj, _ = render(AN, req)
    assert [b["type"] for b in obj["messages"][2]["content"]] == ["tool_result", "text"]
    obj, _ = render(BR, req)
    assert list(obj["messages"][2]["content"][0]) == ["toolResult"]


# ---------------------------------------------------------------------------
# tool calls: arguments, ids, results


def test_arguments_string_to_object_and_back():
    req = OA.parse_request(tool_conversation(), {})
    obj, _ = render(AN, req)
    assert obj["messages"][1]["content"][0]["input"] == {"city": "Paris"}
    back = AN.parse_request(obj, {})
    obj, _ = render(OA, back)
    assert orjson.loads(obj["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


def test_invalid_json_arguments_survive_openai_but_not_object_dialects():
    req = OA.parse_request(tool_conversation(args='{"city": "Par'), {})
    call = req.messages[1].content[0]
    assert call.raw_arguments == '{"city": "Par' and call.arguments == {}
    obj, _ = render(OA, req)
    assert obj["messages"][1]["tool_calls"][0]["function"]["arguments"] == '{"city": "Par'
    with pytest.raises(ClientError) as info:
        AN.render_request(req, "m")
    assert info.value.status == 400 and info.value.param == "messages[1].content[0].arguments"
    obj, warnings = render(AN, req, unsupported="drop")
    assert obj["messages"][1]["content"][0]["input"] == {}
    assert any("arguments" in w for w in warnings)


def test_bedrock_ids_are_sanitised_consistently_for_anthropic():
    req = BR.parse_request({"messages": [
        {"role": "user", "content": [{"text": "hi"}]},
        {"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_a.b:c", "name": "f", "input": {}}}]},
        {"role": "user", "content": [{"toolResult": {"toolUseId": "tooluse_a.b:c", "content": [{"text": "1"}]}}]}]}, {})
    obj, _ = render(AN, req)
    use_id = obj["messages"][1]["content"][0]["id"]
    assert use_id == obj["messages"][2]["content"][0]["tool_use_id"]
    assert use_id != "tooluse_a.b:c" and c.id_fitter(64, None)(use_id) == use_id
    obj, _ = render(BR, req)
    assert obj["messages"][1]["content"][0]["toolUse"]["toolUseId"] == "tooluse_a.b:c"


def test_long_responses_ids_are_shortened_for_chat_completions():
    long_id = "fc_" + "a" * 50
    req = RS.parse_request({"model": "m", "input": [
        {"role": "user", "content": "hi"},
        {"type": "function_call", "call_id": long_id, "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": long_id, "output": "done"}]}, {})
    obj, _ = render(OA, req)
    call_id = obj["messages"][1]["tool_calls"][0]["id"]
    assert len(call_id) <= 40 and call_id == obj["messages"][2]["tool_call_id"]


def test_gemini_ids_are_synthesized_deterministically_and_paired_by_name_and_order():
    body = {"contents": [
        {"role": "user", "parts": [{"text": "two cities"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "w", "args": {"c": "A"}}},
                                    {"functionCall": {"name": "w", "args": {"c": "B"}}},
                                    {"functionCall": {"name": "t", "args": {}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "t", "response": {"output": "noon"}}},
                                   {"functionResponse": {"name": "w", "response": {"output": "sun"}}},
                                   {"functionResponse": {"name": "w", "response": {"output": "rain"}}}]}]}
    r1, r2 = GE.parse_request(body, {}), GE.parse_request(body, {})
    calls = [p.id for p in r1.messages[1].content]
    assert calls == [p.id for p in r2.messages[1].content] and len(set(calls)) == 3
    assert all(c.is_synth_id(i) and len(i) <= 40 for i in calls)
    results = r1.messages[2].content
    assert [x.id for x in results] == [calls[2], calls[0], calls[1]]
    obj, _ = render(OA, r1)
    assert [m["tool_call_id"] for m in obj["messages"][2:]] == [calls[2], calls[0], calls[1]]
    # back to Gemini: synthesized ids stay out of the wire
    obj, _ = render(GE, OA.parse_request(obj, {}))
    assert obj == body | {"contents": body["contents"]}
    assert "id" not in obj["contents"][1]["parts"][0]["functionCall"]


def test_gemini_response_ids_synthesized_and_stripped_on_replay():
    resp = GE.parse_response({"responseId": "r1", "candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"name": "w", "args": {"c": "A"}}}]}, "finishReason": "STOP"}]})
    call = resp.content[0]
    assert c.is_synth_id(call.id) and resp.stop_reason is ir.StopReason.TOOL_USE
    chat = orjson.loads(OA.render_response(resp, "pool"))
    assert chat["choices"][0]["finish_reason"] == "tool_calls"
    # the client replays the call and answers it; Gemini sees names, no ids
    req = OA.parse_request({"model": "pool", "messages": [
        {"role": "user", "content": "w?"}, chat["choices"][0]["message"],
        {"role": "tool", "tool_call_id": call.id, "content": "sun"}]}, {})
    obj, _ = render(GE, req)
    assert obj["contents"][2]["parts"][0]["functionResponse"] == {"name": "w", "response": {"output": "sun"}}


def test_gemini_function_responses_are_objects():
    req = ir.Request([ir.Message(ir.USER, [ir.Text("q")]),
                      ir.Message(ir.ASSISTANT, [ir.ToolCall("call_1", "f", {}), ir.ToolCall("call_2", "g", {})]),
                      ir.Message(ir.USER, [ir.ToolResult("call_1", [ir.Text("boom")], is_error=True),
                                           ir.ToolResult("call_2", [ir.JsonData({"rows": [1, 2]})])])])
    obj, _ = render(GE, req)
    frs = [p["functionResponse"] for p in obj["contents"][2]["parts"]]
    assert frs[0]["response"] == {"error": "boom"} and frs[0]["name"] == "f"
    assert frs[1]["response"] == {"rows": [1, 2]} and frs[1]["name"] == "g"
    back = GE.parse_request(obj, {})
    assert back.messages[2].content[0].is_error and back.messages[2].content[1].content == [ir.JsonData({"rows": [1, 2]})]


def test_gemini_rejects_a_result_with_no_call():
    req = ir.Request([ir.Message(ir.USER, [ir.ToolResult("call_x", [ir.Text("?")])])])
    with pytest.raises(ClientError) as info:
        GE.render_request(req, "m", unsupported="drop")
    assert info.value.status == 400 and "call_x" in info.value.message


def test_tool_result_error_flag_and_images():
    req = AN.parse_request({"model": "c", "max_tokens": 5, "messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "is_error": True, "content": [
            {"type": "text", "text": "partial"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]}]}, {})
    obj, _ = render(BR, req)
    tr = obj["messages"][2]["content"][0]["toolResult"]
    assert tr["status"] == "error" and tr["content"][1]["image"]["format"] == "png"
    with pytest.raises(ClientError) as info:
        OA.render_request(req, "m")
    assert info.value.param == "messages[2].content[0].content[1]"
    obj, warnings = render(OA, req, unsupported="drop")
    assert obj["messages"][2] == {"role": "tool", "tool_call_id": "t1", "content": [{"type": "text", "text": "partial"}]}
    assert any("is_error" in w for w in warnings) and any("content[1]" in w for w in warnings)


# ---------------------------------------------------------------------------
# tool choice


@pytest.mark.parametrize("choice,expected", [
    ("auto", {"anthropic": {"type": "auto"}, "gemini": "AUTO", "bedrock": {"auto": {}}, "cohere": None}),
    ("required", {"anthropic": {"type": "any"}, "gemini": "ANY", "bedrock": {"any": {}}, "cohere": "REQUIRED"}),
    ("none", {"anthropic": {"type": "none"}, "gemini": "NONE", "bedrock": "omitted", "cohere": "NONE"}),
])
def test_tool_choice_mapping(choice, expected):
    req = OA.parse_request({"model": "g", "tools": [WEATHER_TOOL], "tool_choice": choice,
                            "messages": [{"role": "user", "content": "hi"}]}, {})
    assert render(AN, req)[0]["tool_choice"] == expected["anthropic"]
    assert render(GE, req)[0]["toolConfig"]["functionCallingConfig"]["mode"] == expected["gemini"]
    br = render(BR, req)[0]
    if expected["bedrock"] == "omitted":
        assert "toolConfig" not in br       # no tool blocks in the conversation: same meaning
    else:
        assert br["toolConfig"]["toolChoice"] == expected["bedrock"]
    assert render(CO, req)[0].get("tool_choice") == expected["cohere"]


def test_specific_tool_choice():
    req = OA.parse_request({"model": "g", "tools": [WEATHER_TOOL], "messages": [{"role": "user", "content": "hi"}],
                            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, {})
    assert render(AN, req)[0]["tool_choice"] == {"type": "tool", "name": "get_weather"}
    assert render(GE, req)[0]["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}
    assert render(RS, req)[0]["tool_choice"] == {"type": "function", "name": "get_weather"}
    with pytest.raises(ClientError) as info:
        CO.render_request(req, "m")
    assert info.value.param == "tool_choice"


def test_bedrock_tool_choice_none_with_tool_history_is_unsupported():
    body = tool_conversation()
    body["tool_choice"] = "none"
    with pytest.raises(ClientError) as info:
        BR.render_request(OA.parse_request(body, {}), "m")
    assert info.value.param == "tool_choice"


def test_parallel_tool_calls():
    req = oa_req(tools=[WEATHER_TOOL], parallel_tool_calls=False)
    assert render(AN, req)[0]["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    for d in (GE, BR, CO):
        with pytest.raises(ClientError) as info:
            d.render_request(req, "m")
        assert info.value.param == "parallel_tool_calls"
    assert "parallel_tool_calls" not in str(render(GE, oa_req(tools=[WEATHER_TOOL], parallel_tool_calls=True))[1])


# ---------------------------------------------------------------------------
# sampling, stop, formats, reasoning


@pytest.mark.parametrize("target,field,kw", [
    (OA, "top_k", {}), (RS, "stop", {}), (RS, "seed", {}), (AN, "seed", {}), (AN, "temperature", {}),
    (BR, "temperature", {}), (BR, "frequency_penalty", {}),
])
def test_unsupported_sampling_fields_reject_or_drop(target, field, kw):
    req = CO.parse_request({"model": "c", "messages": [{"role": "user", "content": "x"}], "k": 5, "stop_sequences": ["Z"],
                            "seed": 3, "temperature": 1.5, "frequency_penalty": 0.5}, {})
    with pytest.raises(ClientError) as info:
        target.render_request(req, "m")
    err = info.value
    assert err.status == 400 and err.param is not None and err.param in err.message
    obj, warnings = render(target, req, unsupported="drop")
    assert any(f"'{field}'" in w for w in warnings)
    assert field not in orjson.dumps(obj).decode() or field == "temperature"


def test_top_k_goes_to_bedrock_additional_fields():
    req = AN.parse_request({"model": "c", "max_tokens": 5, "top_k": 40, "messages": [{"role": "user", "content": "x"}]}, {})
    obj, _ = render(BR, req)
    assert obj["additionalModelRequestFields"] == {"top_k": 40}
    assert BR.parse_request(obj, {}).top_k == 40


@pytest.mark.parametrize("rf,checks", [
    ({"type": "json_object"}, {"gemini": {"responseMimeType": "application/json"},
                               "cohere": {"type": "json_object"}, "anthropic": "reject", "bedrock": "reject"}),
    ({"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "object"}, "strict": True}},
     {"gemini": {"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}},
      "cohere": {"type": "json_object", "json_schema": {"type": "object"}},
      "anthropic": {"format": {"type": "json_schema", "schema": {"type": "object"}}},
      "bedrock": {"textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": '{"type":"object"}',
                                                                                    "name": "p"}}}}}),
])
def test_response_format(rf, checks):
    req = oa_req(response_format=rf)
    for d, key in ((GE, "generationConfig"), (CO, "response_format"), (AN, "output_config"), (BR, "outputConfig")):
        want = checks[d.name]
        if want == "reject":
            with pytest.raises(ClientError) as info:
                d.render_request(req, "m")
            assert info.value.param == "response_format"
        else:
            assert render(d, req)[0][key] == want


def test_reasoning_effort_and_budget_convert():
    req = oa_req(reasoning_effort="high")
    assert render(AN, req)[0]["output_config"] == {"effort": "high"}
    assert render(GE, req)[0]["generationConfig"]["thinkingConfig"] == {"thinkingLevel": "HIGH"}
    assert render(CO, req)[0]["thinking"] == {"type": "enabled", "token_budget": 4096}
    assert render(BR, req)[0]["outputConfig"] == {"effort": "high"}
    req = AN.parse_request({"model": "c", "max_tokens": 9000, "thinking": {"type": "enabled", "budget_tokens": 2000},
                            "messages": [{"role": "user", "content": "x"}]}, {})
    assert render(OA, req)[0]["reasoning_effort"] == "medium"
    assert render(GE, req)[0]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 2000}
    assert render(BR, req)[0]["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2000}}
    off = AN.parse_request({"model": "c", "max_tokens": 9, "thinking": {"type": "disabled"},
                            "messages": [{"role": "user", "content": "x"}]}, {})
    assert render(OA, off)[0]["reasoning_effort"] == "none"
    assert render(GE, off)[0]["generationConfig"]["thinkingConfig"] == {"thinkingBudget": 0}


def test_stream_flag_and_openai_usage_option():
    obj, _ = render(OA, AN.parse_request({"model": "c", "max_tokens": 5, "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]}, {}))
    assert obj["stream"] is True and obj["stream_options"] == {"include_usage": True}
    assert GE.inbound_stream({"action": "streamGenerateContent"}, {})
    assert BR.inbound_stream({"action": "converse-stream"}, {}) and not BR.inbound_stream({"action": "converse"}, {})


# ---------------------------------------------------------------------------
# images and documents


def test_data_uri_becomes_base64_source():
    req = OA.parse_request({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}}]}]}, {})
    obj, warnings = render(AN, req)
    assert obj["messages"][0]["content"][0]["source"] == {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}
    assert any("detail" in w and w.startswith("dropped hint") for w in warnings)
    assert render(GE, req)[0]["contents"][0]["parts"][0] == {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}
    assert render(BR, req)[0]["messages"][0]["content"][0]["image"] == {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}


def test_url_images_where_only_bytes_are_taken():
    req = OA.parse_request({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}]}]}, {})
    with pytest.raises(ClientError) as info:
        BR.render_request(req, "m")
    assert info.value.status == 400 and info.value.param == "messages[0].content[1].url"
    obj, warnings = render(BR, req, unsupported="drop")
    assert obj["messages"][0]["content"] == [{"text": "what is this"}]
    assert warnings and "messages[0].content[1].url" in warnings[0]
    assert render(AN, req)[0]["messages"][0]["content"][1]["source"] == {"type": "url", "url": "https://example.com/cat.jpg"}
    assert render(GE, req)[0]["contents"][0]["parts"][1] == {
        "fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.jpg"}}
    unknown = OA.parse_request({"model": "g", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/render?id=4"}}]}]}, {})
    with pytest.raises(ClientError):
        GE.render_request(unknown, "m")


def test_documents():
    req = AN.parse_request({"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hello"}, "title": "memo"},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}}]}]}, {})
    gem, _ = render(GE, req)
    assert gem["contents"][0]["parts"][0] == {"inlineData": {"mimeType": "text/plain",
                                                             "data": base64.b64encode(b"hello").decode()}}
    back, _ = render(AN, GE.parse_request(gem, {}))
    assert back["messages"][0]["content"][0]["source"] == {"type": "text", "media_type": "text/plain", "data": "hello"}
    br, _ = render(BR, req)
    assert br["messages"][0]["content"][0]["document"] == {"format": "txt", "name": "memo", "source": {"text": "hello"}}
    assert br["messages"][0]["content"][1]["document"]["format"] == "pdf"
    oa, _ = render(OA, req, unsupported="drop")
    assert oa["messages"][0]["content"][0]["file"]["file_data"] == "data:application/pdf;base64,JVBERi0="
    with pytest.raises(ClientError):
        CO.render_request(req, "m")


# ---------------------------------------------------------------------------
# foreign fields: reject, drop with a warning, or hints


def test_foreign_vendor_fields():
    req = OA.parse_request({"model": "g", "messages": [{"role": "user", "content": "x"}],
                            "logit_bias": {"50256": -100}, "store": True}, {})
    with pytest.raises(ClientError) as info:
        AN.render_request(req, "m")
    assert info.value.param == "logit_bias"
    obj, warnings = render(AN, req, unsupported="drop")
    assert "logit_bias" not in obj and "store" not in obj
    assert any("'logit_bias'" in w and w.startswith("dropped '") for w in warnings)
    assert any("'store'" in w and w.startswith("dropped hint") for w in warnings)


def test_cache_control_is_a_hint():
    req = AN.parse_request({"model": "c", "max_tokens": 5, "system": [
        {"type": "text", "text": "long", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "x"}]}, {})
    obj, warnings = render(OA, req)          # reject mode: hints never reject
    assert obj["messages"][0] == {"role": "system", "content": "long"}
    assert warnings == ["dropped hint 'system[0].cache_control': anthropic-only hint"]
    obj, _ = render(AN, req)
    assert obj["system"][0]["cache_control"] == {"type": "ephemeral"}


def test_responses_server_state_crosses_only_once_the_gateway_put_it_back():
    """The codec cannot translate a bare `previous_response_id` (or `conversation`): the
    exchange first replaces it with the turns it kept (ADR 0024); an id it does not hold
    only a Responses member can take."""
    for field, value in (("previous_response_id", "resp_1"), ("conversation", "conv_1")):
        req = RS.parse_request({"model": "m", "input": "more", field: value}, {})
        with pytest.raises(ClientError) as info:
            OA.render_request(req, "m")
        assert info.value.param == field
    history = [{"role": "user", "content": "first"}, {"type": "message", "role": "assistant",
                                                       "content": [{"type": "output_text", "text": "ok"}]}]
    continued = RS.with_history({"model": "m", "input": "more", "previous_response_id": "resp_1"}, history)
    obj, _ = render(OA, RS.parse_request(continued, {}))
    assert [(m["role"], m["content"]) for m in obj["messages"]] == [("user", "first"), ("assistant", "ok"),
                                                                     ("user", "more")]


@pytest.mark.parametrize("proto,body,field", [
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "x", "name": "bob"}], "logprobs": True,
                "n": 2, "prediction": {"type": "content", "content": "y"}}, "prediction"),
    ("anthropic", {"model": "c", "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}],
        "container": "c1", "service_tier": "auto", "mcp_servers": [{"type": "url", "url": "u", "name": "n"}]}, "mcp_servers"),
    ("responses", {"model": "m", "input": "x", "store": False, "include": ["reasoning.encrypted_content"],
                   "previous_response_id": "r", "text": {"verbosity": "low"}, "reasoning": {"summary": "auto"}}, "previous_response_id"),
    ("gemini", {"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}],
                "generationConfig": {"candidateCount": 1, "responseModalities": ["TEXT"]}}, "safetySettings"),
    ("bedrock", {"messages": [{"role": "user", "content": [{"text": "x"}, {"cachePoint": {"type": "default"}}]}],
                 "guardrailConfig": {"guardrailIdentifier": "g", "guardrailVersion": "1"},
                 "additionalModelRequestFields": {"reasoning_config": {"type": "enabled"}}}, "guardrailConfig"),
    ("cohere", {"model": "c", "messages": [{"role": "user", "content": "x"}], "documents": ["d"],
                "safety_mode": "STRICT", "citation_options": {"mode": "FAST"}}, "documents"),
])
def test_same_protocol_round_trip_keeps_vendor_fields(proto, body, field):
    d = get_dialect(proto)
    req = d.parse_request(body, {"model": "m"})
    obj, warnings = render(d, req)
    assert warnings == []
    assert d.parse_request(obj, {"model": "m"}) == req
    for key, value in body.items():
        if key not in ("model", "messages", "input", "contents", "n"):
            assert obj[key] == value, key
    other = OA if proto != "openai" else AN
    with pytest.raises(ClientError):
        other.render_request(req, "m")
    out, warnings = other.render_request(req, "m", unsupported="drop")
    assert any(field in w for w in warnings)


# ---------------------------------------------------------------------------
# responses: stop reasons, usage, reasoning, refusals


@pytest.mark.parametrize("proto,body,stop", [
    ("gemini", {"candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {}}}]},
                                "finishReason": "STOP"}]}, ir.StopReason.TOOL_USE),
    ("openai", {"id": "c", "model": "g", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}, ir.StopReason.TOOL_USE),
    ("gemini", {"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": "RECITATION"}]},
     ir.StopReason.CONTENT_FILTER),
    ("gemini", {"promptFeedback": {"blockReason": "SAFETY"}}, ir.StopReason.CONTENT_FILTER),
    ("bedrock", {"output": {"message": {"role": "assistant", "content": []}}, "stopReason": "guardrail_intervened",
                 "usage": {"inputTokens": 1, "outputTokens": 0, "totalTokens": 1}, "metrics": {"latencyMs": 3}},
     ir.StopReason.CONTENT_FILTER),
    ("responses", {"id": "r", "status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}, "output": []},
     ir.StopReason.MAX_TOKENS),
    ("anthropic", {"id": "m", "content": [], "stop_reason": "pause_turn", "usage": {"input_tokens": 1, "output_tokens": 1}},
     ir.StopReason.PAUSE),
    ("cohere", {"id": "x", "finish_reason": "TOOL_CALL", "message": {"role": "assistant", "tool_plan": "I will call f",
                "tool_calls": [{"id": "f_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}},
     ir.StopReason.TOOL_USE),
])
def test_stop_reasons(proto, body, stop):
    assert get_dialect(proto).parse_response(body).stop_reason is stop


def test_stop_reason_rendering_across():
    refusal = AN.parse_response({"id": "m", "content": [{"type": "text", "text": "I can't help with that."}],
                                 "stop_reason": "refusal", "usage": {"input_tokens": 1, "output_tokens": 1}})
    chat = orjson.loads(OA.render_response(refusal, "p"))
    assert chat["choices"][0]["finish_reason"] == "content_filter"
    assert chat["choices"][0]["message"]["content"] == "I can't help with that."
    assert orjson.loads(GE.render_response(refusal, "p"))["candidates"][0]["finishReason"] == "SAFETY"
    assert orjson.loads(RS.render_response(refusal, "p"))["incomplete_details"] == {"reason": "content_filter"}
    seq = AN.parse_response({"id": "m", "content": [{"type": "text", "text": "a"}], "stop_reason": "stop_sequence",
                             "stop_sequence": "END", "usage": {"input_tokens": 1, "output_tokens": 1}})
    br = orjson.loads(BR.render_response(seq, "p"))
    assert br["stopReason"] == "stop_sequence" and br["additionalModelResponseFields"]["delta"]["stop_sequence"] == "END"
    assert orjson.loads(OA.render_response(seq, "p"))["choices"][0]["finish_reason"] == "stop"


def test_openai_refusal_field():
    resp = OA.parse_response({"id": "c", "model": "g", "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": None, "refusal": "I can't."}}]})
    assert resp.stop_reason is ir.StopReason.REFUSAL and resp.content == [ir.Refusal("I can't.")]
    msg = orjson.loads(AN.render_response(resp, "p"))
    assert msg["stop_reason"] == "refusal" and msg["content"] == [{"type": "text", "text": "I can't."}]
    assert orjson.loads(OA.render_response(resp, "p"))["choices"][0]["message"]["refusal"] == "I can't."


def test_usage_semantics():
    resp = AN.parse_response({"id": "m", "content": [], "stop_reason": "end_turn", "usage": {
        "input_tokens": 100, "output_tokens": 50, "cache_read_input_tokens": 1000, "cache_creation_input_tokens": 10}})
    assert resp.usage.input_tokens == 1110 and resp.usage.cached_tokens == 1000
    u = orjson.loads(OA.render_response(resp, "p"))["usage"]
    assert u["prompt_tokens"] == 1110 and u["prompt_tokens_details"]["cached_tokens"] == 1000 and u["total_tokens"] == 1160
    back = orjson.loads(AN.render_response(OA.parse_response(orjson.loads(OA.render_response(resp, "p"))), "p"))["usage"]
    assert back["input_tokens"] == 100 and back["cache_read_input_tokens"] == 1000
    gem = GE.parse_response({"candidates": [], "usageMetadata": {
        "promptTokenCount": 20, "candidatesTokenCount": 5, "thoughtsTokenCount": 30, "totalTokenCount": 55}})
    assert gem.usage.output_tokens == 35 and gem.usage.reasoning_tokens == 30
    u = orjson.loads(OA.render_response(gem, "p"))["usage"]
    assert u["completion_tokens"] == 35 and u["completion_tokens_details"]["reasoning_tokens"] == 30
    co = CO.parse_response({"id": "x", "finish_reason": "COMPLETE", "message": {"role": "assistant", "content": []},
                            "usage": {"billed_units": {"input_tokens": 37.0, "output_tokens": 28.0},
                                      "tokens": {"input_tokens": 913.0, "output_tokens": 83.0}}})
    assert (co.usage.input_tokens, co.usage.output_tokens) == (913, 83)
    assert orjson.loads(CO.render_response(co, "p"))["usage"]["billed_units"] == {"input_tokens": 37.0, "output_tokens": 28.0}


def test_reasoning_signatures_stay_with_their_vendor():
    resp = AN.parse_response({"id": "m", "content": [
        {"type": "thinking", "thinking": "let me see", "signature": "EqQBCgIYAhIM"},
        {"type": "text", "text": "42"}], "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}})
    chat = orjson.loads(OA.render_response(resp, "p"))
    assert chat["choices"][0]["message"]["content"] == "42"       # Chat has no reasoning slot
    gem = orjson.loads(GE.render_response(resp, "p"))
    thought = gem["candidates"][0]["content"]["parts"][0]
    assert thought["thought"] is True and thought["text"] == "let me see"
    # a Gemini client replays the turn: the thought goes back to Anthropic only
    req = GE.parse_request({"contents": [{"role": "user", "parts": [{"text": "q"}]}, gem["candidates"][0]["content"],
                                         {"role": "user", "parts": [{"text": "and?"}]}]}, {})
    part = req.messages[1].content[0]
    assert (part.origin, part.signature) == ("anthropic", "EqQBCgIYAhIM")
    obj, _ = render(AN, req)
    assert obj["messages"][1]["content"][0] == {"type": "thinking", "thinking": "let me see", "signature": "EqQBCgIYAhIM"}
    obj, warnings = render(GE, req)
    assert obj["contents"][1]["parts"] == [{"text": "42"}]
    assert any("anthropic reasoning cannot be replayed to gemini" in w for w in warnings)


def test_cohere_tool_plan_is_text_elsewhere():
    resp = CO.parse_response({"id": "x", "finish_reason": "TOOL_CALL", "message": {"role": "assistant",
                              "tool_plan": "I will look it up.", "tool_calls": [
                                  {"id": "w_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]}})
    msg = orjson.loads(AN.render_response(resp, "p"))
    assert msg["content"][0] == {"type": "text", "text": "I will look it up."} and msg["stop_reason"] == "tool_use"
    assert orjson.loads(CO.render_response(resp, "p"))["message"]["tool_plan"] == "I will look it up."


def test_responses_call_id_not_item_id():
    resp = RS.parse_response({"id": "r", "status": "completed", "output": [
        {"type": "function_call", "id": "fc_68a" + "b" * 40, "call_id": "call_77", "name": "f", "arguments": "{}"}]})
    assert resp.content[0].id == "call_77" and resp.stop_reason is ir.StopReason.TOOL_USE


# ---------------------------------------------------------------------------
# wire layer of the new dialects


def test_paths_keys_and_auth():
    assert GE.upstream_path("", "gemini-2.5-flash", False) == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert GE.upstream_path("/x/", "models/g", True) == "/x/v1beta/models/g:streamGenerateContent?alt=sse"
    assert BR.upstream_path("", "anthropic.claude-3-haiku-20240307-v1:0", False) == \
        "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse"
    assert BR.upstream_path("", "arn:aws:bedrock:us-east-1:1:inference-profile/x", True).endswith(
        "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse-stream")
    assert RS.upstream_path("/v1", "m", False) == "/v1/responses"
    assert CO.upstream_path("", "m", True) == "/v2/chat"
    assert GE.inbound_key([(b"x-goog-api-key", b"k1")], b"") == "k1"
    assert GE.inbound_key([], b"key=k2&alt=sse") == "k2"
    assert BR.inbound_key([(b"authorization", b"AWS4-HMAC-SHA256 ...")], b"") is None
    assert CO.inbound_key([(b"authorization", b"Bearer ck")], b"") == "ck"
    assert GE.auth_headers("k") == [(b"x-goog-api-key", b"k")] and BR.auth_headers("k") == []
    assert CO.auth_headers("k") == [(b"authorization", b"Bearer k")]
    assert GE.inbound_model({"model": "g"}, {}) == "g" and BR.inbound_model({"model": "b"}, {}) == "b"
    assert GE.passthrough_body(b'{"contents":[]}', {}, "x") == b'{"contents":[]}'
    assert RS.passthrough_body(b'{"model":"a","input":"x"}', {"model": "a"}, "b") == b'{"model":"b","input":"x"}'


def test_bedrock_error_rendering_sets_the_exception_header():
    status, headers, body = BR.render_error(ClientError(429, "slow down", "rate_limit", retry_after=3))
    assert status == 429 and (b"x-amzn-errortype", b"ThrottlingException") in headers
    assert orjson.loads(body) == {"message": "slow down"}
    status, _, body = GE.render_error(ClientError(429, "slow down", "rate_limit", retry_after=3))
    assert orjson.loads(body)["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert orjson.loads(body)["error"]["details"][0]["retryDelay"] == "3s"


def test_malformed_requests_are_client_errors():
    for d, body in ((OA, {"model": "m", "messages": "hi"}), (AN, {"model": "m", "max_tokens": 1, "messages": [{}]}),
                    (GE, {"contents": [{"role": "robot", "parts": []}]}), (BR, {"messages": [{"role": "user"}]}),
                    (CO, {"model": "m", "messages": [{"role": "user"}]}), (RS, {"model": "m", "input": 5})):
        with pytest.raises(ClientError) as info:
            d.parse_request(body, {})
        assert info.value.status == 400


@pytest.mark.pure
def test_gemini_tool_result_holding_json_null_stays_data():
    """A tool that returned JSON `null` renders as {"output": null} and parses back as data, not as ''."""
    from busbar import ir
    from busbar.protocols import get_dialect
    gemini = get_dialect("gemini")
    req = ir.Request(messages=[ir.Message("user", [ir.Text("go")]),
                               ir.Message("assistant", [ir.ToolCall("call_1", "f", {})]),
                               ir.Message("user", [ir.ToolResult("call_1", [ir.JsonData(None)])])])
    wire, _ = gemini.render_request(req, "m")
    part = orjson.loads(wire)["contents"][2]["parts"][0]["functionResponse"]
    assert part["response"] == {"output": None}
    assert gemini.parse_request(orjson.loads(wire), {}).messages[2].content[0].content == [ir.JsonData(None)]


@pytest.mark.pure
def test_vendor_bytes_that_merely_look_like_the_gateway_tag_are_kept():
    """Bedrock redactedContent whose base64 starts like base64('busbar') is the vendor's, untouched."""
    from busbar.protocols import common
    assert common.sig_in_b64("YnVzYmFy", "bedrock") == ("YnVzYmFy", "bedrock")
    tagged = common.sig_out_b64(ir_redacted("opaque", "anthropic"), "bedrock")
    assert common.sig_in_b64(tagged, "bedrock") == ("opaque", "anthropic")


def ir_redacted(data, origin):
    from busbar import ir
    return ir.RedactedReasoning(data, origin)
