"""Event stream codec: published vectors, laws, corruption, botocore as an oracle."""
from __future__ import annotations

import struct
import uuid
import zlib
from datetime import datetime, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbar.aws.eventstream import (
    DEFAULT_MAX_FRAME_LENGTH,
    MAX_HEADERS_LENGTH,
    Decoder,
    EventStreamError,
    HeaderType,
    HeaderValue,
    Message,
    decode_all,
    encode,
    error_message,
    event_message,
    exception_message,
)

pytestmark = pytest.mark.pure

# ---------------------------------------------------------------------------
# Vectors from protocols.md section 9

BEDROCK_EVENT_HEX = (
    "0000009400000057b4ab9aee0b3a6576656e742d74797065070011636f6e74656e74426c6f636b44656c74610d3a636f6e74656e"
    "742d747970650700106170706c69636174696f6e2f6a736f6e0d3a6d6573736167652d747970650700056576656e747b22636f"
    "6e74656e74426c6f636b496e646578223a302c2264656c7461223a7b2274657874223a224869227d7d1f944657"
)
VECTORS = {
    "empty": ("000000100000000005c248eb7d98c8ff", Message({}, b"")),
    "payload, no headers": ("0000001d00000000fd528c5a7b27666f6f273a27626172277dc3653936",
                            Message({}, b"{'foo':'bar'}")),
    "one string header": (
        "0000003d0000002007fd83960c636f6e74656e742d747970650700106170706c69636174696f6e2f6a736f6e"
        "7b27666f6f273a27626172277d8d9c08b1",
        Message({"content-type": "application/json"}, b"{'foo':'bar'}")),
    "error event": (
        "0000005200000042bf23637e0d3a6d6573736167652d747970650700056572726f720b3a6572726f722d636f6465"
        "070004636f64650e3a6572726f722d6d6573736167650700076d6573736167656b6cea3d",
        error_message("code", "message")),
    "bedrock event": (BEDROCK_EVENT_HEX,
                      event_message("contentBlockDelta", b'{"contentBlockIndex":0,"delta":{"text":"Hi"}}')),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vector(name):
    frame_hex, message = VECTORS[name]
    frame = bytes.fromhex(frame_hex)
    assert decode_all(frame) == [message]
    assert encode(message) == frame
    # Same header order on the wire, not only the same dict.
    assert list(decode_all(frame)[0].headers) == list(message.headers)


def test_vector_prelude_fields():
    frame = bytes.fromhex(BEDROCK_EVENT_HEX)
    assert struct.unpack(">III", frame[:12]) == (148, 87, 0xB4AB9AEE)
    assert frame[-4:] == bytes.fromhex("1f944657")


ALL_TYPES = Message({
    "true": True,
    "false": False,
    "byte": HeaderValue.byte(-128),
    "short": HeaderValue.short(32767),
    "integer": HeaderValue.integer(-(2 ** 31)),
    "long": HeaderValue.long(2 ** 63 - 1),
    "bytes": b"\x00\xff binary",
    "string": "héllo ✓",
    "timestamp": HeaderValue.timestamp(datetime(2024, 6, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)),
    "uuid": HeaderValue.uuid(uuid.UUID("01234567-89ab-cdef-0123-456789abcdef")),
}, b"payload")


def test_all_header_types_round_trip():
    frame = encode(ALL_TYPES)
    (decoded,) = decode_all(frame)
    assert decoded == ALL_TYPES
    assert encode(decoded) == frame
    assert decoded.headers["timestamp"] == HeaderValue(HeaderType.TIMESTAMP, 1717243200123)
    assert HeaderValue.uuid(uuid.UUID("01234567-89ab-cdef-0123-456789abcdef").bytes) == ALL_TYPES.headers["uuid"]


# ---------------------------------------------------------------------------
# Strategies

header_names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=24)
header_values = st.one_of(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=40),
    st.binary(max_size=40),
    st.booleans(),
    st.integers(-(2 ** 7), 2 ** 7 - 1).map(HeaderValue.byte),
    st.integers(-(2 ** 15), 2 ** 15 - 1).map(HeaderValue.short),
    st.integers(-(2 ** 31), 2 ** 31 - 1).map(HeaderValue.integer),
    st.integers(-(2 ** 63), 2 ** 63 - 1).map(HeaderValue.long),
    st.integers(-(2 ** 63), 2 ** 63 - 1).map(HeaderValue.timestamp),
    st.uuids().map(HeaderValue.uuid),
)
messages = st.builds(Message, st.dictionaries(header_names, header_values, max_size=6), st.binary(max_size=300))


@settings(max_examples=300, deadline=None)
@given(messages)
def test_decode_encode_identity(message):
    frame = encode(message)
    assert decode_all(frame) == [message]
    assert encode(decode_all(frame)[0]) == frame


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, min_size=1, max_size=5), st.data())
def test_chunk_split_invariance(batch, data):
    stream = b"".join(encode(message) for message in batch)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    decoder = Decoder()
    decoded = []
    for start, end in zip([0] + cuts, cuts + [len(stream)]):
        decoded += decoder.feed(stream[start:end])
        assert decoder.pending_bytes <= max(len(encode(m)) for m in batch)
    decoder.close()
    assert decoded == batch


@settings(max_examples=60, deadline=None)
@given(st.lists(messages, min_size=1, max_size=3), st.sampled_from([bytes, bytearray, memoryview]))
def test_accepts_any_bytes_like(batch, kind):
    stream = b"".join(encode(message) for message in batch)
    decoder = Decoder()
    decoded = decoder.feed(kind(stream[:7])) + decoder.feed(kind(stream[7:]))
    decoder.close()
    assert decoded == batch


def _decode_corrupted(frame: bytes, prefix: bytes = b"") -> list[Message]:
    """Feed `prefix + frame`; return messages delivered before the error. Asserts an error surfaces."""
    decoder = Decoder()
    delivered = []
    with pytest.raises(EventStreamError):
        delivered += decoder.feed(prefix + frame)
        decoder.close()
    with pytest.raises(EventStreamError, match="already failed"):  # and it stays failed
        decoder.feed(b"\x00" * 16)
    return delivered


def test_every_single_bit_flip_is_detected():
    prefix_message = event_message("messageStart", b'{"role":"assistant"}')
    prefix = encode(prefix_message)
    for frame in (bytes.fromhex(BEDROCK_EVENT_HEX), encode(ALL_TYPES)):
        for bit in range(len(frame) * 8):
            corrupted = bytearray(frame)
            corrupted[bit // 8] ^= 1 << (bit % 8)
            assert _decode_corrupted(bytes(corrupted)) == []
            # A good frame before the corruption is still delivered.
            assert _decode_corrupted(bytes(corrupted), prefix) == [prefix_message]


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_random_bit_flip_is_detected(message, data):
    frame = bytearray(encode(message))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    chunk = data.draw(st.integers(1, len(frame)))
    decoder = Decoder()
    with pytest.raises(EventStreamError):
        for start in range(0, len(frame), chunk):
            assert decoder.feed(frame[start:start + chunk]) == []
        decoder.close()


# ---------------------------------------------------------------------------
# Specific rejections


def _frame(header_block: bytes, payload: bytes = b"", *, total_length: int | None = None,
           headers_length: int | None = None) -> bytes:
    """A frame with valid CRCs around arbitrary (possibly invalid) contents."""
    total = 16 + len(header_block) + len(payload) if total_length is None else total_length
    lengths = struct.pack(">II", total, len(header_block) if headers_length is None else headers_length)
    head = lengths + struct.pack(">I", zlib.crc32(lengths))
    body = head + header_block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def _prelude(total_length: int, headers_length: int = 0) -> bytes:
    lengths = struct.pack(">II", total_length, headers_length)
    return lengths + struct.pack(">I", zlib.crc32(lengths))


@pytest.mark.parametrize("header_block, message", [
    (b"\x01a\x0a", "unknown value type 10"),
    (b"\x01a\xff", "unknown value type 255"),
    (b"\x05ab", "truncated header"),                       # name runs past the block
    (b"\x01a", "truncated header"),                         # no type byte
    (b"\x01a\x07\x00", "truncated header"),                 # half a length
    (b"\x01a\x07\x00\x05abc", "truncated header"),          # value runs past the block
    (b"\x01a\x04\x00\x00", "truncated header"),             # half an int32
    (b"\x01a\x09" + b"\x00" * 15, "truncated header"),      # short uuid
    (b"\x01a\x00\x01a\x01", "duplicate header 'a'"),
    (b"\x00\x00", "empty name"),
    (b"\x01\xff\x00", "not valid UTF-8"),
    (b"\x01a\x07\x00\x01\xc3", "not valid UTF-8"),
])
def test_malformed_headers(header_block, message):
    decoder = Decoder()
    with pytest.raises(EventStreamError, match=message):
        decoder.feed(_frame(header_block, b"payload"))
    with pytest.raises(EventStreamError, match="already failed"):
        decoder.close()


def test_crc_mismatches_name_the_crc():
    frame = bytearray(bytes.fromhex(BEDROCK_EVENT_HEX))
    frame[2] ^= 1
    with pytest.raises(EventStreamError, match="prelude CRC mismatch"):
        decode_all(bytes(frame))
    frame = bytearray(bytes.fromhex(BEDROCK_EVENT_HEX))
    frame[100] ^= 1
    with pytest.raises(EventStreamError, match="message CRC mismatch in frame at offset 0"):
        decode_all(bytes(frame))
    # Offsets count from the start of the stream.
    with pytest.raises(EventStreamError, match="at offset 16"):
        decode_all(bytes.fromhex(VECTORS["empty"][0]) + bytes(frame))


def test_oversized_frame_rejected_from_its_prelude_alone():
    decoder = Decoder(max_frame_length=1024)
    assert decoder.feed(_prelude(1024)[:11]) == []      # not yet a whole prelude
    with pytest.raises(EventStreamError, match="total length 1025; allowed 16..1024"):
        Decoder(max_frame_length=1024).feed(_prelude(1025))
    with pytest.raises(EventStreamError, match="total length"):
        Decoder().feed(_prelude(DEFAULT_MAX_FRAME_LENGTH + 1))
    with pytest.raises(EventStreamError, match="total length 4294967295"):
        Decoder().feed(_prelude(0xFFFFFFFF))
    # An acceptable length is waited for, holding only what arrived.
    decoder = Decoder(max_frame_length=1024)
    assert decoder.feed(_prelude(1024)) == []
    assert decoder.pending_bytes == 12
    with pytest.raises(EventStreamError, match="stream truncated: 12 bytes"):
        decoder.close()


@pytest.mark.parametrize("total_length, headers_length, message", [
    (15, 0, "total length 15"),
    (0, 0, "total length 0"),
    (16, 1, "1 bytes of headers but its total length 16"),
    (100, 85, "85 bytes of headers"),
    (MAX_HEADERS_LENGTH + 100, MAX_HEADERS_LENGTH + 1, "the limit is 131072"),
])
def test_inconsistent_lengths(total_length, headers_length, message):
    with pytest.raises(EventStreamError, match=message):
        Decoder().feed(_prelude(total_length, headers_length))


def test_truncated_stream():
    frame = bytes.fromhex(BEDROCK_EVENT_HEX)
    for cut in (1, 11, 12, 100, len(frame) - 1):
        decoder = Decoder()
        assert decoder.feed(frame[:cut]) == []
        with pytest.raises(EventStreamError, match=f"stream truncated: {cut} bytes"):
            decoder.close()
        with pytest.raises(EventStreamError, match="already failed"):
            decoder.feed(frame[cut:])
    with pytest.raises(EventStreamError, match="truncated"):
        decode_all(frame + frame[:20])
    decoder = Decoder()
    decoder.feed(frame)
    decoder.eof()  # a clean end


def test_error_does_not_pin_callers_buffer():
    data = bytearray(_frame(b"\x01a\x07\x00\x01\xc3"))
    with pytest.raises(EventStreamError) as info:
        Decoder().feed(data)
    assert info.value is not None  # keep the traceback alive
    data += b"resizable"            # would raise BufferError if a view were still exported
    data.clear()


def test_decoder_memory_is_bounded_by_the_frame_in_progress():
    frame = encode(event_message("contentBlockDelta", b"x" * 1000))
    decoder = Decoder()
    count = 0
    stream = frame * 200
    for start in range(0, len(stream), 333):
        count += len(decoder.feed(stream[start:start + 333]))
        assert decoder.pending_bytes < len(frame)
    decoder.close()
    assert count == 200


# ---------------------------------------------------------------------------
# Encoder validation, AWS helpers


def test_encoder_rejections():
    with pytest.raises(TypeError, match="HeaderValue.integer"):
        encode(Message({"n": 5}))
    with pytest.raises(TypeError, match="plain str"):
        HeaderValue(HeaderType.STRING, 5)
    with pytest.raises(TypeError, match="must be an int"):
        HeaderValue.integer(True)
    with pytest.raises(EventStreamError, match="does not fit a BYTE"):
        HeaderValue.byte(128)
    with pytest.raises(TypeError, match="uuid.UUID"):
        HeaderValue(HeaderType.UUID, "0123")
    with pytest.raises(EventStreamError, match="must be 1..255 bytes"):
        encode(Message({"x" * 256: True}))
    with pytest.raises(EventStreamError, match="must be 1..255 bytes"):
        encode(Message({"": True}))
    with pytest.raises(EventStreamError, match="the limit is 65535"):
        encode(Message({"s": "x" * 65536}))
    with pytest.raises(EventStreamError, match="frame would be 1017 bytes; the limit is 1000"):
        encode(Message({}, b"x" * 1001), max_frame_length=1000)
    with pytest.raises(EventStreamError, match="headers are"):
        encode(Message({f"h{i}": b"x" * 60000 for i in range(3)}))
    with pytest.raises(ValueError):
        Decoder(max_frame_length=15)
    assert issubclass(EventStreamError, ValueError)


def test_kinds_and_helpers():
    event = event_message("messageStop", b'{"stopReason":"end_turn"}')
    assert event.kind() == ("event", "messageStop")
    assert event.headers[":content-type"] == "application/json"
    exception = exception_message("throttlingException", b'{"message":"Too many tokens"}')
    assert exception.kind() == ("exception", "throttlingException")
    assert exception.headers[":message-type"] == "exception"
    assert error_message("InternalFailure", "boom").kind() == ("error", "InternalFailure")
    for headers in ({}, {":message-type": "bogus"}, {":message-type": "event"},
                    {":message-type": b"event", ":event-type": "x"}):
        with pytest.raises(EventStreamError):
            Message(headers).kind()
    assert decode_all(encode(exception)) == [exception]


# ---------------------------------------------------------------------------
# botocore's decoder as the oracle for our encoder

botocore_eventstream = pytest.importorskip("botocore.eventstream")


def _as_botocore_value(value):
    if isinstance(value, HeaderValue):
        return value.value.bytes if value.type is HeaderType.UUID else value.value
    return value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, min_size=1, max_size=4))
def test_botocore_decodes_our_frames(batch):
    buffer = botocore_eventstream.EventStreamBuffer()
    buffer.add_data(b"".join(encode(message) for message in batch))
    decoded = list(buffer)
    assert len(decoded) == len(batch)
    for theirs, ours in zip(decoded, batch):
        assert theirs.payload == ours.payload
        assert theirs.headers == {name: _as_botocore_value(value) for name, value in ours.headers.items()}


def test_botocore_decodes_all_types_and_vectors():
    buffer = botocore_eventstream.EventStreamBuffer()
    buffer.add_data(encode(ALL_TYPES) + bytes.fromhex(BEDROCK_EVENT_HEX))
    all_types, bedrock = list(buffer)
    assert all_types.headers["uuid"] == bytes.fromhex("0123456789abcdef0123456789abcdef")
    assert all_types.headers["timestamp"] == 1717243200123
    assert all_types.headers["long"] == 2 ** 63 - 1
    assert bedrock.headers[":event-type"] == "contentBlockDelta"


def test_header_cache_is_bounded_and_never_shared():
    from busbar.aws import eventstream

    frames = b"".join(encode(event_message(f"event{i}", b"{}")) for i in range(1200))
    assert len(decode_all(frames)) == 1200
    assert len(eventstream._HEADER_CACHE) <= eventstream._HEADER_CACHE_ENTRIES

    frame = bytes.fromhex(BEDROCK_EVENT_HEX)
    first, second = decode_all(frame + frame)
    first.headers[":event-type"] = "mutated"
    assert second.headers[":event-type"] == "contentBlockDelta"
    assert decode_all(frame)[0].headers[":event-type"] == "contentBlockDelta"
