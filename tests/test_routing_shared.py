"""Shared routing state, pure: what a router emits, what applying another replica's
changes does, and the probe grant (one half-open probe cluster-wide).  Two routers
built from one config stand for two replicas; the list between them for the sync."""
import pytest

from busbar.routing import Attempt, BreakerState, Exhausted, Needs
from busbar.routing.breaker import GRANT_HINT
from busbar.routing.shared import BreakerChange, Drain, KeyBench, ProbeOut, ProbeReleased, ProbeWanted
from test_routing_faults import BILLING, CLIENT, SERVER, build, rate

pytestmark = pytest.mark.pure

POOLS = {"p": {"members": [{"provider": "a", "model": "m", "id": "A"}, {"provider": "b", "model": "m", "id": "B", "priority": 1}],
               "strategy": "ordered"}}


def pair(**kw):
    outs = ([], [])
    routers = []
    for out in outs:
        r = build(kw.get("pools", POOLS), keys=kw.get("keys", {"a": 2}))
        r.coordinate(out.append)
        routers.append(r)
    return routers, outs


def deliver(out, to, now):
    """What the sync does with one replica's changes: the state ones reach the other."""
    for change in out:
        if isinstance(change, (BreakerChange, KeyBench, Drain)):
            assert to.apply(change, now)
    out.clear()


def attempt(r, now, model="p"):
    plan = r.start(model, Needs(), now)
    return plan, plan.next(now)


def test_a_key_disabled_for_billing_on_one_replica_is_skipped_by_the_other():
    (a, b), (out_a, _) = pair()
    plan, step = attempt(a, 0)
    assert step.key_id.startswith("a#0")
    plan.report(step, BILLING, 0)
    bench = [c for c in out_a if isinstance(c, KeyBench)]
    assert bench == [KeyBench(step.key_id, "disable", bench[0].until, reason="billing 429 insufficient_quota")]
    deliver(out_a, b, 1)
    keys = {k.id: k for k in b.providers["a"].keys.keys}
    assert keys[step.key_id].disabled_until == bench[0].until
    assert {attempt(b, 2 + i)[1].key_id for i in range(10)} == {k for k in keys if k != step.key_id}


def test_cool_downs_per_key_and_model_travel_and_never_shorten():
    pipelines = {"default": {"rules": {"rate": {"cool_key": {"scope": "key_model"}}}}}
    r1 = build(POOLS, keys={"a": 1}, pipelines=pipelines)
    r2 = build(POOLS, keys={"a": 1}, pipelines=pipelines)
    out = []
    r1.coordinate(out.append)
    r2.coordinate(lambda c: None)
    plan, step = attempt(r1, 0)
    plan.report(step, rate(retry_after=20), 0)
    (bench,) = [c for c in out if isinstance(c, KeyBench)]
    assert (bench.kind, bench.model, bench.until) == ("cool", "m", 20)
    key = r2.providers["a"].keys.keys[0]
    key.models["m"] = [50.0, 1]
    r2.apply(bench, 1)
    assert key.models["m"][0] == 50.0        # a later local deadline stays
    r2.apply(KeyBench(key.id, "cool", 9.0), 1)
    assert key.cooling_until == 9.0 and not key.available("m", 5)


def test_a_breaker_opened_on_one_replica_is_open_on_the_other_and_closes_with_it():
    (a, b), (out_a, out_b) = pair()
    for i in range(5):
        plan, step = attempt(a, i, "a/m")
        plan.report(step, SERVER, i)
    (opened,) = [c for c in out_a if isinstance(c, BreakerChange)]
    assert (opened.state, opened.until, opened.open_for) == ("open", 34, 30)
    deliver(out_a, b, 5)
    assert b.targets[("a", "m")].breaker.state is BreakerState.OPEN
    assert {attempt(b, 6 + i)[1].member_id for i in range(5)} == {"B"}
    # past due: neither replica probes without a grant; both ask for one
    assert attempt(a, 40)[1].member_id == "B" and attempt(b, 40)[1].member_id == "B"
    assert ProbeWanted("a", "m") in out_a and ProbeWanted("a", "m") in out_b
    out_a.clear(), out_b.clear()
    b.grant_probe("a", "m", 42)              # b won the lease
    plan, probe = attempt(b, 40.5)
    assert probe.member_id == "A" and probe.probe and out_b == [ProbeOut("a", "m", 70)]
    assert attempt(b, 40.6)[1].member_id == "B"        # a grant is good for one probe
    assert attempt(a, 40.7)[1].member_id == "B"
    plan.report(probe, None, 41)
    assert out_b[-1] == BreakerChange("a", "m", "closed", at=41)
    deliver(out_b, a, 41.1)
    assert a.targets[("a", "m")].breaker.state is BreakerState.CLOSED
    assert attempt(a, 41.2)[1].member_id == "A"


def test_a_failed_probe_reopens_everywhere_and_a_released_one_gives_the_grant_back():
    (a, b), (out_a, _) = pair(pools={"p": {"members": [{"provider": "a", "model": "m"}]}})
    for i in range(5):
        plan, step = attempt(a, 0)
        plan.report(step, SERVER, 0)
    deliver(out_a, b, 0)
    a.grant_probe("a", "m", 32)
    plan, probe = attempt(a, 30)
    plan.report(probe, CLIENT, 30)                     # says nothing about health
    assert ProbeReleased("a", "m") in out_a
    assert isinstance(attempt(a, 30.5)[1], Exhausted)  # the grant was used: ask again
    a.grant_probe("a", "m", 33)
    plan, probe = attempt(a, 31)
    plan.report(probe, SERVER, 31)
    reopened = [c for c in out_a if isinstance(c, BreakerChange)][-1]
    assert (reopened.state, reopened.until) == ("open", 91)
    deliver(out_a, b, 31)
    assert b.targets[("a", "m")].breaker.until == 91


def test_a_past_due_breaker_without_a_grant_hints_a_short_retry():
    (a, _), _ = pair(pools={"p": {"members": [{"provider": "a", "model": "m"}]}})
    for _ in range(5):
        plan, step = attempt(a, 0)
        plan.report(step, SERVER, 0)
    step = attempt(a, 30)[1]
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(GRANT_HINT)


def test_drains_travel_and_an_uncoordinated_router_is_unchanged():
    (a, b), (out_a, _) = pair()
    assert a.set_drained("A", True) == ["A"]
    assert out_a == [Drain("a", "m", True)]
    deliver(out_a, b, 0)
    assert {attempt(b, i)[1].member_id for i in range(5)} == {"B"}
    a.set_drained("A", False)
    deliver(out_a, b, 0)
    assert attempt(b, 9)[1].member_id == "A"
    alone = build(POOLS)
    for i in range(5):
        plan, step = attempt(alone, i, "a/m")
        plan.report(step, SERVER, i)
    step = attempt(alone, 34, "a/m")[1]
    assert isinstance(step, Attempt) and step.probe         # no grant needed in one process
    assert alone.outbox is None


def test_changes_for_unknown_targets_and_keys_are_ignored():
    (a, _), _ = pair()
    assert not a.apply(BreakerChange("zz", "m", "open", 5, 5, 0), 0)
    assert not a.apply(KeyBench("zz#0:deadbeef", "disable", 5), 0)
    a.start("c/x", Needs(), 0)                                # a direct route's own target
    assert a.apply(Drain("c", "x", True), 0)
