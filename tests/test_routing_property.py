"""Property: random pools and random fault sequences never break a plan's promises.

* never more member attempts than `max_attempts`, nor key rotations than
  `max_key_rotations` (so never more than their sum of upstream calls);
* a client-class fault penalises nobody and always ends the plan, un-retried;
* a context fault is only retried on a different member with a larger
  context (when the failed member's is known);
* a key rotation stays on the same member and changes the key;
* no benched key and no open breaker is ever used;
* every plan ends in exactly one terminal outcome (success, returned error,
  exhausted), after which `next` refuses; in-flight counts return to zero.
"""
import random

import pytest

from hypothesis import HealthCheck, given, settings, strategies as st

from busbar.faults import Fault, FaultClass
from busbar.routing import Action, Exhausted, Needs, PlanError, Router, Wait

pytestmark = pytest.mark.pure

STRATEGIES = ["weighted", "round_robin", "least_in_flight", "latency", "ordered"]

faults = st.one_of(
    st.none(),
    st.builds(Fault, st.sampled_from(list(FaultClass)), st.sampled_from([0, 400, 401, 429, 500, 503]),
              st.just("x"), st.one_of(st.none(), st.floats(0, 120))),
)


@st.composite
def members(draw, providers):
    out = []
    for _ in range(draw(st.integers(1, 4))):
        m = {"provider": draw(st.sampled_from(providers)), "model": draw(st.sampled_from(["m1", "m2", "m3"])),
             "weight": draw(st.sampled_from([1, 2, 5])), "priority": draw(st.integers(0, 2))}
        ctx = draw(st.sampled_from([None, 1000, 4000, 16000, 128000]))
        if ctx:
            m["context"] = ctx
        if draw(st.booleans()):
            m["capabilities"] = draw(st.lists(st.sampled_from(["tools", "json", "vision"]), unique=True))
        out.append(m)
    return out


@st.composite
def scenarios(draw):
    names = [f"v{i}" for i in range(draw(st.integers(1, 3)))]
    providers = {n: {"protocol": "openai", "base_url": f"http://{n}.test",
                     "keys": [f"sk-{n}-{j}" for j in range(draw(st.integers(1, 3)))],
                     "key_rotation": draw(st.sampled_from(["round_robin", "least_used"]))} for n in names}
    pools = {"main": {"members": draw(members(names)), "strategy": draw(st.sampled_from(STRATEGIES))}}
    if draw(st.booleans()):
        pools["sub"] = {"members": draw(members(names)), "strategy": draw(st.sampled_from(STRATEGIES))}
        pools["main"]["members"].append({"pool": "sub", "weight": draw(st.sampled_from([1, 3]))})
    exhausted = draw(st.sampled_from(["reject", "wait", "fallback"]))
    if exhausted == "wait":
        pools["main"]["on_exhausted"] = {"action": "wait", "max_wait": draw(st.integers(1, 60000)) / 1000}
    elif exhausted == "fallback":
        pools["spare"] = {"members": draw(members(names))}
        pools["main"]["on_exhausted"] = {"action": "fallback", "pool": "spare"}
    pipeline = {"retry": {"max_attempts": draw(st.integers(1, 4)), "max_key_rotations": draw(st.integers(0, 4))},
                "breaker": {"failures": draw(st.integers(1, 3)), "min_requests": 3}}
    config = {"providers": providers, "pools": pools, "pipelines": {"default": pipeline}}
    plans = draw(st.lists(st.tuples(
        st.builds(Needs, tokens=st.sampled_from([0, 500, 3000, 20000]), tools=st.booleans()),
        st.lists(st.tuples(faults, st.sampled_from([0.0, 0.5, 5.0, 40.0])), min_size=1, max_size=12),
    ), min_size=1, max_size=5))
    return config, plans, draw(st.integers(0, 2**32))


def key_state(key):
    return (key.disabled_until, key.cooling_until, key.streak, {m: tuple(e) for m, e in key.models.items()})


def breaker_state(b):
    return (b.state, b.consecutive, b.until, b.open_for, b._fail, b.closed_at)


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_plans_keep_their_promises(scenario):
    config, plans, seed = scenario
    router = Router.from_config(config, rng=random.Random(seed))
    pipeline = router.pipelines["default"]
    now = 0.0
    for needs, outcomes in plans:
        plan = router.start("main", needs, now)
        outcomes = iter(outcomes)
        terminal = []
        previous = None
        context_floor = None
        waits = 0
        while not terminal:
            step = plan.next(now)
            if isinstance(step, Wait):
                waits += 1
                assert step.seconds > 0 and waits < 100
                now += step.seconds
                continue
            if isinstance(step, Exhausted):
                terminal.append("exhausted")
                assert step.kind in ("unavailable", "incapable", "budget", "deadline")
                assert step.retry_after is None or step.retry_after > 0
                break
            attempt = step
            member, key, target = attempt.member, attempt.key, attempt.member.target
            # budget as defined: two separate counters
            assert plan.member_attempts <= pipeline.max_attempts
            assert plan.key_rotations <= pipeline.max_key_rotations
            assert attempt.number == plan.member_attempts + plan.key_rotations
            # never a benched key; never past an open breaker without being the probe
            assert key.available(member.model, now)
            assert target.breaker.state.value == "closed" or attempt.probe
            assert member.capable(needs.capabilities(), needs.tokens)
            if attempt.kind == "key_rotation":
                assert previous is not None and previous.member is member and previous.key is not key
            if context_floor is not None and attempt.kind == "member":
                assert member.context is None or member.context > context_floor
            fault, dt = next(outcomes, (None, 0.0))
            before = (key_state(key), breaker_state(target.breaker))
            decision = plan.report(attempt, fault, now)
            if fault is None:
                assert decision.action is Action.SUCCESS and not decision.retry
                terminal.append("success")
            elif fault.cls is FaultClass.CLIENT:
                assert decision.action is Action.RETURN and not decision.retry
                assert decision.penalty == "none" and decision.key_id is None
                assert (key_state(key), breaker_state(target.breaker)) == before
                terminal.append("returned")
            else:
                assert decision.retry
                if fault.cls is FaultClass.CONTEXT:
                    assert decision.penalty == "none"
                    assert (key_state(key), breaker_state(target.breaker)) == before
                    if member.context is not None:
                        context_floor = max(context_floor or 0, member.context)
            previous = attempt
            now += dt
        assert len(terminal) == 1
        assert plan.outcome == {"success": "success", "returned": "returned", "exhausted": "exhausted"}[terminal[0]]
        try:
            plan.next(now)
        except PlanError:
            pass
        else:
            raise AssertionError("next() after the end must raise")
        assert plan.member_attempts + plan.key_rotations <= pipeline.max_attempts + pipeline.max_key_rotations
        now += 1.0
    assert all(t.in_flight == 0 for t in router.targets.values())
    assert all(k.in_flight == 0 for p in router.providers.values() for k in p.keys.keys)
