"""Upstream key quotas through the cluster backend (ADR 0017): the take laws (memory twin and
the Redis script agree), the plan applying the cluster's answer, degraded mode, and
`on_exhausted: wait` over sockets with replicas sharing one real redis-server."""
from __future__ import annotations

import logging
import math

import openai
import pytest
import trio

from busbar.mock import MockVendor
from busbar.routing import Exhausted, Router, Wait
from busbar.routing.router import Needs
from busbar.state import QuotaAsk, QuotaTaken
from busbar.state.memory import MemoryState
from busbar.state.redis import RedisState
from harness import gateway_with, sdk
from redis_support import redis_server  # noqa: F401  (fixture)

MESSAGES = [{"role": "user", "content": "hi"}]


def ask(name, rpm=None, tpm=None, rpd=None, tokens=10, day_left=3600.0):
    return QuotaAsk(name, rpm, tpm, rpd, tokens, 2_000_000_000, day_left)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ---- the take laws (memory twin) -------------------------------------------------------
@pytest.mark.pure
def test_take_quota_spreads_by_headroom_and_refuses_with_exact_frees():
    clock = Clock()
    state = MemoryState(now=clock)
    asks = [ask("k0:m", rpm=2), ask("k1:m", rpm=4)]
    picks = []
    for _ in range(6):
        taken = state.take_quota_now(asks)
        picks.append(taken.index)
        clock.t += 1
    # the most room left after the take wins (ties: the earlier ask): 2 on k0, 4 on k1
    assert sorted(picks) == [0, 0, 1, 1, 1, 1] and picks[0] == 1
    refused = state.take_quota_now(asks)
    assert refused.index is None and refused.uid == ""
    first_k0 = 1000.0 + picks.index(0)
    first_k1 = 1000.0
    # each frees when its oldest counted request leaves the minute
    assert refused.frees == (pytest.approx(first_k0 + 60 - clock.t), pytest.approx(first_k1 + 60 - clock.t))
    assert refused.used == ((2.0, 20.0, 0.0), (4.0, 40.0, 0.0))
    clock.t = first_k1 + 60.0          # k1's oldest has left: room again there
    assert state.take_quota_now(asks).index == 1


@pytest.mark.pure
def test_take_quota_tpm_settles_and_rpd_frees_at_the_day_end():
    clock = Clock()
    state = MemoryState(now=clock)
    tpm = ask("k:m", tpm=100, tokens=60)
    first = state.take_quota_now([tpm])
    assert first.index == 0
    assert state.take_quota_now([tpm]).index is None            # 60 + 60 > 100
    trio.run(state.settle_quota, tpm, first.uid, 20)            # it used 20, not the estimated 60
    assert state.take_quota_now([tpm]).index == 0               # 20 + 60 <= 100
    day = ask("d:m", rpd=1, day_left=500.0)
    assert state.take_quota_now([day]).index == 0
    refused = state.take_quota_now([day])
    assert refused.index is None and refused.frees == (500.0,)
    assert trio.run(state.read_quota, [tpm, day]) == [(2.0, 80.0, 0.0, 60.0), (0.0, 0.0, 1.0, 0.0)]


# ---- the plan applies the cluster's answer ----------------------------------------------
def _router(on_exhausted=None):
    pool = {"members": [{"provider": "gem", "model": "flash"}]}
    if on_exhausted:
        pool["on_exhausted"] = on_exhausted
    router = Router.from_config({
        "providers": {"gem": {"protocol": "gemini", "base_url": "http://x",
                              "keys": [{"key": f"s{i}", "limits": {"rpm": 5}} for i in range(3)]}},
        "pools": {"fast": pool}})
    router.shared_quota = True
    return router


@pytest.mark.pure
def test_the_cluster_may_place_the_request_on_another_candidate_key():
    router = _router()
    plan = router.start("fast", Needs(tokens=10), 0.0)
    attempt = plan.next(0.0)
    keys = router.providers["gem"].keys.keys
    assert attempt.candidates[0] is attempt.key and len(attempt.candidates) == 3
    asks = plan.quota_asks(attempt, 0.0)
    assert [a.name for a in asks] == [f"{k.id}:flash" for k in attempt.candidates]
    assert all("s0" not in a.name for a in asks)                     # ids, never secrets
    local = attempt.key
    other = attempt.candidates[2]
    assert plan.cluster_answer(attempt, asks, QuotaTaken(2, "u1", (30.0, 0.0, 0.0), ((5, 0, 0),) * 3), 0.0)
    assert attempt.key is other and other.in_flight == 1 and local.in_flight == 0
    assert attempt.shared == (asks[2], "u1")
    # the local counts moved with it; the key the cluster called full is held until it frees
    assert other.quota.snapshot(0.0)[0]["rpm"]["used"] == 1
    assert local.quota.snapshot(0.0)[0]["rpm"]["used"] == 0 and not local.available("flash", 29.0)
    assert local.available("flash", 30.0)
    plan.report(attempt, None, 1.0)
    assert sum(k.in_flight for k in keys) == 0


@pytest.mark.pure
def test_no_room_across_the_cluster_is_a_429_with_the_exact_retry_after_and_no_budget_spent():
    router = _router()
    plan = router.start("fast", Needs(tokens=10), 0.0)
    attempt = plan.next(0.0)
    asks = plan.quota_asks(attempt, 0.0)
    full = QuotaTaken(None, "", (12.5, 40.0, 7.25), ((5, 0, 0),) * 3)
    assert not plan.cluster_answer(attempt, asks, full, 0.0)
    assert plan.member_attempts == 0 and plan.outstanding == []
    assert all(k.in_flight == 0 and k.uses == 0 for k in router.providers["gem"].keys.keys)
    step = plan.next(0.0)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(7.25)


@pytest.mark.pure
def test_a_waiting_pool_waits_for_the_cluster_s_earliest_key_and_a_degraded_backend_keeps_local_counts():
    router = _router({"action": "wait", "max_wait": 10})
    plan = router.start("fast", Needs(tokens=10), 0.0)
    attempt = plan.next(0.0)
    assert not plan.cluster_answer(attempt, plan.quota_asks(attempt, 0.0),
                                   QuotaTaken(None, "", (9.0, 4.0, 6.0), ((5, 0, 0),) * 3), 0.0)
    step = plan.next(0.0)
    assert isinstance(step, Wait) and step.seconds == pytest.approx(4.0)
    attempt = plan.next(4.0)
    assert attempt.key.id.startswith("gem#1")                         # the one the cluster said frees first
    assert plan.cluster_answer(attempt, plan.quota_asks(attempt, 4.0), None, 4.0)   # degraded: send it
    assert attempt.shared is None and attempt.key.quota.snapshot(4.0)[0]["rpm"]["used"] == 1


# ---- the Redis script: the same laws, exact across processes' connections --------------
@pytest.mark.integration
async def test_the_redis_script_agrees_with_the_memory_twin(redis_server):
    redis = RedisState(redis_server.url, "twin", timeout_s=1.0)
    memory = MemoryState()
    asks = [ask("a:m", rpm=3, tpm=100, tokens=30), ask("b:m", rpm=2, rpd=3, tokens=30), ask("c:m", tpm=50, tokens=30)]
    for round_ in range(9):
        chosen = asks[round_ % 3:] + asks[:round_ % 3]       # other preference orders too
        want, got = memory.take_quota_now(chosen), await redis.take_quota(chosen)
        assert (got.index, got.used) == (want.index, want.used)
        assert [f > 0 for f in got.frees] == [f > 0 for f in want.frees]
        if got.index is not None and round_ == 0:
            await memory.settle_quota(chosen[got.index], want.uid, 5)
            await redis.settle_quota(chosen[got.index], got.uid, 5)
    read_memory, read_redis = await memory.read_quota(asks), await redis.read_quota(asks)
    assert [row[:3] for row in read_redis] == [row[:3] for row in read_memory]
    await redis.aclose()


@pytest.mark.integration
async def test_two_backends_hammering_one_redis_take_exactly_the_limit(redis_server):
    one = RedisState(redis_server.url, "race", timeout_s=1.0)
    two = RedisState(redis_server.url, "race", timeout_s=1.0)
    asks = [ask(f"k{i}:m", rpm=5) for i in range(3)]
    taken: list[int | None] = []

    async def hammer(state):
        for _ in range(20):
            taken.append((await state.take_quota(asks)).index)

    async with trio.open_nursery() as nursery:
        for state in (one, two, one, two):            # four concurrent takers, two connections pools
            nursery.start_soon(hammer, state)
    assert sorted(i for i in taken if i is not None) == [0] * 5 + [1] * 5 + [2] * 5
    assert taken.count(None) == 80 - 15
    await one.aclose()
    await two.aclose()


@pytest.mark.integration
async def test_degraded_quota_takes_answer_none_at_once_and_log_once(redis_server, caplog):
    state = RedisState(redis_server.url, "down", timeout_s=0.2)
    assert (await state.take_quota([ask("k:m", rpm=1)])).index == 0
    redis_server.stop()
    caplog.set_level(logging.WARNING, "busbar.state")
    assert await state.take_quota([ask("k:m", rpm=1)]) is None
    assert await state.take_quota([ask("k:m", rpm=1)]) is None      # within retry_every_s: no attempt at all
    assert await state.read_quota([ask("k:m", rpm=1)]) is None
    warnings = [r for r in caplog.records if "unavailable" in r.getMessage()]
    assert len(warnings) == 1 and "quotas counted per replica" in warnings[0].getMessage()
    assert state.status()["degraded"] and state.fallback_ops_total >= 2


# ---- on_exhausted: wait over sockets, two replicas, the official SDK --------------------
@pytest.fixture
def short_minute(monkeypatch):
    """A 2 s "minute", so waiting for a key to free takes seconds, not a minute (the
    mechanism is the same: the window is one constant, read at call time)."""
    from busbar.routing import quota
    from busbar.state import memory, redis
    monkeypatch.setattr(quota, "WINDOW", 2.0)
    monkeypatch.setattr(memory, "QUOTA_WINDOW", 2.0)
    monkeypatch.setattr(redis, "QUOTA_WINDOW", 2)
    return 2.0


@pytest.mark.sdk
@pytest.mark.slow
async def test_on_exhausted_wait_waits_for_the_earliest_key_across_replicas_then_a_429_past_the_bound(
        redis_server, short_minute):
    member = {"provider": "gem", "model": "gemini-2.0-flash"}
    config = {
        "providers": {"gem": {"protocol": "gemini", "base_url": "{a}",
                              "keys": [{"key": f"gem-key-{i}", "limits": {"rpm": 1}} for i in range(2)]}},
        "pools": {"patient": {"members": [member], "on_exhausted": {"action": "wait", "max_wait": 5}},
                  "hasty": {"members": [member], "on_exhausted": {"action": "wait", "max_wait": 0.2}}},
        "state": {"backend": "redis", "url": redis_server.url, "prefix": "wait", "timeout_ms": 1000},
    }
    vendor = MockVendor(reply="ok")
    async with gateway_with(config, a=vendor) as one, gateway_with(config, a=vendor) as two:
        a = openai.OpenAI(base_url=one.url + "/v1", api_key="c", max_retries=0)
        b = openai.OpenAI(base_url=two.url + "/v1", api_key="c", max_retries=0)
        for client in (a, b):     # one request per key, one through each replica: both keys are full
            await sdk(lambda: client.chat.completions.create(model="patient", messages=MESSAGES))
        with pytest.raises(openai.RateLimitError) as info:            # beyond the bound: no wait, a 429
            await sdk(lambda: a.chat.completions.create(model="hasty", messages=MESSAGES))
        # within the bound: replica one waits for the earliest key to free (the cluster said when)
        waited = await sdk(lambda: a.chat.completions.create(model="patient", messages=MESSAGES))
    assert waited.choices[0].message.content == "ok"
    used = [(r["key"], r["at"]) for r in vendor.received]
    assert [k for k, _ in used[:2]] != [used[0][0]] * 2 and len(used) == 3   # the 429 never went upstream
    retry_after = int(info.value.response.headers["retry-after"])
    assert 1 <= retry_after <= math.ceil(short_minute)     # when the earliest key frees (the pure tests: exact)
    key, at = used[2]
    previous = max(t for k, t in used[:2] if k == key)
    assert at >= previous + short_minute - 0.01       # the third went out only once its key had room


async def _script_calls(url: str) -> int:
    """EVALSHA + EVAL calls redis-server has served (its own INFO commandstats)."""
    from busbar.state.resp import RespConnection, parse_redis_url
    host, port, db, _ = parse_redis_url(url)
    conn = await RespConnection.open(host, port, db)
    info = (await conn.call("INFO", "commandstats")).decode()
    await conn.aclose()
    calls = 0
    for line in info.splitlines():
        if line.startswith(("cmdstat_evalsha:", "cmdstat_eval:")):
            calls += int(line.split("calls=")[1].split(",")[0])
    return calls


@pytest.mark.integration
async def test_one_script_call_per_request_on_keys_with_limits_none_on_plain_keys(redis_server):
    config = {
        "providers": {
            "plain": {"protocol": "openai", "base_url": "{a}/v1", "keys": ["sk-1", "sk-2"]},
            "gem": {"protocol": "gemini", "base_url": "{a}",
                    "keys": [{"key": f"gem-key-{i}", "limits": {"rpm": 100}} for i in range(3)]}},
        "pools": {"plain": {"members": [{"provider": "plain", "model": "gpt-4o"}]},
                  "limited": {"members": [{"provider": "gem", "model": "gemini-2.0-flash"}]}},
        "state": {"backend": "redis", "url": redis_server.url, "prefix": "ops", "timeout_ms": 1000},
    }
    import httpx
    async with gateway_with(config, a=MockVendor(reply="ok")) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            # the first take loads the script (EVALSHA answered NOSCRIPT, then EVAL): once per Redis
            r = await client.post("/v1/chat/completions", json={"model": "limited", "messages": MESSAGES})
            assert r.status_code == 200
            before = await _script_calls(redis_server.url)
            for _ in range(5):
                r = await client.post("/v1/chat/completions", json={"model": "plain", "messages": MESSAGES})
                assert r.status_code == 200
            assert await _script_calls(redis_server.url) == before          # plain keys: Redis never asked
            for _ in range(4):
                r = await client.post("/v1/chat/completions", json={"model": "limited", "messages": MESSAGES})
                assert r.status_code == 200
            assert await _script_calls(redis_server.url) == before + 4      # one atomic take per request
