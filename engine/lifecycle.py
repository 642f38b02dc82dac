"""The request lifecycle: one explicit state machine per request.

The statechart is *declared* once with python-statemachine (`RequestChart`),
which gives validation and diagrams.  The hot path never instantiates it
(~200 µs per instance, ~100 µs per event, and its async engine is
asyncio-only): at import we compile the declaration into a plain
``{(state, event): state}`` table, h11-style, and each request carries a tiny
`Lifecycle` that applies it and records the path it took.  A property test
drives random event sequences through both and proves they agree.

The table drives the request (see `busbar.exchange`): the driver runs the
step its current state names, and every move goes through `Lifecycle.fire`,
which raises `LifecycleError` for a move the table does not allow (as h11's
`LocalProtocolError` does), so the driver never guesses where it is.
`busbar diagram` and `busbar explain` draw their edges from the same table.

Translation is not a state: it happens per attempt (each member may speak
another protocol), inside `dispatched`.  Before the first attempt the request
is `routed`: parsed, admitted and given a routing plan.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from statemachine import State, StateMachine


class RequestChart(StateMachine):
    """received → routed → dispatched → streaming → done, with failing-over
    looping back to dispatched (after a fault, or after a resumed stream's
    break) and `failed` as the other terminal."""

    received = State(initial=True)
    routed = State()
    dispatched = State()
    streaming = State()
    failing_over = State()
    done = State(final=True)
    failed = State(final=True)

    # the client's request is understood and admitted; a routing plan exists
    route = received.to(routed)
    # an attempt goes to a member (first, or again after a failover); the
    # request is translated (or passed through) for that member's protocol
    dispatch = routed.to(dispatched) | failing_over.to(dispatched)
    # the chosen upstream produced content: from here on the client sees bytes
    first_byte = dispatched.to(streaming)
    # the response cache holds this request's answer: it is replayed to the
    # client without any upstream attempt (busbar.cache)
    hit = routed.to(streaming)
    # the attempt failed in a way the pipeline retries elsewhere
    fault = dispatched.to(failing_over)
    # the response is complete
    complete = streaming.to(done)
    # the request ends with an error response in the client's protocol:
    # bad input, no route, a client-class upstream error, or every member spent
    rejected = (received.to(failed) | routed.to(failed)
                | dispatched.to(failed) | failing_over.to(failed))
    # the stream broke after content went out (an error event ends it)
    broken = streaming.to(failed)
    # the stream broke after content went out and the pipeline resumes it:
    # another member's continuation is spliced into the client's open stream
    resume = streaming.to(failing_over)
    # no first content yet after the hedge delay: another member races the
    # first inside the same request (the first content wins)
    hedge = dispatched.to.itself()
    # client went away or the deadline passed: the nursery is cancelled
    cancelled = (received.to(failed) | routed.to(failed) | dispatched.to(failed)
                 | failing_over.to(failed) | streaming.to(failed))


def compile_chart(chart: type[StateMachine]) -> tuple[dict[tuple[str, str], str], str, frozenset[str]]:
    """Flatten a declared statechart into (table, initial state, final states)."""
    table: dict[tuple[str, str], str] = {}
    initial = None
    finals = set()
    for state in chart.states:
        if state.initial:
            initial = state.id
        if state.final:
            finals.add(state.id)
        for transition in state.transitions:
            for event in transition.events:
                key = (state.id, str(event.id if hasattr(event, "id") else event))
                if key in table and table[key] != transition.target.id:
                    raise ValueError(f"non-deterministic transition {key}")
                table[key] = transition.target.id
    assert initial is not None
    return table, initial, frozenset(finals)


TRANSITIONS, INITIAL, FINAL = compile_chart(RequestChart)
STATES = tuple(s.id for s in RequestChart.states)
EVENTS = tuple(sorted({event for (_, event) in TRANSITIONS}))


# The event that ends a request in error from each state: `rejected` while
# the client has seen nothing, `broken` once it has.  Derived from the table.
_ENDINGS = ("rejected", "broken")
FAILURE_EVENT = {state: next(e for e in _ENDINGS if (state, e) in TRANSITIONS)
                 for state in STATES if state not in FINAL}


def allowed(state: str) -> tuple[str, ...]:
    """The events the table allows in `state` (empty for a final state)."""
    return tuple(event for event in EVENTS if (state, event) in TRANSITIONS)


class LifecycleError(RuntimeError):
    """A move the request's current state does not allow: a driver bug, never
    the client's or a vendor's fault (the gateway answers it as an internal
    error)."""

    def __init__(self, state: str, event: str):
        legal = ", ".join(allowed(state)) or "nothing (final state)"
        super().__init__(f"can't handle event {event!r} in state {state!r}; allowed there: {legal}")
        self.state = state
        self.event = event


class Step(NamedTuple):
    state: str
    at: float          # perf_counter seconds
    note: str          # why: member tried, fault class, ...


# a Step without NamedTuple's generated Python __new__ (half its cost; fire runs ~5 times a request)
_step = tuple.__new__


class Lifecycle:
    """A request's position in the compiled chart plus the path it took.

    `fire` costs one dict lookup and one append; `path` keeps (state, time,
    note) for debugging, the admin page and the diagram overlay.
    """

    __slots__ = ("state", "path")

    def __init__(self, now: float | None = None):
        self.state = INITIAL
        self.path: list[Step] = [_step(Step, (INITIAL, time.perf_counter() if now is None else now, ""))]

    def fire(self, event: str, note: str = "", now: float | None = None) -> str:
        try:
            target = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LifecycleError(self.state, event) from None
        self.state = target
        self.path.append(_step(Step, (target, time.perf_counter() if now is None else now, note)))
        return target

    def can(self, event: str) -> bool:
        return (self.state, event) in TRANSITIONS

    def fail(self, note: str = "") -> str:
        """End the request in error with the event its state calls for
        (`rejected` before the client saw anything, `broken` after)."""
        return self.fire(FAILURE_EVENT[self.state], note)

    @property
    def finished(self) -> bool:
        return self.state in FINAL

    def describe(self) -> list[dict]:
        """The path as JSON-ready dicts, with ms offsets from the start."""
        t0 = self.path[0].at
        return [{"state": s.state, "ms": round((s.at - t0) * 1000, 3), **({"note": s.note} if s.note else {})}
                for s in self.path]


def mermaid(highlight: list[str] | None = None, edge_labels: dict[str, str] | None = None) -> str:
    """The chart as a Mermaid state diagram; `highlight` marks visited states."""
    lines = ["stateDiagram-v2", f"    [*] --> {INITIAL}"]
    for (source, event), target in sorted(TRANSITIONS.items()):
        label = (edge_labels or {}).get(event, event)
        lines.append(f"    {source} --> {target}: {label}")
    for final in sorted(FINAL):
        lines.append(f"    {final} --> [*]")
    if highlight:
        lines.append("    classDef visited fill:#ffd54f,stroke:#e65100,stroke-width:2px")
        for state in dict.fromkeys(highlight):
            lines.append(f"    class {state} visited")
    return "\n".join(lines) + "\n"
