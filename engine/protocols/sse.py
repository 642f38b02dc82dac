"""Server-sent events: an incremental splitter, shared by every SSE dialect.

`SSESplitter.feed(bytes)` returns complete events as (event_name, data,
raw_bytes); it keeps only the unfinished tail, so memory is bounded by the
largest single event (capped).  Line endings \\n, \\r\\n and \\r are all
accepted, per the SSE spec.
"""
from __future__ import annotations

import re
from typing import NamedTuple


MAX_EVENT_BYTES = 8 * 1024 * 1024


class SSEError(ValueError):
    pass


class SSEEvent(NamedTuple):
    event: str | None
    data: bytes
    raw: bytes


_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n|\r\r|\n\r\n|\r\n\n")


class SSESplitter:
    """Split a byte stream into events.  `feed` returns the complete events;
    `raw` of each is the original bytes (line endings untouched), so a relay
    can forward exactly what it received, one whole event at a time.

    Linear in the bytes fed: an unfinished event is kept in a growing buffer
    and only the new bytes (plus the 3 before them, where a blank line may
    have started) are searched for its end; an event larger than
    `max_event_bytes` raises `SSEError` as soon as it gets there."""

    __slots__ = ("_buf", "max_event_bytes")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES):
        self._buf = bytearray()
        self.max_event_bytes = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        pending = self._buf
        if pending:
            scan_from = max(0, len(pending) - 3)
            pending += chunk
            first = _BLANK_LINE.search(pending, scan_from)
            if first is None:
                if len(pending) > self.max_event_bytes:
                    raise SSEError(f"server-sent event exceeds {self.max_event_bytes} bytes")
                return []
            buf = bytes(pending)
        else:
            buf = chunk
        events = []
        start = 0
        for match in _BLANK_LINE.finditer(buf):
            if match.start() < start:
                continue
            raw = buf[start:match.end()]
            start = match.end()
            event = _parse_block(raw)
            if event is not None:
                events.append(event)
        self._buf = bytearray(buf[start:]) if start < len(buf) else bytearray()
        if len(self._buf) > self.max_event_bytes:
            raise SSEError(f"server-sent event exceeds {self.max_event_bytes} bytes")
        return events

    @property
    def pending(self) -> bytearray:
        """The unfinished event's bytes so far (not a copy: read, don't keep)."""
        return self._buf


def _parse_block(raw: bytes) -> SSEEvent | None:
    name = None
    data_lines = []
    text = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n") if b"\r" in raw else raw
    for line in text.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data_lines.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
    if name is None and not data_lines:
        return None
    return SSEEvent(name, b"\n".join(data_lines), raw)
