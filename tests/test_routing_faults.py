"""Each fault class's consequence, key rotation, breaker, exhaustion."""
import random

import pytest

from busbar.faults import Fault, FaultClass
from busbar.routing import (Action, Attempt, BreakerState, Exhausted, Needs, PlanError, Router, Wait,
                            fingerprint)

pytestmark = pytest.mark.pure

CLIENT = Fault(FaultClass.CLIENT, 400, "messages: field required")
CONTEXT = Fault(FaultClass.CONTEXT, 400, "maximum context length is 8192 tokens", code="context_length_exceeded")
SERVER = Fault(FaultClass.SERVER, 500, "internal error")
BILLING = Fault(FaultClass.BILLING, 429, "You exceeded your current quota", code="insufficient_quota")
AUTH = Fault(FaultClass.AUTH, 401, "Incorrect API key provided: sk-a-0***", code="invalid_api_key")


def rate(retry_after=None):
    return Fault(FaultClass.RATE, 429, "slow down", retry_after=retry_after)


def build(pools, keys=None, seed=3, pipelines=None, rotation=None):
    keys = keys or {}
    provs = {}
    for name in ("a", "b", "c"):
        n = keys.get(name, 1)
        provs[name] = {"protocol": "openai", "base_url": f"http://{name}.test",
                       "keys": [f"sk-{name}-{i}-secret" for i in range(n)]}
        if rotation:
            provs[name]["key_rotation"] = rotation
    config = {"providers": provs, "pools": pools, "server": {"direct_routes": True}}
    if pipelines:
        config["pipelines"] = pipelines
    return Router.from_config(config, rng=random.Random(seed))


def single(keys=1, **pool):
    return build({"p": {"members": [{"provider": "a", "model": "m"}], **pool}}, keys={"a": keys})


def serve(r, now, model="p", needs=Needs()):
    plan = r.start(model, needs, now)
    step = plan.next(now)
    if isinstance(step, Attempt):
        plan.report(step, None, now, ttfb=0.1)
    return step


def fail(r, fault, now, model="p"):
    plan = r.start(model, Needs(), now)
    step = plan.next(now)
    assert isinstance(step, Attempt), step
    return plan, step, plan.report(step, fault, now)


def key_states(r, now):
    return {k["id"]: k for p in r.snapshot(now)["providers"].values() for k in p["keys"]}


# ---- client ---------------------------------------------------------------
def test_client_flood_never_penalises():
    r = build({"p": {"members": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]}})
    before = r.snapshot(0)
    for i in range(500):
        plan, step, decision = fail(r, CLIENT, i * 0.01)
        assert decision.action is Action.RETURN and not decision.retry and decision.penalty == "none"
        assert plan.done and plan.outcome == "returned"
        with pytest.raises(PlanError):
            plan.next(i * 0.01)
    after = r.snapshot(5)
    for pool in after["pools"].values():
        for m in pool["members"]:
            assert m["breaker"]["state"] == "closed" and m["breaker"]["consecutive_failures"] == 0
            assert m["breaker"]["window_failure_rate"] == 0
            assert m["in_flight"] == 0
    assert all(k["state"] == "active" and "models_cooling" not in k for k in key_states(r, 5).values())
    assert [m["effective_weight"] for m in after["pools"]["p"]["members"]] == \
        [m["effective_weight"] for m in before["pools"]["p"]["members"]]


# ---- context --------------------------------------------------------------
def test_context_retries_on_a_larger_member_without_penalty():
    r = build({"p": {"strategy": "ordered", "members": [
        {"provider": "a", "model": "small", "context": 8192, "priority": 0},
        {"provider": "b", "model": "same", "context": 8192, "priority": 1},
        {"provider": "c", "model": "tiny", "context": 4096, "priority": 1},
        {"provider": "b", "model": "big", "context": 128000, "priority": 2},
        {"provider": "c", "model": "huge", "context": 1000000, "priority": 3}]}},
        pipelines={"default": {"retry": {"max_attempts": 5}}})
    plan = r.start("p", Needs(tokens=3000), 0)
    first = plan.next(0)
    assert first.model == "small"
    decision = plan.report(first, CONTEXT, 0)
    assert decision.action is Action.LARGER_CONTEXT and decision.retry and decision.penalty == "none"
    second = plan.next(0)
    assert second.model == "big"          # same (8192) and tiny (4096) were skipped
    assert plan.report(second, CONTEXT, 0).retry
    third = plan.next(0)
    assert third.model == "huge"
    plan.report(third, CONTEXT, 0)
    end = plan.next(0)
    assert isinstance(end, Exhausted) and end.kind == "incapable" and end.last_fault is CONTEXT
    snap = r.snapshot(0)
    assert all(m["breaker"]["consecutive_failures"] == 0 for m in snap["pools"]["p"]["members"])
    assert all(k["state"] == "active" for k in key_states(r, 0).values())
    # the next request starts from the small member again: nothing was benched
    assert serve(r, 1, needs=Needs(tokens=3000)).model == "small"


# ---- billing / auth ---------------------------------------------------------
def test_billing_on_one_key_leaves_the_other_keys_serving():
    r = single(keys=3)
    plan, first, decision = fail(r, BILLING, 0)
    assert decision.action is Action.ROTATE_KEY and decision.retry
    assert decision.penalty == "disable_key" and decision.key_id == first.key_id and decision.until == 3600
    assert decision.alert and first.key_id in decision.alert and "secret" not in decision.alert
    second = plan.next(0)
    assert second.member_id == first.member_id and second.key_id != first.key_id
    assert second.kind == "key_rotation" and second.number == 2
    assert plan.report(second, None, 0).action is Action.SUCCESS
    used = {serve(r, t).key_id for t in range(1, 40)}
    assert first.key_id not in used and len(used) == 2
    state = key_states(r, 10)[first.key_id]
    assert state["state"] == "disabled" and state["reason"] == "billing 429 insufficient_quota"
    assert first.key_id in {serve(r, 3600 + t).key_id for t in range(3)}   # back after an hour


def test_auth_disables_the_key_for_a_day_and_alerts_without_the_secret():
    r = single(keys=2)
    plan, first, decision = fail(r, AUTH, 0)
    assert decision.action is Action.ROTATE_KEY and decision.until == 86400
    assert decision.alert.startswith("auth 401 invalid_api_key fault on key a#")
    assert "sk-" not in decision.alert          # not even the vendor's masked echo of it
    assert key_states(r, 86399)[first.key_id]["state"] == "disabled"
    assert key_states(r, 86400)[first.key_id]["state"] == "active"


def test_a_lone_key_benched_fails_over_to_another_member():
    r = build({"p": {"strategy": "ordered", "members": [
        {"provider": "a", "model": "m", "priority": 0}, {"provider": "b", "model": "m", "priority": 1}]}})
    plan, first, decision = fail(r, AUTH, 0)
    assert first.provider == "a" and decision.action is Action.FAILOVER
    assert plan.next(0).provider == "b"


# ---- rate ---------------------------------------------------------------------
def test_rate_honours_retry_after_and_recooling_never_shortens():
    r = single(keys=1)
    _, a1, d1 = fail(r, rate(retry_after=17), 0)
    assert d1.penalty == "cool_key" and d1.until == 17 and d1.action is Action.FAILOVER
    step = serve(r, 5)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(12)
    # a stray shorter Retry-After (another request in flight) must not shorten it
    key = r.providers["a"].keys.keys[0]
    assert key.cool("m", 2, 6) == 17
    assert isinstance(serve(r, 16.9), Exhausted)
    assert isinstance(serve(r, 17), Attempt)
    # longer extends
    assert key.cool("m", 30, 20) == 50 and key.cool("m", 1, 21) == 50


def test_rate_backoff_grows_and_resets_on_success():
    r = single(keys=1)
    untils = []
    now = 0.0
    for _ in range(5):
        _, _, d = fail(r, rate(), now)
        untils.append(d.until - now)
        now = d.until
    assert untils == [1, 2, 4, 8, 16]
    assert isinstance(serve(r, now), Attempt)            # success resets the streak
    _, _, d = fail(r, rate(), now)
    assert d.until - now == 1


def test_rate_backoff_is_capped_and_retry_after_capped():
    r = build({"p": {"members": [{"provider": "a", "model": "m"}]}},
              pipelines={"default": {"rules": {"rate": {"cool_key": {"backoff": {"max": 5}, "max_retry_after": 60}}}}})
    now = 0.0
    spans = []
    for _ in range(6):
        _, _, d = fail(r, rate(), now)
        spans.append(d.until - now)
        now = d.until
    assert spans == [1, 2, 4, 5, 5, 5]
    _, _, d = fail(r, rate(retry_after=10_000), now)
    assert d.until - now == 60


def test_rate_cools_key_for_that_model_only():
    r = build({"p": {"members": [{"provider": "a", "model": "m1"}]},
               "q": {"members": [{"provider": "a", "model": "m2"}]}})
    fail(r, rate(retry_after=100), 0)
    assert isinstance(serve(r, 1, "p"), Exhausted)
    assert isinstance(serve(r, 1, "q"), Attempt)


def test_rate_scope_key_cools_every_model():
    r = build({"p": {"members": [{"provider": "a", "model": "m1"}]},
               "q": {"members": [{"provider": "a", "model": "m2"}]}},
              pipelines={"default": {"rules": {"rate": {"cool_key": {"scope": "key"}}}}})
    fail(r, rate(retry_after=100), 0)
    assert isinstance(serve(r, 1, "q"), Exhausted)
    assert key_states(r, 1)["a#0:" + fingerprint("sk-a-0-secret")]["state"] == "cooling"


def test_all_keys_cooling_is_exhausted_with_the_earliest_recovery():
    r = single(keys=3)
    plan = r.start("p", Needs(), 0)
    waits = iter([30, 10, 50])
    while True:
        step = plan.next(1)
        if not isinstance(step, Attempt):
            break
        plan.report(step, rate(retry_after=next(waits)), 1)
    assert isinstance(step, Exhausted)
    assert step.kind == "unavailable" and step.retry_after == pytest.approx(10)
    assert step.last_fault.cls is FaultClass.RATE and "10.0s" in step.reason
    assert plan.key_rotations == 2 and plan.member_attempts == 1
    later = serve(r, 5)
    assert isinstance(later, Exhausted) and later.retry_after == pytest.approx(6) and later.last_fault is None


# ---- key rotation -------------------------------------------------------------
def test_key_rotation_is_not_capped_by_member_attempts():
    r = build({"p": {"members": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]}},
              keys={"a": 5, "b": 5}, pipelines={"default": {"retry": {"max_attempts": 1, "max_key_rotations": 3}}})
    plan = r.start("p", Needs(), 0)
    kinds, members = [], set()
    while True:
        step = plan.next(0)
        if not isinstance(step, Attempt):
            break
        kinds.append(step.kind)
        members.add(step.member_id)
        decision = plan.report(step, rate(), 0)
    assert kinds == ["member", "key_rotation", "key_rotation", "key_rotation"]
    assert len(members) == 1 and decision.action is Action.FAILOVER
    assert isinstance(step, Exhausted) and step.kind == "budget"


def test_key_rotation_budget_spent_moves_to_the_next_member():
    r = build({"p": {"strategy": "ordered", "members": [
        {"provider": "a", "model": "m", "priority": 0}, {"provider": "b", "model": "m", "priority": 1}]}},
        keys={"a": 5}, pipelines={"default": {"retry": {"max_attempts": 2, "max_key_rotations": 1}}})
    plan = r.start("p", Needs(), 0)
    seen = []
    for _ in range(3):
        step = plan.next(0)
        seen.append((step.provider, step.kind))
        plan.report(step, rate(), 0)
    assert seen == [("a", "member"), ("a", "key_rotation"), ("b", "member")]
    assert isinstance(plan.next(0), Exhausted)


def test_least_used_rotation_prefers_idle_keys():
    r = single(keys=3, strategy="weighted")
    r2 = build({"p": {"members": [{"provider": "a", "model": "m"}]}}, keys={"a": 3}, rotation="least_used")
    held = []
    for _ in range(6):
        plan = r2.start("p", Needs(), 0)
        held.append((plan, plan.next(0)))
    used = [a.key.index for _, a in held]
    assert sorted(used) == [0, 0, 1, 1, 2, 2]
    for plan, a in held:
        if a.key.index != 1:
            plan.report(a, None, 1)
    assert serve(r2, 2).key.index != 1          # key 1 still has two in flight
    assert [serve(r, t).key.index for t in range(6)] == [0, 1, 2, 0, 1, 2]   # round robin


# ---- server / breaker ------------------------------------------------------------
def test_breaker_opens_after_n_then_one_probe_then_closes_and_ramps():
    r = build({"p": {"members": [{"provider": "a", "model": "m", "id": "A"},
                                 {"provider": "b", "model": "m", "id": "B"}]}})
    target = r.targets[("a", "m")]
    for i in range(5):
        plan = r.start("a/m", Needs(), i)
        d = plan.report(plan.next(i), SERVER, i)
        assert d.penalty == "breaker" and d.action is Action.FAILOVER
    assert target.breaker.state is BreakerState.OPEN and d.until == 4 + 30
    assert {serve(r, 10).member_id for _ in range(50)} == {"B"}
    # half-open: exactly one probe at a time
    probe_plan = r.start("a/m", Needs(), 34)
    probe = probe_plan.next(34)
    assert isinstance(probe, Attempt) and probe.probe
    assert isinstance(serve(r, 34.5, "a/m"), Exhausted)
    assert {serve(r, 35).member_id for _ in range(30)} == {"B"}
    probe_plan.report(probe, None, 36)
    assert target.breaker.state is BreakerState.CLOSED
    # ramp: the recovered member's weight comes back gradually
    weights = {}
    for t in (36, 51, 66, 96, 200):
        m = next(m for m in r.snapshot(t)["pools"]["p"]["members"] if m["id"] == "A")
        weights[t] = m["effective_weight"]
    assert weights[36] == pytest.approx(0.1)
    assert weights[36] < weights[51] < weights[66] < weights[96] == weights[200] == 1.0


def test_failed_probe_reopens_with_a_longer_period():
    r = single()
    b = r.targets[("a", "m")].breaker
    for i in range(5):
        fail(r, SERVER, 0)
    assert b.until == 30
    _, probe, d = fail(r, SERVER, 30)
    assert probe.probe and b.state is BreakerState.OPEN and b.until == 90 and d.until == 90
    _, probe, _ = fail(r, SERVER, 90)
    assert b.until == 210
    _, probe, _ = fail(r, SERVER, 210)
    assert b.until == 210 + 240
    for t in (450, 1000):
        _, _, _ = fail(r, SERVER, t)
    assert b.open_for == 300                 # capped at open_for_max


def test_probe_ending_in_a_neutral_fault_releases_the_probe():
    r = single()
    for _ in range(5):
        fail(r, SERVER, 0)
    _, probe, d = fail(r, CLIENT, 30)
    assert probe.probe and d.action is Action.RETURN
    assert r.targets[("a", "m")].breaker.state is BreakerState.HALF_OPEN
    _, probe2, _ = fail(r, rate(retry_after=1), 31)
    assert probe2.probe
    assert isinstance(serve(r, 33), Attempt)
    assert r.targets[("a", "m")].breaker.state is BreakerState.CLOSED


def test_lost_probe_stops_blocking_after_the_lease():
    r = single()
    for _ in range(5):
        fail(r, SERVER, 0)
    plan = r.start("p", Needs(), 30)
    assert plan.next(30).probe                # never reported
    assert isinstance(serve(r, 100), Exhausted)
    assert isinstance(serve(r, 30 + 600), Attempt)    # lease = pipeline deadline


def test_breaker_opens_on_failure_rate_without_a_streak():
    r = single()
    b = r.targets[("a", "m")].breaker
    now = 0.0
    for i in range(20):
        if i % 2:
            fail(r, SERVER, now)
        else:
            serve(r, now)
        now += 0.1
        if b.state is BreakerState.OPEN:
            break
    assert b.state is BreakerState.OPEN and i < 20


def test_server_fault_fails_over_and_does_not_revisit_the_member():
    r = build({"p": {"strategy": "round_robin", "members": [
        {"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}, {"provider": "c", "model": "m"}]}})
    plan = r.start("p", Needs(), 0)
    providers = []
    while True:
        step = plan.next(0)
        if not isinstance(step, Attempt):
            break
        providers.append(step.provider)
        assert plan.report(step, SERVER, 0).action is Action.FAILOVER
    assert providers == ["a", "b", "c"]
    assert isinstance(step, Exhausted) and step.kind == "budget" and step.last_fault is SERVER
    assert step.retry_after is None


# ---- on_exhausted ------------------------------------------------------------------
def test_wait_until_recovery_within_max_wait():
    r = single(keys=1, on_exhausted={"action": "wait", "max_wait": 20})
    fail(r, rate(retry_after=10), 0)
    plan = r.start("p", Needs(), 2)
    step = plan.next(2)
    assert isinstance(step, Wait) and step.seconds == pytest.approx(8)
    assert isinstance(plan.next(10), Attempt)


def test_wait_beyond_max_wait_rejects():
    r = single(keys=1, on_exhausted={"action": "wait", "max_wait": 5})
    fail(r, rate(retry_after=30), 0)
    step = r.start("p", Needs(), 1).next(1)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(29)


def test_deprecated_max_ms_is_read_as_seconds_with_a_warning():
    from busbar.deprecations import ConfigDeprecationWarning
    with pytest.warns(ConfigDeprecationWarning, match=r"on_exhausted.max_ms.*max_wait: 20"):
        r = single(keys=1, on_exhausted={"action": "wait", "max_ms": 20000})
    assert r.pools["p"].on_exhausted.max_wait == 20


def test_wait_total_is_bounded_by_max_wait():
    r = single(keys=1, on_exhausted={"action": "wait", "max_wait": 10})
    fail(r, rate(retry_after=6), 0)
    plan = r.start("p", Needs(), 0)
    assert isinstance(plan.next(0), Wait)
    step = plan.next(6)
    plan.report(step, rate(retry_after=6), 6)     # cooled again until 12 > 0 + 10
    assert isinstance(plan.next(6), Exhausted)


def test_fallback_pool_takes_over():
    r = build({"p": {"members": [{"provider": "a", "model": "m"}],
                     "on_exhausted": {"action": "fallback", "pool": "q"}},
               "q": {"members": [{"provider": "b", "model": "m"}],
                     "on_exhausted": {"action": "fallback", "pool": "z"}},
               "z": {"members": [{"provider": "c", "model": "m"}]}})
    plan, first, d = fail(r, BILLING, 0)
    assert first.provider == "a" and d.action is Action.FAILOVER
    second = plan.next(0)
    assert second.provider == "b" and second.member_id == "q/b/m"
    plan.report(second, SERVER, 0)
    third = plan.next(0)
    assert third.provider == "c"
    plan.report(third, None, 0)
    assert serve(r, 1).provider == "b"          # a's key is disabled: straight to the fallback


# ---- plan mechanics ------------------------------------------------------------------
def test_in_flight_counts_and_release():
    r = single(keys=2)
    t = r.targets[("a", "m")]
    plans = [r.start("p", Needs(), 0) for _ in range(3)]
    attempts = [p.next(0) for p in plans]
    assert t.in_flight == 3
    plans[0].report(attempts[0], None, 1)
    plans[1].release(attempts[1], 1)
    assert t.in_flight == 1
    assert sum(k.in_flight for k in r.providers["a"].keys.keys) == 1
    with pytest.raises(PlanError):
        plans[1].report(attempts[1], None, 1)     # already released
    with pytest.raises(PlanError):
        plans[0].report(attempts[2], None, 1)     # not this plan's


def test_deadline_ends_the_plan():
    r = build({"p": {"members": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]}},
              pipelines={"default": {"deadline": 5}})
    plan = r.start("p", Needs(), 0)
    plan.report(plan.next(0), SERVER, 5)
    step = plan.next(5)
    assert isinstance(step, Exhausted) and step.kind == "deadline" and step.last_fault is SERVER


def test_rules_from_pipeline_data_change_consequences():
    r = build({"p": {"pipeline": "strict", "members": [{"provider": "a", "model": "m"}]}}, keys={"a": 2},
              pipelines={"strict": {"rules": {"rate": {"action": "return", "penalty": "none"},
                                              "server": {"action": "return"}}}})
    _, _, d = fail(r, rate(retry_after=99), 0)
    assert d.action is Action.RETURN and not d.retry and d.penalty == "none"
    assert all(k["state"] == "active" and "models_cooling" not in k for k in key_states(r, 1).values())
    _, _, d = fail(r, SERVER, 1)
    assert d.action is Action.RETURN and d.penalty == "breaker"
    assert r.targets[("a", "m")].breaker.consecutive == 1


def test_secrets_never_show():
    r = single(keys=2)
    plan, a, d = fail(r, AUTH, 0)
    b = plan.next(0)
    texts = [repr(a), str(b), repr(plan), repr(r.providers), repr(r.snapshot(0)), repr(d), r.explain("p"),
             repr(a.key), str(r.providers["a"].keys)]
    for text in texts:
        assert "secret" not in text, text
    assert a.key_secret == "sk-a-0-secret"
    assert a.key_id == "a#0:" + fingerprint("sk-a-0-secret")
    assert len(fingerprint("x")) == 8
