"""Signed reasoning a client's protocol cannot carry, kept for its next turn (issue 19).

A Chat Completions (or Cohere) client using a member that thinks (Anthropic, Claude on
Bedrock, Gemini) cannot send the signed thinking back: its wire has no place for a
signature, and those vendors refuse or degrade a tool-result turn without it.  So when
the gateway translates such an answer with tool calls, it keeps the signed reasoning
parts (and each tool call's own vendor extras, e.g. Gemini's `thoughtSignature`) keyed
by the tool-call ids it showed the client; when the client sends its history back, an
assistant turn holding one of those ids gets them back (before its tool calls, replacing
an unsigned `reasoning_content` replay) before it is rendered for the member.

Bounded: `max_entries` (oldest kept first out: `busbar.lru`, where a read is not a use),
`max_entry_chars` per answer (larger ones are not kept), a TTL.  I/O-free, clock injected.
Per process; with Redis configured the exchange also writes each kept entry to the cluster
(`encoded`) and, on a tool-result turn whose calls this replica does not hold (`missing`),
fetches them (`put_encoded`) before `restore` (busbar.state.shared, ADR 0013).
"""
from __future__ import annotations

import dataclasses
import time

import orjson
from typing import Callable, Iterable

from busbar import ir
from busbar.lru import BoundedTTLMap

MAX_ENTRIES = 10_000
TTL_S = 3600.0
MAX_ENTRY_CHARS = 256 * 1024

_REASONING = (ir.Reasoning, ir.RedactedReasoning)


def _signed(part) -> bool:
    return type(part) is ir.RedactedReasoning or (type(part) is ir.Reasoning and bool(part.signature))


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    reasoning: tuple            # the answer's signed reasoning parts, in order
    extras: dict                # tool-call id -> that call's vendor extras


class ReasoningStore:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S,
                 max_entry_chars: int = MAX_ENTRY_CHARS, now: Callable[[], float] = time.monotonic):
        self.max_entry_chars = max_entry_chars
        self._lru = BoundedTTLMap(max_entries=max_entries, ttl=ttl_s, now=now)   # no byte bound: the chars one
        self.kept = self.restored = 0        # answers kept, turns restored (admin, tests)

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def max_entries(self) -> int:
        return self._lru.max_entries

    @property
    def ttl_s(self) -> float:
        return self._lru.ttl

    def keep(self, parts: Iterable, shown_id: Callable[[str], str] = lambda i: i) -> list[str]:
        """An answer's content as the member sent it: keep its signed reasoning and
        tool-call extras under each tool-call id (and the id as the client saw it).
        Returns the keys it was kept under (empty: nothing to keep)."""
        parts = list(parts)
        calls = [p for p in parts if type(p) is ir.ToolCall]
        if not calls:
            return []
        reasoning = tuple(p for p in parts if _signed(p))
        extras = {c.id: c.extras for c in calls if c.extras}
        if not reasoning and not extras:
            return []
        size = sum(len(getattr(p, "text", "")) + len(getattr(p, "signature", None) or getattr(p, "data", ""))
                   for p in reasoning)
        if size > self.max_entry_chars:
            return []
        entry = _Entry(reasoning, extras)
        keys = []
        for call in calls:
            for key in (call.id, shown_id(call.id)):
                if key not in keys:
                    keys.append(key)
                    self._lru.put(key, entry)
        self.kept += 1
        return keys

    # ---- the cluster's copy (busbar.state.shared) -------------------------
    def encoded(self, key: str) -> bytes | None:
        """The entry under `key` as the cluster stores it (JSON)."""
        entry = self._lru.peek(key)         # expired or not: asked for right after `keep`
        if entry is None:
            return None
        return orjson.dumps({"r": [_part_out(p) for p in entry.reasoning], "x": entry.extras})

    def put_encoded(self, key: str, data: bytes) -> bool:
        """An entry another replica kept (`encoded`), held here from now on."""
        try:
            obj = orjson.loads(data)
            entry = _Entry(tuple(_part_in(p) for p in obj["r"]), obj["x"])
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            return False      # not ours (another version's format): as if absent
        self._lru.put(key, entry)
        return True

    def missing(self, request: ir.Request) -> list[str]:
        """The tool-call ids of the request's assistant turns that this store does
        not hold: what to ask the cluster for (only tool-result turns have any)."""
        live, out = self._lru.live, []
        for message in request.messages:
            if message.role != ir.ASSISTANT:
                continue
            for part in message.content:
                if type(part) is ir.ToolCall and not live(part.id):
                    out.append(part.id)
        return out

    def restore(self, request: ir.Request) -> ir.Request:
        """`request` with each assistant turn whose tool calls the store knows given back
        its signed reasoning and tool-call extras (the same request when none)."""
        messages, changed = [], False
        for message in request.messages:
            entry = self._entry_for(message) if message.role == ir.ASSISTANT else None
            if entry is None:
                messages.append(message)
                continue
            content = [p for p in message.content if not (type(p) in _REASONING and not _signed(p))]
            if not any(_signed(p) for p in content):
                first = next(i for i, p in enumerate(content) if type(p) is ir.ToolCall)
                content[first:first] = entry.reasoning
            content = [_with_extras(p, entry.extras) if type(p) is ir.ToolCall else p for p in content]
            messages.append(dataclasses.replace(message, content=content))
            changed = True
            self.restored += 1
        return dataclasses.replace(request, messages=messages) if changed else request

    def _entry_for(self, message: ir.Message) -> _Entry | None:
        for part in message.content:
            if type(part) is ir.ToolCall:
                entry = self._lru.get(part.id)
                if entry is not None:
                    return entry
        return None


def _part_out(part) -> list:
    if type(part) is ir.Reasoning:
        return ["r", part.text, part.signature, part.origin, part.extras]
    return ["x", part.data, None, part.origin, part.extras]


def _part_in(row: list):
    kind, text, signature, origin, extras = row
    if kind == "r":
        return ir.Reasoning(text, signature, origin, extras)
    return ir.RedactedReasoning(text, origin, extras)


def _with_extras(call: ir.ToolCall, extras: dict) -> ir.ToolCall:
    kept = extras.get(call.id)
    if not kept:
        return call
    merged = {**kept, **(call.extras or {})}
    return dataclasses.replace(call, extras=merged)


class StreamCapture:
    """The parts `ReasoningStore.keep` needs, gathered from a translated stream's IR
    events (reasoning text and signatures, tool calls with their extras); stops
    gathering past `max_chars`."""

    __slots__ = ("_blocks", "_order", "_chars", "max_chars", "overflow")

    def __init__(self, max_chars: int = MAX_ENTRY_CHARS):
        self._blocks: dict[int, list] = {}      # index -> [part, text pieces, signature pieces]
        self._order: list[int] = []
        self._chars = 0
        self.max_chars = max_chars
        self.overflow = False

    def feed(self, events: Iterable) -> None:
        if self.overflow:
            return
        for event in events:
            kind = type(event)
            if kind is ir.TextDelta or kind is ir.ToolArgsDelta:
                continue                      # most events: nothing to keep
            if kind is ir.BlockStart:
                if type(event.part) in _REASONING or type(event.part) is ir.ToolCall:
                    self._blocks[event.index] = [event.part, [], []]
                    self._order.append(event.index)
            elif kind is ir.ReasoningDelta or kind is ir.SignatureDelta:
                block = self._blocks.get(event.index)
                if block is None:
                    continue
                piece = event.text if kind is ir.ReasoningDelta else event.signature
                block[1 if kind is ir.ReasoningDelta else 2].append(piece)
                self._chars += len(piece)
                if self._chars > self.max_chars:
                    self.overflow = True
                    return

    def parts(self) -> list:
        out = []
        for index in self._order:
            part, text, signature = self._blocks[index]
            if type(part) is ir.Reasoning:
                out.append(ir.Reasoning(part.text + "".join(text), (part.signature or "") + "".join(signature) or None,
                                        part.origin, part.extras))
            else:
                out.append(part)
        return [] if self.overflow else out
