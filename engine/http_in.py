"""The inbound side of HTTP/1.1, I/O-free: parsing the requests clients send.

Two parsers behind one small interface (`receive_data(bytes)`, then
`next_event()` until `NEED_DATA`; the events are a `RequestHead`, body
pieces as bytes, `END`, `CLOSED`; malformed input raises `ParseError` with
the status to answer).  `server.http_parser` picks one:

* `H11Parser` wraps h11, the reference: every decision the server makes
  about a client's bytes is h11's.
* `FastParser` reads the head with httptools (llhttp, C) and frames a
  content-length body itself.  It keeps h11's decisions exactly by
  construction: it handles only what it can prove h11 would accept and parse
  the same way (a CRLF-only head that llhttp accepts and that passes h11's
  own request-line, host and value rules, with a content-length body or
  none), and hands everything else (any rejection, a chunked body, an
  upgrade, an unusual version, a head h11 would refuse early or as too
  large) to h11, replaying the bytes received for that request exactly as
  they arrived.  So the answer to a hostile input is h11's answer, and the
  fast path is only ever taken by requests h11 accepts.  The differential
  test (tests/test_http_in.py) feeds both the same hostile corpora and
  hypothesis-generated streams and splits (docs/adr/0023-http-parser.md).

A parser reads one request; bytes past it (`trailing`) belong to the next.
"""
from __future__ import annotations

import re

import h11

try:
    import httptools
except ImportError:        # pragma: no cover - a dependency; h11 still works without it
    httptools = None

Headers = list[tuple[bytes, bytes]]
MAX_HEAD_BYTES = 64 * 1024


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


NEED_DATA = _Sentinel("NEED_DATA")   # feed more bytes (b"" at EOF)
END = _Sentinel("END")               # the request's body is complete
CLOSED = _Sentinel("CLOSED")         # the client closed before a request began


class RequestHead:
    __slots__ = ("method", "target", "headers", "http_version")

    def __init__(self, method: bytes, target: bytes, headers: Headers, http_version: bytes):
        self.method = method
        self.target = target
        self.headers = headers          # lower-case names, values without surrounding whitespace
        self.http_version = http_version   # b"1.1", b"1.0", ...

    def __eq__(self, other):
        return isinstance(other, RequestHead) and (self.method, self.target, self.headers, self.http_version) == \
            (other.method, other.target, other.headers, other.http_version)

    def __repr__(self) -> str:
        return f"RequestHead({self.method!r}, {self.target!r}, {self.headers!r}, {self.http_version!r})"


class ParseError(Exception):
    """The client's bytes are not an acceptable HTTP/1.1 request: answer
    `status` (400, 431, 501) and close."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class H11Parser:
    """h11's server-side reader for one request."""

    __slots__ = ("_conn",)

    def __init__(self, max_head: int = MAX_HEAD_BYTES):
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head)

    def receive_data(self, data: bytes) -> None:
        self._conn.receive_data(data)

    def next_event(self):
        try:
            event = self._conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise ParseError(exc.error_status_hint, str(exc)) from None
        kind = type(event)
        if kind is h11.Data:
            return bytes(event.data)
        if event is h11.NEED_DATA:
            return NEED_DATA
        if kind is h11.Request:
            return RequestHead(event.method, event.target, list(event.headers), event.http_version)
        if kind is h11.EndOfMessage:
            return END
        return CLOSED          # ConnectionClosed (or PAUSED, which a single-request reader never reaches)

    @property
    def idle(self) -> bool:
        """No byte of a request has arrived (nor an error been seen)."""
        return self._conn.their_state is h11.IDLE and not self._conn.trailing_data[0]

    @property
    def trailing(self) -> bytes:
        """Bytes received past the end of this request."""
        return self._conn.trailing_data[0]


# h11's own rules (h11/_abnf.py) for what llhttp checks differently or not at all
_TARGET = re.compile(rb"[\x21-\x7e]+")
_BLANK_LINE = re.compile(rb"\n\r?\n")      # where h11 ends a head
_HEAD, _BODY, _DONE = 0, 1, 2


class FastParser:
    """httptools (llhttp) for the head and a counter for a content-length
    body; h11 (`H11Parser`, fed the same bytes in the same pieces) for
    anything else.  See the module docstring for why the decisions are
    h11's."""

    __slots__ = ("_max", "_chunks", "_buf", "_state", "_remaining", "_length", "_eof", "_searched", "_h11",
                 "_url", "_headers", "_complete", "_begins", "_body")

    def __init__(self, max_head: int = MAX_HEAD_BYTES):
        self._max = max_head
        self._chunks: list[bytes] = []     # what arrived for this request's head, as it arrived (for h11)
        self._buf = b""                    # bytes not yet handed out
        self._state = _HEAD
        self._remaining = 0
        self._length = 0
        self._eof = False
        self._searched = 0
        self._h11: H11Parser | None = None

    def receive_data(self, data: bytes) -> None:
        if self._h11 is not None:
            self._h11.receive_data(data)
            return
        if self._state == _HEAD:
            self._chunks.append(data)
        if not data:
            self._eof = True
        elif self._buf:
            self._buf += data
        else:
            self._buf = data

    def next_event(self):
        if self._h11 is not None:
            return self._h11.next_event()
        state = self._state
        if state == _BODY:
            remaining = self._remaining
            if remaining == 0:
                self._state = _DONE
                return END
            buf = self._buf
            if buf:
                if len(buf) <= remaining:
                    self._buf = b""
                    self._remaining = remaining - len(buf)
                    return buf
                self._buf = buf[remaining:]
                self._remaining = 0
                return buf[:remaining]
            if self._eof:
                self._state = _DONE
                raise ParseError(400, "peer closed connection without sending complete message body "
                                      f"(received {self._length - remaining} bytes, expected {self._length})")
            return NEED_DATA
        if state == _DONE:
            return CLOSED
        buf = self._buf
        if not buf:
            return CLOSED if self._eof else NEED_DATA
        if buf[0] < 0x21:               # h11 refuses this at once (and a leading blank line)
            return self._to_h11()
        match = _BLANK_LINE.search(buf, max(0, self._searched - 2))
        if match is None:
            if len(buf) > self._max or self._eof:
                return self._to_h11()    # h11: 431, or "peer unexpectedly closed"
            self._searched = len(buf)
            return NEED_DATA
        end = match.end()
        head = self._read_head(buf[:end] if end < len(buf) else buf)
        if head is None:
            return self._to_h11()
        self._buf = buf[end:]
        self._chunks = []
        self._state = _BODY
        return head

    @property
    def idle(self) -> bool:
        if self._h11 is not None:
            return self._h11.idle
        return self._state == _HEAD and not self._buf

    @property
    def trailing(self) -> bytes:
        if self._h11 is not None:
            return self._h11.trailing
        return self._buf if self._state == _DONE else b""

    # ---- the head, through llhttp ---------------------------------------
    def _read_head(self, head: bytes) -> RequestHead | None:
        """The head, if llhttp accepts it and h11 would read it the same;
        None to let h11 decide."""
        crlf = head.count(b"\r\n")
        if head.count(b"\n") != crlf or head.count(b"\r") != crlf:
            return None                  # a bare LF or CR: h11's lenient line splitting decides
        self._url = b""
        self._headers = []
        self._complete = False
        self._begins = 0
        self._body = False
        parser = httptools.HttpRequestParser(self)
        try:
            parser.feed_data(head)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None                  # refused (h11 may still accept it: obs-fold, odd methods) or upgrade
        headers = self._headers
        if not self._complete or self._begins != 1 or self._body or len(headers) != crlf - 2:
            return None
        version = parser.get_http_version()
        if version == "1.1":
            http_version = b"1.1"
        elif version == "1.0":
            http_version = b"1.0"
        else:
            return None
        method = parser.get_method()
        target = self._url
        if not head.startswith(b"%s %s HTTP/%s\r\n" % (method, target, http_version)) \
                or _TARGET.fullmatch(target) is None:
            return None                  # h11's request line: one space each side, a visible-ASCII target
        hosts = 0
        length = 0
        for name, value in headers:
            if name == b"host":
                hosts += 1
            elif name == b"content-length":
                if len(value) > 20:
                    return None          # h11 refuses more than 20 digits (llhttp: anything under 2**64)
                length = int(value)
            elif name == b"transfer-encoding":
                return None              # chunked bodies (and refusing the other codings) are h11's
        if hosts > 1 or (hosts == 0 and http_version == b"1.1"):
            return None                  # h11: "missing" or "multiple Host"
        self._remaining = self._length = length
        return RequestHead(method, target, headers, http_version)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self._begins += 1

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if value[-1:] in (b" ", b"\t"):
            value = value.rstrip(b" \t")     # llhttp keeps trailing whitespace; h11 strips it
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._complete = True

    def on_body(self, body: bytes) -> None:
        self._body = True

    # ---- everything else, through h11 ------------------------------------
    def _to_h11(self):
        """Give this request to h11: the bytes it got so far, in the pieces
        they came in, as the server would have fed them."""
        parser = self._h11 = H11Parser(self._max)
        chunks, self._chunks = self._chunks, []
        self._buf = b""
        for chunk in chunks[:-1]:
            parser.receive_data(chunk)
            event = parser.next_event()          # raises where h11 would have refused earlier
            assert event is NEED_DATA, event     # (a head is complete only with the last piece)
        if chunks:
            parser.receive_data(chunks[-1])
        return parser.next_event()


PARSERS = {"h11": H11Parser, "httptools": FastParser if httptools is not None else H11Parser}
DEFAULT = "httptools"


def keep_alive(head: RequestHead) -> bool:
    """Whether the client lets the connection carry another request after
    this one (RFC 9112 9.3: HTTP/1.1 unless `close`; 1.0 only with `keep-alive`)."""
    connection = b""
    for name, value in head.headers:
        if name == b"connection":
            connection += value.lower()
    if head.http_version == b"1.0":
        return b"keep-alive" in connection
    return b"close" not in connection
