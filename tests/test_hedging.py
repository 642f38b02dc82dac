"""Hedged requests (issue 16, `dispatch.hedge`): a member slow to its first
content is raced by another; the first content wins, the loser is cancelled
with its upstream connection closed, within the pool's hedge budget."""
from __future__ import annotations

import pytest
import trio

from busbar.mock import MockVendor
from busbar.pipeline import Hedge
from busbar.routing.hedge import MIN_SAMPLES, HedgeState
from clients import CLIENTS
from harness import gateway_with, last_record, sdk


def config(first="openai", second="openai", hedge=None) -> dict:
    hedge = hedge or {"after_ms": 50, "max": 1, "budget": 1.0}
    providers = {}
    for name, protocol, base in (("first", first, "{a}"), ("second", second, "{b}")):
        providers[name] = {"protocol": protocol, "base_url": base, "key": "k"}
    return {"providers": providers,
            "pools": {"smart": {"strategy": "ordered", "members": [
                {"provider": "first", "model": "m1", "priority": 0},
                {"provider": "second", "model": "m2", "priority": 1}]}},
            "pipelines": {"default": {"dispatch": {"hedge": hedge}}}}


def upstream_pool(gw, vendor):
    """The gateway's connection pool to `vendor` (busbar.upstream)."""
    return next(p for p in gw.gateway.upstream._pools.values() if p.origin.port == vendor.port)


# ---- pure: the per-pool state --------------------------------------------------------
@pytest.mark.pure
def test_the_budget_caps_hedges_at_its_share_of_requests():
    state = HedgeState(Hedge(max=1, budget=0.1, after_ms=800))
    hedges = 0
    for _ in range(200):
        state.credit()
        hedges += state.take()        # every request would like a hedge
    assert hedges == 20               # 10 % of 200 (the first request takes the token the bucket starts with)
    assert state.delay() == 0.8


@pytest.mark.pure
def test_after_p95_follows_the_pools_measured_ttfb():
    state = HedgeState(Hedge(max=1, budget=0.1, after="p95"))
    for i in range(MIN_SAMPLES - 1):
        state.observe(0.1)
    assert state.delay() is None      # not measured yet: no hedging
    state.observe(0.1)
    assert state.delay() == 0.1
    for i in range(100):
        state.observe(2.0 if i % 10 == 0 else 0.1)   # one in ten slow
    assert state.delay() == 2.0


# ---- over sockets ----------------------------------------------------------------------
@pytest.mark.sdk
@pytest.mark.parametrize("stream", [True, False])
async def test_a_slow_first_byte_is_hedged_and_the_fast_member_wins(stream):
    """The first member would take 30 s to its first byte; after 50 ms the
    hedge goes to the second, which answers: the client has its answer long
    before, and the slow member's connection is closed, not pooled."""
    a, b = MockVendor(reply="slow", latency=30), MockVendor(reply="fast answer")
    async with gateway_with(config(), a=a, b=b) as gw:
        text = await sdk(lambda: CLIENTS["openai"](gw.url, "smart", "x", stream=stream))
        record = await last_record(gw)
        slow, fast = upstream_pool(gw, a), upstream_pool(gw, b)
        assert (slow._open, len(slow._idle)) == (0, 0)         # the loser's connection: closed
        assert (fast._open, len(fast._idle)) == (1, 1)         # the winner's: back in the pool
    assert text == "fast answer"
    assert [(x["member"], x["outcome"], x.get("hedge", False)) for x in record["attempts"]] == [
        ("smart/first/m1", "hedge_lost", False), ("smart/second/m2", "ok", True)]
    states = [s["state"] for s in record["path"]]
    assert states == ["received", "routed", "dispatched", "dispatched", "streaming", "done"]
    assert record["path"][3]["note"] == "smart/second/m2"


@pytest.mark.sdk
@pytest.mark.slow
async def test_the_losers_billed_tokens_are_hedge_waste_in_usage_and_metrics():
    """An Anthropic member that sent its message_start (input tokens billed)
    and then stalls loses the race: those tokens are its waste."""
    import httpx
    a, b = MockVendor(reply="slow"), MockVendor(reply="fast answer")
    a.fail_next({"stall": 30, "after": 1})
    async with gateway_with(config("anthropic", "openai"), a=a, b=b) as gw:
        text = await sdk(lambda: CLIENTS["anthropic"](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
        metrics = (await sdk(lambda: httpx.get(gw.url + "/metrics"))).text
    assert text == "fast answer"
    lost = record["attempts"][0]
    assert lost["outcome"] == "hedge_lost" and lost["waste_tokens"] > 0
    assert f'busbar_hedge_waste_tokens_total{{member="smart/first/m1",pool="smart"}} {lost["waste_tokens"]}.0' in metrics
    assert 'busbar_hedges_total{pool="smart",result="won"} 1.0' in metrics


@pytest.mark.sdk
async def test_no_hedge_once_content_went_out():
    """First content came quickly, the rest slowly: the stream is committed,
    so nothing is hedged however long it takes."""
    a, b = MockVendor(reply="one two three four"), MockVendor(reply="never")
    a.fail_next({"stall": 1.0, "after": 2})          # the first word at once, then a silence past after_ms
    async with gateway_with(config(hedge={"after_ms": 200, "max": 1, "budget": 1.0}), a=a, b=b) as gw:
        text = await sdk(lambda: CLIENTS["openai"](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert text == "one two three four" and b.received == []
    assert [x["outcome"] for x in record["attempts"]] == ["ok"]


@pytest.mark.integration
@pytest.mark.slow
async def test_the_budget_caps_hedges_over_200_requests():
    """Every request's first member is slow: with `budget: 0.1` only about a
    tenth of 200 requests are hedged (the bucket starts with one token)."""
    import httpx
    a, b = MockVendor(reply="slow", latency=0.08), MockVendor(reply="fast")
    hedge = {"after_ms": 10, "max": 1, "budget": 0.1}
    body = {"model": "smart", "messages": [{"role": "user", "content": "x"}]}
    async with gateway_with(config(hedge=hedge), a=a, b=b) as gw:
        async with httpx.AsyncClient(base_url=gw.url, timeout=30) as client:
            answers = []

            async def one():
                r = await client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer k"})
                answers.append(r.json()["choices"][0]["message"]["content"])

            for _ in range(10):
                async with trio.open_nursery() as nursery:
                    for _ in range(20):
                        nursery.start_soon(one)
        records = list(gw.gateway.recent_records)
        state = gw.gateway.hedging["smart"]
    assert len(answers) == 200 and set(answers) <= {"slow", "fast"}
    hedged = [r for r in records if any(x.hedge for x in r.attempts)]
    assert len(records) == 200 and len(hedged) == state.started
    assert 15 <= state.started <= 21                  # 0.1 x 200 + 1 at most
    assert answers.count("fast") == state.won <= state.started


@pytest.mark.integration
async def test_a_cached_pool_stores_the_winner_when_the_later_hedge_loses():
    """The first member is slow but still first; the hedge started after it is
    slower and loses.  The answer kept for the cache is the winner's: the next
    identical request is a hit that reaches no vendor.  (The relay hands its
    folded answer to the request only once its attempt has won the commit.)"""
    import httpx
    a, b = MockVendor(reply="first wins", latency=0.4), MockVendor(reply="hedge", latency=30)
    cfg = config()
    cfg["pools"]["smart"]["cache"] = {"mode": "exact", "ttl": 60}
    body = {"model": "smart", "messages": [{"role": "user", "content": "q"}], "stream": True}
    async with gateway_with(cfg, a=a, b=b) as gw:
        async with httpx.AsyncClient(timeout=10) as http:
            miss = await http.post(gw.url + "/v1/chat/completions", json=body)
            record = await last_record(gw)
            hit = await http.post(gw.url + "/v1/chat/completions", json=body)
    assert [(x["member"], x["outcome"]) for x in record["attempts"]] == [
        ("smart/first/m1", "ok"), ("smart/second/m2", "hedge_lost")]
    assert miss.headers["x-busbar-cache"] == "miss" and "first" in miss.text
    assert hit.headers["x-busbar-cache"] == "hit"
    assert len(a.received) == 1 and len(b.received) == 1          # the hit reached no vendor
