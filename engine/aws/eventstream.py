"""AWS event stream framing (``application/vnd.amazon.eventstream``).

I/O-free and stdlib-only: `encode` turns a `Message` into one frame;
`Decoder.feed` turns bytes, split anywhere, into the messages they complete.

Frame layout (integers big-endian, CRC-32 as in zlib)::

    total_length u32 | headers_length u32 | prelude_crc u32 | headers | payload | message_crc u32

``prelude_crc`` covers the first 8 bytes and ``message_crc`` everything
before it.  A header is ``name_length u8 | name utf-8 | type u8 | value``.

Header values are plain Python values where the wire type is unambiguous
(`str` is a string, `bytes` a byte array, `bool` true/false) and a
`HeaderValue` for the types Python cannot tell apart (integers of each
width, timestamps, UUIDs).  The decoder produces exactly that
representation, so ``decode(encode(m)) == m`` and ``encode(decode(f)) == f``.
"""
from __future__ import annotations

import enum
import functools
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Union

__all__ = [
    "DEFAULT_MAX_FRAME_LENGTH",
    "MAX_HEADERS_LENGTH",
    "MIN_FRAME_LENGTH",
    "Decoder",
    "EventStreamError",
    "HeaderType",
    "HeaderValue",
    "Message",
    "decode_all",
    "encode",
    "error_message",
    "event_message",
    "exception_message",
]

_PRELUDE_LENGTH = 12              # total_length, headers_length, prelude_crc
MIN_FRAME_LENGTH = 16             # prelude + message_crc, no headers, no payload
DEFAULT_MAX_FRAME_LENGTH = 16 * 1024 * 1024
MAX_HEADERS_LENGTH = 128 * 1024   # botocore rejects longer header blocks
_MAX_NAME_LENGTH = 0xFF           # u8 length prefix
_MAX_VARIABLE_VALUE_LENGTH = 0xFFFF  # u16 length prefix

_PRELUDE = struct.Struct(">III")
_LENGTHS = struct.Struct(">II")
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class EventStreamError(ValueError):
    """A frame is malformed, or a message cannot be framed."""


class HeaderType(enum.IntEnum):
    """Wire codes of header value types."""

    BOOL_TRUE = 0
    BOOL_FALSE = 1
    BYTE = 2
    SHORT = 3
    INTEGER = 4
    LONG = 5
    BYTE_ARRAY = 6
    STRING = 7
    TIMESTAMP = 8  # signed milliseconds since the Unix epoch
    UUID = 9


# Fixed-width integer types: their struct codec.  Timestamps are int64 ms.
_INTEGER_CODECS: dict[HeaderType, struct.Struct] = {
    HeaderType.BYTE: struct.Struct(">b"),
    HeaderType.SHORT: struct.Struct(">h"),
    HeaderType.INTEGER: struct.Struct(">i"),
    HeaderType.LONG: struct.Struct(">q"),
    HeaderType.TIMESTAMP: struct.Struct(">q"),
}
_INTEGER_RANGES = {
    header_type: (-(1 << (8 * codec.size - 1)), (1 << (8 * codec.size - 1)) - 1)
    for header_type, codec in _INTEGER_CODECS.items()
}
# How the types HeaderValue refuses are spelled instead.
_PLAIN_SPELLING = {
    HeaderType.BOOL_TRUE: "True",
    HeaderType.BOOL_FALSE: "False",
    HeaderType.BYTE_ARRAY: "bytes",
    HeaderType.STRING: "str",
}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class HeaderValue:
    """A header value of a type with no unambiguous Python equivalent.

    `type` is BYTE, SHORT, INTEGER, LONG, TIMESTAMP (`value` an int in the
    type's signed range; ms since the epoch for TIMESTAMP) or UUID (`value`
    a `uuid.UUID`).  Strings, byte arrays and booleans are written as plain
    `str`, `bytes` and `bool`, so each wire value has exactly one spelling.
    """

    type: HeaderType
    value: int | uuid.UUID

    def __post_init__(self) -> None:
        header_type = HeaderType(self.type)
        object.__setattr__(self, "type", header_type)
        if header_type is HeaderType.UUID:
            if not isinstance(self.value, uuid.UUID):
                raise TypeError(f"a UUID header value must be a uuid.UUID, not {type(self.value).__name__}")
            return
        bounds = _INTEGER_RANGES.get(header_type)
        if bounds is None:
            raise TypeError(f"use a plain {_PLAIN_SPELLING[header_type]} for {header_type.name} "
                            "header values, not HeaderValue")
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise TypeError(f"a {header_type.name} header value must be an int, "
                            f"not {type(self.value).__name__}")
        low, high = bounds
        if not low <= self.value <= high:
            raise EventStreamError(f"{self.value} does not fit a {header_type.name} header "
                                   f"(range {low}..{high})")

    @classmethod
    def byte(cls, value: int) -> HeaderValue:
        return cls(HeaderType.BYTE, value)

    @classmethod
    def short(cls, value: int) -> HeaderValue:
        return cls(HeaderType.SHORT, value)

    @classmethod
    def integer(cls, value: int) -> HeaderValue:
        return cls(HeaderType.INTEGER, value)

    @classmethod
    def long(cls, value: int) -> HeaderValue:
        return cls(HeaderType.LONG, value)

    @classmethod
    def timestamp(cls, value: int | datetime) -> HeaderValue:
        """From milliseconds since the epoch, or an aware datetime (truncated to ms)."""
        if isinstance(value, datetime):
            value = (value - _EPOCH) // _ONE_MILLISECOND
        return cls(HeaderType.TIMESTAMP, value)

    @classmethod
    def uuid(cls, value: uuid.UUID | bytes) -> HeaderValue:
        """From a `uuid.UUID` or its 16 raw bytes."""
        if isinstance(value, (bytes, bytearray)):
            value = uuid.UUID(bytes=bytes(value))
        return cls(HeaderType.UUID, value)


HeaderLike = Union[str, bytes, bool, HeaderValue]

# Which header names the AWS message kind, and which one names its type.
_TYPE_HEADER_BY_KIND = {
    "event": ":event-type",
    "exception": ":exception-type",
    "error": ":error-code",
}


@dataclass(slots=True)
class Message:
    """One event stream message: headers (name -> value) and a payload.

    Header order is preserved on the wire; names are unique.
    """

    headers: dict[str, HeaderLike] = field(default_factory=dict)
    payload: bytes = b""

    def kind(self) -> tuple[str, str]:
        """``(message type, type name)`` of an AWS event stream message.

        ``("event", <:event-type>)``, ``("exception", <:exception-type>)`` or
        ``("error", <:error-code>)``.  Raises `EventStreamError` if the
        headers do not say which of those it is.
        """
        message_type = self.headers.get(":message-type")
        type_header = _TYPE_HEADER_BY_KIND.get(message_type) if isinstance(message_type, str) else None
        if type_header is None:
            raise EventStreamError(f"':message-type' is {message_type!r}; expected one of "
                                   f"{sorted(_TYPE_HEADER_BY_KIND)}")
        name = self.headers.get(type_header)
        if not isinstance(name, str):
            raise EventStreamError(f"{message_type} message has no string {type_header!r} header")
        return message_type, name


def event_message(event_type: str, payload: bytes,
                  content_type: str = "application/json") -> Message:
    """An AWS event (e.g. a Bedrock ``contentBlockDelta``)."""
    return Message({":event-type": event_type, ":content-type": content_type,
                    ":message-type": "event"}, payload)


def exception_message(exception_type: str, payload: bytes,
                      content_type: str = "application/json") -> Message:
    """A modelled AWS exception (e.g. ``throttlingException``, payload ``{"message": ...}``)."""
    return Message({":exception-type": exception_type, ":content-type": content_type,
                    ":message-type": "exception"}, payload)


def error_message(error_code: str, message: str) -> Message:
    """An unmodelled AWS stream error (``:error-code`` / ``:error-message``, empty payload)."""
    return Message({":message-type": "error", ":error-code": error_code,
                    ":error-message": message}, b"")


# ---------------------------------------------------------------------------
# Encoding


@functools.lru_cache(maxsize=256)
def _encode_name(name: str) -> bytes:
    raw = name.encode("utf-8")
    if not 0 < len(raw) <= _MAX_NAME_LENGTH:
        raise EventStreamError(f"header name {name!r} is {len(raw)} bytes; "
                               f"must be 1..{_MAX_NAME_LENGTH} bytes of UTF-8")
    return bytes((len(raw),)) + raw


def _encode_variable(name: str, header_type: HeaderType, raw: bytes) -> bytes:
    if len(raw) > _MAX_VARIABLE_VALUE_LENGTH:
        raise EventStreamError(f"header {name!r} value is {len(raw)} bytes; "
                               f"the limit is {_MAX_VARIABLE_VALUE_LENGTH}")
    return b"".join((_encode_name(name), bytes((header_type,)), _U16.pack(len(raw)), raw))


def _encode_string_header(name: str, value: str) -> bytes:
    return _encode_variable(name, HeaderType.STRING, value.encode("utf-8"))


# AWS streams repeat the same few short (name, value) pairs in every frame;
# only short values are cached so the cache stays small (< 1024 * ~400 B).
_encode_short_string_header = functools.lru_cache(maxsize=1024)(_encode_string_header)
_SHORT_STRING = 128


def _encode_header(name: str, value: HeaderLike) -> bytes:
    if not isinstance(name, str):
        raise TypeError(f"header names are str, not {type(name).__name__}")
    if type(value) is str:
        if len(value) <= _SHORT_STRING:
            return _encode_short_string_header(name, value)
        return _encode_string_header(name, value)
    if isinstance(value, bool):
        return _encode_name(name) + bytes((HeaderType.BOOL_TRUE if value else HeaderType.BOOL_FALSE,))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _encode_variable(name, HeaderType.BYTE_ARRAY, bytes(value))
    if isinstance(value, HeaderValue):
        if value.type is HeaderType.UUID:
            return _encode_name(name) + bytes((HeaderType.UUID,)) + value.value.bytes
        return _encode_name(name) + bytes((value.type,)) + _INTEGER_CODECS[value.type].pack(value.value)
    if isinstance(value, str):  # a str subclass: encode its text
        return _encode_string_header(name, str(value))
    raise TypeError(f"header {name!r}: cannot encode a {type(value).__name__}; use str, bytes, "
                    "bool or HeaderValue (e.g. HeaderValue.integer(5))")


def header_block(headers: dict[str, HeaderLike]) -> bytes:
    """The encoded headers of a message, to frame many payloads with (`frame`)."""
    block = b"".join([_encode_header(name, value) for name, value in headers.items()])
    if len(block) > MAX_HEADERS_LENGTH:
        raise EventStreamError(f"headers are {len(block)} bytes; the limit is {MAX_HEADERS_LENGTH}")
    return block


def frame(block: bytes, payload: bytes, *, max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH) -> bytes:
    """`encode` for a header block made once (`header_block`): a stream that
    sends one kind of event many times frames each payload without
    re-encoding the same headers."""
    total_length = MIN_FRAME_LENGTH + len(block) + len(payload)
    if total_length > max_frame_length:
        raise EventStreamError(f"frame would be {total_length} bytes; the limit is {max_frame_length}")
    lengths = _pack_lengths(total_length, len(block))
    out = lengths + _pack_u32(_crc32(lengths)) + block + payload
    return out + _pack_u32(_crc32(out))


_pack_lengths, _pack_u32, _crc32 = _LENGTHS.pack, _U32.pack, zlib.crc32


def encode(message: Message, *, max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH) -> bytes:
    """Frame one message.

    Raises `EventStreamError` if the frame would exceed `max_frame_length`
    or the header block `MAX_HEADERS_LENGTH`, or a name/value is too long
    for its length prefix; `TypeError` for a value of an unsupported type.
    """
    header_block = b"".join([_encode_header(name, value) for name, value in message.headers.items()])
    payload = message.payload
    headers_length = len(header_block)
    if headers_length > MAX_HEADERS_LENGTH:
        raise EventStreamError(f"headers are {headers_length} bytes; the limit is {MAX_HEADERS_LENGTH}")
    total_length = MIN_FRAME_LENGTH + headers_length + len(payload)
    if total_length > max_frame_length:
        raise EventStreamError(f"frame would be {total_length} bytes; the limit is {max_frame_length}")
    lengths = _LENGTHS.pack(total_length, headers_length)
    prelude_crc = _U32.pack(zlib.crc32(lengths))
    # CRC the parts in sequence instead of joining twice.
    message_crc = zlib.crc32(payload, zlib.crc32(header_block, zlib.crc32(prelude_crc, zlib.crc32(lengths))))
    return b"".join((lengths, prelude_crc, header_block, payload, _U32.pack(message_crc)))


# ---------------------------------------------------------------------------
# Decoding


# Plain-int type codes: the header loop compares against these per header.
_STRING, _BYTE_ARRAY, _TRUE, _FALSE, _UUID = 7, 6, 0, 1, 9


def _decode_headers(block: bytes) -> dict[str, HeaderLike]:
    """Parse one frame's header block (already CRC-checked, so only its syntax can be wrong).

    Works on a `bytes` copy of the block, not a view of the caller's
    buffer: small bytes slices decode faster than memoryview slices, and
    nothing here can pin the caller's buffer.
    """
    headers: dict[str, HeaderLike] = {}
    position = 0
    end = len(block)
    while position < end:
        name_length = block[position]
        position += 1
        if name_length == 0:
            raise EventStreamError("header with an empty name")
        type_position = position + name_length
        if type_position >= end:  # the name and the type byte must both fit
            raise EventStreamError("truncated header: name runs past the header block")
        name = _utf8(block[position:type_position], "header name")
        type_code = block[type_position]
        position = type_position + 1

        if type_code == _STRING or type_code == _BYTE_ARRAY:
            if position + 2 > end:
                raise EventStreamError(f"truncated header {name!r}: value length runs past the header block")
            length = (block[position] << 8) | block[position + 1]
            position += 2
            if position + length > end:
                raise EventStreamError(f"truncated header {name!r}: {length}-byte value runs past "
                                       "the header block")
            raw = block[position:position + length]
            position += length
            value: HeaderLike = _utf8(raw, f"header {name!r}") if type_code == _STRING else raw
        elif type_code == _TRUE:
            value = True
        elif type_code == _FALSE:
            value = False
        elif type_code == _UUID:
            if position + 16 > end:
                raise EventStreamError(f"truncated header {name!r}: UUID runs past the header block")
            value = HeaderValue(HeaderType.UUID, uuid.UUID(bytes=block[position:position + 16]))
            position += 16
        else:
            try:
                header_type = HeaderType(type_code)
            except ValueError:
                raise EventStreamError(f"header {name!r} has unknown value type {type_code} "
                                       "(valid types are 0..9)") from None
            codec = _INTEGER_CODECS[header_type]
            if position + codec.size > end:
                raise EventStreamError(f"truncated header {name!r}: {header_type.name} runs past "
                                       "the header block")
            value = HeaderValue(header_type, codec.unpack_from(block, position)[0])
            position += codec.size

        if name in headers:
            raise EventStreamError(f"duplicate header {name!r}")
        headers[name] = value
    return headers


def _utf8(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EventStreamError(f"{what} is not valid UTF-8: {exc.reason} at byte {exc.start}") from None


class Decoder:
    """Incremental frame decoder: bytes in (split anywhere), messages out.

    Holds at most the one incomplete frame in progress between calls.  A
    frame's prelude is checked as soon as its 12 bytes arrive, so a length
    beyond `max_frame_length` fails before the rest of the frame is buffered.
    Any error is final: the decoder keeps raising afterwards.  Call `close`
    at end of stream: it reports truncation (and any error deferred by
    `feed`), so a stream is only known good once `close` returned.
    """

    def __init__(self, *, max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH):
        if not MIN_FRAME_LENGTH <= max_frame_length <= 0xFFFFFFFF:
            raise ValueError(f"max_frame_length must be {MIN_FRAME_LENGTH}..{0xFFFFFFFF}, "
                             f"not {max_frame_length}")
        self.max_frame_length = max_frame_length
        self._pending = bytearray()     # the start of an incomplete frame
        self._stream_offset = 0         # stream position of _pending[0], for error messages
        self._failure: EventStreamError | None = None
        self._failure_reported = False

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete frame held back, waiting for the rest."""
        return len(self._pending)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Consume `data`; return the messages it completes, in order.

        Raises `EventStreamError` on a corrupt or oversized frame, and on
        every call after that.  Frames that were complete and valid before
        the corruption are still delivered: if this call decoded any, it
        returns them and the error is raised by the next `feed` or `close`.
        """
        self._raise_if_failed()
        if not data:
            return []
        pending = self._pending
        if pending:
            pending += data
            source = pending
        else:
            # Common case: decode whole frames straight from the caller's
            # buffer and keep only the tail, instead of copying everything.
            source = data
        messages: list[Message] = []
        try:
            consumed = self._decode_frames(source, messages)
        except EventStreamError as exc:
            self._failure = exc
            self._pending = bytearray()
            if messages:
                return messages
            self._failure_reported = True
            raise
        self._stream_offset += consumed
        if source is pending:
            del pending[:consumed]  # O(1) amortised: bytearray trims its head in place
        elif consumed < len(data):
            pending += memoryview(data)[consumed:]
        return messages

    def close(self) -> None:
        """Declare end of stream; raise `EventStreamError` if a frame is
        incomplete or an earlier error is still unreported."""
        self._raise_if_failed()
        if self._pending:
            self._failure = EventStreamError(
                f"stream truncated: {len(self._pending)} bytes of an incomplete frame at "
                f"offset {self._stream_offset}")
            self._failure_reported = True
            raise self._failure

    eof = close

    def _raise_if_failed(self) -> None:
        failure = self._failure
        if failure is None:
            return
        if not self._failure_reported:  # deferred from a feed that returned messages
            self._failure_reported = True
            raise failure
        raise EventStreamError(f"decoder already failed: {failure}") from failure

    def _decode_frames(self, source: bytes | bytearray | memoryview, messages: list[Message]) -> int:
        """Append the complete frames of `source` to `messages`; return bytes consumed."""
        offset = 0
        crc32 = zlib.crc32
        with memoryview(source) as view:
            available = len(view)
            while available - offset >= _PRELUDE_LENGTH:
                total_length, headers_length, prelude_crc = _PRELUDE.unpack_from(view, offset)
                if (crc32(view[offset:offset + 8]) != prelude_crc
                        or not MIN_FRAME_LENGTH <= total_length <= self.max_frame_length
                        or headers_length > total_length - MIN_FRAME_LENGTH
                        or headers_length > MAX_HEADERS_LENGTH):
                    raise self._prelude_error(view, offset)
                frame_end = offset + total_length
                if frame_end > available:
                    break
                (message_crc,) = _U32.unpack_from(view, frame_end - 4)
                # prelude_crc is the CRC of bytes [0, 8), so continuing from it
                # over [8, end-4) gives the CRC of the whole frame.
                computed = crc32(view[offset + 8:frame_end - 4], prelude_crc)
                if computed != message_crc:
                    raise EventStreamError(
                        f"message CRC mismatch in frame at offset {self._stream_offset + offset}: "
                        f"frame says {message_crc:#010x}, computed {computed:#010x}")
                headers_start = offset + _PRELUDE_LENGTH
                headers_end = headers_start + headers_length
                try:
                    headers = _cached_headers(bytes(view[headers_start:headers_end]))
                except EventStreamError as exc:
                    raise EventStreamError(f"{exc} (frame at offset {self._stream_offset + offset})") from None
                messages.append(Message(headers, bytes(view[headers_end:frame_end - 4])))
                offset = frame_end
        return offset

    def _prelude_error(self, view: memoryview, offset: int) -> EventStreamError:
        """Say precisely what is wrong with the prelude at `offset`."""
        total_length, headers_length, prelude_crc = _PRELUDE.unpack_from(view, offset)
        where = f"frame at offset {self._stream_offset + offset}"
        computed = zlib.crc32(view[offset:offset + 8])
        if computed != prelude_crc:
            return EventStreamError(f"prelude CRC mismatch in {where}: frame says "
                                    f"{prelude_crc:#010x}, computed {computed:#010x}")
        if not MIN_FRAME_LENGTH <= total_length <= self.max_frame_length:
            return EventStreamError(f"{where} declares total length {total_length}; allowed "
                                    f"{MIN_FRAME_LENGTH}..{self.max_frame_length}")
        if headers_length > total_length - MIN_FRAME_LENGTH:
            return EventStreamError(f"{where} declares {headers_length} bytes of headers but its "
                                    f"total length {total_length} leaves room for at most "
                                    f"{total_length - MIN_FRAME_LENGTH}")
        return EventStreamError(f"{where} declares {headers_length} bytes of headers; "
                                f"the limit is {MAX_HEADERS_LENGTH}")


# AWS streams repeat a handful of identical header blocks (one per event
# type), so parsed small blocks are remembered: one hash of ~100 bytes
# instead of decoding every header of every frame.  Values are immutable
# and each message gets its own dict copy.  Bounded: <= 512 blocks of
# <= 256 bytes.
_HEADER_CACHE: dict[bytes, dict[str, HeaderLike]] = {}
_HEADER_CACHE_ENTRIES = 512
_HEADER_CACHE_BLOCK_LENGTH = 256


def _cached_headers(block: bytes) -> dict[str, HeaderLike]:
    if len(block) > _HEADER_CACHE_BLOCK_LENGTH:
        return _decode_headers(block)
    headers = _HEADER_CACHE.get(block)
    if headers is None:
        headers = _decode_headers(block)
        if len(_HEADER_CACHE) >= _HEADER_CACHE_ENTRIES:
            _HEADER_CACHE.clear()  # crude but bounded; steady state refills it at once
        _HEADER_CACHE[block] = headers
    return headers.copy()


def decode_all(data: bytes, *, max_frame_length: int = DEFAULT_MAX_FRAME_LENGTH) -> list[Message]:
    """Decode a complete stream; raise `EventStreamError` if it ends mid-frame."""
    decoder = Decoder(max_frame_length=max_frame_length)
    messages = decoder.feed(data)
    decoder.close()
    return messages
