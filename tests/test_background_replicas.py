"""Responses background mode across replicas (ADR 0026): two `busbar serve` processes on one
real redis-server.  A background response created on A is polled on B (the marker and the
final turn are in the cluster copy), and a cancel sent to B reaches A, which runs it, over the
cluster's subscription."""
from __future__ import annotations

import time

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


async def test_a_background_stream_is_resumed_on_either_replica(tmp_path, redis_server):
    """Its events are kept by the replica running it and relayed through Redis: resumed on A
    or on B, mid-stream, they continue where the client left off, live until the end."""
    words = " ".join(f"w{i}" for i in range(30))
    async with setup(tmp_path, redis_server.url, reply=words, chunk_delay=0.1) as (vendor, (a, b)):
        def first_events():
            with responses(a).responses.create(model="smart", input="count", stream=True, background=True) as s:
                return [e for _, e in zip(range(4), s)]
        seen = await sdk(first_events)
        rid, cursor = seen[0].response.id, seen[-1].sequence_number

        def resume(replica, after=None):
            kw = {} if after is None else {"starting_after": after}
            out = []
            with responses(replica).responses.retrieve(rid, stream=True, **kw) as stream:
                for event in stream:
                    out.append((event, time.monotonic()))
            return out
        on_b = await sdk(lambda: resume(b, cursor))                   # B does not run it
        events = [e for e, _ in on_b]
        assert [e.sequence_number for e in events] == list(range(cursor + 1, cursor + 1 + len(events)))
        assert events[-1].type == "response.completed" and events[-1].response.output_text == words
        assert on_b[-1][1] - on_b[0][1] > 0.5                          # mid-stream: the rest came live
        on_a = await sdk(lambda: resume(a, cursor))                   # after the end, from A's own log
        assert [e.model_dump() for e, _ in on_a] == [e.model_dump() for e in events]
        everything = await sdk(lambda: resume(b))
        assert [e.sequence_number for e, _ in everything] == list(range(events[-1].sequence_number + 1))
        assert await sdk(lambda: resume(b, events[-1].sequence_number)) == []
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: resume(b, events[-1].sequence_number + 1))
        assert info.value.body["param"] == "starting_after"
        assert (await sdk(lambda: responses(b).responses.retrieve(rid))).status == "completed"


async def test_a_pending_response_is_continued_on_the_other_replica_only_once_it_completed(tmp_path, redis_server):
    """B refuses a continuation of A's running response (ADR 0026, amended: before any member
    call), and once it completed continues it although B took in the pending copy meanwhile
    (a pending copy is read again from Redis); B's poll echoes the request (ADR 0024)."""
    async with setup(tmp_path, redis_server.url, reply="from A's run", latency=1.5) as (vendor, (a, b)):
        r = await sdk(lambda: responses(a).responses.create(model="smart", input="hi", background=True,
                                                            instructions="Be brief.", temperature=0.3))
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: responses(b).responses.create(model="smart", input="more", previous_response_id=r.id))
        assert info.value.body["param"] == "previous_response_id" and "in_progress" in info.value.body["message"]
        with trio.fail_after(20):
            polled = r
            while polled.status in {"queued", "in_progress"}:     # polled on A: B keeps its pending copy
                polled = await sdk(lambda: responses(a).responses.retrieve(r.id))
                assert polled.instructions == "Be brief." and polled.temperature == 0.3 and polled.background
                await trio.sleep(0.1)
        assert polled.status == "completed"
        assert len(vendor.received) == 1          # the refused continuation reached no member
        vendor.latency = 0
        nxt = await sdk(lambda: responses(b).responses.create(model="smart", input="more", previous_response_id=r.id))
        assert nxt.previous_response_id == r.id and nxt.instructions is None and nxt.temperature == 1.0
        assert "from A's run" in str(vendor.received[-1]["body"])
        on_b = await sdk(lambda: responses(b).responses.retrieve(r.id))
        assert on_b.status == "completed" and on_b.instructions == "Be brief." and on_b.temperature == 0.3
