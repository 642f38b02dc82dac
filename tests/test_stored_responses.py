"""`GET` / `DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items` (ADR 0025):
the turns the gateway kept for `previous_response_id` (ADR 0024) given back in OpenAI's
shapes, per caller.  Pure tests of the shapes, then the openai SDK over sockets against
simulated vendors of other protocols."""
from __future__ import annotations

import httpx
import openai
import pytest

from busbar.item_store import DELETED, ItemStore, decode, decode_turn, deleted, key_of, shown_of, turn_key
from busbar.faults import ClientError
from busbar.mock import MockVendor
from busbar.protocols.routes import match_route, match_stored_response
from busbar.stored_responses import input_item_list, response_object
from harness import gateway_with, sdk
from test_previous_response import MEMBERS, _mixed_pool, client, create
from test_translation_e2e import config_for

SHOWN = {"id": "resp_1", "object": "response", "created_at": 1700000000, "status": "completed", "model": "m-1",
         "incomplete_details": None, "tools": [{"type": "function", "name": "big"}],
         "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
         "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                     "content": [{"type": "output_text", "text": "hi", "annotations": []}]},
                    {"id": "fc_1", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}",
                     "status": "completed"}]}


def kept(store: ItemStore, inputs: list, previous: str | None = None):
    store.keep(SHOWN_SCOPE, SHOWN["output"])
    key, _ = store.keep_turn(SHOWN_SCOPE, "resp_1", previous, inputs, SHOWN["output"], shown=shown_of(SHOWN))
    return decode_turn(store.get(key))


SHOWN_SCOPE = "k"


# ---------------------------------------------------------------------------
# pure: the shapes


@pytest.mark.pure
def test_the_kept_turn_is_the_response_object_it_showed():
    store = ItemStore()
    turn = kept(store, [{"role": "user", "content": "hello"}], previous="resp_0")
    body = response_object("resp_1", turn)
    assert body["output"] == SHOWN["output"]                      # ids and statuses back, in place
    for field in ("id", "object", "created_at", "status", "model", "usage", "incomplete_details"):
        assert body[field] == SHOWN[field], field
    assert body["previous_response_id"] == "resp_0"
    # the request's echoed fields as shown (ADR 0024: what the request set is kept), the rest OpenAI's defaults
    assert body["tools"] == SHOWN["tools"] and body["temperature"] == 1.0 and body["instructions"] is None
    assert turn.input == [{"role": "user", "content": "hello"}]
    # what a continuation reads is unchanged: the output items without their bookkeeping
    assert all("id" not in item and "status" not in item for item in turn.output)


@pytest.mark.pure
def test_input_items_are_typed_with_stable_ids_and_page_both_ways():
    inputs = [{"role": "user", "content": "one"}, {"type": "message", "role": "assistant", "content": "two"},
              {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
              {"type": "message", "role": "user", "id": "msg_client", "content": [{"type": "input_text", "text": "x"}]}]
    turn = kept(ItemStore(), inputs)
    page = input_item_list("resp_1", turn, {})
    ids = [item["id"] for item in page["data"]]
    assert ids == ["msg_client", "fco_resp_1_input_2", "msg_resp_1_input_1", "msg_resp_1_input_0"]   # desc
    assert page["data"][-1] == {"id": "msg_resp_1_input_0", "role": "user", "type": "message",
                                "content": [{"type": "input_text", "text": "one"}]}
    assert page["data"][-2]["content"] == [{"type": "output_text", "text": "two", "annotations": []}]
    assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[0], ids[-1], False)
    first = input_item_list("resp_1", turn, {"order": ["asc"], "limit": ["2"]})
    rest = input_item_list("resp_1", turn, {"order": ["asc"], "limit": ["2"], "after": [first["last_id"]]})
    assert first["has_more"] and not rest["has_more"]
    assert [i["id"] for i in first["data"] + rest["data"]] == list(reversed(ids))
    assert input_item_list("resp_1", turn, {}) == page              # the same ids every time
    for query, param in [({"limit": ["0"]}, "limit"), ({"limit": ["x"]}, "limit"), ({"limit": ["101"]}, "limit"),
                         ({"order": ["up"]}, "order"), ({"after": ["msg_nope"]}, "after")]:
        with pytest.raises(ClientError) as info:
            input_item_list("resp_1", turn, query)
        assert info.value.status == 400 and info.value.param == param


@pytest.mark.pure
def test_a_deleted_turn_leaves_a_mark_that_is_neither_turn_nor_item():
    store = ItemStore()
    kept(store, [])
    key = turn_key(SHOWN_SCOPE, "resp_1")
    assert store.delete(key) and not store.delete(key) and store.get(key) is None
    assert deleted(DELETED) and decode_turn(DELETED) is None and decode(DELETED) is None
    assert store.get(key_of(SHOWN_SCOPE, "msg_1")) is not None      # items go with the route, not the store


@pytest.mark.pure
def test_the_paths():
    assert match_stored_response(b"/v1/responses/resp_1") == ("resp_1", False)
    assert match_stored_response(b"/responses/resp_1/input_items") == ("resp_1", True)
    assert match_stored_response(b"/v1/responses/resp_1/cancel") is None
    assert match_stored_response(b"/v1/responses") is None
    # the counting route is POST's, matched first
    assert match_route(b"/v1/responses/input_tokens") == ("responses", {"operation": "count"})


# ---------------------------------------------------------------------------
# over sockets, the openai SDK as the client


def _keys() -> dict:
    return {"keys": [{"id": "alice", "key": "sk-alice-key"}, {"id": "bob", "key": "sk-bob-key"}]}


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("vendor", MEMBERS)
async def test_retrieve_list_delete_then_it_is_gone(vendor, stream):
    mock = MockVendor()
    config = config_for(vendor)
    config["auth"] = _keys()
    async with gateway_with(config, a=mock) as gw:
        c = client(gw, "sk-alice-key")
        r1 = await sdk(lambda: create(c, stream, input="My name is Ada."))
        r2 = await sdk(lambda: create(c, stream, input=[{"role": "user", "content": "What is my name?"}],
                                      previous_response_id=r1.id))
        got = await sdk(lambda: c.responses.retrieve(r2.id))
        first = await sdk(lambda: c.responses.retrieve(r1.id))
        items = await sdk(lambda: list(c.responses.input_items.list(r2.id)))
        ascending = await sdk(lambda: c.responses.input_items.list(r1.id, order="asc"))
        with pytest.raises(openai.BadRequestError) as streamed:
            await sdk(lambda: c.responses.retrieve(r2.id, stream=True))
        # another key: not found, whatever it tries, and alice's stays
        bob = client(gw, "sk-bob-key")
        others = []
        for call in (lambda: bob.responses.retrieve(r2.id), lambda: bob.responses.delete(r2.id),
                     lambda: list(bob.responses.input_items.list(r2.id))):
            with pytest.raises(openai.NotFoundError) as info:
                await sdk(call)
            others.append(info.value)
        still = await sdk(lambda: c.responses.retrieve(r2.id))
        async with httpx.AsyncClient(base_url=gw.url + "/v1", timeout=30,
                                     headers={"authorization": "Bearer sk-alice-key"}) as raw:
            removed = await raw.delete(f"/responses/{r2.id}")
            unauthenticated = await raw.get(f"/responses/{r1.id}", headers={"authorization": "Bearer nope"})
            wrong_method = await raw.post(f"/responses/{r1.id}/input_items", json={})
        with pytest.raises(openai.NotFoundError) as gone:
            await sdk(lambda: c.responses.retrieve(r2.id))
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: c.responses.delete(r2.id))
        with pytest.raises(openai.BadRequestError) as continued:
            await sdk(lambda: create(c, stream, input="Again?", previous_response_id=r2.id))
        # its output items went with it: a reference to one no longer resolves
        with pytest.raises(openai.BadRequestError) as referenced:
            await sdk(lambda: c.responses.create(model="smart", input=[
                {"type": "item_reference", "id": r2.output[0].id}, {"role": "user", "content": "more"}]))
        # the earlier response stays, and can be continued and deleted with the SDK
        after = await sdk(lambda: create(c, stream, input="Still Ada?", previous_response_id=r1.id))
        assert await sdk(lambda: c.responses.delete(r1.id)) is None
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: c.responses.retrieve(r1.id))
    assert got.id == r2.id and got.object == "response" and got.status == "completed"
    assert got.model == r2.model and got.previous_response_id == r1.id and first.previous_response_id is None
    assert got.output_text == r2.output_text == "What is my name?"
    assert [o.id for o in got.output] == [o.id for o in r2.output] and got.output[0].status == "completed"
    assert got.usage is not None and got.usage.model_dump() == r2.usage.model_dump()
    assert got.created_at == r2.created_at
    # this response's own input only (the continued turn's are r1's)
    assert [(i.type, i.role, i.content[0].text) for i in items] == [("message", "user", "What is my name?")]
    assert [i.content[0].text for i in ascending.data] == ["My name is Ada."] and not ascending.has_more
    assert streamed.value.body["param"] == "stream" and streamed.value.status_code == 400
    for err in others:
        assert err.status_code == 404 and err.body["type"] == "invalid_request_error"
        assert err.body["param"] is None and r2.id in err.body["message"]
    assert still.id == r2.id
    assert removed.status_code == 200 and removed.json() == {"id": r2.id, "object": "response", "deleted": True}
    assert unauthenticated.status_code == 401
    assert wrong_method.status_code == 405
    assert gone.value.body == {"message": gone.value.body["message"], "type": "invalid_request_error",
                               "param": None, "code": None}
    assert continued.value.body["code"] == "previous_response_not_found"
    assert continued.value.body["param"] == "previous_response_id"
    assert referenced.value.body["param"] == "input[0].id"
    assert after.output_text == "Still Ada?"


@pytest.mark.sdk
async def test_without_client_keys_every_caller_is_one_scope_and_stream_false_is_fine():
    mock = MockVendor()
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        r1 = await sdk(lambda: c.responses.create(model="smart", input="hi"))
        got = await sdk(lambda: client(gw, "any").responses.retrieve(r1.id, stream=False))
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: c.responses.retrieve("resp_nobody"))
        r2 = await sdk(lambda: c.responses.create(model="smart", input="not kept", store=False))
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: c.responses.retrieve(r2.id))
    assert got.output_text == r1.output_text == "hi" and got.model == r1.model


@pytest.mark.sdk
async def test_a_vendor_minted_response_is_answered_from_its_kept_turn():
    """A mixed pool keeps the Responses member's own answers (ADR 0024): retrieved from
    the kept turn, not forwarded (ADR 0025); the vendor is not called."""
    mock = MockVendor()
    async with gateway_with(_mixed_pool(), a=mock) as gw:
        c = client(gw)
        r1 = await sdk(lambda: c.responses.create(model="smart", input="I like tea."))
        assert mock.received[-1]["protocol"] == "responses"
        calls = len(mock.received)
        got = await sdk(lambda: c.responses.retrieve(r1.id))
        items = await sdk(lambda: c.responses.input_items.list(r1.id))
    assert len(mock.received) == calls
    assert got.id == r1.id and got.model == r1.model and got.output_text == r1.output_text
    assert [o.id for o in got.output] == [o.id for o in r1.output]
    assert [i.content[0].text for i in items.data] == ["I like tea."]


@pytest.mark.sdk
@pytest.mark.slow
async def test_the_openai_js_sdk_retrieves_lists_and_deletes():
    import json
    import shutil
    from pathlib import Path

    import trio

    js = Path(__file__).parent / "js"
    if shutil.which("node") is None or not (js / "node_modules").is_dir():
        pytest.skip("node or the JS SDKs (tests/js, npm ci) are not installed")
    mock = MockVendor()
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        with trio.fail_after(120):
            done = await trio.run_process(["node", str(js / "stored_responses.mjs"), gw.url, "smart"],
                                          capture_stdout=True, capture_stderr=True, check=False)
    row = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert row["ok"], row.get("error") or done.stderr.decode()[-2000:]
    assert row["same"] and row["text"] == "hello from js"
    assert row["items"] == ["hello from js"]
    assert row["after"] == "NotFoundError 404"
