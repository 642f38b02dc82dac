"""Quota-aware rotation over real sockets: official SDKs -> gateway -> simulated vendors that enforce
their own per-key limits and send their real 429s and rate-limit headers."""
from __future__ import annotations

import time

import anthropic
import openai
import pytest

from busbar.mock import MockVendor
from busbar.routing.quota import DailyReset
from harness import gateway_with, sdk

pytestmark = pytest.mark.sdk

MESSAGES = [{"role": "user", "content": "hi"}]


def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="client-key", max_retries=0)


def gemini_pool(keys, **provider):
    return {"providers": {"gem": {"protocol": "gemini", "base_url": "{a}", "keys": keys, **provider}},
            "pools": {"fast": {"members": [{"provider": "gem", "model": "gemini-2.0-flash"}]}}}


async def test_three_keys_rpm5_fifteen_succeed_each_key_five_times_the_sixteenth_is_a_429():
    vendor = MockVendor(reply="ok", limits={"rpm": 5})       # the vendor enforces the same limits
    keys = [{"key": f"gem-key-{i}", "limits": {"rpm": 5}} for i in range(3)]
    async with gateway_with(gemini_pool(keys), a=vendor) as gw:
        client = oai(gw.url)
        for _ in range(15):
            result = await sdk(lambda: client.chat.completions.create(model="fast", messages=MESSAGES))
            assert result.choices[0].message.content == "ok"
        with pytest.raises(openai.RateLimitError) as info:
            await sdk(lambda: client.chat.completions.create(model="fast", messages=MESSAGES))
        state = gw.gateway.router.snapshot(0)["providers"]["gem"]["keys"]
        import httpx
        async with httpx.AsyncClient(base_url=gw.url) as http:
            metrics = (await http.get("/metrics")).text
    assert vendor.rejected == []                                   # no upstream 429 at all
    assert vendor.used_keys() == {"gem-key-0": 5, "gem-key-1": 5, "gem-key-2": 5}
    assert len(vendor.received) == 15                              # the 16th never went upstream
    retry_after = int(info.value.response.headers["retry-after"])
    assert 40 <= retry_after <= 60                                  # when the first of the 15 leaves the minute
    assert all(k["quota"][0]["rpm"]["used"] == 5 for k in state)
    for key in state:   # /metrics: used and limit per key, scope and window
        labels = f'key="{key["id"]}",provider="gem",scope="gemini-2.0-flash",window="rpm"'
        assert f"busbar_key_quota_used{{{labels}}} 5.0" in metrics
        assert f"busbar_key_quota_limit{{{labels}}} 5.0" in metrics
    assert "gem-key-" not in metrics                                # ids, never the secrets


async def test_gemini_per_day_429_benches_until_the_reset_per_minute_cools_for_retry_delay():
    reset = "03:00 Asia/Tokyo"
    vendor = MockVendor(reply="ok")
    async with gateway_with(gemini_pool(["gem-key-0", "gem-key-1"], quota_reset={"daily": reset}), a=vendor) as gw:
        client = oai(gw.url)
        vendor.fail_next({"quota": "day", "key": "gem-key-0", "retry_after": 5})
        result = await sdk(lambda: client.chat.completions.create(model="fast", messages=MESSAGES))
        assert result.choices[0].message.content == "ok"           # rotated to the other key
        expected = DailyReset(reset).next_after(time.time()) - time.time()
        vendor.fail_next({"quota": "minute", "key": "gem-key-1", "retry_after": 7})
        with pytest.raises(openai.RateLimitError) as info:
            await sdk(lambda: client.chat.completions.create(model="fast", messages=MESSAGES))
        router = gw.gateway.router
        import trio
        keys = {k["id"].split(":")[0]: k for k in router.snapshot(trio.current_time())["providers"]["gem"]["keys"]}
    day = keys["gem#0"]["models_cooling"]["gemini-2.0-flash"]["remaining_s"]
    minute = keys["gem#1"]["models_cooling"]["gemini-2.0-flash"]["remaining_s"]
    assert abs(day - expected) < 30                                 # benched until 03:00 Tokyo, not 5 s
    assert 3 < minute <= 7                                          # cooled for the retryDelay
    assert 5 <= int(info.value.response.headers["retry-after"]) <= 7
    assert [r["key"] for r in vendor.received] == ["gem-key-0", "gem-key-1", "gem-key-1"]


async def test_openai_remaining_headers_lower_the_counts_before_the_vendor_says_429():
    vendor = MockVendor(reply="ok", limits={"rpm": 3}, rate_headers=True)
    config = {"providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "keys": ["sk-plain"]}},
              "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}}}
    async with gateway_with(config, a=vendor) as gw:
        client = oai(gw.url)
        for _ in range(3):
            await sdk(lambda: client.chat.completions.create(model="smart", messages=MESSAGES))
        with pytest.raises(openai.RateLimitError) as info:
            await sdk(lambda: client.chat.completions.create(model="smart", messages=MESSAGES))
        [key] = gw.gateway.router.snapshot(0)["providers"]["oai"]["keys"]
    assert vendor.rejected == [] and len(vendor.received) == 3   # the gateway knew: no 4th upstream call
    assert 1 <= int(info.value.response.headers["retry-after"]) <= 60
    assert key["quota"][0]["vendor"]["requests"]["limit"] == 3


async def test_anthropic_remaining_headers_lower_the_counts():
    vendor = MockVendor(reply="ok", limits={"rpm": 2}, rate_headers=True)
    config = {"providers": {"ant": {"protocol": "anthropic", "base_url": "{a}", "keys": ["ak-1", "ak-2"]}},
              "pools": {"claude": {"members": [{"provider": "ant", "model": "claude-sonnet-4"}]}}}
    async with gateway_with(config, a=vendor) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="client-key", max_retries=0)
        for _ in range(4):
            await sdk(lambda: client.messages.create(model="claude", max_tokens=10, messages=MESSAGES))
        with pytest.raises(anthropic.RateLimitError) as info:
            await sdk(lambda: client.messages.create(model="claude", max_tokens=10, messages=MESSAGES))
    assert vendor.rejected == []
    assert vendor.used_keys() == {"ak-1": 2, "ak-2": 2}
    assert int(info.value.response.headers["retry-after"]) >= 1
