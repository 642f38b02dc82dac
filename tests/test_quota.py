"""Quota-aware key rotation, pure: counts, limits, spreading, exhaustion, vendor hints, daily resets."""
import random
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from busbar.config import ConfigError, parse_config
from busbar.faults import Fault, FaultClass, VendorQuota
from busbar.protocols import get_dialect
from busbar.routing import Attempt, Exhausted, Needs, Router, Wait
from busbar.routing.quota import DailyReset, KeyQuota, Limits

pytestmark = pytest.mark.pure

# 2026-03-07 12:00 UTC, a Saturday before the US DST change (2026-03-08)
EPOCH = datetime(2026, 3, 7, 12, 0, tzinfo=timezone.utc).timestamp()


def wall(now):
    return EPOCH + now


def router(keys, *, reset=None, pool=None, protocol="gemini", seed=1):
    provider = {"protocol": protocol, "base_url": "http://gem.test", "keys": keys}
    if reset:
        provider["quota_reset"] = {"daily": reset}
    config = {"providers": {"gem": provider},
              "pools": {"p": {"members": [{"provider": "gem", "model": "flash"}], **(pool or {})}}}
    return Router.from_config(config, rng=random.Random(seed), wall=wall)


def limited(n, **limits):
    return [{"key": f"key-{i}-secret", "limits": limits} for i in range(n)]


def run(r, now, fault=None, tokens=None, needs=Needs(), model="p"):
    plan = r.start(model, needs, now)
    step = plan.next(now)
    if isinstance(step, Attempt):
        plan.report(step, fault, now, tokens=tokens)
    return step


# ---- proactive: counts and limits -------------------------------------------
def test_three_keys_rpm5_take_exactly_five_each_then_429_with_exact_retry_after():
    r = router(limited(3, rpm=5))
    used = []
    for i in range(15):
        step = run(r, i * 0.2)
        assert isinstance(step, Attempt), (i, step)
        used.append(step.key.index)
    assert sorted(used.count(k) for k in range(3)) == [5, 5, 5]
    assert used[:3] == [0, 1, 2] and used[3:6] == [0, 1, 2]        # spread as it goes, not in bursts
    step = run(r, 3.0)
    assert isinstance(step, Exhausted) and step.kind == "unavailable"
    # the first request (t=0 on key 0) leaves the window at t=60
    assert step.retry_after == pytest.approx(60.0 - 3.0)
    # and then exactly one key has room again
    assert isinstance(run(r, 60.0), Attempt)


def test_on_exhausted_wait_waits_for_the_earliest_key_within_max_ms():
    r = router(limited(2, rpm=1), pool={"on_exhausted": {"action": "wait", "max_ms": 30000}})
    assert isinstance(run(r, 0.0), Attempt) and isinstance(run(r, 10.0), Attempt)
    plan = r.start("p", Needs(), 45.0)
    step = plan.next(45.0)
    assert isinstance(step, Wait) and step.seconds == pytest.approx(15.0)
    assert isinstance(plan.next(60.0), Attempt)
    # beyond max_ms: a 429 with the exact time instead
    r = router(limited(2, rpm=1), pool={"on_exhausted": {"action": "wait", "max_ms": 5000}})
    assert isinstance(run(r, 0.0), Attempt) and isinstance(run(r, 10.0), Attempt)
    step = r.start("p", Needs(), 45.0).next(45.0)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(15.0)


def test_exhausted_member_fails_over_to_another():
    config = {"providers": {"gem": {"protocol": "gemini", "base_url": "http://g.test", "keys": limited(1, rpm=2)},
                            "oai": {"protocol": "openai", "base_url": "http://o.test", "keys": ["sk-o"]}},
              "pools": {"p": {"strategy": "ordered", "members": [
                  {"provider": "gem", "model": "flash", "priority": 0},
                  {"provider": "oai", "model": "gpt", "priority": 1}]}}}
    r = Router.from_config(config, rng=random.Random(2), wall=wall)
    providers = [run(r, i).provider for i in range(4)]
    assert providers == ["gem", "gem", "oai", "oai"]


def test_limits_count_per_model_unless_per_key():
    def two_models(per):
        entry = {"key": "k-secret", "limits": {"rpm": 1}, **({"per": per} if per else {})}
        config = {"providers": {"gem": {"protocol": "gemini", "base_url": "http://g.test", "keys": [entry]}},
                  "pools": {"a": {"members": [{"provider": "gem", "model": "flash"}]},
                            "b": {"members": [{"provider": "gem", "model": "pro"}]}}}
        return Router.from_config(config, wall=wall)

    r = two_models(None)
    assert isinstance(run(r, 0, model="a"), Attempt) and isinstance(run(r, 0, model="b"), Attempt)
    assert isinstance(run(r, 1, model="a"), Exhausted)
    r = two_models("key")
    assert isinstance(run(r, 0, model="a"), Attempt)
    assert isinstance(run(r, 1, model="b"), Exhausted)


def test_tpm_counts_estimates_then_settles_actual_tokens():
    r = router(limited(1, tpm=1000))
    assert isinstance(run(r, 0, needs=Needs(tokens=100), tokens=700), Attempt)   # used 700, not 100
    assert isinstance(run(r, 1, needs=Needs(tokens=350)), Exhausted)              # 700 + 350 > 1000
    # a refused pick counts nothing: a request that fits still goes
    assert isinstance(run(r, 2, needs=Needs(tokens=300), tokens=300), Attempt)
    step = run(r, 3, needs=Needs(tokens=1))
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(57.0)


def test_a_request_larger_than_the_whole_tpm_waits_for_an_empty_window():
    q = KeyQuota(Limits(tpm=100), wall=wall)
    assert q.free_at("m", 500, 0.0) == 0.0
    q.take("m", 500, 0.0)
    assert q.free_at("m", 500, 1.0) == pytest.approx(60.0)


def test_rpd_resets_at_the_configured_local_time():
    # 12:00 UTC = 04:00 in Los Angeles (PST, UTC-8): the day ends at 08:00 UTC tomorrow
    r = router(limited(1, rpd=2), reset="00:00 America/Los_Angeles")
    assert isinstance(run(r, 0), Attempt) and isinstance(run(r, 100), Attempt)
    step = run(r, 200)
    assert isinstance(step, Exhausted)
    assert step.retry_after == pytest.approx(20 * 3600 - 200)
    assert isinstance(run(r, 20 * 3600 + 1), Attempt)
    quota = r.snapshot(20 * 3600 + 2)["providers"]["gem"]["keys"][0]["quota"][0]
    assert quota["rpd"]["used"] == 1 and quota["rpd"]["limit"] == 2


def test_daily_reset_follows_dst():
    reset = DailyReset("00:00 America/Los_Angeles")
    # 2026-03-08 is the spring-forward day: midnight PST is 08:00 UTC, the next midnight PDT is 07:00 UTC
    first = reset.next_after(EPOCH)
    second = reset.next_after(first)
    zone = ZoneInfo("America/Los_Angeles")
    assert datetime.fromtimestamp(first, zone).strftime("%H:%M") == "00:00"
    assert datetime.fromtimestamp(second, zone).strftime("%H:%M") == "00:00"
    assert second - first == pytest.approx(23 * 3600)


@pytest.mark.parametrize("spec, message", [
    ("midnight", "HH:MM Area/City"), ("25:00 UTC", "00:00 to 23:59"), ("00:00 Mars/Olympus", "unknown time zone")])
def test_bad_quota_reset_names_its_yaml_path(spec, message):
    config = {"providers": {"gem": {"protocol": "gemini", "base_url": "http://g.test", "keys": ["k"],
                                    "quota_reset": {"daily": spec}}},
              "pools": {"p": {"members": [{"provider": "gem", "model": "flash"}]}}}
    with pytest.raises(ConfigError) as info:
        parse_config(config)
    assert "providers.gem" in str(info.value) and message in str(info.value)


def test_contract_config_parses_with_plain_and_limited_keys():
    config = parse_config({
        "providers": {"gem": {"protocol": "gemini", "base_url": "https://generativelanguage.googleapis.com",
                              "keys": [{"key": "g1", "limits": {"rpm": 15, "tpm": 1000000, "rpd": 1500}},
                                       {"key": "g2", "limits": {"rpm": 15, "rpd": 1500}, "per": "key"},
                                       "g3"],
                              "quota_reset": {"daily": "00:00 America/Los_Angeles"}}},
        "pools": {"p": {"members": [{"provider": "gem", "model": "flash"}]}}})
    ring = Router.from_config(config.raw).providers["gem"].keys
    assert [k.quota.limits for k in ring.keys] == [Limits(15, 1000000, 1500), Limits(15, None, 1500, "key"), Limits()]
    assert ring.keys[2].secret == "g3" and ring.quota_aware


@pytest.mark.parametrize("entry", [{"key": "k", "limits": {"rpm": 0}}, {"key": "k", "limits": {"rph": 3}},
                                   {"key": "k", "per": "org"}, {"limits": {"rpm": 3}}])
def test_bad_key_entries_are_config_errors(entry):
    with pytest.raises(ConfigError) as info:
        parse_config({"providers": {"gem": {"protocol": "gemini", "base_url": "http://g.test", "keys": [entry]}},
                      "pools": {"p": {"members": [{"provider": "gem", "model": "flash"}]}}})
    assert "providers.gem.keys" in str(info.value)


def test_default_daily_reset_comes_from_the_vendor():
    assert router(["k"]).providers["gem"].keys.keys[0].quota.reset.spec == "00:00 America/Los_Angeles"
    assert router(["k"], protocol="openai").providers["gem"].keys.keys[0].quota.reset.spec == "00:00 UTC"


def test_plain_keys_share_the_load_with_limited_ones():
    r = router([{"key": "a", "limits": {"rpm": 10}}, "b"])
    used = [run(r, i * 0.1).key.index for i in range(20)]
    assert used.count(0) == 10 and used.count(1) == 10


def test_snapshot_shows_used_limit_and_resets_without_secrets():
    r = router(limited(1, rpm=5, tpm=1000, rpd=100), reset="00:00 UTC")
    run(r, 0, needs=Needs(tokens=10), tokens=40)
    state = r.snapshot(30)["providers"]["gem"]
    key = state["keys"][0]
    assert state["quota_reset"] == "00:00 UTC"
    [row] = key["quota"]
    assert row["scope"] == "flash"
    assert row["rpm"] == {"used": 1, "limit": 5, "resets_in_s": 30.0}
    assert row["tpm"] == {"used": 40, "limit": 1000, "resets_in_s": 30.0}
    assert row["rpd"]["used"] == 1 and row["rpd"]["resets_at"] == "2026-03-08T00:00:00+00:00"
    assert "secret" not in repr(state)


# ---- reactive: what the vendor says -----------------------------------------
GEMINI_DAY = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                        "message": "You exceeded your current quota, please check your plan and billing details.",
                        "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                            "quotaDimensions": {"model": "gemini-2.0-flash", "location": "global"},
                            "quotaValue": "25"}]},
                                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "5s"}]}}


def gemini_fault(quota_id, delay):
    import copy
    import orjson
    body = copy.deepcopy(GEMINI_DAY)
    body["error"]["details"][0]["violations"][0]["quotaId"] = quota_id
    body["error"]["details"][1]["retryDelay"] = delay
    return get_dialect("gemini").classify(429, [], orjson.dumps(body))


def test_gemini_classify_reads_the_quota_window():
    day = gemini_fault("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "5s")
    assert (day.cls, day.quota_window, day.retry_after) == (FaultClass.RATE, "day", 5.0)
    minute = gemini_fault("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "43s")
    assert (minute.cls, minute.quota_window, minute.retry_after) == (FaultClass.RATE, "minute", 43.0)


def test_gemini_per_day_429_benches_until_reset_per_minute_cools_for_retry_delay():
    r = router(["k0-secret", "k1-secret"], reset="00:00 America/Los_Angeles")
    day = gemini_fault("GenerateRequestsPerDayPerProjectPerModel-FreeTier", "5s")
    minute = gemini_fault("GenerateRequestsPerMinutePerProjectPerModel-FreeTier", "43s")
    plan = r.start("p", Needs(), 0.0)
    first = plan.next(0.0)
    decision = plan.report(first, day, 0.0)
    assert decision.penalty == "cool_key" and decision.until == pytest.approx(20 * 3600)
    second = plan.next(0.0)
    decision = plan.report(second, minute, 0.0)
    assert decision.until == pytest.approx(43.0)
    step = run(r, 1.0)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(42.0)
    assert run(r, 43.0).key is second.key          # the per-minute key is back; the per-day one is not
    assert run(r, 5 * 3600).key is second.key
    assert run(r, 20 * 3600).key in (first.key, second.key)


def test_vendor_remaining_headers_lower_the_counts_never_raise_them():
    r = router(limited(1, rpm=5), protocol="openai")
    plan = r.start("p", Needs(), 0.0)
    step = plan.next(0.0)
    step.vendor_quota = VendorQuota(requests_remaining=1, requests_reset=20.0, requests_limit=5)
    plan.report(step, None, 0.0)
    assert isinstance(run(r, 1.0), Attempt)             # the one the vendor says is left
    step = run(r, 2.0)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(18.0)
    assert isinstance(run(r, 20.0), Attempt)            # the vendor's window reset; ours has room (3 of 5)
    # a vendor claiming more room than we counted changes nothing
    q = KeyQuota(Limits(rpm=2), wall=wall)
    q.take("m", 0, 0.0)
    q.take("m", 0, 0.0)
    q.observe("m", VendorQuota(requests_remaining=100, requests_reset=1.0), 0.0)
    assert q.free_at("m", 0, 1.0) == pytest.approx(60.0)


def test_vendor_token_hints_apply_to_plain_keys_too():
    r = router(["plain-secret"], protocol="anthropic")
    plan = r.start("p", Needs(tokens=100), 0.0)
    step = plan.next(0.0)
    step.vendor_quota = VendorQuota(tokens_remaining=50, tokens_reset=30.0)
    plan.report(step, None, 0.0)
    step = run(r, 1.0, needs=Needs(tokens=100))
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(29.0)
    assert isinstance(run(r, 1.0, needs=Needs(tokens=10)), Attempt)


def test_openai_and_anthropic_rate_limit_headers_parse():
    openai = get_dialect("openai").rate_limits([
        (b"x-ratelimit-limit-requests", b"5000"), (b"x-ratelimit-remaining-requests", b"4999"),
        (b"x-ratelimit-reset-requests", b"1m2.5s"), (b"x-ratelimit-limit-tokens", b"160000"),
        (b"x-ratelimit-remaining-tokens", b"159976"), (b"x-ratelimit-reset-tokens", b"9ms")])
    assert openai == VendorQuota(4999, 62.5, 159976, pytest.approx(0.009), 5000, 160000)
    assert get_dialect("responses").rate_limits([(b"x-ratelimit-remaining-requests", b"3")]).requests_remaining == 3
    anthropic = get_dialect("anthropic").rate_limits([
        (b"date", b"Thu, 21 Aug 2025 12:40:30 GMT"),
        (b"anthropic-ratelimit-requests-limit", b"1000"), (b"anthropic-ratelimit-requests-remaining", b"999"),
        (b"anthropic-ratelimit-requests-reset", b"2025-08-21T12:40:59Z"),
        (b"anthropic-ratelimit-tokens-limit", b"96000"), (b"anthropic-ratelimit-tokens-remaining", b"95000"),
        (b"anthropic-ratelimit-tokens-reset", b"2025-08-21T12:41:00Z")])
    assert anthropic == VendorQuota(999, 29.0, 95000, 30.0, 1000, 96000)
    assert get_dialect("openai").rate_limits([(b"x-ratelimit-reset-requests", b"junk")]) is None
    assert get_dialect("gemini").rate_limits([]) is None


def test_reload_keeps_the_counts():
    old = router(limited(1, rpm=1))
    run(old, 0.0)
    new = router(limited(1, rpm=1))
    new.adopt_state(old)
    assert isinstance(run(new, 1.0), Exhausted)


def test_counting_costs_little():
    import time
    r = router(limited(3, rpm=100000, tpm=10 ** 9, rpd=10 ** 6))
    plain = router(["a", "b", "c"])
    n = 3000
    out = {}
    for name, rt in (("quota", r), ("plain", plain)):
        t0 = time.perf_counter()
        for i in range(n):
            run(rt, i * 0.001, needs=Needs(tokens=100), tokens=120)
        out[name] = (time.perf_counter() - t0) / n * 1e6
    print(f"\nrouting µs/request: plain keys {out['plain']:.1f}, with rpm+tpm+rpd limits {out['quota']:.1f}")
