"""Conversations (ADR 0030) shared through Redis: two `busbar serve` processes on one real
redis-server; a conversation created on one replica is answered, listed and deleted on the other."""
from __future__ import annotations

import openai
import pytest

from cluster_support import Replica, two_replicas
from harness import sdk
from redis_support import needs_redis, redis_server  # noqa: F401  (fixture)
from test_previous_response import conversation

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_redis]


def client(replica: Replica) -> openai.OpenAI:
    return openai.OpenAI(base_url=replica.url + "/v1", api_key="k", max_retries=0)


async def test_a_conversation_made_on_one_replica_goes_on_and_ends_on_the_other(tmp_path, redis_server):
    async with two_replicas(tmp_path, redis_server.url, "conversations", reply="Noted.") as (vendor, (a, b)):
        conv = await sdk(lambda: client(a).conversations.create(
            items=[{"type": "message", "role": "user", "content": "My name is Ada."}]))
        r1 = await sdk(lambda: client(b).responses.create(model="smart", input="I live in Oslo.", conversation=conv.id))
        assert r1.output_text == "Noted."
        r2 = await sdk(lambda: client(a).responses.create(model="smart", input="Where?", conversation=conv.id))
        assert r2.output_text == "Noted."
        _, turns = conversation(vendor.received[-1])
        assert " ".join(text for _, text in turns) == "My name is Ada. I live in Oslo. Noted. Where?"
        items = await sdk(lambda: list(client(b).conversations.items.list(conv.id, order="asc")))
        assert [i.content[0].text for i in items] == ["My name is Ada.", "I live in Oslo.", "Noted.", "Where?", "Noted."]
        gone = await sdk(lambda: client(b).conversations.delete(conv.id))
        assert gone.deleted
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: client(a).conversations.retrieve(conv.id))
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: client(a).responses.create(model="smart", input="hi", conversation=conv.id))


async def test_additions_at_once_through_both_replicas_all_land(tmp_path, redis_server):
    """Each addition reads the header, then writes it with its chunk: twelve at once through
    two replicas (each read an await on Redis) would overwrite one another's chunks without
    the guarded write; with it every one lands, each once, and the metadata update too."""
    import trio
    async with two_replicas(tmp_path, redis_server.url, "conversations", reply="Noted.") as (vendor, (a, b)):
        conv = await sdk(lambda: client(a).conversations.create())
        clients = {a: client(a), b: client(b)}

        async def add(n: int) -> None:
            c = clients[a if n % 2 else b]
            await sdk(lambda: c.conversations.items.create(
                conv.id, items=[{"type": "message", "role": "user", "content": f"note {n}"}]))

        async with trio.open_nursery() as nursery:
            for n in range(12):
                nursery.start_soon(add, n)
            nursery.start_soon(lambda: sdk(lambda: clients[b].conversations.update(conv.id, metadata={"k": "v"})))
        items = await sdk(lambda: list(client(a).conversations.items.list(conv.id, order="asc", limit=100)))
        assert sorted(i.content[0].text for i in items) == sorted(f"note {n}" for n in range(12))
        assert (await sdk(lambda: client(b).conversations.retrieve(conv.id))).metadata == {"k": "v"}
