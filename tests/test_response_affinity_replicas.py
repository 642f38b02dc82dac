"""Response affinity across replicas (ADR 0027): two `busbar serve` processes on one real
redis-server; a response a Responses vendor minted through replica A is continued, retrieved
and listed through replica B with the key that made it."""
from __future__ import annotations

import openai
import pytest
import trio

from busbar.mock import MockVendor
from cluster_support import Replica, start_all
from harness import sdk
from redis_support import needs_redis, redis_server  # noqa: F401  (fixture)
from test_stores_replicas import redis_call

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_redis]


def config(redis_url: str, vendor: MockVendor) -> dict:
    return {"providers": {"oai": {"protocol": "responses", "base_url": vendor.url + "/v1",
                                  "keys": ["sk-project-a", "sk-project-b"]}},
            "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
            "state": {"backend": "redis", "url": redis_url, "prefix": "affinity", "timeout_ms": 1000}}


def client(replica: Replica) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="k", max_retries=0)


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
async def test_a_conversation_alternating_replicas_stays_on_the_minting_key(tmp_path, redis_server, stream):
    vendor = MockVendor(holds_responses=True, reply="noted")
    async with trio.open_nursery() as nursery:
        await nursery.start(vendor.serve)
        a, b = (Replica(tmp_path, name, config(redis_server.url, vendor)) for name in ("A", "B"))
        try:
            await start_all(a, b)
            ca, cb = client(a), client(b)

            def create(c, **kw):
                if not stream:
                    return c.responses.create(model="smart", **kw)
                with c.responses.stream(model="smart", **kw) as events:
                    return events.get_final_response()

            ids = [(await sdk(lambda: create(ca, input="turn 0"))).id]
            pin = f"affinity:items:-/affinity/{ids[0]}"      # the cluster copy of the first pin
            assert await redis_call(redis_server.url, "PEXPIRE", pin, 60_000) == 1
            for turn in range(1, 6):
                c = cb if turn % 2 else ca
                ids.append((await sdk(lambda: create(c, input=f"turn {turn}", previous_response_id=ids[-1]))).id)
            renewed = await redis_call(redis_server.url, "PTTL", pin)    # by the continuation's answer
            got = await sdk(lambda: cb.responses.retrieve(ids[0]))          # made through A
            items = await sdk(lambda: cb.responses.input_items.list(ids[0]))
        finally:
            logs = [a.stop(), b.stop()]
            nursery.cancel_scope.cancel()
    for log in logs:
        assert "Traceback" not in log, log
    minting = vendor.held[ids[0]][0]
    assert all(vendor.held[i][0] == minting for i in ids)
    sent = [r for r in vendor.received if r.get("method") is None]
    assert len(sent) == 6 and {r["key"] for r in sent} == {minting}
    assert got.id == ids[0] and got.output_text == "noted"
    assert renewed > 23 * 3600 * 1000
    assert [i.content[0].text for i in items.data] == ["turn 0"]
