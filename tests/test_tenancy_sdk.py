"""Tenancy through the gateway with the official SDKs of five protocols
(Bedrock signs with access key pairs: not mapped to tenancy keys yet):
pool permission, rpm, token budget, spend = price x usage."""
from __future__ import annotations

import pytest
import trio

from busbar.mock import MockVendor
from clients import CLIENTS
from harness import gateway_with, sdk

PROTOCOLS = ["openai", "anthropic", "responses", "gemini", "cohere"]
PRICE = {"input": 2.5, "output": 10.0, "cached_input": 1.25}


def config(**key):
    return {
        "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-up"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o", "price": PRICE}]},
                  "cheap": {"members": [{"provider": "oai", "model": "gpt-4o-mini"}]}},
        "auth": {"keys": [{"id": "team-a", "key": "client-key-a", **key}]},
    }


def status_of(exc: BaseException) -> int | None:
    for name in ("status_code", "code", "status"):
        value = getattr(exc, name, None)
        if isinstance(value, int):
            return value
    return None


def retry_after_of(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    return headers.get("retry-after") if headers is not None else None


@pytest.mark.sdk
@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_pool_restricted_key_refused_on_another_pool(protocol):
    vendor = MockVendor(reply="hi")
    call = CLIENTS[protocol]
    async with gateway_with(config(pools=["smart"]), a=vendor) as gw:
        assert await sdk(lambda: call(gw.url, "smart", "hello", api_key="client-key-a")) == "hi"
        before = len(vendor.received)
        with pytest.raises(Exception) as info:
            await sdk(lambda: call(gw.url, "cheap", "hello", api_key="client-key-a"))
        assert status_of(info.value) == 403, repr(info.value)
        assert "cheap" in str(info.value) and "client-key-a" not in str(info.value)
        with pytest.raises(Exception) as info:
            await sdk(lambda: call(gw.url, "smart", "hello", api_key="wrong-key"))
        assert status_of(info.value) == 401
        assert len(vendor.received) == before          # refused requests never reached the upstream


@pytest.mark.sdk
@pytest.mark.slow
# cohere: its SDK retries a 429 itself; tested with max_retries=0 below
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "responses", "gemini"])
async def test_rpm_10_of_30_admitted_rest_rate_limited_with_retry_after(protocol):
    vendor = MockVendor(reply="ok")
    call = CLIENTS[protocol]
    async with gateway_with(config(limits={"rpm": 10}), a=vendor) as gw:
        def fire():
            ok, refused = 0, []
            for _ in range(30):
                try:
                    call(gw.url, "smart", "hello", api_key="client-key-a")
                    ok += 1
                except Exception as exc:      # the SDK's rate-limit class
                    refused.append(exc)
            return ok, refused
        ok, refused = await sdk(fire)
        # rpm refills one request per 6 s: a slow box may earn one more
        assert ok in (10, 11), ok
        assert all(status_of(e) == 429 for e in refused), [repr(e) for e in refused[:3]]
        if protocol != "gemini":       # google-genai's ClientError keeps no headers
            assert all(retry_after_of(e) for e in refused)
        assert len(vendor.received) == ok
        assert gw.gateway.tenancy.limited["rpm"] == 30 - ok


@pytest.mark.sdk
@pytest.mark.parametrize("protocol", ["openai", "anthropic", "gemini"])
async def test_token_budget_crossing_request_completes_next_refused(protocol):
    vendor = MockVendor(reply="a fairly long answer " * 5)
    call = CLIENTS[protocol]
    async with gateway_with(config(budget={"tokens": 60, "period": "day"}), a=vendor) as gw:
        answered = 0
        with pytest.raises(Exception) as info:
            for _ in range(10):
                await sdk(lambda: call(gw.url, "smart", "hello", api_key="client-key-a"))
                answered += 1
        assert answered >= 1
        assert status_of(info.value) in (429, 402), repr(info.value)
        if protocol == "openai":
            assert info.value.code == "insufficient_quota"
        assert len(vendor.received) == answered


@pytest.mark.sdk
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("stream", [False, True])
async def test_spend_is_price_times_usage(protocol, stream):
    vendor = MockVendor(reply="one two three")
    call = CLIENTS[protocol]
    async with gateway_with(config(), a=vendor) as gw:
        await sdk(lambda: call(gw.url, "smart", "hello", stream=stream, api_key="client-key-a"))
        with trio.fail_after(5):
            while gw.gateway.in_flight or not gw.gateway.recent_records:
                await trio.sleep(0.005)
        record = gw.gateway.recent_records[-1]
    usage = record.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    plain = usage.input_tokens - usage.cached_tokens - usage.cache_creation_tokens
    expected = (plain * 2.5 + usage.cached_tokens * 1.25 + usage.cache_creation_tokens * 2.5
                + usage.output_tokens * 10.0) / 1e6
    assert record.cost_usd == pytest.approx(expected, rel=1e-12)
    assert record.tenant == "team-a"
    assert gw.gateway.tenancy.spend_usd == pytest.approx(expected)


@pytest.mark.sdk
async def test_limits_hold_across_a_hot_reload():
    vendor = MockVendor(reply="ok")
    call = CLIENTS["openai"]
    async with gateway_with(config(limits={"rpm": 2}), a=vendor) as gw:
        for _ in range(2):
            await sdk(lambda: call(gw.url, "smart", "hello", api_key="client-key-a"))
        gw.app.reload(gw.gateway.config)
        with pytest.raises(Exception) as info:
            await sdk(lambda: call(gw.url, "smart", "hello", api_key="client-key-a"))
        assert status_of(info.value) == 429
        assert len(vendor.received) == 2


@pytest.mark.sdk
@pytest.mark.slow
async def test_parallel_2_with_slow_upstreams_third_concurrent_request_refused():
    import openai
    vendor = MockVendor(reply="one two three four five", chunk_delay=0.3, chunks=5)
    call = CLIENTS["openai"]
    results = []
    async with gateway_with(config(limits={"parallel": 2}), a=vendor) as gw:
        async def slow():
            results.append(await sdk(lambda: call(gw.url, "smart", "hello", stream=True, api_key="client-key-a")))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(slow)
            nursery.start_soon(slow)
            with trio.fail_after(10):
                while len(vendor.received) < 2:          # both slots held by streams in progress
                    await trio.sleep(0.01)
            with pytest.raises(openai.RateLimitError) as info:
                await sdk(lambda: call(gw.url, "smart", "hello", api_key="client-key-a"))
            assert info.value.response.headers.get("retry-after")
            assert len(vendor.received) == 2             # the refused one never reached the upstream
        assert results == ["one two three four five"] * 2
        # the slots were given back when the streams ended
        assert await sdk(lambda: call(gw.url, "smart", "hello", api_key="client-key-a")) == "one two three four five"


@pytest.mark.sdk
@pytest.mark.slow
async def test_cohere_sdk_rpm_10_of_30_with_its_retries_off():
    import cohere
    from cohere.core.api_error import ApiError
    vendor = MockVendor(reply="ok")
    async with gateway_with(config(limits={"rpm": 10}), a=vendor) as gw:
        def fire():
            client = cohere.ClientV2(api_key="client-key-a", base_url=gw.url)
            ok, refused = 0, []
            for _ in range(30):
                try:      # the SDK retries 429s itself unless told not to
                    client.chat(model="smart", messages=[{"role": "user", "content": "hi"}],
                                request_options={"max_retries": 0})
                    ok += 1
                except ApiError as exc:
                    refused.append(exc)
            return ok, refused
        ok, refused = await sdk(fire)
    assert ok in (10, 11), ok                              # rpm refills one per 6 s: a slow box may earn one
    assert all(e.status_code == 429 for e in refused), [repr(e) for e in refused[:3]]
    assert all(type(e).__name__ == "TooManyRequestsError" for e in refused)
    assert all(e.headers.get("retry-after") for e in refused)
    assert len(vendor.received) == ok


@pytest.mark.sdk
async def test_bedrock_signed_clients_get_the_client_key_their_access_key_maps_to():
    from botocore.exceptions import ClientError as BotoError
    from clients import bedrock_converse
    vendor = MockVendor(reply="hi")
    cfg = config(pools=["smart"], limits={"rpm": 2})
    cfg["auth"]["aws_credentials"] = [{"access_key_id": "AKIDGATEWAY", "secret_access_key": "gateway-secret",
                                       "key_id": "team-a"}]
    async with gateway_with(cfg, a=vendor) as gw:
        assert await sdk(lambda: bedrock_converse(gw.url, "smart", "hello")) == "hi"
        assert gw.gateway.recent[-1]["key_id"] == "team-a" and gw.gateway.recent[-1]["cost_usd"] > 0
        with pytest.raises(BotoError) as info:                 # the key's pools apply
            await sdk(lambda: bedrock_converse(gw.url, "cheap", "hello"))
        assert info.value.response["Error"]["Code"] == "AccessDeniedException"
        assert "cheap" in str(info.value)
        assert await sdk(lambda: bedrock_converse(gw.url, "smart", "hello")) == "hi"
        with pytest.raises(BotoError) as info:                 # and its rpm (2), in Bedrock's throttling shape
            await sdk(lambda: bedrock_converse(gw.url, "smart", "hello"))
        assert info.value.response["Error"]["Code"] == "ThrottlingException"
        with pytest.raises(BotoError) as info:                 # a wrong secret is still a signature failure
            await sdk(lambda: bedrock_converse(gw.url, "smart", "hello", secret_access_key="wrong"))
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (401, 403)
        assert len(vendor.received) == 2
    bad = config()
    bad["providers"]["oai"]["base_url"] = "http://127.0.0.1:9/v1"
    bad["auth"]["aws_credentials"] = [{"access_key_id": "A", "secret_access_key": "s", "key_id": "ghost"}]
    from busbar.config import ConfigError, parse_config
    from busbar.gateway import Gateway
    with pytest.raises(ConfigError, match="no client key with id .ghost."):
        Gateway(parse_config(bad, "t"))
