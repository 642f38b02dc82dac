"""The upstream side of HTTP/1.1, I/O-free: request serialisation, response
head parsing and body framing (content-length, chunked, until-close).

Why not h11 here: the upstream client is the gateway's first performance
wall (docs/adr/0002-http-stack.md) and h11 validates every event we build;
this module does only what a client of a JSON/SSE API needs, strictly, and
raises `ProtocolError` on anything malformed.  The client side (requests
from SDKs) keeps h11's full validation.  A property test checks this parser
against h11 on random responses split at random points.
"""
from __future__ import annotations

import re

Headers = list[tuple[bytes, bytes]]

MAX_HEAD_BYTES = 64 * 1024
_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([1-9][0-9][0-9])(?: ([^\r\n]*))?")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")


class ProtocolError(ValueError):
    """The upstream sent something that is not valid HTTP/1.1."""


# Defence in depth against request smuggling: whatever a dialect or a client
# put into the target or a header, no byte may end the line or split it.
_UNSAFE_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_UNSAFE_VALUE = re.compile(rb"[\x00\r\n]")


class UnsafeRequest(ValueError):
    """A request we were asked to send would not be one HTTP request: a
    control character or space in the target, a line break or NUL in a
    header, a header name that is not a token."""


class HeaderBlock(bytes):
    """Header lines rendered and checked once (`header_block`), e.g. a
    provider's fixed headers at config compile; an item of a request's
    header list that `serialize_request` splices in as it is."""


def header_block(headers: Headers) -> HeaderBlock:
    """`headers` as wire lines, checked as `serialize_request` checks them
    (raises UnsafeRequest)."""
    parts = []
    for name, value in headers:
        if _UNSAFE_VALUE.search(value) or not _TOKEN.fullmatch(name):
            raise UnsafeRequest(f"header {name[:40]!r} has a line break, a NUL or a bad name")
        parts += (name, b": ", value, b"\r\n")
    return HeaderBlock(b"".join(parts))


def serialize_request(method: bytes, target: bytes, host: bytes, headers: Headers, body: bytes) -> bytes:
    """One request's bytes.  `headers` are (name, value) pairs, checked here,
    or `HeaderBlock`s, checked when they were built."""
    if not target.startswith(b"/") or _UNSAFE_TARGET.search(target):
        raise UnsafeRequest(f"request target {target[:80]!r} is not a safe origin-form path")
    parts = [method, b" ", target, b" HTTP/1.1\r\nhost: ", host, b"\r\ncontent-length: %d\r\n" % len(body)]
    for item in headers:
        if type(item) is HeaderBlock:
            parts.append(item)
            continue
        name, value = item
        if _UNSAFE_VALUE.search(value) or not _TOKEN.fullmatch(name):
            raise UnsafeRequest(f"header {name[:40]!r} has a line break, a NUL or a bad name")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class ResponseHead:
    __slots__ = ("status", "headers", "keep_alive", "framing", "length")

    def __init__(self, status: int, headers: Headers, keep_alive: bool, framing: str, length: int):
        self.status = status
        self.headers = headers
        self.keep_alive = keep_alive
        self.framing = framing      # "length" | "chunked" | "close"
        self.length = length


def parse_head(buf: bytes | bytearray, method: bytes = b"POST") -> tuple[ResponseHead, int] | None:
    """Parse a response head at the start of `buf`.  None: need more bytes.
    Returns the head and how many bytes it used."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD_BYTES:
            raise ProtocolError("response head too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    m = _STATUS_LINE.fullmatch(lines[0])
    if m is None:
        raise ProtocolError(f"bad status line {lines[0][:80]!r}")
    minor, status = m.group(1), int(m.group(2))
    headers: Headers = []
    length = None
    chunked = False
    connection = b""
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            raise ProtocolError(f"bad header line {line[:80]!r}")
        name = name.lower()
        value = value.strip(b" \t")
        headers.append((name, value))
        if name == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                raise ProtocolError("bad content-length")
            length = int(value)
        elif name == b"transfer-encoding":
            codings = [c.strip().lower() for c in value.split(b",")]
            if codings[-1] != b"chunked" or any(c not in (b"chunked", b"identity") for c in codings):
                raise ProtocolError(f"unsupported transfer-encoding {value[:40]!r}")
            chunked = True
        elif name == b"connection":
            connection += value.lower()
    keep_alive = (b"close" not in connection) if minor == b"1" else (b"keep-alive" in connection)
    if status < 200 or status in (204, 304) or method == b"HEAD":
        framing, length = "length", 0
    elif chunked:
        framing, length = "chunked", 0
    elif length is not None:
        framing = "length"
    else:
        framing, length, keep_alive = "close", 0, False
    return ResponseHead(status, headers, keep_alive, framing, length), end + 4


class BodyDecoder:
    """Feed raw bytes after the head; get body pieces.  `done` turns True at
    the end of the message; `leftover` holds bytes past it (which, for a
    client that never pipelines, mean a broken server)."""

    __slots__ = ("framing", "remaining", "done", "leftover", "_buf", "_state")

    def __init__(self, head: ResponseHead):
        self.framing = head.framing
        self.remaining = head.length
        self.done = head.framing == "length" and head.length == 0
        self.leftover = b""
        self._buf = b""
        self._state = "size"     # chunked: size | data | data_crlf | trailer

    def feed(self, data: bytes) -> list[bytes]:
        if self.done:
            self.leftover += data
            return []
        if self.framing == "length":
            if len(data) < self.remaining:
                self.remaining -= len(data)
                return [data] if data else []
            piece, self.leftover = data[:self.remaining], data[self.remaining:]
            self.remaining = 0
            self.done = True
            return [piece] if piece else []
        if self.framing == "close":
            return [data] if data else []
        return self._feed_chunked(data)

    def eof(self) -> None:
        """The connection closed; raise if the body was not complete."""
        if self.framing == "close":
            self.done = True
        elif not self.done:
            raise ProtocolError("connection closed before the response body was complete")

    def _feed_chunked(self, data: bytes) -> list[bytes]:
        buf = self._buf + data if self._buf else data
        out = []
        pos = 0
        while True:
            state = self._state
            if state == "data":
                available = len(buf) - pos
                if available == 0:
                    break
                take = min(available, self.remaining)
                out.append(buf[pos:pos + take])
                pos += take
                self.remaining -= take
                if self.remaining == 0:
                    self._state = "data_crlf"
                continue
            end = buf.find(b"\r\n", pos)
            if end < 0:
                if len(buf) - pos > 4096:
                    raise ProtocolError("chunk header line too long")
                break
            line = buf[pos:end]
            pos = end + 2
            if state == "size":
                m = _CHUNK_SIZE.fullmatch(line)
                if m is None:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}")
                size = int(m.group(1), 16)
                if size == 0:
                    self._state = "trailer"
                else:
                    self.remaining = size
                    self._state = "data"
            elif state == "data_crlf":
                if line:
                    raise ProtocolError("missing CRLF after chunk data")
                self._state = "size"
            else:  # trailer fields, ended by an empty line
                if not line:
                    self.done = True
                    self.leftover = buf[pos:]
                    self._buf = b""
                    return out
        self._buf = buf[pos:]
        return out
