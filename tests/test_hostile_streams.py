"""Upstream garbage in a stream is the member's fault, named, never a crash:
a valid SSE stream of each protocol with one event's JSON value replaced by a
hostile one either fails its decoder with a `StreamError` (the relay's
"malformed upstream stream", a failover before the first byte, the client's
error event after it), or decodes into IR events that every client protocol's
encoder writes without an exception.  Anything else raised there would escape
the relay (which catches `StreamError` and `UpstreamError`) and break the
client's stream without its protocol's error event."""
from __future__ import annotations

import copy
import json

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from busbar.aws import eventstream as es
from busbar.protocols import get_dialect
from busbar.protocols.base import StreamError
from stream_support import encode, ir_streams
from tests import strategies as S
from test_hostile_fields import HOSTILE, _paths, _replace

pytestmark = pytest.mark.pure

SSE = ("openai", "responses", "anthropic", "gemini", "cohere")
CLIENTS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere")


def _events(wire: bytes) -> list[tuple[int, dict]]:
    """(line index, JSON object) of each `data:` line carrying an object."""
    out = []
    for i, line in enumerate(wire.split(b"\n")):
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                continue            # [DONE]
            if isinstance(obj, dict):
                out.append((i, obj))
    return out


def _decodes_and_relays(proto: str, wire: bytes) -> None:
    """`wire` fails `proto`'s decoder with a StreamError, or every client's encoder
    writes what it decoded."""
    decoder = get_dialect(proto).stream_decoder()
    try:
        decoded = decoder.feed(wire) + decoder.close()
    except StreamError:
        return
    for client in CLIENTS:
        encoder = get_dialect(client).stream_encoder("m")
        for event in decoded:
            encoder.encode(event)
        encoder.finish()


@pytest.mark.parametrize("proto", SSE)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_hostile_value_in_an_upstream_stream_is_a_stream_error_or_relays(proto, data):
    wire = encode(proto, data.draw(ir_streams()))
    events = _events(wire)
    if not events:
        return
    line, obj = data.draw(st.sampled_from(events))
    path = data.draw(st.sampled_from([p for p in _paths(obj) if p] or [()]))
    if not path:
        return
    mutated = _replace(copy.deepcopy(obj), path, data.draw(HOSTILE))
    lines = wire.split(b"\n")
    lines[line] = b"data: " + json.dumps(mutated).encode()     # as a vendor might: 2**70, "\\ud800"
    _decodes_and_relays(proto, b"\n".join(lines))


@pytest.mark.parametrize("proto", ["bedrock"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_hostile_value_in_an_eventstream_is_a_stream_error_or_relays(proto, data):
    """The same over Bedrock's eventstream: one frame's JSON payload mutated and
    framed again (its CRCs right), the rest as encoded."""
    messages = es.decode_all(encode(proto, data.draw(ir_streams())))
    with_json = [i for i, m in enumerate(messages) if m.payload[:1] == b"{"]
    if not with_json:
        return
    i = data.draw(st.sampled_from(with_json))
    obj = orjson.loads(messages[i].payload)
    path = data.draw(st.sampled_from([p for p in _paths(obj) if p] or [()]))
    if not path:
        return
    mutated = _replace(obj, path, data.draw(HOSTILE))
    messages[i] = es.Message(messages[i].headers, json.dumps(mutated).encode())
    _decodes_and_relays(proto, b"".join(es.encode(m) for m in messages))


@pytest.mark.parametrize("proto", CLIENTS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_hostile_value_in_a_buffered_answer_is_refused_at_its_parse_or_renders(proto, data):
    """A vendor's buffered answer with one value replaced: its parse raises (the relay's
    "unparseable upstream response", the member's fault), or its IR renders in every client
    protocol. A parse that let the value through would fail later in a renderer, or, cached,
    in another client's request."""
    obj = data.draw(S.wire_response(proto))
    path = data.draw(st.sampled_from([p for p in _paths(obj) if p] or [()]))
    if not path:
        return
    try:
        obj = orjson.loads(json.dumps(_replace(obj, path, data.draw(HOSTILE))))
    except (orjson.JSONDecodeError, UnicodeEncodeError):
        return
    try:
        resp = get_dialect(proto).parse_response(obj)
    except Exception:
        return
    for client in CLIENTS:
        get_dialect(client).render_response(resp, "m")
