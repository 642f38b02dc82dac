"""Routing tables and strategies: weights, nesting, needs, direct routes, validation."""
import random
from collections import Counter

import pytest

from busbar.faults import Fault, FaultClass
from busbar.routing import Attempt, Exhausted, Needs, RouteConfigError, Router
from busbar.routing.pools import choose

pytestmark = pytest.mark.pure

# chi-square critical values at p = 0.001 (df = categories - 1): a seeded
# run far beyond these means the weights do not hold.
CHI2_999 = {1: 10.828, 2: 13.816, 3: 16.266, 4: 18.467, 5: 20.515}


def chi_square(counts: Counter, probs: dict) -> float:
    n = sum(counts.values())
    return sum((counts.get(k, 0) - n * p) ** 2 / (n * p) for k, p in probs.items())


def providers(*names, keys=1):
    return {n: {"protocol": "openai", "base_url": f"http://{n}.test",
                **({"key": f"sk-{n}-secret"} if keys == 1 else {"keys": [f"sk-{n}-{i}" for i in range(keys)]})}
            for n in names}


def router(pools, provs=("a", "b", "c", "d"), seed=1, **kw):
    return Router.from_config({"providers": providers(*provs), "pools": pools, **kw}, rng=random.Random(seed))


def pick(r, model="p", needs=Needs(), now=0.0):
    plan = r.start(model, needs, now)
    step = plan.next(now)
    if isinstance(step, Attempt):
        plan.report(step, None, now)
    return step


def picks(r, n, model="p", needs=Needs()):
    return Counter(pick(r, model, needs).member_id for _ in range(n))


def test_weighted_holds_weights_chi_square():
    r = router({"p": {"members": [
        {"provider": "a", "model": "m", "weight": 5, "id": "A"},
        {"provider": "b", "model": "m", "weight": 3, "id": "B"},
        {"provider": "c", "model": "m", "weight": 2, "id": "C"}]}})
    counts = picks(r, 10_000)
    assert chi_square(counts, {"A": .5, "B": .3, "C": .2}) < CHI2_999[2], counts


def test_nested_pools_multiply_weights_chi_square():
    r = router({
        "p": {"members": [{"provider": "a", "model": "m", "weight": 1, "id": "A"},
                          {"pool": "cheap", "weight": 3}]},
        "cheap": {"members": [{"provider": "b", "model": "m", "weight": 1, "id": "B"},
                              {"pool": "cheaper", "weight": 2}]},
        "cheaper": {"members": [{"provider": "c", "model": "m", "weight": 1, "id": "C"},
                                {"provider": "d", "model": "m", "weight": 3, "id": "D"}]},
    })
    counts = picks(r, 10_000)
    # A 1/4; B 3/4*1/3; C 3/4*2/3*1/4; D 3/4*2/3*3/4
    probs = {"A": .25, "B": .25, "C": .125, "D": .375}
    assert chi_square(counts, probs) < CHI2_999[3], counts


def test_nested_pool_with_a_benched_member_routes_to_its_siblings():
    r = router({"p": {"members": [{"provider": "a", "model": "m", "id": "A"}, {"pool": "q"}]},
                "q": {"members": [{"provider": "b", "model": "m", "id": "B"},
                                  {"provider": "c", "model": "m", "id": "C"}]}})
    plan = r.start("p", Needs(), 0)
    # bench B's only key
    while True:
        step = plan.next(0)
        if step.member_id == "B":
            plan.report(step, Fault(FaultClass.BILLING, 402), 0)
            break
        plan.report(step, None, 0)
        plan = r.start("p", Needs(), 0)
    counts = picks(r, 4000)
    assert counts["B"] == 0
    assert chi_square(counts, {"A": .5, "C": .5}) < CHI2_999[1]


def test_round_robin_is_smooth_and_exact():
    r = router({"p": {"strategy": "round_robin", "members": [
        {"provider": "a", "model": "m", "weight": 5, "id": "a"},
        {"provider": "b", "model": "m", "weight": 1, "id": "b"},
        {"provider": "c", "model": "m", "weight": 1, "id": "c"}]}})
    seq = "".join(pick(r).member_id for _ in range(14))
    assert seq == "aabacaa" * 2      # nginx smooth weighted round robin


def test_round_robin_skips_unavailable_members():
    r = router({"p": {"strategy": "round_robin", "members": [
        {"provider": "a", "model": "m", "id": "a"}, {"provider": "b", "model": "m", "id": "b"},
        {"provider": "c", "model": "m", "id": "c"}]}})
    assert "".join(pick(r).member_id for _ in range(6)) == "abcabc"
    plan = r.start("p", Needs(), 0)
    step = plan.next(0)
    assert step.member_id == "a"
    plan.report(step, Fault(FaultClass.AUTH, 401), 0)     # a's only key disabled
    assert "".join(pick(r).member_id for _ in range(6)) == "bcbcbc"


def test_least_in_flight_balances_per_unit_of_weight():
    r = router({"p": {"strategy": "least_in_flight", "members": [
        {"provider": "a", "model": "m", "weight": 2, "id": "A"},
        {"provider": "b", "model": "m", "weight": 1, "id": "B"}]}})
    held = []
    for _ in range(30):
        plan = r.start("p", Needs(), 0)
        held.append((plan, plan.next(0)))
    assert Counter(a.member_id for _, a in held) == {"A": 20, "B": 10}
    for plan, attempt in held:                      # A's requests finish
        if attempt.member_id == "A":
            plan.report(attempt, None, 1)
    assert all(pick(r).member_id == "A" for _ in range(5))


def test_latency_prefers_the_fastest_and_explores():
    r = router({"p": {"strategy": "latency", "members": [
        {"provider": "a", "model": "m", "id": "A"}, {"provider": "b", "model": "m", "id": "B"},
        {"provider": "c", "model": "m", "id": "C"}]}})
    ttfb = {"A": 0.5, "B": 0.1, "C": 0.9}
    first = []
    for _ in range(3):                          # every unmeasured member is tried first
        plan = r.start("p", Needs(), 0)
        step = plan.next(0)
        first.append(step.member_id)
        plan.report(step, None, 0, ttfb=ttfb[step.member_id])
    assert sorted(first) == ["A", "B", "C"]
    counts = Counter()
    for _ in range(2000):
        plan = r.start("p", Needs(), 0)
        step = plan.next(0)
        counts[step.member_id] += 1
        plan.report(step, None, 0, ttfb=ttfb[step.member_id])
    assert counts["B"] > 0.9 * 2000
    assert counts["A"] > 0 and counts["C"] > 0   # exploration keeps measuring


def test_latency_follows_a_member_that_got_slow():
    r = router({"p": {"strategy": "latency", "members": [
        {"provider": "a", "model": "m", "id": "A"}, {"provider": "b", "model": "m", "id": "B"}]}})
    ttfb = {"A": 0.1, "B": 0.3}
    for i in range(400):
        if i == 100:
            ttfb["A"] = 2.0
        plan = r.start("p", Needs(), 0)
        step = plan.next(0)
        plan.report(step, None, 0, ttfb=ttfb[step.member_id])
    assert Counter(pick(r).member_id for _ in range(100))["B"] > 80


def test_ordered_uses_lowest_tier_and_spills_over():
    r = router({"p": {"strategy": "ordered", "members": [
        {"provider": "a", "model": "m1", "priority": 0, "weight": 3, "id": "A1"},
        {"provider": "a", "model": "m2", "priority": 0, "weight": 1, "id": "A2"},
        {"provider": "b", "model": "m", "priority": 1, "id": "B"}]}})
    counts = picks(r, 4000)
    assert counts["B"] == 0
    assert chi_square(counts, {"A1": .75, "A2": .25}) < CHI2_999[1]
    plan = r.start("p", Needs(), 0)
    step = plan.next(0)
    plan.report(step, Fault(FaultClass.BILLING, 402), 0)     # a's only key: disabled
    assert plan.next(0).member_id == "B"
    assert set(picks(r, 50)) == {"B"}


def test_context_and_capabilities_filter_members():
    r = router({"p": {"members": [
        {"provider": "a", "model": "small", "context": 8000, "capabilities": ["tools", "json"], "id": "small"},
        {"provider": "b", "model": "big", "context": 200000, "capabilities": ["json"], "id": "big"},
        {"provider": "c", "model": "any", "id": "any"}]}})
    assert set(picks(r, 300, needs=Needs(tokens=10_000))) == {"big", "any"}
    assert set(picks(r, 300, needs=Needs(tools=True))) == {"small", "any"}
    assert set(picks(r, 300, needs=Needs(tokens=10_000, tools=True))) == {"any"}
    assert set(picks(r, 300, needs=Needs(vision=True))) == {"any"}
    assert set(picks(r, 600)) == {"small", "big", "any"}


def test_no_capable_member_is_exhausted_incapable():
    r = router({"p": {"members": [{"provider": "a", "model": "m", "context": 1000}]}})
    step = pick(r, needs=Needs(tokens=5000))
    assert isinstance(step, Exhausted)
    assert step.kind == "incapable" and step.retry_after is None and step.last_fault is None
    assert "5000 tokens" in step.reason


def test_direct_routes():
    r = router({"p": {"members": [{"provider": "a", "model": "m", "context": 4096, "max_tokens": 512}]}},
               server={"direct_routes": True})
    assert r.pool_names() == ["p"]
    assert r.has_route("p") and r.has_route("a/m") and r.has_route("b/whatever-model")
    assert not r.has_route("zz/m") and not r.has_route("a/") and not r.has_route("q")
    with pytest.raises(KeyError):
        r.start("zz/m", Needs(), 0)
    step = pick(r, "b/whatever-model")
    assert (step.provider, step.model, step.member_id, step.protocol) == ("b", "whatever-model", "b/whatever-model", "openai")
    assert step.key_secret == "sk-b-secret"
    direct = pick(r, "a/m")
    assert (direct.context, direct.max_tokens) == (4096, 512)     # inherits the configured member's facts
    # shares the breaker with the pool member: open it through the direct route
    for i in range(5):
        plan = r.start("a/m", Needs(), i)
        plan.report(plan.next(i), Fault(FaultClass.SERVER, 500), i)
    assert isinstance(pick(r, "p", now=10), Exhausted)


def test_deprecated_pipeline_strategy_still_overrides_pool_strategy():
    from busbar.deprecations import ConfigDeprecationWarning
    with pytest.warns(ConfigDeprecationWarning, match="dispatch.strategy"):
        r = router({"p": {"strategy": "weighted", "pipeline": "rr", "members": [
            {"provider": "a", "model": "m", "id": "a"}, {"provider": "b", "model": "m", "id": "b"}]}},
            pipelines={"rr": {"dispatch": {"strategy": "round_robin"}}})
    assert "".join(pick(r).member_id for _ in range(6)) == "ababab"
    assert r.snapshot(0)["pools"]["p"]["strategy"] == "round_robin"


@pytest.mark.parametrize("pools, path, words", [
    ({"p": {"members": [{"pool": "q"}]}, "q": {"members": [{"pool": "p"}]}},
     "pools.q.members[0].pool", "cycle: p -> q -> p"),
    ({"p": {"members": [{"pool": "p"}]}}, "pools.p.members[0].pool", "cycle"),
    ({"p": {"members": [{"pool": "q"}]}, "q": {"members": [{"pool": "r"}]},
      "r": {"members": [{"provider": "a", "model": "m"}, {"pool": "q"}]}}, "pools.r.members[1].pool", "cycle"),
    ({"p": {"members": [{"pool": "nope"}]}}, "pools.p.members[0].pool", "no pool"),
    ({"p": {"members": [{"provider": "zz", "model": "m"}]}}, "pools.p.members[0].provider", "no provider"),
    ({"p": {"members": [{"provider": "a", "model": "m"}], "on_exhausted": {"action": "fallback", "pool": "q"}},
      "q": {"members": [{"provider": "b", "model": "m"}], "on_exhausted": {"action": "fallback", "pool": "p"}}},
     "on_exhausted.pool", "cycle"),
    ({"p": {"members": [{"provider": "a", "model": "m"}], "on_exhausted": {"action": "fallback", "pool": "p"}}},
     "pools.p.on_exhausted.pool", "cycle"),
    ({"p": {"members": [{"provider": "a", "model": "m", "id": "x"}, {"provider": "b", "model": "m", "id": "x"}]}},
     "pools.p.members[1].id", "duplicate"),
])
def test_invalid_pools_are_rejected(pools, path, words):
    with pytest.raises(RouteConfigError) as err:
        router(pools)
    assert err.value.path.endswith(path) and words in err.value.message, str(err.value)


def test_unknown_pipeline_and_key_conflicts_are_rejected():
    from busbar.pipeline import PipelineError
    with pytest.raises(PipelineError):
        router({"p": {"pipeline": "nope", "members": [{"provider": "a", "model": "m"}]}})
    with pytest.raises(RouteConfigError):
        Router.from_config({"providers": {"a": {"protocol": "openai", "base_url": "http://a", "key": "k",
                                                "keys": ["k"]}},
                            "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}}})


def test_member_ids_are_stable():
    r = router({"p": {"members": [{"provider": "a", "model": "m"}, {"provider": "a", "model": "m"},
                                  {"provider": "b", "model": "x", "id": "custom"}]}})
    ids = [m["id"] for m in r.snapshot(0)["pools"]["p"]["members"]]
    assert ids == ["p/a/m", "p/a/m#1", "custom"]


def test_choose_is_none_when_nothing_is_usable():
    r = router({"p": {"members": [{"provider": "a", "model": "m"}, {"pool": "q"}]},
                "q": {"members": [{"provider": "b", "model": "m"}]}})
    assert choose(r.pools["p"], lambda leaf: False, 0, random.Random()) is None


def test_direct_routes_are_opt_in():
    r = router({"p": {"members": [{"provider": "a", "model": "m"}]}})
    assert r.has_route("p") and not r.has_route("a/m") and not r.has_route("b/anything")
    with pytest.raises(KeyError):
        r.start("a/m", Needs(), 0)
