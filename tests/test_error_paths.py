"""A translation error names the field in the client's own terms (issue 19): `param` is a
path that exists in the body the client sent (`input[3].foo`, `contents[1].parts[0]`,
`generationConfig.topK`), never the IR's (`messages[1].content[0]...`)."""
from __future__ import annotations

import copy

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbar.faults import ClientError
from busbar.mock import MockVendor
from busbar.protocols import get_dialect
from busbar.protocols.paths import existing, segments
from harness import gateway_with, sdk
from strategies import PROTOCOLS, wire_request
from test_translation_e2e import config_for


def translate_error(client: str, obj: dict, target: str, params=None) -> ClientError | None:
    """What the exchange does: parse as the client, render for the target (rejecting what
    it cannot say), and name a refusal in the client's terms."""
    dialect = get_dialect(client)
    req = dialect.parse_request(copy.deepcopy(obj), params or {})
    try:
        get_dialect(target).render_request(req, "m", unsupported="reject")
    except ClientError as err:
        return dialect.client_error(err, obj)
    return None


def exists(obj: dict, param: str) -> bool:
    path = segments(param)
    return existing(obj, path) == path


USER = {"role": "user", "content": "hi"}
# (client, body, target, the param the client must be shown)
CASES = [
    ("responses", {"model": "m", "input": [USER, {"type": "web_search_call", "id": "ws_1", "status": "completed"}]},
     "anthropic", "input[1]"),
    ("responses", {"model": "m", "input": [USER, {"role": "assistant", "content": "ok"},
                                           {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}",
                                            "foo": 1}, {"type": "function_call_output", "call_id": "c1",
                                                        "output": "r"}]},
     "gemini", "input[2].foo"),
    ("responses", {"model": "m", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": "a"}, {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]}]},
     "anthropic", "input[0].content[1].input_audio"),
    # server-side state reaching translation unexpanded (the gateway puts back the turns and conversations
    # it keeps before this: ADR 0024, 0030)
    ("responses", {"model": "m", "input": "hi", "conversation": "conv_1"}, "anthropic", "conversation"),
    ("responses", {"model": "m", "input": "hi", "tools": [
        {"type": "namespace", "name": "ns", "tools": [{"type": "function", "name": "a", "parameters": {}},
                                                      {"type": "function", "name": "b", "parameters": {}, "zz": 1}]}]},
     "anthropic", "tools[0].tools[1].zz"),
    ("openai", {"model": "m", "messages": [{"role": "system", "content": "be brief"}, USER,
                                           {"role": "assistant", "content": "x", "tool_calls": [
                                               {"id": "c1", "type": "function", "function": {"name": "f",
                                                                                             "arguments": "{}"},
                                                "zz": True}]},
                                           {"role": "tool", "tool_call_id": "c1", "content": "r"}]},
     "anthropic", "messages[2].tool_calls[0].zz"),
    ("openai", {"model": "m", "messages": [USER, {"role": "user", "content": [
        {"type": "text", "text": "a"}, {"type": "input_audio", "input_audio": {"data": "AA==", "format": "wav"}}]}]},
     "gemini", "messages[1].content[1].input_audio"),
    ("openai", {"model": "m", "messages": [USER], "logit_bias": {"1": 2}}, "anthropic", "logit_bias"),
    ("openai", {"model": "m", "messages": [USER], "seed": 3}, "anthropic", "seed"),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": [USER, {"role": "assistant", "content": [
        {"type": "text", "text": "a"}, {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]},
        USER]}, "openai", "messages[1].content[1]"),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": [USER], "top_k": 4}, "responses", "top_k"),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": [USER], "tools": [
        {"name": "a", "input_schema": {"type": "object"}}, {"name": "b", "input_schema": {"type": "object"},
                                                            "input_examples": [{}]}]},
     "openai", "tools[1].input_examples"),
    ("gemini", {"contents": [{"role": "user", "parts": [{"text": "a"}]}, {"role": "model", "parts": [
        {"text": "b"}, {"executableCode": {"language": "PYTHON", "code": "1"}}]}, {"parts": [{"text": "c"}]}]},
     "openai", "contents[1].parts[1].executableCode"),
    ("gemini", {"contents": [{"parts": [{"text": "a"}]}], "generationConfig": {"topK": 3}}, "openai",
     "generationConfig.topK"),
    ("gemini", {"contents": [{"parts": [{"text": "a"}]}], "generation_config": {"top_k": 3}}, "responses",
     "generation_config.top_k"),
    ("gemini", {"contents": [{"parts": [{"text": "a"}]}], "tools": [{"functionDeclarations": [
        {"name": "a"}, {"name": "b", "behavior": "NON_BLOCKING"}]}]}, "anthropic",
     "tools[0].functionDeclarations[1].behavior"),
    ("bedrock", {"messages": [{"role": "user", "content": [{"text": "a"}, {"cachePoint": {"type": "default"}},
                                                           {"video": {"format": "mp4", "source": {"bytes": "AA=="}}}]}]},
     "openai", "messages[0].content[2].video"),
    ("bedrock", {"messages": [{"role": "user", "content": [{"text": "a"}]}],
                 "additionalModelRequestFields": {"top_k": 2}}, "openai", "additionalModelRequestFields.top_k"),
    ("cohere", {"model": "m", "messages": [USER], "k": 3}, "openai", "k"),
    ("cohere", {"model": "m", "messages": [{"role": "system", "content": "s"}, USER, {
        "role": "assistant", "tool_plan": "p", "tool_calls": [{"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": "{}"}, "zz": 1}]}, {"role": "tool", "tool_call_id": "c1", "content": "r"}]},
     "anthropic", "messages[2].tool_calls[0].zz"),
]


@pytest.mark.pure
@pytest.mark.parametrize("client, body, target, want", CASES,
                         ids=[f"{c}-{t}-{w}" for c, _, t, w in CASES])
def test_a_translation_error_names_the_clients_own_path(client, body, target, want):
    params = {"model": "m", "action": "converse" if client == "bedrock" else "generateContent"}
    err = translate_error(client, body, target, params)
    assert err is not None, "expected a refusal"
    assert err.param == want, err.message
    assert exists(body, err.param)
    assert f"'{want}'" in err.message


@pytest.mark.pure
@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
@pytest.mark.parametrize("client", PROTOCOLS)
def test_every_refusal_points_at_a_path_the_client_sent(client, data):
    obj, params = data.draw(wire_request(client))
    for target in PROTOCOLS:
        if target == client:
            continue
        err = translate_error(client, obj, target, params)
        if err is not None and err.param is not None:
            assert exists(obj, err.param), (target, err.param, err.message)


@pytest.mark.sdk
async def test_the_openai_sdk_sees_the_input_path_of_an_untranslatable_field():
    mock = MockVendor(reply="x")
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: client.responses.create(model="smart", input=[
                {"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "future_field": 1},
                {"type": "function_call_output", "call_id": "c1", "output": "r"}]))
    assert info.value.body["param"] == "input[2].future_field"
    assert mock.received == []


def _fast_and_searched(client: str, obj: dict, params) -> list:
    """For every IR part (and turn) of `obj`: (the unparsed mapping, the search's), where the first applies."""
    from busbar.protocols import paths
    dialect = get_dialect(client)
    req = dialect.parse_request(copy.deepcopy(obj), params or {})
    shape = paths.shape_of(client)
    out = []
    for i, m in enumerate(req.messages):
        for j in range(-1, len(m.content)):
            fast = paths._one_to_one(shape, obj, len(req.messages), i, j)
            if fast is not None:
                out.append((fast, paths._find(dialect.codec.parse_request, obj, shape.turns, i, j)))
    return out


@pytest.mark.pure
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
@pytest.mark.parametrize("client", PROTOCOLS)
def test_one_message_per_turn_is_mapped_as_the_search_maps_it(client, data):
    """`client_path` with the IR's message count skips the prefix search when
    each client turn made one IR message (warnings name fields on every
    request that has them): it must find the same turn and part as the search."""
    obj, params = data.draw(wire_request(client))
    for fast, searched in _fast_and_searched(client, obj, params):
        assert fast == searched, (obj, fast, searched)


@pytest.mark.pure
def test_one_message_per_turn_on_the_hand_written_bodies():
    applied = 0
    for client, body, _, _ in CASES:
        params = {"model": "m", "action": "converse" if client == "bedrock" else "generateContent"}
        for fast, searched in _fast_and_searched(client, body, params):
            assert fast == searched, (client, body)
            applied += 1
    assert applied > 10


# ---------------------------------------------------------------------------
# x-busbar-warning names fields as the client sent them, as errors do


@pytest.mark.pure
@pytest.mark.parametrize("client, body, target, warned", [
    # a leading system message is no IR message: the user turn is messages[1] to the client
    ("openai", {"model": "m", "messages": [{"role": "system", "content": "be brief"},
                                           {"role": "user", "content": "hi", "name": "bob"}]},
     "anthropic", "dropped hint 'messages[1].name'"),
    ("openai", {"model": "m", "messages": [USER], "tools": [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}]},
     "gemini", "dropped hint 'tools[0].function.strict'"),
    # an Anthropic client's user id is metadata.user_id
    ("anthropic", {"model": "m", "max_tokens": 9, "messages": [USER], "metadata": {"user_id": "u1"}},
     "bedrock", "dropped hint 'metadata.user_id'"),
    ("gemini", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}], "generationConfig": {"seed": 7}},
     "anthropic", "dropped 'generationConfig.seed'"),
    ("bedrock", {"messages": [{"role": "user", "content": [{"text": "hi"}]}], "requestMetadata": {"a": "b"}},
     "gemini", "dropped hint 'requestMetadata'"),
    ("bedrock", {"messages": [{"role": "user", "content": [{"text": "hi"}]}],
                 "inferenceConfig": {"stopSequences": ["x"]}}, "responses", "dropped 'inferenceConfig.stopSequences'"),
    # not a field: the beta flag's header is named as it is
    ("anthropic", {"model": "m", "max_tokens": 9, "messages": [USER]}, None, None),
])
def test_warnings_name_the_clients_field(client, body, target, warned):
    dialect = get_dialect(client)
    params = {"model": "m", "action": "converse" if client == "bedrock" else "generateContent"}
    if target is None:
        kept = ["dropped hint 'anthropic-beta': the beta 'x' is not one Claude on Bedrock serves",
                "dropped input type 'search_query': OpenAI embeddings take none"]
        assert dialect.client_warnings(kept, body, 1) == kept
        return
    req = dialect.parse_request(copy.deepcopy(body), params)
    _, warnings = get_dialect(target).render_request(req, "m", max_tokens_default=9, unsupported="drop")
    named = dialect.client_warnings(warnings, body, len(req.messages))
    assert any(warned in w for w in named), (warnings, named)
    for w in named:
        field = w.split("'")[1]
        assert exists(body, field), (w, body)


@pytest.mark.sdk
async def test_the_openai_sdk_reads_warnings_naming_its_own_fields():
    """Chat Completions and Responses clients behind an Anthropic pool that
    drops what it cannot say: x-busbar-warning (read with the SDK's
    with_raw_response) names `messages[1].name` and `input[1]`, the client's
    own paths, not the IR's `messages[0].name` / `messages[1].content[0]`."""
    config = config_for("anthropic")
    config["pools"]["smart"]["unsupported"] = "drop"
    mock = MockVendor(reply="done")
    async with gateway_with(config, a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        chat = await sdk(lambda: client.chat.completions.with_raw_response.create(
            model="smart", logit_bias={"50256": -100}, messages=[
                {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi", "name": "bob"}]))
        resp = await sdk(lambda: client.responses.with_raw_response.create(model="smart", input=[
            {"role": "user", "content": "hi"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
            {"role": "user", "content": "more"}]))
    assert chat.parse().choices[0].message.content == "done"
    warning = chat.headers["x-busbar-warning"]
    assert "dropped hint 'messages[1].name'" in warning and "dropped 'logit_bias'" in warning, warning
    assert "messages[0]" not in warning
    assert resp.parse().output_text == "done"
    warning = resp.headers["x-busbar-warning"]
    assert "'input[1]'" in warning and "messages[" not in warning, warning
