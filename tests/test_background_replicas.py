"""Responses background mode across replicas (ADR 0026): two `busbar serve` processes on one
real redis-server.  A background response created on A is polled on B (the marker and the
final turn are in the cluster copy), and a cancel sent to B reaches A, which runs it, over the
cluster's subscription."""
from __future__ import annotations

import openai
import pytest
import trio

from cluster_support import Replica, two_replicas
from harness import sdk
from redis_support import needs_redis, redis_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_redis]


def setup(tmp_path, redis_url: str, **vendor_options):
    return two_replicas(tmp_path, redis_url, "background", **vendor_options)


def responses(replica: Replica) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="k", max_retries=0)


async def test_status_is_visible_on_the_other_replica_and_a_cancel_reaches_the_runner(tmp_path, redis_server):
    async with setup(tmp_path, redis_server.url, reply="from A's run", latency=1.5) as (vendor, (a, b)):
        r = await sdk(lambda: responses(a).responses.create(model="smart", input="hi", background=True))
        assert r.status == "queued"
        seen = []
        with trio.fail_after(20):
            polled = r
            while polled.status in {"queued", "in_progress"}:
                polled = await sdk(lambda: responses(b).responses.retrieve(r.id))
                seen.append(polled.status)
                await trio.sleep(0.1)
        assert seen[0] == "in_progress" and polled.status == "completed" and polled.output_text == "from A's run"

        vendor.latency = 60
        slow = await sdk(lambda: responses(a).responses.create(model="smart", input="hi", background=True))
        with trio.fail_after(10):
            while not vendor.in_flight:
                await trio.sleep(0.02)
        cancelled = await sdk(lambda: responses(b).responses.cancel(slow.id))     # B does not run it
        assert cancelled.status == "cancelled"
        assert (await sdk(lambda: responses(a).responses.retrieve(slow.id))).status == "cancelled"
        with trio.fail_after(10):
            while vendor.in_flight:          # A's upstream call went with it
                await trio.sleep(0.02)


async def test_a_running_background_stream_is_seen_and_cancelled_from_the_other_replica(tmp_path, redis_server):
    words = " ".join(f"w{i}" for i in range(60))
    async with setup(tmp_path, redis_server.url, reply=words, chunk_delay=0.5) as (vendor, (a, b)):
        stream = await sdk(lambda: responses(a).responses.create(model="smart", input="count", stream=True,
                                                                background=True))
        events = iter(stream)
        created = await sdk(lambda: next(events))
        assert created.type == "response.created"
        rid = created.response.id
        assert (await sdk(lambda: responses(b).responses.retrieve(rid))).status == "in_progress"
        cancelled = await sdk(lambda: responses(b).responses.cancel(rid))     # B does not run it
        assert cancelled.status == "cancelled"
        rest = await sdk(lambda: list(events))
        assert rest[-1].response.status == "cancelled"
        assert (await sdk(lambda: responses(a).responses.retrieve(rid))).status == "cancelled"
        with trio.fail_after(10):
            while vendor.in_flight:          # A's upstream call went with it
                await trio.sleep(0.02)


async def test_a_background_stream_is_resumed_on_its_replica_and_the_other_says_where(tmp_path, redis_server):
    """Its events are kept by the replica running it: resumed there, they continue where the
    client left off; the other replica answers a clear 400 naming `stream` (not proxied)."""
    words = " ".join(f"w{i}" for i in range(30))
    async with setup(tmp_path, redis_server.url, reply=words, chunk_delay=0.1) as (vendor, (a, b)):
        def first_events():
            with responses(a).responses.create(model="smart", input="count", stream=True, background=True) as s:
                return [e for _, e in zip(range(4), s)]
        seen = await sdk(first_events)
        rid, cursor = seen[0].response.id, seen[-1].sequence_number
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: list(responses(b).responses.retrieve(rid, stream=True, starting_after=cursor)))
        assert info.value.body["param"] == "stream" and "another gateway replica" in info.value.message
        rest = await sdk(lambda: list(responses(a).responses.retrieve(rid, stream=True, starting_after=cursor)))
        assert [e.sequence_number for e in rest] == list(range(cursor + 1, cursor + 1 + len(rest)))
        assert rest[-1].type == "response.completed" and rest[-1].response.output_text == words
        assert (await sdk(lambda: responses(b).responses.retrieve(rid))).status == "completed"
