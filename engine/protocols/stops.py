"""Stop sequences emulated in the gateway, for members whose protocol has none
(the Responses API).  I/O-free: text or IR events in, text or events out.

Buffered: the answer's text is cut at the first match.  Streamed: a
`StopCutter` holds back only the longest tail of the text so far that could
still begin a stop string (at most the longest stop minus one character),
cuts at the first match, and `StopEmulation` then ends the IR stream with
the `stop_sequence` stop reason; the caller stops reading the upstream.
"""
from __future__ import annotations

from busbar import ir

SR = ir.StopReason


def first_match(text: str, stops: list[str]) -> tuple[int, str] | None:
    """(position, stop) of the stop string that completes first in `text`, as
    a vendor scanning its output would stop (at a tie, the one starting first)."""
    best: tuple[int, int, str] | None = None
    for stop in stops:
        i = text.find(stop)
        if i >= 0:
            key = (i + len(stop), i, stop)
            if best is None or key[:2] < best[:2]:
                best = key
    return (best[1], best[2]) if best is not None else None


class StopCutter:
    """Incremental cut of a text stream at the first of `stops`."""
    __slots__ = ("stops", "held", "matched")

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.held = ""
        self.matched: str | None = None

    def feed(self, text: str) -> str:
        """The part of `text` (after what was held) that is safe to emit."""
        if self.matched is not None:
            return ""
        buf = self.held + text
        hit = first_match(buf, self.stops)
        if hit is not None:
            self.held = ""
            self.matched = hit[1]
            return buf[:hit[0]]
        keep = 0
        for stop in self.stops:             # longest suffix of buf that is a proper prefix of a stop
            for n in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:n]):
                    keep = n
                    break
        self.held = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep] if keep else buf

    def flush(self) -> str:
        """What was held, once the text ended without a match."""
        out, self.held = self.held, ""
        return out


def cut_response(resp: ir.Response, stops: list[str]) -> ir.Response:
    """A buffered answer cut at the first stop string in its text: later
    content is left out and the stop reason says `stop_sequence`."""
    for i, part in enumerate(resp.content):
        if type(part) is ir.Text:
            hit = first_match(part.text, stops)
            if hit is not None:
                part.text = part.text[:hit[0]]
                resp.content = resp.content[:i + 1]
                resp.stop_reason = SR.STOP_SEQUENCE
                resp.stop_sequence = hit[1]
                break
    return resp


class StopEmulation:
    """IR stream filter: text deltas pass through a `StopCutter`; on a match
    the open blocks are stopped and a `MessageStop(stop_sequence)` ends the
    stream (`done` is then true, and later events are swallowed)."""
    __slots__ = ("cutter", "open", "text_index", "done")

    def __init__(self, stops: list[str]):
        self.cutter = StopCutter(stops)
        self.open: list[int] = []
        self.text_index: int | None = None
        self.done = False

    def filter(self, events: list) -> list:
        if self.done:
            return []
        out: list = []
        for ev in events:
            kind = type(ev)
            if kind is ir.TextDelta:
                self.text_index = ev.index
                text = self.cutter.feed(ev.text)
                if text:
                    out.append(ir.TextDelta(ev.index, text))
                if self.cutter.matched is not None:
                    out.extend(ir.BlockStop(i) for i in self.open)
                    out.append(ir.MessageStop(SR.STOP_SEQUENCE, self.cutter.matched))
                    self.done = True
                    return out
                continue
            if kind is ir.BlockStart:
                self.open.append(ev.index)
            elif kind is ir.BlockStop:
                if ev.index == self.text_index:
                    rest = self.cutter.flush()
                    if rest:
                        out.append(ir.TextDelta(ev.index, rest))
                if ev.index in self.open:
                    self.open.remove(ev.index)
            out.append(ev)
        return out
