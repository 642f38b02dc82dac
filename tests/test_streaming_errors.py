"""Streaming codecs under failure: truncated and garbage upstream bodies,
in-stream vendor errors (decoded to ErrorEvent and classified by the
dialect's own `classify`), the error event each encoder ends a broken
stream with, and `ir.is_content`."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busbar import ir
from busbar.aws import eventstream as es
from busbar.faults import FaultClass
from busbar.protocols import PROTOCOLS, get_dialect
from busbar.protocols.base import KIND_STATUS, StreamError
from stream_support import FIXTURES, assert_schema_valid, decode, encode, ir_streams

pytestmark = pytest.mark.pure

SR = ir.StopReason

SCENARIO = [
    ir.MessageStart("src", "m", ir.Usage(20)),
    ir.BlockStart(0, ir.Text("")), ir.TextDelta(0, "Hello"), ir.TextDelta(0, " world"), ir.BlockStop(0),
    ir.BlockStart(1, ir.ToolCall("call_1", "get_weather", {})),
    ir.ToolArgsDelta(1, '{"location":'), ir.ToolArgsDelta(1, '"Paris"}'), ir.BlockStop(1),
    ir.UsageEvent(ir.Usage(20, 7)), ir.MessageStop(SR.TOOL_USE),
]


# ---------------------------------------------------------------------------
# truncation and garbage


def _prefix_len(proto: str, events: list) -> int:
    """Bytes of the stream before the event that carries the stop reason."""
    enc = get_dialect(proto).stream_encoder("m")
    return len(b"".join(enc.encode(e) for e in events[:-1]))


@pytest.mark.parametrize("proto", PROTOCOLS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_cut_before_the_stop_raises(proto, data):
    events = data.draw(st.sampled_from([SCENARIO, data.draw(ir_streams())]))
    wire = encode(proto, events)
    cut = data.draw(st.integers(0, _prefix_len(proto, events)))
    dec = get_dialect(proto).stream_decoder()
    with pytest.raises(StreamError):
        dec.feed(wire[:cut])
        dec.close()


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_every_cut_of_a_fixture_before_its_end_raises_or_is_complete(proto):
    """Cut anywhere, a fixture either decodes with a MessageStop or raises: a
    cut stream never looks like a complete one without its stop reason."""
    wire = FIXTURES[proto]
    for cut in range(0, len(wire), 7):
        try:
            events = decode(proto, wire[:cut])
        except StreamError:
            continue
        assert type(events[-1]) is ir.MessageStop


GARBAGE = [b"data: {not json}\n\n", b'data: {"choices": [{"delta": {"content": \n\n', b"<html><body>502 Bad Gateway</body></html>",
           b"\x00\x00\x00\x30\x00\x00\x00\x10garbage-not-a-valid-eventstream-frame", b"data: [1, 2, 3]\n\n", b"data: \"x\"\n\n"]


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("garbage", GARBAGE)
def test_garbage_raises(proto, garbage):
    dec = get_dialect(proto).stream_decoder()
    with pytest.raises(StreamError):
        dec.feed(garbage)
        dec.close()
    with pytest.raises(StreamError):       # a failed decoder stays failed
        dec.feed(b"data: {}\n\n")


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_garbage_after_content_raises(proto):
    wire = FIXTURES[proto]
    dec = get_dialect(proto).stream_decoder()
    events = dec.feed(wire[:len(wire) // 2])
    assert any(ir.is_content(e) for e in events)
    with pytest.raises(StreamError):
        dec.feed(b"\x00\x00\x00\x10\x00\x00\x00\x00\x00\x00\x00\x00garbage\n\ndata: {oops}\n\n")
        dec.close()


def test_empty_body_is_truncated():
    for proto in PROTOCOLS:
        with pytest.raises(StreamError):
            get_dialect(proto).stream_decoder().close()


def test_openai_done_without_trailing_blank_line():
    """Some servers end the body right after `data: [DONE]`."""
    wire = FIXTURES["openai"].rstrip(b"\n")
    assert type(decode("openai", wire)[-1]) is ir.MessageStop


# ---------------------------------------------------------------------------
# in-stream vendor errors -> ErrorEvent -> the dialect's classify


def _sse(obj, event=None) -> bytes:
    return (b"event: " + event.encode() + b"\n" if event else b"") + b"data: " + orjson.dumps(obj) + b"\n\n"


def _exception(name: str, message: str) -> bytes:
    return es.encode(es.exception_message(name, orjson.dumps({"message": message})))


ANT_START = _sse({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "model": "c",
                                                       "content": [], "usage": {"input_tokens": 3, "output_tokens": 1}}},
                 "message_start")
BEDROCK_START = es.encode(es.event_message("messageStart", b'{"role":"assistant"}'))

VENDOR_ERRORS = [
    # (protocol, body, status, fault class)
    ("anthropic", ANT_START + _sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "error"),
     529, FaultClass.RATE),
    ("anthropic", ANT_START + _sse({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}, "error"),
     429, FaultClass.RATE),
    ("anthropic", _sse({"type": "error", "error": {"type": "invalid_request_error",
                                                   "message": "prompt is too long: 200251 tokens > 200000 maximum"}}, "error"),
     400, FaultClass.CONTEXT),
    ("anthropic", _sse({"type": "error", "error": {"type": "invalid_request_error", "message":
                                                   "Your credit balance is too low to access the Anthropic API."}}, "error"),
     400, FaultClass.BILLING),
    ("anthropic", _sse({"type": "error", "error": {"type": "api_error", "message": "Internal server error"}}, "error"),
     500, FaultClass.SERVER),
    ("openai", _sse({"error": {"message": "You exceeded your current quota, please check your plan and billing details.",
                               "type": "insufficient_quota", "param": None, "code": "insufficient_quota"}}),
     429, FaultClass.BILLING),
    ("openai", _sse({"error": {"message": "Rate limit reached for gpt-4o", "type": "tokens", "param": None,
                               "code": "rate_limit_exceeded"}}), 429, FaultClass.RATE),
    ("openai", _sse({"error": {"message": "This model's maximum context length is 4097 tokens.", "type": "invalid_request_error",
                               "param": "messages", "code": "context_length_exceeded"}}), 400, FaultClass.CONTEXT),
    ("openai", _sse({"error": {"message": "The server had an error", "type": "server_error", "param": None, "code": None}}),
     500, FaultClass.SERVER),
    ("responses", _sse({"type": "response.failed", "sequence_number": 3, "response": {
        "id": "resp_1", "object": "response", "status": "failed", "output": [],
        "error": {"code": "rate_limit_exceeded", "message": "Rate limit reached"}}}, "response.failed"), 429, FaultClass.RATE),
    ("responses", _sse({"type": "response.failed", "sequence_number": 3, "response": {
        "id": "resp_1", "object": "response", "status": "failed", "output": [],
        "error": {"code": "insufficient_quota", "message": "You exceeded your current quota"}}}, "response.failed"),
     429, FaultClass.BILLING),
    ("responses", _sse({"type": "error", "sequence_number": 1, "code": "server_error", "message": "boom", "param": None},
                       "error"), 500, FaultClass.SERVER),
    ("gemini", _sse({"error": {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                               "status": "RESOURCE_EXHAUSTED"}}), 429, FaultClass.RATE),
    ("gemini", _sse({"error": {"code": 503, "message": "The model is overloaded. Please try again later.",
                               "status": "UNAVAILABLE"}}), 503, FaultClass.SERVER),
    ("gemini", _sse({"error": {"code": 400, "message": "The input token count (1200293) exceeds the maximum number of "
                                                       "tokens allowed (1048576).", "status": "INVALID_ARGUMENT"}}),
     400, FaultClass.CONTEXT),
    ("bedrock", BEDROCK_START + _exception("throttlingException", "Too many tokens, please wait before trying again."),
     429, FaultClass.RATE),
    ("bedrock", BEDROCK_START + _exception("validationException", "Input is too long for requested model."),
     400, FaultClass.CONTEXT),
    ("bedrock", _exception("serviceUnavailableException", "Service unavailable"), 503, FaultClass.SERVER),
    ("bedrock", BEDROCK_START + _exception("modelStreamErrorException", "The model stream failed"), 500, FaultClass.SERVER),
    ("bedrock", BEDROCK_START + es.encode(es.error_message("InternalFailure", "oops")), 500, FaultClass.SERVER),
    ("cohere", _sse({"type": "message-start", "id": "x", "delta": {"message": {"role": "assistant"}}})
     + _sse({"type": "message-end", "id": "x", "delta": {"finish_reason": "ERROR", "error": "internal error"}}),
     500, FaultClass.SERVER),
]


@pytest.mark.parametrize("proto,body,status,cls", VENDOR_ERRORS)
def test_in_stream_error_is_classified(proto, body, status, cls):
    events = decode(proto, body)          # close() accepts a stream that ended with an error
    err = events[-1]
    assert type(err) is ir.ErrorEvent
    assert err.status == status
    assert err.message and err.raw
    fault = get_dialect(proto).classify(err.status, [], err.raw)
    assert fault.cls is cls, fault
    assert fault.message == err.message
    assert err.fault == fault               # the decoder attached its own classification
    assert not any(ir.is_content(e) for e in events)     # the gateway can still fail over


# ---------------------------------------------------------------------------
# encoder.error: the client protocol's own error event


@pytest.mark.parametrize("proto", PROTOCOLS)
@pytest.mark.parametrize("kind", sorted(KIND_STATUS))
def test_encoder_error_decodes_as_error(proto, kind):
    enc = get_dialect(proto).stream_encoder("m")
    head = b"".join(enc.encode(e) for e in SCENARIO[:4])
    tail = enc.error(kind, "the upstream went away")
    assert enc.error(kind, "again") == b""           # a stream ends once
    assert enc.finish() == b""
    assert_schema_valid(proto, head + tail)
    events = decode(proto, head + tail)
    err = events[-1]
    assert type(err) is ir.ErrorEvent and err.message == "the upstream went away"
    if proto != "cohere":    # Cohere's stream error carries no status
        if kind == "rate_limit":
            assert err.status == 429
        elif kind == "billing":
            assert err.status in (402, 429)
        elif kind == "invalid_request":
            assert err.status == 400
        else:
            assert err.status >= 400


@pytest.mark.parametrize("proto", PROTOCOLS)
def test_encoded_error_event_is_one_error(proto):
    enc = get_dialect(proto).stream_encoder("m")
    body = b"".join(enc.encode(e) for e in SCENARIO[:3]) + enc.encode(ir.ErrorEvent(529, "Overloaded", "overloaded_error"))
    assert enc.error("upstream", "x") == b""
    assert type(decode(proto, body)[-1]) is ir.ErrorEvent


# ---------------------------------------------------------------------------
# failover-before-first-byte helper


def test_is_content():
    content = [ir.TextDelta(0, "x"), ir.ToolArgsDelta(0, "{"), ir.ReasoningDelta(0, "hm"),
               ir.BlockStart(0, ir.ToolCall("c", "f", {})), ir.BlockStart(0, ir.RedactedReasoning("xx")),
               ir.MessageStop(SR.END_TURN)]
    preamble = [ir.MessageStart("i", "m"), ir.BlockStart(0, ir.Text("")), ir.BlockStart(0, ir.Reasoning("")),
                ir.TextDelta(0, ""), ir.UsageEvent(ir.Usage()), ir.BlockStop(0), ir.SignatureDelta(0, "s"),
                ir.ErrorEvent(500, "x")]
    assert all(ir.is_content(e) for e in content)
    assert not any(ir.is_content(e) for e in preamble)


def test_openai_whole_tool_calls_without_index():
    """Some Chat-compatible servers send each call whole, all at index 0: a new id is a new call."""
    def chunk(delta, finish=None):
        return _sse({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    body = (chunk({"tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"x\":1}"}}]})
            + chunk({"tool_calls": [{"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]})
            + chunk({}, "stop") + b"data: [DONE]\n\n")
    events = decode("openai", body)
    starts = [e.part for e in events if type(e) is ir.BlockStart]
    assert [(p.id, p.name) for p in starts] == [("a", "f"), ("b", "g")]
    assert events[-1] == ir.MessageStop(SR.TOOL_USE)
    interleaved = (chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]})
                   + chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g", "arguments": "{"}}]})
                   + chunk({"tool_calls": [{"index": 0, "function": {"arguments": "}"}}]}))
    with pytest.raises(StreamError):
        decode("openai", interleaved)
