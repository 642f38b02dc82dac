"""The official SDKs accept what `render_response` emits, whatever vendor the
response came from: a response drawn for protocol A is parsed, rendered for
client protocol B, and loaded with B's own SDK response type."""
from __future__ import annotations

import functools

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbar import ir
from busbar.protocols import get_dialect
from tests import strategies as S

pytestmark = pytest.mark.pure

SETTINGS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _load(proto: str, body: bytes):
    obj = orjson.loads(body)
    if proto == "openai":
        from openai.types.chat import ChatCompletion
        m = ChatCompletion.model_validate(obj)
        return m.choices[0].message.content or "", [t.function.arguments for t in m.choices[0].message.tool_calls or ()]
    if proto == "responses":
        from openai.types.responses import Response
        m = Response.model_validate(obj)
        return m.output_text, [o.arguments for o in m.output if o.type == "function_call"]
    if proto in ("anthropic", "bedrock-invoke"):      # Claude on Bedrock answers InvokeModel with the Message
        from anthropic.types import Message
        m = Message.model_validate(obj)
        return "".join(b.text for b in m.content if b.type == "text"), \
            [orjson.dumps(b.input).decode() for b in m.content if b.type == "tool_use"]
    if proto == "gemini":
        from google.genai.types import GenerateContentResponse
        m = GenerateContentResponse.model_validate(obj)
        parts = m.candidates[0].content.parts or [] if m.candidates else []
        return "".join(p.text for p in parts if p.text and not p.thought), \
            [orjson.dumps(p.function_call.args).decode() for p in parts if p.function_call]
    if proto == "cohere":
        from cohere.v2.types import V2ChatResponse
        m = V2ChatResponse.model_validate(obj)
        return "".join(c.text for c in m.message.content or () if c.type == "text"), \
            [t.function.arguments for t in m.message.tool_calls or ()]
    if proto == "bedrock":
        return _boto_converse(body)
    raise AssertionError(proto)


@functools.cache
def _converse_parser():
    import botocore.session
    from botocore.parsers import create_parser
    model = botocore.session.get_session().get_service_model("bedrock-runtime")
    return create_parser("rest-json"), model.operation_model("Converse").output_shape


def _boto_converse(body: bytes):
    """Let botocore itself parse the body as a ConverseResponse."""
    parser, shape = _converse_parser()
    parsed = parser.parse({"status_code": 200, "headers": {}, "body": body}, shape)
    assert "Error" not in parsed, parsed
    blocks = parsed["output"]["message"]["content"]
    assert parsed["stopReason"] and parsed["usage"]["totalTokens"] >= 0
    return "".join(b.get("text", "") for b in blocks), \
        [orjson.dumps(b["toolUse"]["input"]).decode() for b in blocks if "toolUse" in b]


@pytest.mark.parametrize("target", S.PROTOCOLS)
def test_sdk_loads_rendered_response(target):
    dt = get_dialect(target)

    @SETTINGS
    @given(st.sampled_from(S.PROTOCOLS).flatmap(lambda src: st.tuples(st.just(src), S.ir_response(S.CAPS[src]))))
    def law(case):
        source, resp = case
        ds = get_dialect(source)
        r = ds.parse_response(orjson.loads(ds.render_response(resp, resp.model or "m")))
        body = dt.render_response(r, "client-model")
        text, args = _load(target, body)
        expected_text = "".join(p.text for p in r.content if type(p) is ir.Text
                                or (type(p) is ir.Refusal and target not in ("openai", "responses")))
        assert text == expected_text
        assert [orjson.loads(a) for a in args] == [p.arguments for p in r.content if type(p) is ir.ToolCall]
    law()


def test_sdk_loads_translated_requests_openai_to_everyone():
    """Requests rendered for each vendor are what the vendor SDK would build:
    spot-check with the SDKs' own request validators where they exist."""
    from anthropic.types import MessageParam  # noqa: F401  (typed dicts; schema checks do the work)
    body = orjson.dumps({"model": "gpt", "messages": [{"role": "system", "content": "s"},
                                                       {"role": "user", "content": "hi"}]})
    req = get_dialect("openai").parse_request(orjson.loads(body), {})
    for proto in S.PROTOCOLS:
        out, warnings = get_dialect(proto).render_request(req, "m")
        S.assert_valid(proto, "request", orjson.loads(out))
        assert warnings == []
