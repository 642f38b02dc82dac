"""Dropping the beginning of a conversation until it fits, I/O-free (ADR 0028).

OpenAI Responses' `truncation: "auto"` asks that a request too long for the
model's context window lose items from the beginning of the conversation
instead of failing.  A Responses member does that itself (the field passes
through); for a member of any other protocol the gateway does it, here, on
the chat IR, before that member's render.

The conversation is cut only at the start of a user turn: before a user
message that carries no tool result.  So a cut never separates an assistant's
tool calls from the results answering them (vendors refuse an orphan tool
result), never separates reasoning from the message or call it belongs to
(they share one IR message), and what is left starts with a user message, as
Anthropic and Gemini require.  Never dropped: the instructions
(`Request.system`), mid-conversation system messages (kept in place), and the
last user turn with everything after it.

`fit(request, budget)` drops the fewest turns that bring the estimate
(`busbar.protocols.counting.estimate`, the embedded count; injectable) within
`budget` tokens, and at least `at_least` turns (a member that still said
"too long" gets less the next time).  Nothing here reads a clock or does I/O.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from busbar import ir
from busbar.protocols.counting import estimate


@dataclass(frozen=True, slots=True)
class Truncated:
    """What `fit` made of a request."""

    request: ir.Request     # the request to send (the same object when nothing was dropped)
    turns: int              # user turns dropped (the unit a cut removes)
    messages: int           # conversation messages dropped (system messages are never among them)
    tokens: int             # the estimate of `request`
    fits: bool              # tokens <= budget; False: nothing droppable was left


def _real_user(m: ir.Message) -> bool:
    return m.role == ir.USER and not any(type(p) is ir.ToolResult for p in m.content)


def cuts(messages: list[ir.Message]) -> list[int]:
    """The indexes a prefix may end at: each user turn's start after the
    first, up to the last user turn's (which is kept)."""
    starts = [i for i, m in enumerate(messages) if _real_user(m)]
    if not starts:
        return []
    last = starts[-1]
    return [i for i in starts if 0 < i <= last]


def droppable(req: ir.Request) -> int:
    """How many user turns `fit` may drop from `req` (0: none)."""
    return len(cuts(req.messages))


def floor(req: ir.Request, count: Callable[[ir.Request], int] = estimate) -> tuple[int, int]:
    """The user turns `fit` may drop from `req` and the count with all of them dropped."""
    points = cuts(req.messages)
    return len(points), count(_cut(req, points[-1]) if points else req)


def _cut(req: ir.Request, at: int) -> ir.Request:
    kept = [m for m in req.messages[:at] if m.role == ir.SYSTEM] + req.messages[at:]
    return dataclasses.replace(req, messages=kept)


def fit(req: ir.Request, budget: int, *, at_least: int = 0,
        count: Callable[[ir.Request], int] = estimate) -> Truncated:
    """`req` with the fewest earliest user turns dropped (at least `at_least`)
    that bring `count` within `budget`; with every droppable turn dropped
    (`fits` False) when even that is too long."""
    tokens = count(req)
    if at_least <= 0 and tokens <= budget:
        return Truncated(req, 0, 0, tokens, True)
    points = cuts(req.messages)
    if not points:
        return Truncated(req, 0, 0, tokens, tokens <= budget)
    # dropping more never counts more: bisect for the first cut that fits
    lo, hi = max(0, at_least - 1), len(points) - 1
    lo = min(lo, hi)
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        candidate = _cut(req, points[mid])
        n = count(candidate)
        if n <= budget:
            best, hi = (mid, candidate, n), mid - 1
        else:
            lo = mid + 1
    if best is None:
        mid = len(points) - 1
        candidate = _cut(req, points[mid])
        best = (mid, candidate, count(candidate))
    mid, candidate, n = best
    at = points[mid]
    dropped = sum(1 for m in req.messages[:at] if m.role != ir.SYSTEM)
    return Truncated(candidate, mid + 1, dropped, n, n <= budget)
