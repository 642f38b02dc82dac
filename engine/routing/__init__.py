"""Routing: pool -> member -> key, with breakers, cool-downs and weights.

Pure and I/O-free: time is passed in (`now`, monotonic seconds) and
randomness comes from an injectable `random.Random`.  The gateway driver uses
the façade in `router.py`:

    router = Router.from_config(config)
    plan = router.start(model, Needs(tokens=..., tools=...), now)
    step = plan.next(now)                       # Attempt | Wait | Exhausted
    decision = plan.report(step, fault, now, ttfb=...)   # Consequence

Modules: `pools` (tables, strategies, nesting), `breaker` (per-target circuit
breaker), `keys` (per-account state and rotation), `policy` (fault class ->
consequence from the pipeline's rules), `router` (the façade and `Plan`).
"""
from busbar.routing.breaker import Breaker, BreakerState
from busbar.routing.keys import Key, KeyRing, fingerprint
from busbar.routing.policy import Action, Consequence
from busbar.routing.pools import RouteConfigError
from busbar.routing.router import Attempt, Exhausted, Needs, Pinned, Plan, PlanError, Router, Shrink, Wait

__all__ = [
    "Action", "Attempt", "Breaker", "BreakerState", "Consequence", "Exhausted", "Key", "KeyRing",
    "Needs", "Pinned", "Plan", "PlanError", "RouteConfigError", "Router", "Shrink", "Wait", "fingerprint",
]
