"""Routing state that replicas share: the changes a router emits and applies.

Pure data.  A router with an `outbox` (busbar.cluster.RoutingSync.emit) hands
every change of shared routing state to it as one of these values; the sync
task publishes them and feeds other replicas' changes back through
`Router.apply`.  Times are this process's monotonic seconds (the sync converts
to wall-clock time on the wire).  Applying never emits, so nothing echoes.

Shared: breaker opens and closes per upstream target, key benches (cool-down
of the whole key or key+model, billing/auth disables), drains.  Local: latency
EWMAs, in-flight counts, failure counts of a closed breaker, quota counters
(busbar.routing.quota, shared through the state backend instead).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class BreakerChange:
    """A target's breaker opened (`until`: when a probe may go) or closed."""

    provider: str
    model: str
    state: str              # "open" | "closed"
    until: float = 0.0
    open_for: float = 0.0
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class KeyBench:
    """A key benched until `until`: cooled (whole key when `model` is None,
    else for that model) or disabled (billing, auth: `reason` is the fault's
    class, status and code, never the vendor's message)."""

    key_id: str
    kind: str               # "cool" | "disable"
    until: float
    model: str | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Drain:
    provider: str
    model: str
    drained: bool
    at: float = 0.0


@dataclass(frozen=True, slots=True)
class ProbeWanted:
    """A past-due breaker needs a grant before its half-open probe may go."""

    provider: str
    model: str


@dataclass(frozen=True, slots=True)
class ProbeOut:
    """This replica's probe left; its answer is expected within `lease` seconds."""

    provider: str
    model: str
    lease: float


@dataclass(frozen=True, slots=True)
class ProbeReleased:
    """This replica's probe was abandoned (client gone): another may probe."""

    provider: str
    model: str


Change = BreakerChange | KeyBench | Drain | ProbeWanted | ProbeOut | ProbeReleased
