"""The item store and the reasoning store shared through Redis (issue 19): two `busbar serve`
processes on one real redis-server; what the first minted, the second resolves.  Requests
that need neither store never ask Redis, and an outage leaves each replica its own entries."""
from __future__ import annotations

import socket

import httpx
import openai
import pytest
import trio

from cluster_support import Replica, eventually, two_replicas
from harness import sdk
from redis_support import needs_redis, redis_server  # noqa: F401  (fixture)
from test_thinking_multiturn import CHAT_TOOL

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_redis]


def setup(tmp_path, redis_url: str, **vendor_options):
    return two_replicas(tmp_path, redis_url, "stores", **vendor_options)


def redis_calls(port: int, command: str) -> int:
    """How many times Redis ran `command` (INFO commandstats)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"INFO commandstats\r\n")
        data = b""
        while b"\r\n" not in data or len(data) < data.index(b"\r\n") + 2 + int(data[1:data.index(b"\r\n")]):
            data += s.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith(f"cmdstat_{command}:"):
            return int(line.split("calls=")[1].split(",")[0])
    return 0


def responses(replica: Replica) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="k", max_retries=0)


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
async def test_the_second_replica_resolves_an_item_reference_the_first_minted(tmp_path, redis_server, stream):
    async with setup(tmp_path, redis_server.url, reply="said by A's member") as (vendor, (a, b)):
        def first():
            if not stream:
                return responses(a).responses.create(model="smart", input="hello")
            with responses(a).responses.stream(model="smart", input="hello") as events:
                return events.get_final_response()
        answer = await sdk(first)
        ref = answer.output[0].id
        second = await sdk(lambda: responses(b).responses.create(model="smart", input=[
            {"role": "user", "content": "hello"}, {"type": "item_reference", "id": ref},
            {"role": "user", "content": "again"}]))
        assert second.output_text == "said by A's member"
        sent = vendor.received[-1]["body"]["messages"]
        assert sent[1]["role"] == "assistant" and "said by A's member" in str(sent[1])


async def test_the_second_replica_gives_back_the_signed_reasoning_the_first_kept(tmp_path, redis_server):
    """A Chat Completions client, thinking and tools: turn 1 on A, its tool results on B;
    the vendor (which refuses a tool-result turn without its signed block) sees it."""
    async with setup(tmp_path, redis_server.url, use_tools=True, think=True) as (vendor, (a, b)):
        messages = [{"role": "user", "content": "Weather in Paris?"}]

        def ask(replica):
            client = openai.OpenAI(base_url=replica.url + "/v1", api_key="k", max_retries=0)
            return client.chat.completions.create(model="smart", messages=messages, tools=[CHAT_TOOL],
                                                  reasoning_effort="high").choices[0].message
        message = (await sdk(lambda: ask(a))).model_dump(exclude_none=True)
        call = message["tool_calls"][0]
        messages += [message, {"role": "tool", "tool_call_id": call["id"], "content": "sunny"}]
        done = await sdk(lambda: ask(b))
    assert done.content == "tool said: sunny"
    assert vendor.thoughts_seen == 1


async def test_no_redis_lookup_without_references_or_tool_results(tmp_path, redis_server):
    async with setup(tmp_path, redis_server.url, reply="plain") as (vendor, (a, b)):
        before = redis_calls(redis_server.port, "mget")
        for replica in (a, b):
            await sdk(lambda: responses(replica).responses.create(model="smart", input="hello"))
            await sdk(lambda: openai.OpenAI(base_url=replica.url + "/v1", api_key="k", max_retries=0)
                      .chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}]))
        assert redis_calls(redis_server.port, "mget") == before
        assert len(vendor.received) == 4


async def test_a_redis_outage_leaves_each_replica_its_own_items(tmp_path, redis_server):
    async with setup(tmp_path, redis_server.url, reply="kept locally") as (vendor, (a, b)):
        redis_server.stop()
        refs = []
        for _ in range(2):
            answer = await sdk(lambda: responses(a).responses.create(model="smart", input="hello"))
            refs.append(answer.output[0].id)
        again = await sdk(lambda: responses(a).responses.create(model="smart", input=[
            {"role": "user", "content": "hello"}, {"type": "item_reference", "id": refs[0]},
            {"role": "user", "content": "again"}]))
        assert again.output_text == "kept locally"
        with pytest.raises(openai.BadRequestError) as info:       # B cannot know it: a 400, not a 500
            await sdk(lambda: responses(b).responses.create(model="smart", input=[
                {"role": "user", "content": "hello"}, {"type": "item_reference", "id": refs[1]}]))
        assert info.value.body["param"] == "input[1].id"
        a.stop()
        assert a.log_path.read_text().count("items entries not shared") == 1


async def redis_call(url: str, *args):
    from busbar.state.resp import RespConnection, parse_redis_url
    host, port, db, _ = parse_redis_url(url)
    conn = await RespConnection.open(host, port, db)
    try:
        return await conn.call(*args)
    finally:
        await conn.aclose()


async def test_a_conversation_continued_by_id_across_replicas_renews_its_turns(tmp_path, redis_server):
    """`previous_response_id` (ADR 0024): turn 1 on A, turn 2 on B, turn 3 on A; each
    replica reads the turns it lacks from Redis, the member sees the whole conversation,
    and a continuation starts the expiry of the turns it continued over."""
    async with setup(tmp_path, redis_server.url) as (vendor, (a, b)):    # the vendor echoes
        r1 = await sdk(lambda: responses(a).responses.create(model="smart", input="One."))
        r2 = await sdk(lambda: responses(b).responses.create(model="smart", input="Two.",
                                                             previous_response_id=r1.id))
        first = f"stores:items:-/response/{r1.id}"
        assert await redis_call(redis_server.url, "PEXPIRE", first, "60000") == 1
        with trio.fail_after(30):
            r3 = await sdk(lambda: responses(a).responses.create(model="smart", input="Three.",
                                                                 previous_response_id=r2.id))
        assert r3.output_text == "Three."
        sent = vendor.received[-1]["body"]["messages"]
        assert [m["content"] if isinstance(m["content"], str) else m["content"][0]["text"] for m in sent] == [
            "One.", "One.", "Two.", "Two.", "Three."]
        assert await redis_call(redis_server.url, "PTTL", first) > 3_000_000     # renewed to the store's hour
        with pytest.raises(openai.BadRequestError) as info:     # store: false on A: B has nothing to continue
            gone = await sdk(lambda: responses(a).responses.create(model="smart", input="x", store=False))
            await sdk(lambda: responses(b).responses.create(model="smart", input="y", previous_response_id=gone.id))
        assert info.value.body["code"] == "previous_response_not_found"


async def test_a_response_kept_on_one_replica_is_retrieved_and_deleted_on_the_other(tmp_path, redis_server):
    """ADR 0025: B retrieves what A answered (the cluster copy); a delete through B leaves a
    tombstone that A, which holds its own copy, sees on its next lookup."""
    async with setup(tmp_path, redis_server.url, reply="said on A") as (vendor, (a, b)):
        r1 = await sdk(lambda: responses(a).responses.create(model="smart", input="hello"))
        got = await sdk(lambda: responses(b).responses.retrieve(r1.id))
        items = await sdk(lambda: responses(b).responses.input_items.list(r1.id))
        assert await sdk(lambda: responses(b).responses.delete(r1.id)) is None
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: responses(a).responses.retrieve(r1.id))
        with pytest.raises(openai.BadRequestError) as continued:     # A took the tombstone in
            await sdk(lambda: responses(a).responses.create(model="smart", input="more",
                                                            previous_response_id=r1.id))
        with pytest.raises(openai.BadRequestError) as referenced:    # its items are gone from Redis
            await sdk(lambda: responses(b).responses.create(model="smart", input=[
                {"type": "item_reference", "id": r1.output[0].id}]))
    assert got.id == r1.id and got.output_text == "said on A" and got.model == r1.model
    assert [i.content[0].text for i in items.data] == ["hello"]
    assert continued.value.body["code"] == "previous_response_not_found"
    assert referenced.value.body["param"] == "input[0].id"
    assert len(vendor.received) == 1


async def deletions(replica: Replica) -> dict:
    return (await replica.state())["response_deletions"]


async def chained_on_a(a: Replica):
    """Two turns answered on A (A holds both turns and their items in its own store)."""
    r1 = await sdk(lambda: responses(a).responses.create(model="smart", input="One."))
    r2 = await sdk(lambda: responses(a).responses.create(model="smart", input="Two.", previous_response_id=r1.id))
    return r1, r2


async def refused_on(replica: Replica, r2, r1) -> tuple[dict, dict]:
    """The deleted r2 continued and its item referenced on `replica`: both 400s (bodies);
    r1, not deleted, still continued there."""
    with pytest.raises(openai.BadRequestError) as continued:
        await sdk(lambda: responses(replica).responses.create(model="smart", input="Three.",
                                                              previous_response_id=r2.id))
    with pytest.raises(openai.BadRequestError) as referenced:
        await sdk(lambda: responses(replica).responses.create(model="smart", input=[
            {"type": "item_reference", "id": r2.output[0].id}, {"role": "user", "content": "again"}]))
    kept = await sdk(lambda: responses(replica).responses.create(model="smart", input="Again.",
                                                                 previous_response_id=r1.id))
    assert kept.output_text == "Again."
    return continued.value.body, referenced.value.body


async def test_a_delete_on_one_replica_reaches_the_others_copy_at_once(tmp_path, redis_server):
    """ADR 0025: A holds its own copy of a chained turn; B deletes it; A (no GET of it) refuses
    to continue it and to resolve its item, from its own store: the published deletion put the
    tombstone there, so A does not even ask Redis for the turn."""
    async with setup(tmp_path, redis_server.url) as (vendor, (a, b)):     # the vendor echoes
        r1, r2 = await chained_on_a(a)
        assert await sdk(lambda: responses(b).responses.delete(r2.id)) is None
        heard = await eventually(lambda: _applied(a), "A hears the deletion")
        assert heard["copies_dropped"] == 2 and heard["ignored"] == 0     # the turn and its one item
        mgets = redis_calls(redis_server.port, "mget")
        with pytest.raises(openai.BadRequestError) as continued:
            await sdk(lambda: responses(a).responses.create(model="smart", input="Three.",
                                                            previous_response_id=r2.id))
        assert redis_calls(redis_server.port, "mget") == mgets              # refused from A's own store
        continued, referenced = await refused_on(a, r2, r1)
        calls = len(vendor.received)
    assert continued["code"] == "previous_response_not_found" and continued["param"] == "previous_response_id"
    assert referenced["param"] == "input[0].id"
    assert calls == 3                                                        # r1, r2, and r1 continued again


async def _applied(replica: Replica) -> dict | None:
    state = await deletions(replica)
    return state if state["applied"] >= 1 else None


async def test_a_delete_missed_while_unsubscribed_is_still_refused_after_it_returns(tmp_path, redis_server):
    """A's subscription is away (its connection killed, SUBSCRIBE refused by an ACL) while B
    deletes: A cannot hear it.  Once A subscribes again, the deletions counter has moved, so its
    own copies are doubtful and checked against Redis (one MGET) before they are trusted."""
    async with setup(tmp_path, redis_server.url) as (vendor, (a, b)):
        r1, r2 = await chained_on_a(a)
        await redis_call(redis_server.url, "ACL", "SETUSER", "default", "-subscribe")
        await redis_call(redis_server.url, "CLIENT", "KILL", "TYPE", "pubsub")
        await eventually(lambda: _unsubscribed(a), "A's subscription is lost")
        assert await sdk(lambda: responses(b).responses.delete(r2.id)) is None
        await redis_call(redis_server.url, "ACL", "SETUSER", "default", "+subscribe")
        back = await eventually(lambda: _counter_read(a, 1), "A subscribes again and reads the counter")
        assert back["applied"] == 0 and back["doubtful"] == 4                # missed: 2 turns, 2 items doubted
        continued, referenced = await refused_on(a, r2, r1)
        after = await deletions(a)
    assert continued["code"] == "previous_response_not_found"
    assert referenced["param"] == "input[0].id"
    assert after["rechecked"] == 3        # r2 and r1 in one MGET (r2 refused, r1 trusted again), r2's item


async def _unsubscribed(replica: Replica) -> bool:
    return not (await deletions(replica))["subscribed"]


async def _counter_read(replica: Replica, counter: int) -> dict | None:
    """Subscribed again (the second time) and the deletions counter read after it."""
    state = await deletions(replica)
    return state if state["subscribed"] and state["counter_reads"] >= 2 and state["counter"] == counter else None


async def test_a_resubscribe_with_no_deletion_missed_trusts_the_copies_again(tmp_path, redis_server):
    """The counter unmoved while A was away: nothing to doubt, so A's continuation asks Redis
    for nothing (the POST path gains no round trip after a reconnect either)."""
    async with setup(tmp_path, redis_server.url) as (vendor, (a, b)):
        r0 = await sdk(lambda: responses(a).responses.create(model="smart", input="Zero."))
        assert await sdk(lambda: responses(b).responses.delete(r0.id)) is None    # the counter at 1, heard by A
        await eventually(lambda: _applied(a), "A hears the deletion")
        r1, r2 = await chained_on_a(a)
        await redis_call(redis_server.url, "CLIENT", "KILL", "TYPE", "pubsub")
        state = await eventually(lambda: _counter_read(a, 1), "A reads the counter")
        assert state["doubtful"] == 0
        mgets = redis_calls(redis_server.port, "mget")
        r3 = await sdk(lambda: responses(a).responses.create(model="smart", input="Three.",
                                                             previous_response_id=r2.id))
        assert redis_calls(redis_server.port, "mget") == mgets
        assert r3.output_text == "Three."
        assert (await deletions(a))["rechecked"] == 0


async def _gone_on(replica: Replica, response_id: str) -> bool:
    async with httpx.AsyncClient(timeout=30) as client:
        return (await client.get(f"{replica.url}/v1/responses/{response_id}",
                                 headers={"authorization": "Bearer k"})).status_code == 404


async def test_a_delete_made_while_redis_is_away_reaches_the_others_once_it_returns(tmp_path, redis_server):
    """ADR 0025, pending deletions: Redis stopped, A deletes (answered, gone on A); B, which holds
    its own copy, still serves it (it cannot know); Redis back (empty: a restart), A replays the
    deletion (its resubscribe) and B's GET is a 404 within a bounded time; /metrics on A shows it."""
    async with setup(tmp_path, redis_server.url, reply="said on A") as (vendor, (a, b)):
        r1 = await sdk(lambda: responses(a).responses.create(model="smart", input="hello"))
        assert (await sdk(lambda: responses(b).responses.retrieve(r1.id))).id == r1.id    # B holds a copy
        redis_server.stop()
        assert await sdk(lambda: responses(a).responses.delete(r1.id)) is None
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: responses(a).responses.retrieve(r1.id))
        served = await sdk(lambda: responses(b).responses.retrieve(r1.id))      # during the outage: its copy
        pending = await deletions(a)
        assert (pending["pending"], pending["pending_added"], pending["published"]) == (1, 1, 0)
        redis_server.start()
        back = trio.current_time()
        await eventually(lambda: _gone_on(b, r1.id), "B's GET of the deleted response is a 404", timeout=30)
        took = trio.current_time() - back
        with pytest.raises(openai.BadRequestError) as continued:
            await sdk(lambda: responses(b).responses.create(model="smart", input="more",
                                                            previous_response_id=r1.id))
        after = await deletions(a)
        async with httpx.AsyncClient(timeout=30) as client:
            metrics = (await client.get(a.url + "/metrics")).text
    assert served.output_text == "said on A"
    assert continued.value.body["code"] == "previous_response_not_found"
    assert (after["pending"], after["replayed"]) == (0, 1)
    assert 'busbar_response_deletions_total{outcome="replayed"} 1.0' in metrics
    assert 'busbar_response_deletions_total{outcome="pending"} 1.0' in metrics
    assert "busbar_response_deletions_pending 0.0" in metrics
    assert took < 20, took          # A's reconnect backoff and B's own; a liveness bound on a loaded box
    print(f"B 404s {took:.2f} s after Redis returned")
