"""Streaming codecs: encode -> split anywhere -> decode laws, chunk-split
invariance, any-to-any translation of all 49 protocol pairs, and the
stream-event JSON Schemas.  Pure: no server, no sockets."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbar import ir
from busbar.protocols import PROTOCOLS
from stream_support import (FIXTURE_SUMMARY, FIXTURES, assert_schema_valid, canonical, check_grammar, decode,
                            decoded_canonical, encode, ir_streams, splits, summary)

pytestmark = pytest.mark.pure

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAIRS = [(b, a) for b in PROTOCOLS for a in PROTOCOLS]


@pytest.mark.parametrize("proto", PROTOCOLS)
@SETTINGS
@given(data=st.data())
def test_encode_split_decode(proto, data):
    """IR -> proto bytes -> cut anywhere -> IR: the same events, modulo what
    the protocol cannot express (`canonical`)."""
    events = data.draw(ir_streams())
    wire = encode(proto, events)
    decoded = decode(proto, data.draw(splits(wire)))
    check_grammar(decoded)
    assert decoded_canonical(proto, decoded) == canonical(proto, events)
    assert_schema_valid(proto, wire)


@pytest.mark.parametrize("proto", PROTOCOLS)
@SETTINGS
@given(data=st.data())
def test_chunk_split_invariance(proto, data):
    """Decoding upstream bytes cut at arbitrary points gives exactly the events
    of decoding them whole (vendor fixtures and encoder output alike)."""
    wire = data.draw(st.sampled_from([FIXTURES[proto], encode(proto, data.draw(ir_streams()))]))
    assert decode(proto, data.draw(splits(wire))) == decode(proto, wire)
    # one byte at a time (the first 4000 bytes, to bound the cost; the rest whole)
    head, rest = wire[:4000], wire[4000:]
    assert decode(proto, [bytes([b]) for b in head] + ([rest] if rest else [])) == decode(proto, wire)


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_vendor_fixture_decodes(proto):
    events = decode(proto, FIXTURES[proto])
    check_grammar(events)
    assert summary(events) == FIXTURE_SUMMARY
    # the fixtures are real-shaped vendor events: they satisfy the schemas too
    assert_schema_valid(proto, FIXTURES[proto])


@pytest.mark.parametrize("source,target", PAIRS)
def test_any_to_any_fixture(source, target):
    """decode(B) -> encode(A) -> decode(A) keeps text, tool calls, stop reason, usage."""
    events = decode(source, FIXTURES[source])
    wire = encode(target, events)
    assert_schema_valid(target, wire)
    again = decode(target, wire)
    check_grammar(again)
    assert summary(again) == FIXTURE_SUMMARY


@pytest.mark.parametrize("source", PROTOCOLS)
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_any_to_any_random(source, data):
    """Random IR through B's wire, then through every A's wire: what both can
    express survives (text, tool calls with arguments, stop class, usage)."""
    events = data.draw(ir_streams(kinds=("text", "tool", "reasoning")))
    from_b = decode(source, encode(source, events))
    for target in PROTOCOLS:
        out = decode(target, encode(target, from_b))
        check_grammar(out)
        want, got = summary(canonical(target, canonical(source, events))), summary(out)
        assert got["text"] == want["text"]
        assert got["calls"] == want["calls"]
        assert got["usage"] == want["usage"]
        assert got["stop"] == want["stop"], (source, target)


def test_event_order_anthropic_to_openai_is_native():
    """Chat has no block stops: the decoder synthesizes them; the Anthropic
    encoder renumbers blocks 0, 1 ... and sends message_delta before message_stop."""
    events = decode("openai", FIXTURES["openai"])
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["MessageStart", "BlockStart", "TextDelta", "TextDelta", "BlockStop", "BlockStart",
                     "ToolArgsDelta", "ToolArgsDelta", "BlockStop", "UsageEvent", "MessageStop"]
    from stream_support import wire_events
    names = [n for n, _ in wire_events("anthropic", encode("anthropic", events))]
    assert names == ["message_start", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]


def test_bedrock_text_block_synthesized():
    """Bedrock text blocks have no contentBlockStart, but every block ends with contentBlockStop."""
    from stream_support import wire_events
    names = [n for n, _ in wire_events("bedrock", encode("bedrock", decode("anthropic", FIXTURES["anthropic"])))]
    assert names == ["messageStart", "contentBlockDelta", "contentBlockDelta", "contentBlockStop", "contentBlockStart",
                     "contentBlockDelta", "contentBlockDelta", "contentBlockStop", "messageStop", "metadata"]


def test_gemini_tool_ids_match_buffered_translation():
    """Gemini sends no call ids: the stream synthesizes the ids the buffered
    parse of the same response gives, so a later tool result still matches."""
    import orjson

    from busbar.protocols import get_dialect
    events = decode("gemini", FIXTURES["gemini"])
    call = next(e.part for e in events if type(e) is ir.BlockStart and type(e.part) is ir.ToolCall)
    whole = {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "Let me check."}, {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}]},
        "finishReason": "STOP"}], "responseId": "abc"}
    buffered = get_dialect("gemini").parse_response(orjson.loads(orjson.dumps(whole)))
    assert [p.id for p in buffered.content if type(p) is ir.ToolCall] == [call.id]


@pytest.mark.parametrize("proto", PROTOCOLS)
@SETTINGS
@given(data=st.data())
def test_passthrough_relay_forwards_the_bytes_whole_events_at_a_time(proto, data):
    """Same-protocol relay: however the upstream's bytes are cut, what goes
    out is those bytes untouched, each write ending where an event (or a
    binary frame) ends, so an error event or a resumed stream's continuation
    appended after any write never lands inside one."""
    from busbar.protocols import get_dialect
    from busbar.relay import PassthroughRelay
    dialect = get_dialect(proto)
    wire = data.draw(st.sampled_from([FIXTURES[proto], encode(proto, data.draw(ir_streams()))]))
    decoder = dialect.stream_decoder()
    relay = PassthroughRelay(dialect.stream_content_type, decoder)
    out = []
    for chunk in data.draw(splits(wire)):
        decoder.feed(chunk)
        out.append(relay.take(chunk))
    sent = b"".join(out)
    sse = dialect.stream_content_type == b"text/event-stream"
    assert sent == wire if not sse or wire.endswith(b"\n\n") else wire.startswith(sent)
    upto = 0
    for piece in out:             # every write ends on a boundary
        upto += len(piece)
        if sse:
            check = decoder.__class__()
            check.feed(sent[:upto])
            assert check.unfinished == 0
        else:
            end = 0
            while end < len(piece):
                end += int.from_bytes(piece[end:end + 4], "big")
            assert end == len(piece)
