"""Laws of one protocol at a time: parse∘render is the identity on what the
protocol can express, and everything rendered validates against its schema."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from busbar.protocols import get_dialect
from tests import strategies as S

pytestmark = pytest.mark.pure

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PARAMS = {"model": "pool-model"}


def params(proto: str, req) -> dict:
    """Path parameters: Gemini and Bedrock carry the stream flag in the path."""
    action = {"gemini": ("generateContent", "streamGenerateContent"),
              "bedrock": ("converse", "converse-stream"),
              "bedrock-invoke": ("invoke", "invoke-with-response-stream")}.get(proto, (None, None))[req.stream]
    return {**PARAMS, "action": action}


@pytest.mark.slow
@pytest.mark.parametrize("proto", S.PROTOCOLS)
def test_request_parse_render_identity(proto):
    d = get_dialect(proto)

    @SETTINGS
    @given(S.ir_request(S.CAPS[proto]))
    def law(req):
        body, warnings = d.render_request(req, "pool-model")
        assert warnings == []
        obj = orjson.loads(body)
        S.assert_valid(proto, "request", obj)
        back = d.parse_request(obj, params(proto, req))
        assert S.strip_notes(back) == req
    law()


@pytest.mark.slow
@pytest.mark.parametrize("proto", S.PROTOCOLS)
def test_response_parse_render_identity(proto):
    d = get_dialect(proto)

    @SETTINGS
    @given(S.ir_response(S.CAPS[proto]))
    def law(resp):
        obj = orjson.loads(d.render_response(resp, resp.model or "pool-model"))
        S.assert_valid(proto, "response", obj)
        back = d.parse_response(obj)
        assert S.strip_extras(back) == S.strip_extras(resp)
    law()


@pytest.mark.slow
@pytest.mark.parametrize("proto", S.PROTOCOLS)
def test_wire_request_render_is_stable(proto):
    """render∘parse is the identity on bodies the renderer itself produced."""
    d = get_dialect(proto)

    @SETTINGS
    @given(S.wire_request(proto))
    def law(wire):
        obj, params = wire
        body, warnings = d.render_request(d.parse_request(obj, params), "pool-model")
        assert warnings == []
        assert orjson.loads(body) == obj
    law()


@SETTINGS
@given(S.openai_raw_requests)
def test_openai_raw_requests_round_trip(obj):
    d = get_dialect("openai")
    S.assert_valid("openai", "request", obj)
    req = d.parse_request(obj, PARAMS)
    body, warnings = d.render_request(req, obj["model"])
    assert warnings == []
    again = orjson.loads(body)
    S.assert_valid("openai", "request", again)
    assert d.parse_request(again, PARAMS) == req
    expected = dict(obj)
    if isinstance(expected.get("stop"), str):
        expected["stop"] = [expected["stop"]]
    expected.pop("n", None)
    if expected.get("stream"):
        expected["stream_options"] = {"include_usage": True}
    else:
        expected.pop("stream", None)
    norm = [{"role": m["role"], "content": m["content"] if isinstance(m["content"], str) or len(m["content"]) > 1
             else m["content"][0]["text"]} for m in obj["messages"]]
    expected["messages"] = norm
    assert again == expected


@SETTINGS
@given(S.anthropic_raw_requests)
def test_anthropic_raw_requests_round_trip(obj):
    d = get_dialect("anthropic")
    S.assert_valid("anthropic", "request", obj)
    req = d.parse_request(obj, PARAMS)
    body, warnings = d.render_request(req, obj["model"])
    assert warnings == []
    again = orjson.loads(body)
    S.assert_valid("anthropic", "request", again)
    assert d.parse_request(again, PARAMS) == req
    # vendor-only fields ride along untouched
    for key in ("service_tier", "container", "top_k", "stop_sequences", "metadata"):
        assert again.get(key) == obj.get(key)
