"""The response cache shared by replicas: two gateways (each its own App and
Redis connections) on one real redis-server; one fills, the other hits.
Redis keeps each pool to `max_entries` (least recently used first), and a
Redis outage turns lookups into misses, never into failed requests."""
from __future__ import annotations

import pytest

from busbar.mock import MockVendor
from harness import gateway_with, last_record, sdk
from redis_support import redis_server  # noqa: F401  (fixture)
from test_cache_sdk import anthropic_ask, openai_ask

pytestmark = pytest.mark.sdk


def config(url: str, **cache) -> dict:
    return {"providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
            "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}],
                                "cache": {"mode": "exact", "ttl": 60, **cache}}},
            "state": {"backend": "redis", "url": url, "prefix": "replicas", "timeout_ms": 1000}}


async def test_two_replicas_share_hits_through_redis(redis_server):
    vendor = MockVendor()
    cfg = config(redis_server.url)
    async with gateway_with(cfg, a=vendor) as one, gateway_with(cfg, a=vendor) as two:
        assert one.app.state is not two.app.state
        assert await sdk(lambda: openai_ask(one.url, "shared question")) == ("shared question", "miss")
        assert await sdk(lambda: anthropic_ask(two.url, "shared question")) == ("shared question", "hit")
        assert await sdk(lambda: openai_ask(one.url, "shared question")) == ("shared question", "hit")
        assert one.gateway.cache.entries("smart") is None       # nothing held in-process
    assert len(vendor.received) == 1


async def test_redis_keeps_max_entries_least_recently_used_first(redis_server):
    vendor = MockVendor()
    async with gateway_with(config(redis_server.url, max_entries=2), a=vendor) as one, \
            gateway_with(config(redis_server.url, max_entries=2), a=vendor) as two:
        for question in ("a?", "b?"):
            assert (await sdk(lambda: openai_ask(one.url, question)))[1] == "miss"
        assert (await sdk(lambda: openai_ask(two.url, "a?")))[1] == "hit"     # b? is now the oldest use
        assert (await sdk(lambda: openai_ask(two.url, "c?")))[1] == "miss"
        assert (await sdk(lambda: openai_ask(one.url, "b?")))[1] == "miss"    # dropped for c?
        assert (await sdk(lambda: openai_ask(one.url, "c?")))[1] == "hit"


async def test_a_redis_outage_is_a_miss_not_a_failed_request(redis_server):
    vendor = MockVendor()
    async with gateway_with(config(redis_server.url), a=vendor) as gw:
        assert (await sdk(lambda: openai_ask(gw.url, "q")))[1] == "miss"
        redis_server.stop()
        assert await sdk(lambda: openai_ask(gw.url, "q")) == ("q", "miss")
        assert (await last_record(gw))["status"] == 200
    assert len(vendor.received) == 2


async def test_redis_keeps_max_bytes_and_one_delete_clears_every_replica(redis_server):
    import httpx
    vendor = MockVendor()
    cfg = {**config(redis_server.url, max_bytes=1500), "admin": {"key": "admin-secret", "enabled": True}}
    async with gateway_with(cfg, a=vendor) as one, gateway_with(cfg, a=vendor) as two:
        for n in range(6):
            assert (await sdk(lambda: openai_ask(one.url, f"question number {n}")))[1] == "miss"
        assert (await sdk(lambda: openai_ask(two.url, "question number 5")))[1] == "hit"
        assert (await sdk(lambda: openai_ask(two.url, "question number 0")))[1] == "miss"   # over max_bytes: gone
        async with httpx.AsyncClient(base_url=one.url) as client:
            cleared = await client.delete("/admin/cache", headers={"authorization": "Bearer admin-secret"})
            assert cleared.status_code == 200 and cleared.json()["cleared"]["smart"] >= 1
        assert (await sdk(lambda: openai_ask(two.url, "question number 5")))[1] == "miss"
