"""A cached answer: the IR response, who answered it, when; and the three
conversions the cache needs of it (all pure, no I/O):

* `encode` / `decode`: the stored bytes (JSON, typed by field, never pickle:
  a shared Redis must not be able to run code in a replica);
* `response_events`: the response as the IR event sequence every stream
  encoder accepts, so a hit is replayed as a stream in the client's protocol;
* `Assembler`: the reverse, IR stream events folded back into a response, so
  a streamed miss can be stored (the relays decode every upstream stream).
"""
from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass

import orjson

from busbar import ir

FORMAT = 1          # the stored shape; an entry of another version is a miss

_PARTS = {cls.__name__: cls for cls in (ir.Text, ir.Refusal, ir.Image, ir.Document, ir.ToolCall, ir.JsonData,
                                        ir.ToolResult, ir.Reasoning, ir.RedactedReasoning, ir.Opaque)}
# answers worth keeping: complete ones (a truncated-by-max_tokens answer is
# what the same request gets again); not errors, filters or pauses
STORABLE = frozenset((ir.StopReason.END_TURN, ir.StopReason.STOP_SEQUENCE, ir.StopReason.MAX_TOKENS,
                      ir.StopReason.TOOL_USE))


@dataclass(frozen=True, slots=True)
class Entry:
    response: ir.Response
    member: str            # the member that answered (spend saved is priced at its `price`)
    created: float         # wall-clock seconds (the `age` of a hit)


# ---- stored form --------------------------------------------------------------
def _part(part) -> dict:
    out = {"type": type(part).__name__}
    for f in dataclasses.fields(part):
        value = getattr(part, f.name)
        if value is None:
            continue
        if f.name == "content" and type(part) is ir.ToolResult:
            value = [_part(p) for p in value]
        out[f.name] = value
    return out


def _unpart(obj: dict):
    cls = _PARTS[obj["type"]]
    kwargs = {k: v for k, v in obj.items() if k != "type"}
    if cls is ir.ToolResult:
        kwargs["content"] = [_unpart(p) for p in kwargs.get("content", ())]
    return cls(**kwargs)


def encode(entry: Entry) -> bytes:
    r = entry.response
    return orjson.dumps({
        "v": FORMAT, "member": entry.member, "created": entry.created,
        "id": r.id, "model": r.model, "content": [_part(p) for p in r.content], "stop": r.stop_reason.value,
        "stop_sequence": r.stop_sequence, "usage": dataclasses.asdict(r.usage), "extras": r.extras})


def decode(data: bytes) -> Entry | None:
    """The entry, or None for bytes of another format (a miss, not an error)."""
    try:
        obj = orjson.loads(data)
        if obj.get("v") != FORMAT:
            return None
        response = ir.Response(obj["id"], obj["model"], [_unpart(p) for p in obj["content"]],
                               ir.StopReason(obj["stop"]), obj.get("stop_sequence"), ir.Usage(**obj["usage"]),
                               obj.get("extras"))
        return Entry(response, obj["member"], obj["created"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


# ---- replay -------------------------------------------------------------------
def replay_id() -> str:
    """A fresh response id per hit: two clients never get the same id."""
    return f"cache-{uuid.uuid4().hex[:24]}"


def response_events(response: ir.Response, chunk_chars: int = 0) -> list:
    """The IR stream of `response`: MessageStart, one block per part, usage,
    MessageStop (the grammar in busbar.protocols.streaming).  `chunk_chars`
    > 0 splits text into deltas of about that size (word boundaries), for a
    paced replay; 0 sends each block's text as one delta."""
    usage = response.usage
    events: list = [ir.MessageStart(response.id, response.model,
                                    ir.Usage(input_tokens=usage.input_tokens, cached_tokens=usage.cached_tokens,
                                             cache_creation_tokens=usage.cache_creation_tokens))]
    index = 0
    for part in response.content:
        kind = type(part)
        if kind is ir.Text or kind is ir.Refusal:
            events.append(ir.BlockStart(index, kind("")))
            events.extend(ir.TextDelta(index, piece) for piece in _pieces(part.text, chunk_chars))
        elif kind is ir.Reasoning:
            events.append(ir.BlockStart(index, ir.Reasoning("", None, part.origin)))
            events.extend(ir.ReasoningDelta(index, piece) for piece in _pieces(part.text, chunk_chars))
            if part.signature:
                events.append(ir.SignatureDelta(index, part.signature))
        elif kind is ir.ToolCall:
            events.append(ir.BlockStart(index, ir.ToolCall(part.id, part.name, {})))
            args = part.raw_arguments if part.raw_arguments is not None else orjson.dumps(part.arguments).decode()
            events.append(ir.ToolArgsDelta(index, args))
        elif kind is ir.RedactedReasoning:
            events.append(ir.BlockStart(index, part))
        else:
            continue        # no stream form (an opaque vendor block): the buffered answer keeps it
        events.append(ir.BlockStop(index))
        index += 1
    events.append(ir.UsageEvent(usage))
    events.append(ir.MessageStop(response.stop_reason, response.stop_sequence))
    return events


def _pieces(text: str, size: int) -> list[str]:
    if not text:
        return []
    if size <= 0 or len(text) <= size:
        return [text]
    out, start = [], 0
    while start < len(text):
        end = text.find(" ", start + size)
        end = len(text) if end < 0 else end + 1
        out.append(text[start:end])
        start = end
    return out


class Assembler:
    """IR stream events -> the response they describe (text and reasoning
    concatenated, tool arguments parsed at their block's end, the last usage
    and the stop).  `response()` is None until a MessageStop arrived, or after
    an ErrorEvent: an incomplete stream is never stored."""

    __slots__ = ("_id", "_model", "_parts", "_args", "_usage", "_stop", "_stop_sequence", "_failed")

    def __init__(self):
        self._id = self._model = ""
        self._parts: dict[int, object] = {}
        self._args: dict[int, list[str]] = {}
        self._usage = ir.Usage()
        self._stop = None
        self._stop_sequence = None
        self._failed = False

    def feed(self, events) -> None:
        for event in events:
            kind = type(event)
            if kind is ir.TextDelta:
                part = self._parts.get(event.index)
                if part is not None:
                    part.text += event.text
            elif kind is ir.ToolArgsDelta:
                self._args.setdefault(event.index, []).append(event.partial_json)
            elif kind is ir.BlockStart:
                self._parts[event.index] = dataclasses.replace(event.part)   # never the encoder's object
            elif kind is ir.ReasoningDelta:
                part = self._parts.get(event.index)
                if part is not None:
                    part.text += event.text
            elif kind is ir.SignatureDelta:
                part = self._parts.get(event.index)
                if part is not None:
                    part.signature = event.signature
            elif kind is ir.BlockStop:
                self._close_args(event.index)
            elif kind is ir.UsageEvent:
                self._usage = event.usage
            elif kind is ir.MessageStart:
                self._id, self._model = event.id, event.model
                if event.usage is not None:
                    self._usage = event.usage
            elif kind is ir.MessageStop:
                self._stop, self._stop_sequence = event.stop_reason, event.stop_sequence
            elif kind is ir.ErrorEvent:
                self._failed = True

    def _close_args(self, index: int) -> None:
        chunks = self._args.pop(index, None)
        part = self._parts.get(index)
        if chunks is None or type(part) is not ir.ToolCall:
            return
        raw = "".join(chunks)
        try:
            args = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            args = None
        if isinstance(args, dict):
            part.arguments = args
        else:
            part.raw_arguments = raw

    def response(self) -> ir.Response | None:
        if self._failed or self._stop is None:
            return None
        for index in list(self._args):
            self._close_args(index)
        content = [self._parts[i] for i in sorted(self._parts)]
        return ir.Response(self._id, self._model, content, self._stop, self._stop_sequence, self._usage)
