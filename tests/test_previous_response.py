"""OpenAI Responses `previous_response_id` emulated for members that are not OpenAI
Responses (ADR 0024): the turns the gateway answered are kept (busbar.item_store) and a
continuation gets its conversation put back before translation.  Over sockets with the
openai SDK as the client; the simulated vendors record what they were sent."""
from __future__ import annotations

import openai
import orjson
import pytest

from busbar import ir
from busbar.item_store import ItemStore, decode, decode_turn, key_of, turn_key
from busbar.mock import MockVendor
from busbar.protocols import get_dialect
from busbar.protocols.responses import dialect as responses
from busbar.faults import ClientError
from harness import gateway_with, sdk
from test_translation_e2e import config_for

MEMBERS = ["openai", "anthropic"]           # a Chat Completions member and a Messages one
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def conversation(seen: dict) -> tuple[list[str], list[tuple[str, str]]]:
    """What a simulated vendor was sent, read back with the gateway's own parser of its
    protocol: the system texts and each message as (role, its text)."""
    req = get_dialect(seen["protocol"]).parse_request(seen["body"], {"model": seen["model"]})
    system = [p.text for p in req.system] + [p.text for m in req.messages if m.role == ir.SYSTEM for p in m.content]
    turns = []
    for m in req.messages:
        if m.role == ir.SYSTEM:
            continue
        text = " ".join(p.text for p in m.content if type(p) is ir.Text)
        calls = " ".join(f"call:{p.name}" for p in m.content if type(p) is ir.ToolCall)
        results = " ".join(f"result:{x.text}" for p in m.content if type(p) is ir.ToolResult for x in p.content)
        turns.append((m.role, " ".join(t for t in (text, calls, results) if t)))
    return system, turns


def client(gw, key: str = "k") -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def create(c: openai.OpenAI, stream: bool, **kw):
    if not stream:
        return c.responses.create(model="smart", **kw)
    with c.responses.stream(model="smart", **kw) as events:
        return events.get_final_response()


# ---------------------------------------------------------------------------
# pure: the store and the request


@pytest.mark.pure
def test_a_turn_is_kept_apart_from_items_bounded_and_renewed_by_use():
    clock = Clock()
    store = ItemStore(max_turn_bytes=300, ttl_s=10, now=clock)
    out = [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "hi Ada", "annotations": []}]}]
    key, data = store.keep_turn("k", "resp_1", None, [{"role": "user", "content": "I am Ada"}], out)
    assert key == turn_key("k", "resp_1") != key_of("k", "resp_1")
    turn = decode_turn(store.get(key))
    assert turn.previous is None and turn.input == [{"role": "user", "content": "I am Ada"}]
    assert turn.output == [{"type": "message", "role": "assistant",      # no id, no status: an input item
                            "content": [{"type": "output_text", "text": "hi Ada", "annotations": []}]}]
    assert decode(data) is None                            # a turn is never read as an item ...
    assert decode_turn(orjson.dumps(out[0])) is None        # ... nor an item as a turn
    assert store.get(turn_key("other", "resp_1")) is None    # another caller's scope
    _, big = store.keep_turn("k", "resp_2", "resp_1", [{"role": "user", "content": "x" * 400}], out, vendor=True)
    dropped = decode_turn(big)
    assert dropped.dropped > 300 and dropped.vendor and dropped.previous == "resp_1" and not dropped.input
    clock.t = 8.0
    store.touch(key)                                       # continued: its TTL starts over
    clock.t = 15.0
    assert store.get(key) is not None and store.get(turn_key("k", "resp_2")) is None


@pytest.mark.pure
def test_a_continued_request_is_self_contained_with_its_own_instructions():
    obj = {"model": "m", "previous_response_id": "resp_1", "instructions": "now", "input": "more"}
    assert responses.previous_of(obj) == "resp_1"
    history = [{"role": "user", "content": "first"}, {"type": "message", "role": "assistant", "content": "ok"}]
    out = responses.with_history(obj, history)
    assert out == {"model": "m", "instructions": "now",
                   "input": history + [{"role": "user", "content": "more"}]}
    assert responses.previous_of({"input": "x"}) is None
    for bad, param in [({"previous_response_id": 5}, "previous_response_id"),
                       ({"previous_response_id": "r", "conversation": "conv_1"}, "conversation")]:
        with pytest.raises(ClientError) as info:
            responses.previous_of(bad)
        assert info.value.status == 400 and info.value.param == param
    assert responses.stores({}) and not responses.stores({"store": False})


# ---------------------------------------------------------------------------
# over sockets


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("vendor", MEMBERS)
async def test_the_member_sees_the_whole_conversation_and_only_the_new_instructions(vendor, stream):
    mock = MockVendor()                       # echoes the last user text
    async with gateway_with(config_for(vendor), a=mock) as gw:
        c = client(gw)
        r1 = await sdk(lambda: create(c, stream, input="My name is Ada.", instructions="Be terse."))
        assert r1.id.startswith("resp_") and r1.output_text == "My name is Ada."
        r2 = await sdk(lambda: create(c, stream, input="What is my name?", previous_response_id=r1.id,
                                      instructions="Be kind."))
        system, turns = conversation(mock.received[-1])
        assert system == ["Be kind."]                      # the first turn's instructions are not carried over
        assert turns == [("user", "My name is Ada."), ("assistant", "My name is Ada."),
                         ("user", "What is my name?")]
        r3 = await sdk(lambda: create(c, stream, input=[{"role": "user", "content": "And again?"}],
                                      previous_response_id=r2.id))
        system, turns = conversation(mock.received[-1])
        store = gw.app.items
    assert r3.output_text == "And again?" and len({r1.id, r2.id, r3.id}) == 3
    assert system == []
    assert turns == [("user", "My name is Ada."), ("assistant", "My name is Ada."),
                     ("user", "What is my name?"), ("assistant", "What is my name?"), ("user", "And again?")]
    assert "previous_response_id" not in mock.received[-1]["raw"]
    assert store.continued == 2


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", MEMBERS)
async def test_a_tool_loop_continued_by_id_as_agents_run_it(vendor):
    """The Agents SDK's loop with `previous_response_id`: the second request carries only
    the function_call_output; the member sees the call it made and the result."""
    mock = MockVendor(use_tools=True)
    async with gateway_with(config_for(vendor), a=mock) as gw:
        c = client(gw)
        r1 = await sdk(lambda: c.responses.create(model="smart", input="Weather in Paris?", tools=[WEATHER]))
        call = next(item for item in r1.output if item.type == "function_call")
        r2 = await sdk(lambda: c.responses.create(model="smart", previous_response_id=r1.id, tools=[WEATHER],
                                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                                          "output": "sunny"}]))
    assert r2.output_text == "tool said: sunny"
    _, turns = conversation(mock.received[-1])
    assert turns == [("user", "Weather in Paris?"), ("assistant", "call:get_weather"), ("user", "result:sunny")]


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
async def test_store_false_is_not_kept_and_cannot_be_continued(stream):
    mock = MockVendor(reply="not kept")
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        r1 = await sdk(lambda: create(c, stream, input="hello", store=False))
        assert gw.app.items.turns_kept == 0 and len(gw.app.items) == 0      # nor its items
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: create(c, stream, input="again", previous_response_id=r1.id))
    assert info.value.body["code"] == "previous_response_not_found"
    assert info.value.body["param"] == "previous_response_id"
    assert info.value.body["type"] == "invalid_request_error"
    assert f"Previous response with id '{r1.id}' not found" in info.value.body["message"]
    assert "store: false" in info.value.body["message"]
    assert len(mock.received) == 1                          # refused before any member was called


@pytest.mark.sdk
async def test_an_unknown_or_another_callers_id_is_not_found_in_responses_shape():
    import httpx

    mock = MockVendor(reply="for alice")
    config = config_for("openai")
    config["auth"] = {"keys": [{"id": "alice", "key": "sk-alice-key"}, {"id": "bob", "key": "sk-bob-key"}]}
    async with gateway_with(config, a=mock) as gw:
        first = await sdk(lambda: client(gw, "sk-alice-key").responses.create(model="smart", input="hi"))
        with pytest.raises(openai.BadRequestError) as other:
            await sdk(lambda: client(gw, "sk-bob-key").responses.create(model="smart", input="mine?",
                                                                        previous_response_id=first.id))
        with pytest.raises(openai.BadRequestError) as unknown:
            await sdk(lambda: client(gw, "sk-alice-key").responses.create(model="smart", input="x",
                                                                          previous_response_id="resp_nobody"))
        async with httpx.AsyncClient(base_url=gw.url + "/v1", timeout=30,
                                     headers={"authorization": "Bearer sk-alice-key"}) as raw:
            typed = await raw.post("/responses", json={"model": "smart", "input": "x", "previous_response_id": 7})
        # alice still continues her own
        again = await sdk(lambda: client(gw, "sk-alice-key").responses.create(
            model="smart", input="more", previous_response_id=first.id))
    for info in (other, unknown):
        assert info.value.status_code == 400
        assert info.value.body["code"] == "previous_response_not_found"
        assert info.value.body["param"] == "previous_response_id"
    assert "resp_nobody" in unknown.value.body["message"]
    assert typed.status_code == 400 and typed.json()["error"]["param"] == "previous_response_id"
    assert again.output_text == "for alice"
    assert [r["body"]["messages"][-1]["content"] for r in mock.received] == ["hi", "more"]


def _mixed_pool() -> dict:
    """OpenAI Responses first, Claude behind it."""
    config = config_for("responses")
    config["providers"]["claude"] = {"protocol": "anthropic", "base_url": "{a}", "key": "k2"}
    config["pools"]["smart"] = {"strategy": "ordered", "members": [
        {"provider": "up", "model": "upstream-model", "id": "oai", "max_tokens": 64},
        {"provider": "claude", "model": "claude-x", "id": "claude", "priority": 1, "max_tokens": 64}]}
    return config


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
async def test_a_vendor_response_id_goes_to_its_vendor_untouched_and_fails_over_with_its_history(stream):
    """The vendor holds its own responses: a continuation of one is passed through byte for
    byte; when that vendor fails, Claude gets the conversation the gateway kept alongside."""
    mock = MockVendor()
    async with gateway_with(_mixed_pool(), a=mock) as gw:
        c = client(gw)
        r1 = await sdk(lambda: create(c, stream, input="I like tea."))
        assert mock.received[-1]["protocol"] == "responses"
        await sdk(lambda: create(c, stream, input="What do I like?", previous_response_id=r1.id))
        seen = mock.received[-1]
        assert seen["protocol"] == "responses"
        assert seen["body"]["previous_response_id"] == r1.id and seen["body"]["input"] == "What do I like?"
        mock.fail_next({"status": 500, "model": "upstream-model"})
        again = await sdk(lambda: create(c, stream, input="Tell me.", previous_response_id=r1.id))
    assert again.output_text == "Tell me."
    seen = mock.received[-1]
    assert seen["protocol"] == "anthropic"
    assert conversation(seen)[1] == [("user", "I like tea."), ("assistant", "I like tea."), ("user", "Tell me.")]


@pytest.mark.sdk
async def test_a_response_the_gateway_answered_is_translated_even_for_the_responses_member():
    """Claude answered the first turn (the vendor failed): the OpenAI member never saw it, so
    the continuation reaches it as one self-contained request, without the id."""
    mock = MockVendor()
    async with gateway_with(_mixed_pool(), a=mock) as gw:
        c = client(gw)
        mock.fail_next({"status": 500, "model": "upstream-model"})
        r1 = await sdk(lambda: c.responses.create(model="smart", input="I like tea."))
        assert mock.received[-1]["protocol"] == "anthropic"
        r2 = await sdk(lambda: c.responses.create(model="smart", input="And?", previous_response_id=r1.id))
        seen = mock.received[-1]
        assert seen["protocol"] == "responses" and "previous_response_id" not in seen["body"]
        assert conversation(seen)[1] == [("user", "I like tea."), ("assistant", "I like tea."), ("user", "And?")]
        # the vendor's answer to that is its own, continued on it by its id
        await sdk(lambda: c.responses.create(model="smart", input="More.", previous_response_id=r2.id))
        mock.fail_next({"status": 500, "model": "upstream-model"})
        await sdk(lambda: c.responses.create(model="smart", input="Last.", previous_response_id=r2.id))
    assert mock.received[-1]["protocol"] == "anthropic"
    assert [t for _, t in conversation(mock.received[-1])[1]] == ["I like tea.", "I like tea.", "And?", "And?",
                                                                  "Last."]


@pytest.mark.sdk
async def test_an_id_only_its_vendor_knows_passes_over_the_member_that_cannot_resolve_it():
    mock = MockVendor(reply="from the vendor")
    config = _mixed_pool()
    config["pools"]["smart"]["members"][0]["priority"] = 1        # Claude first
    config["pools"]["smart"]["members"][1]["priority"] = 0
    async with gateway_with(config, a=mock) as gw:
        answer = await sdk(lambda: client(gw).responses.create(model="smart", input="again",
                                                               previous_response_id="resp_vendor_own"))
    assert answer.output_text == "from the vendor"
    assert [r["protocol"] for r in mock.received] == ["responses"]
    assert mock.received[-1]["body"]["previous_response_id"] == "resp_vendor_own"


@pytest.mark.sdk
async def test_a_pool_of_responses_members_passes_every_id_through():
    mock = MockVendor(reply="vendor")
    async with gateway_with(config_for("responses"), a=mock) as gw:
        await sdk(lambda: client(gw).responses.create(model="smart", input="x", previous_response_id="resp_v1"))
        store = gw.app.items
    assert mock.received[-1]["body"]["previous_response_id"] == "resp_v1"
    assert store.turns_kept == 0                      # the vendor keeps its own; nothing here


@pytest.mark.sdk
async def test_input_tokens_counts_the_continued_conversation():
    mock = MockVendor()
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        r1 = await sdk(lambda: c.responses.create(model="smart", input="My name is Ada."))
        await sdk(lambda: c.responses.input_tokens.count(model="smart", input="Who am I?", previous_response_id=r1.id))
        seen = mock.received[-1]
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: c.responses.input_tokens.count(model="smart", input="x", previous_response_id="resp_no"))
    assert seen["path"].endswith("/count_tokens")
    assert conversation({**seen, "body": {**seen["body"], "max_tokens": 1}})[1] == [
        ("user", "My name is Ada."), ("assistant", "My name is Ada."), ("user", "Who am I?")]
    assert info.value.body["code"] == "previous_response_not_found"
