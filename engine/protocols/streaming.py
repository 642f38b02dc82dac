"""Stream codecs: the mechanics every protocol's decoder and encoder share.

Each protocol module defines two small classes (found by
`Dialect.stream_decoder` / `Dialect.stream_encoder`):

* ``StreamDecoder()`` - ``feed(bytes) -> list[ir.Event]`` for any chunking of
  an upstream body, and ``close() -> list[ir.Event]`` at its end.  Raises
  `StreamError` on garbage, and from `close` when the body ended mid-event
  or before the event that carries the stop reason (a truncated answer must
  never look complete).  An in-stream vendor error becomes one
  `ir.ErrorEvent` (its HTTP-status equivalent, message, code, and `raw`: an
  error body the dialect's own `classify` reads); the stream ends there.
* ``StreamEncoder(model)`` - ``encode(ir.Event) -> bytes`` in the client's
  protocol (``b""`` when the event has no wire form there), ``finish()`` for
  trailing bytes after MessageStop, and ``error(kind, message)`` for the
  protocol's own error event that ends a stream broken after content went
  out, so the client SDK raises instead of returning a truncated answer.

The IR event grammar every decoder emits (and every encoder accepts)::

    MessageStart (BlockStart (TextDelta|ToolArgsDelta|ReasoningDelta|SignatureDelta)* BlockStop)*
        UsageEvent? MessageStop

with ErrorEvent possible anywhere after MessageStart.  Decoders put usage
before the stop (holding the stop reason when the vendor sends usage after
it: OpenAI's usage chunk, Bedrock's metadata), so encoders never buffer
content.  Blocks are sequential, numbered 0, 1, 2 ... in order of
appearance; encoders renumber for their wire when they drop a block (a
dialect without reasoning).  A `SignatureDelta` carries a whole signature
(the last one wins, as in Anthropic's accumulator).  Encoders still
tolerate a missing BlockStop (closed at MessageStop), UsageEvents anywhere
(the last one counts) and deltas for unknown blocks (dropped).

Memory is constant per stream except where a protocol's own events need
the whole of something: a Gemini function call is sent whole (arguments
buffered per call), and Responses' `*.done` / `response.completed` events
repeat the full output (kept as it streams).
"""
from __future__ import annotations

import orjson

from busbar import ir
from busbar.protocols.base import StreamError
from busbar.protocols.sse import SSEError, SSESplitter

__all__ = ["StreamError", "SSEDecoder", "Encoder", "kind_for_status", "dumps", "MALFORMED"]

dumps = orjson.dumps
loads = orjson.loads

# What a decoder turns into StreamError: bad JSON, and JSON of the wrong shape.
MALFORMED = (orjson.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError, IndexError)


class SSEDecoder:
    """Base of the decoders of SSE dialects: split with the shared
    `SSESplitter`, hand each event to `_event(name, data, out)`, and at end of
    body call `_end(out)` (which raises `StreamError` if the stream was cut)."""

    __slots__ = ("_sse", "_failed")

    def __init__(self):
        self._sse = SSESplitter()
        self._failed = False

    def feed(self, data: bytes) -> list[ir.Event]:
        if self._failed:
            raise StreamError("decoder already failed")
        try:
            events = self._sse.feed(data)
            out: list = []
            for ev in events:
                self._event(ev.event, ev.data, out)
            for e in out:
                ir.check_event(e)      # a wrong-typed vendor value: this stream's StreamError
            return out
        except StreamError:
            self._failed = True
            raise
        except SSEError as exc:
            self._failed = True
            raise StreamError(str(exc)) from None
        except MALFORMED as exc:
            self._failed = True
            raise StreamError(f"malformed {self.protocol} stream event: {exc!r}"[:300]) from None

    def shown_response(self) -> dict | None:
        """The answer as the vendor sent it (Responses: its `response.completed`
        response: id and output items), for `busbar.item_store`; None elsewhere."""
        return None

    @property
    def unfinished(self) -> int:
        """How many of the bytes fed so far belong to an event not yet ended
        (the tail the splitter holds back): a passthrough relay forwards all
        but these, whole events only, without splitting the stream again."""
        return len(self._sse.pending)

    def close(self) -> list[ir.Event]:
        out: list = []
        if self._sse.pending.strip():
            # A last event without its blank line: whole JSON is accepted
            # (some servers end the body right after `data: [DONE]`), a cut
            # one fails to parse.
            out = self.feed(b"\n\n")
        fed = len(out)
        try:
            self._end(out)                 # Gemini's usage, for one, is read only here
            for e in out[fed:]:
                ir.check_event(e)
        except StreamError:
            self._failed = True
            raise
        except MALFORMED as exc:
            self._failed = True
            raise StreamError(f"malformed {self.protocol} stream end: {exc!r}"[:300]) from None
        return out

    # subclasses
    protocol = "sse"

    def _event(self, name: str | None, data: bytes, out: list) -> None:
        raise NotImplementedError

    def _end(self, out: list) -> None:
        raise NotImplementedError


class SequentialBlockDecoder(SSEDecoder):
    """An SSE decoder for dialects whose wire has no block boundaries (Chat
    Completions, Gemini): it numbers the IR blocks itself and closes the open
    one when the next starts (`_open`) or the message ends (`_close`)."""

    __slots__ = ("_next", "_cur", "_kind")

    def __init__(self):
        super().__init__()
        self._next = 0          # next IR block index
        self._cur = -1          # the open IR block, or -1
        self._kind = 0          # its kind (the dialect's own codes), 0 when none is open

    def _open(self, out: list, kind: int, part) -> int:
        if self._kind:
            out.append(ir.BlockStop(self._cur))
        self._cur = i = self._next
        self._next += 1
        self._kind = kind
        out.append(ir.BlockStart(i, part))
        return i

    def _close(self, out: list) -> None:
        if self._kind:
            out.append(ir.BlockStop(self._cur))
            self._kind = 0


class Encoder:
    """Base of every encoder: `encode` dispatches on the event's type to the
    class's `_on` table (built by `handlers`)."""

    __slots__ = ("_errored",)
    _on: dict = {}
    content_type = b"text/event-stream"

    def __init__(self):
        self._errored = False

    def encode(self, event: ir.Event) -> bytes:
        return self._on[type(event)](self, event)

    # For encoders that keep `_started` and the open `_blocks` (index-keyed):
    # what a stream that skipped its preamble, or left blocks open, still owes.
    def _ensure_started(self) -> bytes:
        return b"" if self._started else self._on_MessageStart(ir.MessageStart("", ""))

    def _stop_open_blocks(self) -> bytes:
        return b"".join(self._on_BlockStop(ir.BlockStop(i)) for i in list(self._blocks))

    def finish(self) -> bytes:
        return b""

    def shown_response(self) -> dict | None:
        """The answer this stream showed under ids the gateway minted (Responses:
        its response id and output items), for `busbar.item_store`; None elsewhere."""
        return None

    def error(self, kind: str, message: str) -> bytes:
        """The protocol's error event ending the stream; only the first call
        (or encoded ErrorEvent) produces bytes, so a stream ends once."""
        if self._errored:
            return b""
        self._errored = True
        return self._error(kind, message)

    def _error(self, kind: str, message: str) -> bytes:
        raise NotImplementedError

    def _error_event(self, ev: ir.ErrorEvent) -> bytes:
        return self.error(kind_for_status(ev.status), ev.message)


def error_event(dialect, status: int, message: str, code: str | None, raw: bytes) -> ir.ErrorEvent:
    """An in-stream vendor error with its fault attached, classified by the
    decoding protocol's own rules as the HTTP error it stands for."""
    return ir.ErrorEvent(status, message, code, raw, dialect.classify(status, [], raw))


def handlers(cls) -> type:
    """Class decorator: build `_on` from methods named `_on_<EventClass>`."""
    table = {}
    for name in ("MessageStart", "BlockStart", "TextDelta", "ToolArgsDelta", "ReasoningDelta",
                 "SignatureDelta", "BlockStop", "UsageEvent", "MessageStop", "ErrorEvent"):
        fn = getattr(cls, f"_on_{name}", None)
        if fn is None and name == "ErrorEvent":
            fn = cls._error_event
        if fn is None:
            raise TypeError(f"{cls.__name__} handles no {name}")
        table[getattr(ir, name)] = fn
    cls._on = table
    return cls


def kind_for_status(status: int) -> str:
    """The ClientError kind an in-stream error of this HTTP status is shown as."""
    if status in (429, 402):
        return "rate_limit"
    if status in (503, 529):
        return "overloaded"
    if status in (408, 504):
        return "timeout"
    if status >= 500:
        return "api_error"
    return {400: "invalid_request", 401: "authentication", 403: "permission", 404: "not_found",
            413: "request_too_large"}.get(status, "invalid_request")


def usage_or_zero(u: ir.Usage | None) -> ir.Usage:
    return u if u is not None else ir.Usage()
