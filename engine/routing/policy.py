"""Fault class -> consequence, as declared by the pipeline's `rules`.

`penalize` applies a rule's penalty to the state it names (the key, the key
for one model, or the target's breaker) and says how long the bench lasts;
the plan (router.py) then turns the rule's action into the next step.
Nothing here chooses members or keeps request state.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from busbar.faults import Fault
from busbar.pipeline import BreakerParams, Rule
from busbar.routing.breaker import Breaker
from busbar.routing.keys import Key


class Action(str, enum.Enum):
    """What the gateway does after `Plan.report`."""

    SUCCESS = "success"                              # done: the answer goes out
    RETURN = "return"                                # done: the fault goes to the client
    ROTATE_KEY = "retry_same_member_other_key"       # call next(): same member, other key
    FAILOVER = "failover"                            # call next(): another member
    LARGER_CONTEXT = "retry_larger_context"          # call next(): a member with a larger context
    TRUNCATE = "retry_truncated"                     # call next(): the same member, earliest turns dropped
    LATE = "late"                                    # the plan had already ended; nothing to do


RETRYING = frozenset({Action.ROTATE_KEY, Action.FAILOVER, Action.LARGER_CONTEXT, Action.TRUNCATE})


@dataclass(frozen=True, slots=True)
class Consequence:
    """The decision `Plan.report` returns.

    `retry` True: call `plan.next(now)` again (it may still answer Exhausted
    when the budget, the deadline or the members run out).  False: the plan
    is over; on RETURN render `fault` to the client.
    `alert` is a line for the operator log when the rule asks for one (key id,
    never the key, never the vendor's message, which may echo part of it).
    """

    action: Action
    fault: Fault | None = None
    penalty: str = "none"          # the penalty applied: none|cool_key|disable_key|breaker
    key_id: str | None = None      # the key benched, when one was
    until: float | None = None     # end of that bench, or of the breaker's open period
    breaker: str | None = None     # the target's breaker state afterwards
    alert: str | None = None

    @property
    def retry(self) -> bool:
        return self.action in RETRYING


def fault_label(fault: Fault) -> str:
    """Class, status and vendor code: safe to log and show."""
    parts = [fault.cls.value]
    if fault.status:
        parts.append(str(fault.status))
    if fault.code:
        parts.append(str(fault.code)[:64])
    return " ".join(parts)


def cooldown(rule: Rule, fault: Fault, streak: int) -> float:
    """Seconds a key is cooled: the vendor's Retry-After when honoured (capped),
    else the backoff for the `streak`-th consecutive fault."""
    if rule.honor_retry_after and fault.retry_after is not None and fault.retry_after > 0:
        return min(fault.retry_after, rule.max_retry_after)
    return rule.backoff.delay(streak)


def penalize(rule: Rule, fault: Fault, *, key: Key, model: str, breaker: Breaker,
             params: BreakerParams, probe: bool, now: float) -> tuple[str, float | None]:
    """Apply `rule.penalty` for `fault`; returns (penalty, until)."""
    if rule.penalty == "breaker":
        breaker.failure(now, params, probe)
        return "breaker", (breaker.until if breaker.state.value == "open" else None)
    breaker.release(probe)
    if rule.penalty == "cool_key":
        scope = model if rule.scope == "key_model" else None
        if fault.quota_window == "day":
            # a per-day quota is spent: no use trying before it resets
            return "cool_key", key.cool(scope, key.quota.until_reset(now), now)
        seconds = cooldown(rule, fault, key.next_streak(scope))
        return "cool_key", key.cool(scope, seconds, now)
    if fault.quota_window == "day" and rule.penalty == "disable_key":
        return "disable_key", key.disable(key.quota.until_reset(now), fault_label(fault), now)
    if rule.penalty == "disable_key":
        return "disable_key", key.disable(rule.duration, fault_label(fault), now)
    return "none", None


def alert_line(rule: Rule, fault: Fault, key: Key, provider: str, model: str,
               penalty: str, until: float | None, now: float) -> str | None:
    if not rule.alert:
        return None
    what = {"disable_key": "disabled", "cool_key": "cooling", "breaker": "breaker failure",
            "none": "no penalty"}[penalty]
    span = f" for {until - now:.0f}s" if until is not None else ""
    return f"{fault_label(fault)} fault on key {key.id} ({provider}/{model}): {what}{span}"
