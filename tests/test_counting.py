"""Token counting without sockets: every counting protocol's body to the IR
and to every other counting protocol's body, the routes, which members
count (the rest get the estimate) and the 400s for bodies that cannot be
counted."""
from __future__ import annotations

import base64

import orjson
import pytest

from busbar.faults import ClientError
from busbar.protocols import get_dialect
from busbar.protocols.counting import estimate
from busbar.protocols.routes import match_route

PROMPT = "How many tokens is this question, roughly?"
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
# the same prompt (a system text, one user turn, one tool) in each client's counting body
BODIES = {
    "anthropic": {"model": "p", "system": "Be brief.", "messages": [{"role": "user", "content": PROMPT}],
                  "tools": [{"name": "weather", "description": "The weather.", "input_schema": SCHEMA}]},
    "gemini": {"generateContentRequest": {"model": "models/p", "systemInstruction": {"parts": [{"text": "Be brief."}]},
                                          "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
                                          "tools": [{"functionDeclarations": [
                                              {"name": "weather", "description": "The weather.",
                                               "parameters": SCHEMA}]}]}},
    "responses": {"model": "p", "instructions": "Be brief.", "input": PROMPT, "max_output_tokens": 9,
                  "tools": [{"type": "function", "name": "weather", "description": "The weather.",
                             "parameters": SCHEMA}]},
    "bedrock": {"input": {"converse": {"system": [{"text": "Be brief."}],
                                       "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
                                       "toolConfig": {"tools": [{"toolSpec": {
                                           "name": "weather", "description": "The weather.",
                                           "inputSchema": {"json": SCHEMA}}}]}}}},
}


def _prompt(req):
    return [t.text for t in req.system], [(m.role, [p.text for p in m.content]) for m in req.messages]


def _tools(req):
    return [(t.name, t.description, t.parameters) for t in req.tools]


@pytest.mark.pure
@pytest.mark.parametrize("client", list(BODIES))
@pytest.mark.parametrize("member", list(BODIES))
def test_a_count_translates_between_every_pair_of_counting_protocols(client, member):
    req = get_dialect(client, "count").parse_request(BODIES[client], {})
    assert _prompt(req) == (["Be brief."], [("user", [PROMPT])])
    up = get_dialect(member, "count")
    wire, warnings = up.render_request(req, "m")
    back = up.parse_request(orjson.loads(wire), {})
    assert _prompt(back) == _prompt(req)
    assert all(w.startswith("dropped hint") for w in warnings)    # e.g. Responses' strict flag to Gemini
    assert _tools(back) == _tools(req) == [("weather", "The weather.", SCHEMA)]
    assert estimate(back) == estimate(req)
    assert up.codec.parse_response(orjson.loads(up.render_response(up.codec.parse_response(
        {"anthropic": {"input_tokens": 7}, "gemini": {"totalTokens": 7}, "responses": {"input_tokens": 7},
         "bedrock": {"inputTokens": 7}}[member]), "m"))).input_tokens == 7


@pytest.mark.pure
def test_the_counting_bodies_keep_only_what_each_endpoint_takes():
    req = get_dialect("responses", "count").parse_request({**BODIES["responses"], "temperature": 0.2}, {})
    resp_body = orjson.loads(get_dialect("responses", "count").render_request(req, "gpt-4.1")[0])
    assert set(resp_body) == {"model", "input", "instructions", "tools"}    # no max_output_tokens, no temperature
    br_body = orjson.loads(get_dialect("bedrock", "count").render_request(req, "x")[0])
    assert set(br_body["input"]["converse"]) == {"messages", "system", "toolConfig"}    # no inferenceConfig
    assert get_dialect("responses", "count").render_response(
        get_dialect("responses", "count").local_answer(req, "openai"), "p") == \
        orjson.dumps({"object": "response.input_tokens", "input_tokens": estimate(req)})


@pytest.mark.pure
def test_routes_for_responses_and_bedrock_counting():
    assert match_route(b"/v1/responses/input_tokens") == ("responses", {"operation": "count"})
    assert match_route(b"/responses/input_tokens") == ("responses", {"operation": "count"})
    assert match_route(b"/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/count-tokens") == (
        "bedrock", {"model": "us.anthropic.claude-sonnet-4-20250514-v1:0", "action": "count-tokens",
                    "operation": "count"})
    path = get_dialect("bedrock", "count").upstream_path("/base", "anthropic.claude-3-5-haiku-20241022-v1:0", False)
    assert path == "/base/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/count-tokens"
    assert get_dialect("responses", "count").upstream_path("/v1", "gpt-4.1", False) == "/v1/responses/input_tokens"


class _Provider:
    def __init__(self, protocol):
        self.protocol = protocol


@pytest.mark.pure
def test_which_members_count_and_which_get_the_estimate():
    client = get_dialect("anthropic", "count")
    counts = {(proto, model): client.peer(_Provider(proto), model) is not None for proto, model in [
        ("anthropic", "claude-sonnet-4"), ("gemini", "gemini-2.5-flash"), ("responses", "gpt-4.1"),
        ("bedrock", "us.anthropic.claude-sonnet-4-20250514-v1:0"),
        ("bedrock", "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0"),
        ("bedrock", "meta.llama3-70b-instruct-v1:0"), ("bedrock", "amazon.nova-pro-v1:0"),
        ("bedrock-invoke", "anthropic.claude-3-5-haiku-20241022-v1:0"),
        ("openai", "gpt-4o"), ("cohere", "command-a-03-2025")]}
    assert [k for k, v in counts.items() if not v] == [
        ("bedrock", "meta.llama3-70b-instruct-v1:0"), ("bedrock", "amazon.nova-pro-v1:0"),
        ("openai", "gpt-4o"), ("cohere", "command-a-03-2025")]


@pytest.mark.pure
def test_bedrock_counts_exactly_the_models_claude_model_says_are_claude():
    """One predicate decides "is this Claude" for Bedrock (`bedrock.claude_model`:
    beta flags, thinking signatures, counting).  Counting had its own
    (`"anthropic." in model`), which took an id naming Claude without the
    provider prefix for another model and estimated it: a Busbar pool's ARN as
    its control plane lists it (`inference-profile/claude-pool`), an id as a
    console shows it (`Anthropic.Claude-...`)."""
    from busbar.protocols.bedrock import claude_model
    count = get_dialect("bedrock", "count")
    ids = ["us.anthropic.claude-sonnet-4-20250514-v1:0", "anthropic.claude-3-5-haiku-20241022-v1:0",
           "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-haiku-20241022-v1:0",
           "arn:aws:bedrock:us-east-1:000000000000:inference-profile/claude-pool",
           "Anthropic.Claude-3-Haiku-20240307-v1:0",
           "meta.llama3-70b-instruct-v1:0", "amazon.nova-pro-v1:0", "amazon.titan-text-express-v1"]
    assert [m for m in ids if count.for_model(m) is not None] == [m for m in ids if claude_model(m)] == ids[:5]


def _invoke(body) -> dict:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return {"input": {"invokeModel": {"body": base64.b64encode(raw).decode()}}}


@pytest.mark.pure
@pytest.mark.parametrize("body", [
    {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10, "system": "Be brief.",
     "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]},
    {"system": [{"text": "Be brief."}], "messages": [{"role": "user", "content": [{"text": PROMPT}]}],
     "inferenceConfig": {"maxTokens": 10}},                         # Nova's Converse-shaped body
])
def test_bedrock_invoke_model_bodies_are_counted_as_their_model_family_reads_them(body):
    req = get_dialect("bedrock", "count").parse_request(_invoke(body), {})
    assert _prompt(req) == (["Be brief."], [("user", [PROMPT])])
    assert req.extras is None          # Claude's Bedrock envelope (anthropic_version) is not the prompt
    assert _prompt(get_dialect("bedrock", "count").parse_request(_invoke({"inputText": PROMPT}), {})) == \
        ([], [("user", [PROMPT])])


@pytest.mark.pure
@pytest.mark.parametrize("protocol, body, where", [
    ("bedrock", {"input": {}}, "input"),
    ("bedrock", {"input": {**BODIES["bedrock"]["input"], "invokeModel": {}}}, "input"),
    ("bedrock", {"input": {"converse": {"system": []}}}, "input.converse.messages"),
    ("bedrock", _invoke(b"not json"), "input.invokeModel.body"),
    ("bedrock", {"input": {"invokeModel": {"body": "!!"}}}, "input.invokeModel.body"),
    ("bedrock", _invoke({"foo": 1}), "input.invokeModel.body"),
    ("responses", {"model": "p", "input": 42}, "input"),
    ("responses", {"model": "p", "input": "hi", "previous_response_id": "resp_1"}, "previous_response_id"),
    ("responses", {"model": "p", "conversation": "conv_1"}, "conversation"),
])
def test_bodies_that_cannot_be_counted_are_a_400_naming_where(protocol, body, where):
    with pytest.raises(ClientError) as exc:
        get_dialect(protocol, "count").parse_request(body, {})
    assert exc.value.status == 400 and where in exc.value.message
