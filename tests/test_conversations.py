"""The OpenAI Conversations API served by the gateway (ADR 0030): the CRUD and items
endpoints, and `responses.create(conversation=...)` for members of every protocol (a
Responses one too), over sockets with the openai SDK as the client; the simulated vendors
record what they were sent."""
from __future__ import annotations

import time

import openai
import orjson
import pytest

from busbar.conversations import match, page, stored_items
from busbar.faults import ClientError
from busbar.mock import MockVendor
from busbar.protocols.responses import conversation_of, with_history
from harness import gateway_with, sdk
from test_openai_agents_sdk import agents, in_asyncio, vendor_saw, weather_agent  # noqa: F401 (a fixture)
from test_previous_response import client, conversation, create
from test_translation_e2e import config_for


def _keys() -> dict:
    return {"keys": [{"id": "alice", "key": "sk-alice-key"}, {"id": "bob", "key": "sk-bob-key"}]}


# ---------------------------------------------------------------------------
# pure


class _RacingRedis:
    """A cluster copy whose header another replica changes before every guarded write:
    `others` more times (then the write goes through)."""

    def __init__(self, others: int):
        self.others, self.header = others, None
        self.guarded = 0

    async def get_many(self, keys):
        return {k: self.header for k in keys if self.header is not None}

    async def put_many(self, entries, ttl_s, touch=()):
        if entries:                 # a new conversation's header (a touch writes nothing)
            self.header = entries[-1][1]
        return True

    async def put_many_if(self, guard, expected, entries, ttl_s, touch=()):
        self.guarded += 1
        if self.others:
            self.others -= 1        # another replica's addition landed first: a new header
            self.header = self.header[:-1] + b' }' if self.header else None
            return False
        assert expected == self.header
        self.header = entries[-1][1]
        return True


@pytest.mark.pure
@pytest.mark.parametrize("others", [0, 3, 8])
async def test_a_change_raced_by_another_is_read_and_applied_again_then_a_409(others):
    from types import SimpleNamespace

    from busbar import conversations as conv
    from busbar.item_store import ItemStore
    redis = _RacingRedis(others)
    gw = SimpleNamespace(item_store=ItemStore(), shared_items=redis)
    await conv.save(gw, "s", "conv_1", {"created_at": 1, "metadata": {}, "chunks": [], "next": 0})
    scope, header, seen = await conv.lookup(gw, ("s",), "conv_1")
    note = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}], "id": "msg_1"}]
    if others >= conv.MAX_RACES:
        with pytest.raises(ClientError) as exc:
            await conv.update(gw, scope, "conv_1", header, seen, lambda h: (h, {"added": note}))
        assert exc.value.status == 409 and redis.guarded == conv.MAX_RACES
        return
    written = await conv.update(gw, scope, "conv_1", header, seen, lambda h: (h, {"added": note}))
    assert written["chunks"] == [0] and redis.guarded == others + 1
    _, header, _ = await conv.lookup(gw, ("s",), "conv_1")
    assert await conv.load_items(gw, "s", "conv_1", header) == note


@pytest.mark.pure
def test_paths_ids_and_pages():
    assert match(b"/v1/conversations") == (None, None, False)
    assert match(b"/v1/conversations/conv_1") == ("conv_1", None, False)
    assert match(b"/v1/conversations/conv_1/items") == ("conv_1", None, True)
    assert match(b"/v1/conversations/conv_1/items/msg_2") == ("conv_1", "msg_2", True)
    assert match(b"/v1/conversations/conv_1/other") is None
    assert conversation_of({"conversation": "conv_1"}) == "conv_1"
    assert conversation_of({"conversation": {"id": "conv_1"}}) == "conv_1"
    assert conversation_of({}) is None
    with pytest.raises(ClientError) as err:
        conversation_of({"conversation": 3})
    assert err.value.status == 400 and err.value.param == "conversation"
    assert "conversation" not in with_history({"conversation": "conv_1", "input": "hi"}, [])
    items = stored_items([{"role": "user", "content": "hi"}, {"type": "message", "role": "assistant", "content": "yo"},
                          {"id": "fc_mine", "type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}])
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}] and items[0]["status"] == "completed"
    assert items[1]["content"][0]["type"] == "output_text" and items[0]["id"].startswith("msg_")
    assert items[2]["id"] == "fc_mine"
    first = page(items, {"order": ["asc"], "limit": ["2"]}, "conv_1")
    assert [i["id"] for i in first["data"]] == [items[0]["id"], items[1]["id"]] and first["has_more"]
    rest = page(items, {"order": ["asc"], "after": [first["last_id"]]}, "conv_1")
    assert rest["data"] == [items[2]] and not rest["has_more"]
    assert page(items, {}, "conv_1")["first_id"] == "fc_mine"             # desc by default
    with pytest.raises(ClientError):
        page(items, {"after": ["nope"]}, "conv_1")
    with pytest.raises(ClientError):
        stored_items([{"type": "item_reference", "id": "msg_1"}])


# ---------------------------------------------------------------------------
# over sockets


@pytest.mark.sdk
async def test_crud_and_items_endpoints_with_caller_scoping():
    config = config_for("anthropic")
    config["auth"] = _keys()
    async with gateway_with(config, a=MockVendor()) as gw:
        c, bob = client(gw, "sk-alice-key"), client(gw, "sk-bob-key")
        conv = await sdk(lambda: c.conversations.create(
            items=[{"type": "message", "role": "user", "content": "My name is Ada."}], metadata={"topic": "names"}))
        assert conv.id.startswith("conv_") and conv.object == "conversation" and conv.metadata == {"topic": "names"}
        assert abs(conv.created_at - time.time()) < 60
        got = await sdk(lambda: c.conversations.retrieve(conv.id))
        assert got.id == conv.id and got.metadata == {"topic": "names"}
        updated = await sdk(lambda: c.conversations.update(conv.id, metadata={"topic": "people"}))
        assert updated.metadata == {"topic": "people"}
        added = await sdk(lambda: c.conversations.items.create(conv.id, items=[
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hi Ada."}]},
            {"type": "message", "role": "user", "content": "Remember it."}]))
        assert len(added.data) == 2 and added.first_id == added.data[0].id and not added.has_more
        listed = await sdk(lambda: list(c.conversations.items.list(conv.id, order="asc")))
        assert [i.role for i in listed] == ["user", "assistant", "user"]
        assert listed[0].content[0].text == "My name is Ada." and listed[1].content[0].text == "Hi Ada."
        one = await sdk(lambda: c.conversations.items.retrieve(listed[1].id, conversation_id=conv.id))
        assert one.id == listed[1].id and one.content[0].text == "Hi Ada."
        paged = await sdk(lambda: c.conversations.items.list(conv.id, limit=1))
        assert [i.id for i in paged.data] == [listed[2].id] and paged.has_more
        # another key: the same 404 as an unknown id, whatever it tries, and alice's stays
        for call in (lambda: bob.conversations.retrieve(conv.id), lambda: bob.conversations.delete(conv.id),
                     lambda: list(bob.conversations.items.list(conv.id)),
                     lambda: bob.conversations.update(conv.id, metadata={}),
                     lambda: bob.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]),
                     lambda: c.conversations.retrieve("conv_unknown")):
            with pytest.raises(openai.NotFoundError) as info:
                await sdk(call)
            assert info.value.body["type"] == "invalid_request_error" and "not found" in info.value.body["message"]
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: c.conversations.items.retrieve("msg_nope", conversation_id=conv.id))
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: c.conversations.create(items=[{"role": "user", "content": "x"}] * 21))
        assert info.value.body["param"] == "items"
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: c.conversations.create(metadata={"k": 3}))
        assert info.value.body["param"] == "metadata"
        # deleting an item answers the conversation; it is gone from the list
        after = await sdk(lambda: c.conversations.items.delete(listed[1].id, conversation_id=conv.id))
        assert after.id == conv.id and after.object == "conversation"
        left = await sdk(lambda: list(c.conversations.items.list(conv.id, order="asc")))
        assert [i.id for i in left] == [listed[0].id, listed[2].id]
        gone = await sdk(lambda: c.conversations.delete(conv.id))
        assert gone.id == conv.id and gone.deleted and gone.object == "conversation.deleted"
        for call in (lambda: c.conversations.retrieve(conv.id), lambda: list(c.conversations.items.list(conv.id))):
            with pytest.raises(openai.NotFoundError):
                await sdk(call)


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("vendor", ["anthropic", "openai", "responses"])
async def test_a_response_in_a_conversation_sees_it_whole_and_is_appended(vendor, stream):
    mock = MockVendor(reply="Noted.")
    config = config_for(vendor)
    config["auth"] = _keys()
    async with gateway_with(config, a=mock) as gw:
        c = client(gw, "sk-alice-key")
        conv = await sdk(lambda: c.conversations.create(
            items=[{"type": "message", "role": "user", "content": "My name is Ada."}]))
        r1 = await sdk(lambda: create(c, stream, input="I live in Oslo.", conversation=conv.id))
        assert r1.output_text == "Noted."
        if vendor != "responses":        # a translated answer echoes it as OpenAI's does (a vendor's own: as it sent)
            assert r1.conversation.id == conv.id
        r2 = await sdk(lambda: create(c, stream, input="Where do I live?", conversation={"id": conv.id},
                                      instructions="Be brief."))
        assert r2.status == "completed"
        seen = mock.received[-1]
        assert "conv_" not in seen["raw"]                # the vendor never hears of the conversation
        system, turns = conversation(seen)
        # (adjacent user messages may be merged by the member's protocol)
        assert " ".join(text for _, text in turns) == "My name is Ada. I live in Oslo. Noted. Where do I live?"
        assert [role for role, _ in turns][-2:] == ["assistant", "user"] and system == ["Be brief."]
        items = await sdk(lambda: list(c.conversations.items.list(conv.id, order="asc")))
        texts = [(i.role, i.content[0].text) for i in items]
        assert texts == [("user", "My name is Ada."), ("user", "I live in Oslo."), ("assistant", "Noted."),
                         ("user", "Where do I live?"), ("assistant", "Noted.")]
        assert items[2].id == r1.output[0].id        # the output item under the id the answer showed
        # another key cannot take part in it; an unknown one is a 404 naming `conversation`
        bob = client(gw, "sk-bob-key")
        before = len(mock.received)
        for who, conv_id in ((bob, conv.id), (c, "conv_unknown")):
            with pytest.raises(openai.NotFoundError) as info:
                await sdk(lambda: create(who, stream, input="hi", conversation=conv_id))
            assert info.value.body["param"] == "conversation"
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: create(c, stream, input="hi", conversation=conv.id, previous_response_id=r1.id))
        assert info.value.body["param"] == "conversation"
        assert len(mock.received) == before           # refused before any member call


@pytest.mark.sdk
async def test_a_failed_response_adds_nothing_to_the_conversation():
    mock = MockVendor(reply="Noted.")
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        conv = await sdk(lambda: c.conversations.create())
        mock.always = {"status": 400}
        with pytest.raises(openai.APIStatusError):
            await sdk(lambda: c.responses.create(model="smart", input="hello", conversation=conv.id))
        mock.always = None
        assert await sdk(lambda: list(c.conversations.items.list(conv.id))) == []


# ---------------------------------------------------------------------------
# the OpenAI Agents SDK through a pool whose member speaks Anthropic Messages


class Wire:
    """What the SDK sent the gateway: (method, path, JSON body or None), from an httpx hook."""

    def __init__(self):
        self.sent: list[tuple[str, str, dict | None]] = []

    async def __call__(self, request) -> None:
        self.sent.append((request.method, request.url.path, orjson.loads(request.content) if request.content else None))


def _agents_setup(agents, gw, wire: Wire, tool_calls: list):
    """The Agents SDK's client on the gateway (its requests seen by `wire`), a run config on
    the Responses API and the weather agent."""
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0,
                                http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [wire]}))
    config = agents.RunConfig(model_provider=agents.OpenAIProvider(openai_client=client, use_responses=True),
                              tracing_disabled=True)
    return client, config, weather_agent(tool_calls)


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
async def test_agents_runner_with_a_conversation_id(stream, agents):
    """`Runner.run(conversation_id=...)`: each request names the conversation and carries
    only what is new (the tool loop's output too); the member gets the whole of it."""
    mock, wire, tool_calls = MockVendor(use_tools=True), Wire(), []
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        async def script():
            client, config, agent = _agents_setup(agents, gw, wire, tool_calls)
            conv = await client.conversations.create()

            async def run(text):
                if not stream:
                    return await agents.Runner.run(agent, text, run_config=config, conversation_id=conv.id)
                result = agents.Runner.run_streamed(agent, text, run_config=config, conversation_id=conv.id)
                async for _ in result.stream_events():
                    pass
                return result

            first = await run("Weather in Paris?")
            second = await run("And in Lyon?")
            items = [i async for i in client.conversations.items.list(conv.id, order="asc")]
            return conv, first, second, items

        conv, first, second, items = await in_asyncio(script)
    assert first.final_output == second.final_output == "tool said: sunny in Paris"
    posts = [body for method, path, body in wire.sent if path == "/v1/responses"]
    assert len(posts) == 4 and all(b["conversation"] == conv.id for b in posts)
    assert [[i.get("type", "message") for i in b["input"]] for b in posts] == [
        ["message"], ["function_call_output"], ["message"], ["function_call_output"]]
    sent = vendor_saw(mock, "anthropic")
    _, turns = conversation(sent[3])
    assert turns == [("user", "Weather in Paris?"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris"),
                     ("assistant", "tool said: sunny in Paris"),
                     ("user", "And in Lyon?"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris")]
    assert [i.type for i in items] == ["message", "function_call", "function_call_output", "message"] * 2


@pytest.mark.sdk
async def test_agents_openai_conversations_session(agents):
    """`OpenAIConversationsSession`: the SDK creates the conversation, reads its items
    before each run and adds the run's items after; the member sees the first run on the second."""
    mock, wire, tool_calls = MockVendor(use_tools=True), Wire(), []
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        async def script():
            client, config, agent = _agents_setup(agents, gw, wire, tool_calls)
            session = agents.OpenAIConversationsSession(openai_client=client)
            first = await agents.Runner.run(agent, "Weather in Paris?", run_config=config, session=session)
            second = await agents.Runner.run(agent, "Thanks!", run_config=config, session=session)
            return session.session_id, first, second, await session.get_items()

        conv_id, first, second, kept = await in_asyncio(script)
    posts = [body for method, path, body in wire.sent if path == "/v1/responses"]
    resent = posts[2]["input"]                  # the second run: the items the SDK listed back, with their ids
    assert resent[0]["content"][0]["text"] == "Weather in Paris?" and resent[0]["id"].startswith("msg_")
    assert conv_id.startswith("conv_")
    assert any(method == "POST" and path == "/v1/conversations" for method, path, _ in wire.sent)
    assert first.final_output == second.final_output == "tool said: sunny in Paris"
    sent = vendor_saw(mock, "anthropic")
    _, turns = conversation(sent[3])
    assert turns[:5] == [("user", "Weather in Paris?"), ("assistant", "call:get_weather"),
                         ("user", "result:sunny in Paris"), ("assistant", "tool said: sunny in Paris"),
                         ("user", "Thanks!")]
    roles = [i.get("role") for i in kept if i.get("type", "message") == "message"]
    assert roles[:2] == ["user", "assistant"] and roles.count("user") >= 2
