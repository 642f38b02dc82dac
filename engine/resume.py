"""Stream resume, I/O-free: what the client saw of a broken stream, the
continuation request, and the splice of the continuation into the open stream.

A committed stream whose upstream dies (reset, stall, an in-stream server or
overload error) can continue on another member when the pipeline says
`streaming.resume`.  While such a stream runs, the relay journals the IR
events the client was sent (`journal.extend(events)`: the only cost on the
hot path, and only when resume is on).  On the break:

* `Partial.of(journal)` says what the client holds: the message, its blocks,
  the text so far, the usage seen; `Partial.refusal()` says why it cannot
  be continued (a cut inside tool-call arguments or a reasoning block, a
  finished tool call, a refusal, an answer that was already complete), or
  None;
* `continuation(request, partial)` is the original IR request plus the
  partial text as a trailing assistant turn, which each dialect renders in
  its own shape (Anthropic and Bedrock: an assistant prefill; the others: a
  last assistant message).  Trailing whitespace is not sent (Anthropic
  refuses a prefill ending in it); the overlap trim below absorbs it;
* `Splice` maps the continuation's IR events onto the client's stream: its
  MessageStart is dropped (the client keeps the first message id), its first
  text block continues the client's open text block (same index) and later
  blocks take the next free indexes, its reasoning is not relayed (the
  client's reasoning is done; the continuation is asked for none), an
  overlap with the end of the partial text is trimmed, and usage events
  carry the sum of both attempts.

The client's encoder keeps its state across the splice (block numbering,
sequence numbers): the broken attempt's encoder continues when it was in
use; a same-protocol stream (passed through as the vendor's bytes) gets a
fresh encoder replayed over the journal (`replay`), so it numbers what comes
next as the client expects.
"""
from __future__ import annotations

import dataclasses

from busbar import ir

# An overlap shorter than this is trimmed only when it is whitespace: "the"
# at the end of the partial and "the" at the start of the continuation is as
# likely a real repetition as a restatement.
MIN_OVERLAP = 8
# Continuation text held before the overlap is decided: enough to see a
# restatement of the partial's last words.
HOLD_CHARS = 32
# Journal entries kept per stream; a longer stream is not resumable (its
# journal is dropped, so memory stays bounded).
MAX_JOURNAL = 65_536

_DROP = -1


class Journal(list):
    """The IR events a committed stream sent its client (a list: `extend` is
    the hot path).  `full` turns true past MAX_JOURNAL events; the relay then
    stops journaling and the stream is no longer resumable."""

    __slots__ = ()

    @property
    def full(self) -> bool:
        return len(self) >= MAX_JOURNAL


@dataclasses.dataclass(slots=True)
class Block:
    part: ir.Part
    chunks: list[str]
    open: bool = True
    signed: bool = False


@dataclasses.dataclass(slots=True)
class Partial:
    """What the client holds of a broken stream."""

    blocks: dict[int, Block]
    usage: ir.Usage | None = None
    stopped: bool = False        # the client saw the stop: nothing to continue
    started: bool = False

    @classmethod
    def of(cls, events: list) -> "Partial":
        blocks: dict[int, Block] = {}
        p = cls(blocks)
        for ev in events:
            t = type(ev)
            if t is ir.TextDelta or t is ir.ReasoningDelta:
                b = blocks.get(ev.index)
                if b is not None:
                    b.chunks.append(ev.text)
            elif t is ir.ToolArgsDelta:
                b = blocks.get(ev.index)
                if b is not None:
                    b.chunks.append(ev.partial_json)
            elif t is ir.BlockStart:
                blocks[ev.index] = Block(ev.part, [])
            elif t is ir.BlockStop:
                b = blocks.get(ev.index)
                if b is not None:
                    b.open = False
            elif t is ir.SignatureDelta:
                b = blocks.get(ev.index)
                if b is not None:
                    b.signed = True
            elif t is ir.UsageEvent:
                p.usage = ev.usage
            elif t is ir.MessageStart:
                p.started = True
                if ev.usage is not None:
                    p.usage = ev.usage
            elif t is ir.MessageStop:
                p.stopped = True
        return p

    @property
    def text(self) -> str:
        """The answer text the client has, across its text blocks."""
        return "".join("".join(b.chunks) for b in self.blocks.values() if type(b.part) is ir.Text)

    @property
    def open_index(self) -> int | None:
        """The client's text block still open (the continuation extends it)."""
        for i, b in self.blocks.items():
            if b.open and type(b.part) is ir.Text:
                return i
        return None

    @property
    def next_index(self) -> int:
        return max(self.blocks, default=-1) + 1

    def refusal(self) -> str | None:
        """Why this stream cannot be continued, or None when it can."""
        if self.stopped:
            return "the answer was already complete"
        if not self.started:
            return "the stream had not started"
        for b in self.blocks.values():
            t = type(b.part)
            if t is ir.ToolCall:
                return "cut inside a tool call's arguments" if b.open else "the answer holds a tool call"
            if t is ir.Refusal:
                return "the answer is a refusal"
            if (t is ir.Reasoning or t is ir.RedactedReasoning) and b.open:
                return "cut inside a reasoning block (its signature can never be completed)"
        return None


def continuation(request: ir.Request, partial: Partial) -> ir.Request:
    """The original request plus the partial answer as the assistant's turn
    (joined to a prefill the client sent itself); no reasoning is asked for:
    the client's reasoning is done."""
    text = partial.text.rstrip()
    messages = list(request.messages)
    if text:
        last = messages[-1] if messages else None
        if last is not None and last.role == ir.ASSISTANT:
            content = list(last.content)
            if content and type(content[-1]) is ir.Text:
                content[-1] = ir.Text(content[-1].text + text, content[-1].extras)
            else:
                content.append(ir.Text(text))
            messages[-1] = ir.Message(ir.ASSISTANT, content, last.extras)
        else:
            messages.append(ir.Message(ir.ASSISTANT, [ir.Text(text)]))
    return dataclasses.replace(request, messages=messages, reasoning=None)


def add_usage(a: ir.Usage | None, b: ir.Usage | None) -> ir.Usage | None:
    if a is None:
        return b
    if b is None:
        return a
    return ir.Usage(a.input_tokens + b.input_tokens, a.output_tokens + b.output_tokens,
                    a.cached_tokens + b.cached_tokens, a.cache_creation_tokens + b.cache_creation_tokens,
                    a.reasoning_tokens + b.reasoning_tokens)


def broken_usage(partial: Partial) -> ir.Usage:
    """What the broken attempt cost, as far as it is known: the usage its
    stream reported; output it never reported is estimated from the text the
    client got (~4 characters a token)."""
    u = partial.usage or ir.Usage()
    if u.output_tokens == 0:
        chars = sum(len("".join(b.chunks)) for b in partial.blocks.values())
        if chars:
            u = dataclasses.replace(u, output_tokens=max(1, chars // 4), total_tokens=None)
    return u


def overlap(tail: str, held: str) -> int:
    """How many leading characters of `held` repeat the end of `tail`: the
    whole partial restated, or its last words (at least MIN_OVERLAP
    characters, or whitespace only)."""
    stripped = tail.rstrip()
    if len(stripped) >= MIN_OVERLAP and held.startswith(tail):
        return len(tail)
    if len(stripped) >= MIN_OVERLAP and held.startswith(stripped):
        return len(stripped)
    for k in range(min(len(tail), len(held)), 0, -1):
        piece = held[:k]
        if (k >= MIN_OVERLAP or piece.isspace()) and tail.endswith(piece):
            return k
    return 0


class Splice:
    """The continuation's IR events, mapped onto the client's stream (see
    the module doc).  One per continuation attempt."""

    __slots__ = ("_map", "_next", "_open", "_first", "_held", "_deciding", "_tail", "_base", "trimmed", "usage")

    def __init__(self, partial: Partial, base: ir.Usage):
        self._map: dict[int, int] = {}
        self._next = partial.next_index
        self._open = partial.open_index       # the client's text block to extend
        self._first: int | None = None        # the continuation's first text block (the one trimmed)
        self._held: list[str] = []
        self._deciding = True
        self._tail = partial.text
        self._base = base
        self.trimmed = 0                      # characters of overlap dropped
        self.usage: ir.Usage | None = base

    def _new(self, i: int) -> int:
        j = self._map[i] = self._next
        self._next += 1
        return j

    def _decide(self, out: list, final: bool) -> None:
        held = "".join(self._held)
        tail = self._tail
        if not final and (len(held) < HOLD_CHARS or (len(held) < len(tail) and tail.startswith(held))):
            return                            # not yet: could still be an overlap / a restart
        self._deciding = False
        self._held = []
        k = overlap(tail, held)
        self.trimmed = k
        if held[k:]:
            out.append(ir.TextDelta(self._map[self._first], held[k:]))

    def _flush(self, out: list) -> None:
        if self._deciding and self._held:
            self._decide(out, True)
        self._deciding = False

    def _close_open(self, out: list) -> None:
        if self._open is not None:
            out.append(ir.BlockStop(self._open))
            self._open = None

    def feed(self, events: list) -> list:
        out: list = []
        for ev in events:
            t = type(ev)
            if t is ir.TextDelta:
                j = self._map.get(ev.index, _DROP)
                if j == _DROP or not ev.text:
                    continue
                if self._deciding and ev.index == self._first:
                    self._held.append(ev.text)
                    self._decide(out, False)
                else:
                    out.append(ir.TextDelta(j, ev.text))
            elif t is ir.BlockStart:
                pt = type(ev.part)
                if pt is ir.Reasoning or pt is ir.RedactedReasoning:
                    self._map[ev.index] = _DROP
                    continue
                if pt is ir.Text and self._first is None:
                    self._first = ev.index
                    if self._open is not None:
                        self._map[ev.index] = self._open
                        self._open = None
                        continue
                    out.append(ir.BlockStart(self._new(ev.index), ev.part))
                    continue
                self._flush(out)
                self._close_open(out)
                out.append(ir.BlockStart(self._new(ev.index), ev.part))
            elif t is ir.BlockStop:
                j = self._map.get(ev.index, _DROP)
                if ev.index == self._first:
                    self._flush(out)
                if j != _DROP:
                    out.append(ir.BlockStop(j))
            elif t is ir.ToolArgsDelta or t is ir.ReasoningDelta or t is ir.SignatureDelta:
                j = self._map.get(ev.index, _DROP)
                if j != _DROP:
                    out.append(dataclasses.replace(ev, index=j))
            elif t is ir.UsageEvent or (t is ir.MessageStart and ev.usage is not None):
                u = self._fill(ev.usage)          # first: it may complete the base
                self.usage = add_usage(self._base, u)
                out.append(ir.UsageEvent(self.usage))
            elif t is ir.MessageStop:
                self._flush(out)
                self._close_open(out)
                out.append(ev)
            elif t is ir.MessageStart:
                continue                      # the client keeps its first message
            else:                             # ErrorEvent: the relay's to judge
                out.append(ev)
        return out

    def _fill(self, u: ir.Usage) -> ir.Usage:
        """The continuation's usage; the broken attempt's unreported input is
        taken as the continuation's minus the partial it was given back."""
        base = self._base
        if base.input_tokens == 0 and u.input_tokens:
            self._base = dataclasses.replace(base, input_tokens=max(0, u.input_tokens - base.output_tokens),
                                             total_tokens=None)
        return u


@dataclasses.dataclass(slots=True)
class Resumption:
    """A broken stream being continued: the client's encoder and journal,
    what it holds, the broken attempt's cost, the continuation request (the
    IR, built on first use), and the bounds."""

    encoder: object
    journal: list
    partial: Partial
    base: ir.Usage
    request: ir.Request | None
    since: float                  # when the stream broke
    deadline: float               # since + streaming.resume.max_added_ms
    fault: object

    def splice(self) -> Splice:
        return Splice(self.partial, self.base)


def replay(encoder, events: list) -> None:
    """Bring a fresh client encoder to the state the client's stream is in
    (the vendor's own bytes went out; this encoder writes what comes next)."""
    encode = encoder.encode
    for ev in events:
        encode(ev)
