"""A client key's rpm across replicas: two gateways (each its own App and
Redis connection) sharing one real redis-server admit exactly the limit
when hammered concurrently (issue 15's limits, issue 14's backend)."""
from __future__ import annotations

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with
from redis_support import redis_server  # noqa: F401  (fixture)


@pytest.mark.integration
async def test_rpm_is_exact_across_two_replicas_sharing_redis(redis_server):
    config = {
        "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
        "auth": {"keys": [{"id": "metered", "key": "sk-metered", "limits": {"rpm": 10}}]},
        "state": {"backend": "redis", "url": redis_server.url, "prefix": "replicas", "timeout_ms": 1000},
    }
    vendor = MockVendor(reply="ok")
    statuses = []
    async with gateway_with(config, a=vendor) as one, gateway_with(config, a=vendor) as two:
        assert one.app.state is not two.app.state          # two backends, one Redis

        async def fire(url):
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(15):
                    r = await client.post(url + "/v1/chat/completions",
                                          headers={"authorization": "Bearer sk-metered"},
                                          json={"model": "smart", "messages": [{"role": "user", "content": "hi"}]})
                    statuses.append(r.status_code)
                    if r.status_code == 429:
                        assert int(r.headers["retry-after"]) >= 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fire, one.url)
            nursery.start_soon(fire, two.url)
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    assert len(vendor.received) == 10                      # refused requests never went upstream
