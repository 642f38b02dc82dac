"""Responses `item_reference`s to items the gateway minted (issue 19): the bounded store,
the resolution in `input`, and over sockets with the openai SDK as the client against
members that are not OpenAI Responses (and one that is: passthrough untouched)."""
from __future__ import annotations

import openai
import orjson
import pytest

from busbar.item_store import ItemStore, decode, key_of
from busbar.mock import MockVendor
from busbar.protocols.responses import dialect as responses
from harness import gateway_with, sdk
from test_translation_e2e import config_for


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


MSG = {"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
       "content": [{"type": "output_text", "text": "earlier", "annotations": []}]}


@pytest.mark.pure
def test_kept_without_bookkeeping_and_bounded_by_entries_bytes_and_ttl():
    clock = Clock()
    store = ItemStore(max_entries=2, max_bytes=400, max_item_bytes=200, ttl_s=10, now=clock)
    kept = store.keep("k", [MSG, {"type": "message"}])           # an item without an id is not kept
    assert [key for key, _ in kept] == ["k/msg_1"]
    assert orjson.loads(store.get("k/msg_1")) == {k: v for k, v in MSG.items() if k not in ("id", "status")}
    assert store.get("other/msg_1") is None                      # another caller's scope
    assert not store.keep("k", [{"id": "big", "type": "message", "content": "x" * 300}])
    for i in range(3):
        store.keep("k", [{**MSG, "id": f"m{i}"}])
    assert len(store) == 2 and store.get("k/m0") is None         # oldest out
    store.keep("k", [{**MSG, "id": "wide", "content": [{"type": "output_text", "text": "y" * 150}]}] * 1)
    assert store.size <= 400
    clock.t = 11.0
    assert store.get("k/wide") is None and store.get("k/m2") is None


@pytest.mark.pure
def test_one_callers_keys_cannot_name_anothers_or_a_turn():
    """Keys are `scope/id`: the scope is a key id (config or minted, one
    schema), which cannot hold "/", so no item id reaches another caller's
    scope; an item id spelling a turn's key reads back as no item."""
    from busbar.admin.keys import validator
    from busbar.config import load_schema
    key_id = load_schema("config.schema.json")["$defs"]["client_key"]["properties"]["id"]
    assert "/" not in key_id["pattern"] and key_id["pattern"].startswith("^[") and key_id["pattern"].endswith("]+$")
    assert any("id" in tuple(e.absolute_path) for e in validator().iter_errors({"id": "a/b"}))
    store = ItemStore(now=Clock())
    key, _ = store.keep_turn("k", "resp_1", None, [{"type": "message", "role": "user", "content": "hi"}], [MSG])
    assert key == key_of("k", "response/resp_1")          # the same key an item id "response/resp_1" makes
    assert decode(store.get(key)) is None                  # ... and it is no item


@pytest.mark.pure
def test_references_are_found_and_replaced_in_place_others_kept():
    obj = {"model": "m", "input": [{"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_1"},
                                   {"type": "item_reference", "id": "vendor_9"}, {"role": "user", "content": "more"}]}
    assert responses.references(obj) == [("input[1].id", "msg_1"), ("input[2].id", "vendor_9")]
    store = ItemStore()
    store.keep("-", [MSG])
    out = responses.with_references(obj, {"msg_1": store.get(key_of("-", "msg_1"))})
    assert out["input"][1]["role"] == "assistant" and out["input"][2] == obj["input"][2]
    assert obj["input"][1]["type"] == "item_reference"                  # the client's object is not changed
    req = responses.parse_request(out)
    assert [m.role for m in req.messages[:2]] == ["user", "assistant"]


def _responses_config(vendor: str) -> dict:
    return config_for(vendor)


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_openai_sdk_sends_an_item_reference_the_member_sees_the_item(vendor, stream):
    mock = MockVendor(reply="first answer")
    async with gateway_with(config_for(vendor), a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        def turn(input_):
            if not stream:
                return client.responses.create(model="smart", input=input_)
            with client.responses.stream(model="smart", input=input_) as events:
                return events.get_final_response()

        first = await sdk(lambda: turn("hello"))
        item = first.output[0]
        assert item.type == "message" and item.id
        second = await sdk(lambda: turn([{"role": "user", "content": "hello"},
                                         {"type": "item_reference", "id": item.id},
                                         {"role": "user", "content": "and again"}]))
        assert second.output_text == "first answer"
        store = gw.app.items
    sent = mock.received[-1]["body"]
    assert "first answer" in orjson.dumps(sent).decode()          # the referenced item reached the vendor
    assert store.resolved == 1


@pytest.mark.sdk
async def test_an_unknown_item_reference_is_a_400_naming_its_input_path():
    mock = MockVendor(reply="x")
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: client.responses.create(model="smart", input=[
                {"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_nobody_made_this"}]))
    assert info.value.body["param"] == "input[1].id"
    assert "msg_nobody_made_this" in info.value.body["message"]
    assert mock.received == []


@pytest.mark.integration
async def test_a_responses_member_gets_vendor_references_byte_for_byte_and_minted_ones_resolved():
    """Same protocol: a reference the gateway did not mint is the vendor's own (it
    resolves it): the bytes go through untouched.  One the gateway minted (an earlier
    turn answered by an Anthropic member) is put back in place, so the vendor never
    sees an id it did not issue."""
    import httpx

    mock = MockVendor(reply="from the vendor")
    config = config_for("responses")
    config["providers"]["claude"] = {"protocol": "anthropic", "base_url": "{a}", "key": "k2"}
    config["pools"]["claude"] = {"members": [{"provider": "claude", "model": "c", "max_tokens": 64}]}
    async with gateway_with(config, a=mock) as gw:
        async with httpx.AsyncClient(base_url=gw.url + "/v1", timeout=30) as client:
            raw = (b'{"model": "smart", "input": [{"role": "user", "content": "hi"},'
                   b' {"type": "item_reference", "id": "msg_vendor_own"}]}')
            r = await client.post("/responses", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 200
            assert mock.received[-1]["body"] == orjson.loads(raw.replace(b'"smart"', b'"upstream-model"'))
            first = (await client.post("/responses", json={"model": "claude", "input": "hi"})).json()
            minted = first["output"][0]["id"]
            r = await client.post("/responses", json={"model": "smart", "input": [
                {"role": "user", "content": "hi"}, {"type": "item_reference", "id": minted},
                {"type": "item_reference", "id": "msg_vendor_own"}]})
            assert r.status_code == 200, r.text
    sent = mock.received[-1]["body"]["input"]
    assert sent[1]["role"] == "assistant" and "from the vendor" in orjson.dumps(sent[1]).decode()
    assert "id" not in sent[1]
    assert sent[2] == {"type": "item_reference", "id": "msg_vendor_own"}


@pytest.mark.sdk
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["buffered", "streamed"])
@pytest.mark.parametrize("vendor", ["anthropic", "gemini"])
async def test_vercel_ai_sdk_two_turns_with_default_store_true(vendor, mode):
    """`@ai-sdk/openai`'s Responses provider sends the first answer's text back as an
    item_reference (its default `store: true`); the member (not OpenAI) sees the text."""
    import json
    import shutil
    from pathlib import Path

    import trio

    js = Path(__file__).parent / "js"
    if shutil.which("node") is None or not (js / "node_modules").is_dir():
        pytest.skip("node or the JS SDKs (tests/js, npm ci) are not installed")
    mock = MockVendor(reply="the first answer")
    async with gateway_with(config_for(vendor), a=mock) as gw:
        with trio.fail_after(120):
            done = await trio.run_process(["node", str(js / "vercel_store.mjs"), gw.url, "smart", mode],
                                          capture_stdout=True, capture_stderr=True, check=False)
        store = gw.app.items
    row = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert row["ok"], row.get("error") or done.stderr.decode()[-2000:]
    assert row["first"] == row["second"] == "the first answer"
    assert row["itemIds"], "the SDK kept no item id to refer to"
    assert store.resolved >= 1                               # the second turn referred to the first answer
    sent = orjson.dumps(mock.received[-1]["body"]).decode()
    assert sent.count("the first answer") == 1 and "and again" in sent


def _mixed_pool() -> dict:
    """OpenAI Responses first, Claude behind it: the common failover of a Responses client."""
    config = config_for("responses")
    config["providers"]["claude"] = {"protocol": "anthropic", "base_url": "{a}", "key": "k2"}
    config["pools"]["smart"] = {"strategy": "ordered", "members": [
        {"provider": "up", "model": "upstream-model", "id": "oai", "max_tokens": 64},
        {"provider": "claude", "model": "claude-x", "id": "claude", "priority": 1, "max_tokens": 64}]}
    return config


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
async def test_a_vendor_reference_stays_byte_for_byte_and_still_resolves_after_a_failover(stream):
    """In a pool mixing an OpenAI Responses member with others, that vendor's own items are
    kept too (marked as its own): a reference to one still goes to it untouched (it resolves
    its ids), and a turn that fails over to Claude gets the item in its place."""
    mock = MockVendor(reply="the vendor's answer")
    async with gateway_with(_mixed_pool(), a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        def first():
            if not stream:
                return client.responses.create(model="smart", input="hello")
            with client.responses.stream(model="smart", input="hello") as events:
                return events.get_final_response()
        answer = await sdk(first)
        assert mock.received[-1]["protocol"] == "responses"
        turn = [{"role": "user", "content": "hello"}, {"type": "item_reference", "id": answer.output[0].id},
                {"role": "user", "content": "again"}]
        await sdk(lambda: client.responses.create(model="smart", input=turn))
        assert mock.received[-1]["protocol"] == "responses"
        assert mock.received[-1]["body"]["input"] == turn                   # untouched: the vendor resolves it
        mock.fail_next({"status": 500, "model": "upstream-model"})
        again = await sdk(lambda: client.responses.create(model="smart", input=turn))
    assert again.output_text == "the vendor's answer"
    seen = mock.received[-1]
    assert seen["protocol"] == "anthropic"
    assert seen["body"]["messages"][1]["role"] == "assistant" and "the vendor's answer" in str(seen["body"]["messages"][1])


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
async def test_an_answer_the_cache_replays_can_be_referenced_too(stream):
    mock = MockVendor(reply="cached answer")
    config = config_for("anthropic")
    config["pools"]["smart"]["cache"] = {"mode": "exact", "ttl": 60}
    async with gateway_with(config, a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        def ask():
            if not stream:
                return client.responses.with_raw_response.create(model="smart", input="hello")
            return client.responses.with_raw_response.create(model="smart", input="hello", stream=True)
        await sdk(ask)
        hit = await sdk(ask)
        assert hit.headers["x-busbar-cache"] == "hit"
        if stream:
            final = [e for e in hit.parse() if e.type == "response.completed"][0].response
        else:
            final = hit.parse()
        again = await sdk(lambda: client.responses.create(model="smart", input=[
            {"role": "user", "content": "hello"}, {"type": "item_reference", "id": final.output[0].id},
            {"role": "user", "content": "more"}]))
    assert again.output_text == "cached answer"
    assert "cached answer" in str(mock.received[-1]["body"]["messages"][1])


@pytest.mark.sdk
async def test_a_reference_only_its_vendor_knows_passes_over_a_member_that_cannot_resolve_it():
    """Claude first, OpenAI Responses second: a reference the gateway never saw is the
    vendor's; Claude cannot be given it, so the request goes to the Responses member,
    byte for byte, without a call to Claude."""
    mock = MockVendor(reply="resolved by the vendor")
    config = _mixed_pool()
    config["pools"]["smart"]["members"][0]["priority"] = 1
    config["pools"]["smart"]["members"][1]["priority"] = 0
    async with gateway_with(config, a=mock) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        turn = [{"role": "user", "content": "hello"}, {"type": "item_reference", "id": "msg_only_the_vendor_knows"},
                {"role": "user", "content": "again"}]
        answer = await sdk(lambda: client.responses.create(model="smart", input=turn))
    assert answer.output_text == "resolved by the vendor"
    assert [r["protocol"] for r in mock.received] == ["responses"]
    assert mock.received[-1]["body"]["input"] == turn
