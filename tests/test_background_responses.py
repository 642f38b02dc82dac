"""OpenAI Responses background mode (ADR 0026): `background: true` answered `queued` at once,
the exchange run detached from the client's connection, polled with `retrieve`, cancelled
with `cancel`, kept like any turn at its end.  Pure tests of the decisions, then the openai
SDK over sockets against simulated vendors of several protocols, then a shutdown's drain."""
from __future__ import annotations

import httpx
import openai
import orjson
import pytest
import trio

from busbar.background import (BackgroundRuns, cancel_message, cancellable, cancelled_event, effective, error_of,
                               final_shown, last_sequence, pending_shown, read_cancel, requested, stream_id)
from busbar.faults import ClientError
from busbar.item_store import ItemStore, decode_turn, turn_key
from busbar.mock import MockVendor
from busbar.protocols.routes import match_response_cancel, match_stored_response
from busbar.stored_responses import response_object
from harness import gateway_with, last_record, sdk
from test_previous_response import client
from test_translation_e2e import config_for

REPLY = "Otters hold hands while they sleep."
MEMBERS = ["openai", "anthropic", "responses"]      # Chat Completions, Messages, and a Responses member itself


# ---------------------------------------------------------------------------
# pure: the decisions

@pytest.mark.pure
def test_what_asks_for_background_mode_and_what_is_refused():
    assert requested({"background": True}) and requested({"background": True, "store": True})
    assert not requested({"background": False}) and not requested({}) and not requested(None)
    assert not requested({"background": None, "store": False})
    with pytest.raises(ClientError) as info:
        requested({"background": True, "store": False})
    assert info.value.status == 400 and info.value.param == "store" and "store=true" in info.value.message
    with pytest.raises(ClientError) as info:
        requested({"background": "yes"})
    assert info.value.status == 400 and info.value.param == "background"


@pytest.mark.pure
def test_a_failed_run_has_openais_error_object():
    body = orjson.dumps({"error": {"message": "All members of `smart` failed", "type": "server_error", "code": None}})
    assert error_of(502, body) == {"code": "server_error", "message": "All members of `smart` failed"}
    assert error_of(429, b"{}")["code"] == "rate_limit_exceeded"
    assert error_of(400, b"not json")["code"] == "invalid_prompt"
    coded = orjson.dumps({"error": {"message": "too long", "code": "context_length_exceeded"}})
    assert error_of(400, coded) == {"code": "context_length_exceeded", "message": "too long"}


@pytest.mark.pure
def test_a_marker_nobody_replaced_is_failed_after_its_deadline():
    shown = pending_shown("smart", 1700000000, expires_at=1000.0)
    assert effective(shown, 999.0) is shown
    late = effective(shown, 1001.0)
    assert late["status"] == "failed" and late["error"]["code"] == "server_error" and "expires_at" not in late
    done = final_shown(shown, "completed")
    assert effective(done, 5000.0) is done


@pytest.mark.pure
def test_what_cancel_does_by_status():
    shown = pending_shown("smart", 1, 10.0)
    assert cancellable(shown, "resp_1") is True
    for status in ("completed", "incomplete", "failed", "cancelled"):
        assert cancellable(final_shown(shown, status), "resp_1") is False     # answered as it is
    for sync in ({"status": "completed"}, None):
        with pytest.raises(ClientError) as info:
            cancellable(sync, "resp_1")
        assert info.value.status == 400 and "synchronous" in info.value.message


@pytest.mark.pure
def test_a_background_streams_id_and_its_cancelled_end():
    created = (b'event: response.created\ndata: {"type":"response.created","sequence_number":0,'
               b'"response":{"id":"resp_abc","status":"in_progress"}}\n\nevent: response.in_progress\n'
               b'data: {"type":"response.in_progress","sequence_number":1,"response":{"id":"resp_abc"}}\n\n')
    assert stream_id(created) == "resp_abc"
    assert stream_id(b'data: {"type":"response.created","response":{"id":"resp_x"}}\n\n') == "resp_x"  # no event line
    for junk in (b"", b"data: nope\n\n", b'data: []\n\n', b'data: {"response":{"id":7}}\n\n'):
        assert stream_id(junk) is None
    assert last_sequence(created, -1) == 1 and last_sequence(b"data: x\n\n", 4) == 4
    assert last_sequence(b'{"sequence_number": 12}', 0) == 12
    end = cancelled_event({"id": "resp_abc", "status": "cancelled"}, 7)
    assert end.startswith(b"event: response.completed\ndata: ")
    body = orjson.loads(end.split(b"data: ", 1)[1])
    assert body == {"type": "response.completed", "sequence_number": 8,
                    "response": {"id": "resp_abc", "status": "cancelled"}}


@pytest.mark.pure
def test_the_published_cancel_names_ids_only_and_garbage_names_nothing():
    assert read_cancel(cancel_message("alice", "resp_1")) == turn_key("alice", "resp_1")
    for data in (b"", b"[]", b"{}", b'{"scope": 1, "response": "r"}', b"\xff", b'{"scope": "a"}'):
        assert read_cancel(data) is None
    runs = BackgroundRuns()
    runs.on_message(b"garbage")
    assert runs.cancels_heard == 0


@pytest.mark.pure
def test_the_marker_is_a_response_object_in_progress():
    store = ItemStore()
    key, data = store.keep_turn("k", "resp_1", None, [{"role": "user", "content": "hi"}], [], False,
                                pending_shown("smart", 1700000000, 50.0))
    body = response_object("resp_1", decode_turn(data), now=10.0)
    assert (body["status"], body["background"], body["output"], body["error"]) == ("in_progress", True, [], None)
    failed = response_object("resp_1", decode_turn(data), now=100.0)
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert match_response_cancel(b"/v1/responses/resp_1/cancel") == "resp_1"
    assert match_response_cancel(b"/responses/resp_1/cancel") == "resp_1"
    assert match_response_cancel(b"/v1/responses/resp_1") is None
    assert match_stored_response(b"/v1/responses/resp_1/cancel") is None


# ---------------------------------------------------------------------------
# over sockets, the openai SDK as the client

def _keys() -> dict:
    return {"keys": [{"id": "alice", "key": "sk-alice-key"}, {"id": "bob", "key": "sk-bob-key"}]}


async def _poll(c: openai.OpenAI, resp, timeout: float = 20.0):
    """The SDK's documented loop: retrieve while queued or in progress."""
    seen = {resp.status}
    with trio.fail_after(timeout):
        while resp.status in {"queued", "in_progress"}:
            await trio.sleep(0.05)
            resp = await sdk(lambda: c.responses.retrieve(resp.id))
            seen.add(resp.status)
    return resp, seen


async def _idle(gw) -> None:
    with trio.fail_after(20):
        while gw.app.background.running:
            await trio.sleep(0.01)


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", MEMBERS)
async def test_create_returns_queued_at_once_and_polling_ends_completed(vendor):
    mock = MockVendor(reply=REPLY, latency=1.0)
    config = config_for(vendor)
    config["auth"] = _keys()
    config["pools"]["smart"]["members"][0]["price"] = {"input": 1000, "output": 1000}    # USD per 1M tokens
    config["admin"] = {"enabled": True, "key": "admin-key"}
    async with gateway_with(config, a=mock) as gw:
        c = client(gw, "sk-alice-key")
        t0 = trio.current_time()
        r = await sdk(lambda: c.responses.create(model="smart", input="Tell me about otters.", background=True))
        # the member takes 1 s: the POST did not wait for it (a loaded CI core has taken 0.53 s to answer)
        assert trio.current_time() - t0 < 0.9
        assert r.status == "queued" and r.background is True and r.id.startswith("resp_") and r.output == []
        final, seen = await _poll(c, r)
        assert "in_progress" in seen
        assert final.status == "completed" and final.output_text == REPLY and final.background is True
        assert final.id == r.id and final.usage is not None and final.error is None
        # counted where operators look: /metrics and the admin state
        async with httpx.AsyncClient() as http:
            metrics = (await http.get(gw.url + "/metrics", headers={"authorization": "Bearer admin-key"})).text
            state = (await http.get(gw.url + "/admin/api/state", headers={"authorization": "Bearer admin-key"})).json()
        assert "busbar_background_runs_started_total 1.0" in metrics
        assert 'busbar_background_runs_ended_total{outcome="completed"} 1.0' in metrics
        assert "busbar_background_runs_running 0.0" in metrics
        assert state["background"]["started"] == 1 and state["background"]["completed"] == 1
        # the other key cannot see, nor cancel, it: the same 404 as an unknown id
        other = client(gw, "sk-bob-key")
        for call in (lambda: other.responses.retrieve(r.id), lambda: other.responses.cancel(r.id),
                     lambda: c.responses.cancel("resp_nope")):
            with pytest.raises(openai.NotFoundError):
                await sdk(call)
        # cancelling a finished one is idempotent: the final object
        again = await sdk(lambda: c.responses.cancel(r.id))
        assert again.status == "completed" and again.output_text == REPLY
        # kept as any turn: its input listed, continued by previous_response_id
        items = await sdk(lambda: c.responses.input_items.list(r.id))
        assert items.data[0].content[0].text == "Tell me about otters."
        mock.reply = "Second."
        nxt = await sdk(lambda: c.responses.create(model="smart", input="More?", previous_response_id=r.id))
        assert nxt.output_text == "Second."
        sent = str(mock.received[-1]["body"])
        assert REPLY in sent and "Tell me about otters." in sent
        assert "background" not in str(mock.received[0]["body"])    # run here, never the vendor's background mode
        # counted and charged like any request of that key
        first = next(x for x in gw.gateway.recent if x["state"] == "done")
        assert first["key_id"] == "alice" and first["cost_usd"] > 0


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", ["anthropic", "responses"])
async def test_cancel_mid_generation_stops_the_member_call(vendor):
    mock = MockVendor(reply=REPLY, latency=30)
    async with gateway_with(config_for(vendor), a=mock) as gw:
        c = client(gw)
        r = await sdk(lambda: c.responses.create(model="smart", input="Write a novel.", background=True))
        with trio.fail_after(5):
            while not mock.in_flight:          # the member is generating
                await trio.sleep(0.01)
        cancelled = await sdk(lambda: c.responses.cancel(r.id))
        assert cancelled.status == "cancelled" and cancelled.id == r.id
        with trio.fail_after(5):
            while mock.in_flight:              # the upstream call went with it
                await trio.sleep(0.01)
        assert (await sdk(lambda: c.responses.retrieve(r.id))).status == "cancelled"
        assert (await sdk(lambda: c.responses.cancel(r.id))).status == "cancelled"     # idempotent
        await _idle(gw)
        assert gw.app.background.status()["cancelled"] == 1
        record = await last_record(gw)
        assert record["state"] == "failed"


@pytest.mark.sdk
async def test_store_false_and_synchronous_cancel_are_refused():
    mock = MockVendor(reply=REPLY)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: c.responses.create(model="smart", input="hi", background=True, store=False))
        assert info.value.status_code == 400 and info.value.body["param"] == "store"
        assert info.value.body["type"] == "invalid_request_error"
        assert not mock.received                      # refused before any member was called
        sync = await sdk(lambda: c.responses.create(model="smart", input="hi"))
        assert (await sdk(lambda: c.responses.retrieve(sync.id))).background is False
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: c.responses.cancel(sync.id))
        assert "synchronous" in info.value.message
        # a refusal before routing is the POST's own answer (an unknown pool: 404 in OpenAI's shape)
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: c.responses.create(model="nope", input="hi", background=True))
        # a response not made in background mode cannot be streamed again: a 400 naming `stream`
        # (resuming a background stream: tests/test_background_resume.py)
        async with httpx.AsyncClient() as h:
            got = await h.get(gw.url + f"/v1/responses/{sync.id}", params={"stream": "true", "starting_after": "3"})
        assert got.status_code == 400 and got.json()["error"]["param"] == "stream"
        assert gw.app.background.running == 0


@pytest.mark.sdk
async def test_a_failing_member_ends_failed_with_an_error_object():
    mock = MockVendor(reply=REPLY, always={"error": "server"})
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        r = await sdk(lambda: c.responses.create(model="smart", input="hi", background=True))
        assert r.status == "queued"
        final, _ = await _poll(c, r)
        assert final.status == "failed" and final.error.code == "server_error" and final.error.message
        assert "vendor-key" not in final.error.message


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", ["anthropic", "responses"])
async def test_a_background_stream_outlives_its_client(vendor):
    mock = MockVendor(reply="one two three four five six seven eight nine ten", chunk_delay=0.1)
    async with gateway_with(config_for(vendor), a=mock) as gw:
        response_id = None
        async with httpx.AsyncClient(timeout=10) as h:
            async with h.stream("POST", gw.url + "/v1/responses", headers={"authorization": "Bearer k"},
                                json={"model": "smart", "input": "count", "stream": True,
                                      "background": True}) as got:
                assert got.status_code == 200
                async for line in got.aiter_lines():
                    if line.startswith("data: "):
                        event = orjson.loads(line[6:])
                        if event["type"] == "response.created":
                            response_id = event["response"]["id"]
                        if event["type"] == "response.output_text.delta":
                            break                 # the client goes away mid-stream
        assert response_id
        await _idle(gw)
        c = client(gw)
        final = await sdk(lambda: c.responses.retrieve(response_id))
        assert final.status == "completed" and final.output_text == mock.reply and final.background is True
        record = await last_record(gw)
        assert record["state"] == "done"


@pytest.mark.sdk
async def test_a_background_stream_with_its_client_streams_as_usual():
    mock = MockVendor(reply="one two three")
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        with_events = await sdk(lambda: list(c.responses.create(model="smart", input="x", stream=True,
                                                                background=True)))
        done = with_events[-1]
        assert done.type == "response.completed" and done.response.output_text == "one two three"
        assert (await sdk(lambda: c.responses.retrieve(done.response.id))).output_text == "one two three"


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", ["anthropic", "responses"])
async def test_a_running_background_stream_is_retrieved_and_cancelled(vendor):
    """While it runs, a background stream has the status entry a buffered one has, under the
    id its `response.created` showed: retrieve says in_progress, cancel stops it (the member's
    call too) and the still-connected client's stream ends with the response, `cancelled`."""
    mock = MockVendor(reply=" ".join(f"w{i}" for i in range(40)), chunk_delay=0.5)
    async with gateway_with(config_for(vendor), a=mock) as gw:
        c, other = client(gw), client(gw)
        stream = await sdk(lambda: c.responses.create(model="smart", input="count", stream=True, background=True))
        events = iter(stream)
        created = await sdk(lambda: next(events))
        assert created.type == "response.created"
        response_id = created.response.id
        running = await sdk(lambda: other.responses.retrieve(response_id))
        assert running.status == "in_progress" and running.background is True and running.id == response_id
        assert mock.in_flight
        cancelled = await sdk(lambda: other.responses.cancel(response_id))
        assert cancelled.status == "cancelled" and cancelled.id == response_id
        rest = await sdk(lambda: list(events))
        assert rest[-1].type == "response.completed" and rest[-1].response.status == "cancelled"
        assert rest[-1].response.id == response_id
        assert rest[-1].sequence_number == max(e.sequence_number for e in [created] + rest[:-1]) + 1
        with trio.fail_after(5):
            while mock.in_flight:              # the upstream call went with it
                await trio.sleep(0.01)
        assert (await sdk(lambda: other.responses.retrieve(response_id))).status == "cancelled"
        await _idle(gw)
        assert gw.app.background.status()["cancelled"] == 1


@pytest.mark.sdk
async def test_a_background_stream_whose_client_left_is_in_progress_then_completed():
    mock = MockVendor(reply="one two three four five six seven eight nine ten", chunk_delay=0.2)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)

        def first_event():
            with c.responses.create(model="smart", input="count", stream=True, background=True) as stream:
                return next(iter(stream))        # then the client closes the connection
        created = await sdk(first_event)
        assert created.type == "response.created"
        running = await sdk(lambda: c.responses.retrieve(created.response.id))
        assert running.status == "in_progress"
        final, seen = await _poll(c, running)
        assert final.status == "completed" and final.output_text == mock.reply and final.id == created.response.id
        assert final.background is True


@pytest.mark.sdk
async def test_a_background_stream_dying_mid_way_ends_failed_not_in_progress():
    mock = MockVendor(reply="one two three four five six", always={"error_event": "overloaded", "after": 3})
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        response_id = None
        async with httpx.AsyncClient(timeout=10) as h:
            async with h.stream("POST", gw.url + "/v1/responses", headers={"authorization": "Bearer k"},
                                json={"model": "smart", "input": "count", "stream": True,
                                      "background": True}) as got:
                async for line in got.aiter_lines():
                    if line.startswith("data: "):
                        event = orjson.loads(line[6:])
                        if event["type"] == "response.created":
                            response_id = event["response"]["id"]
        await _idle(gw)
        final = await sdk(lambda: c.responses.retrieve(response_id))
        assert final.status == "failed" and final.error.code == "server_error"


@pytest.mark.integration
async def test_shutdown_drains_within_the_grace_or_marks_failed():
    mock = MockVendor(reply=REPLY, latency=1.5)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        quick = await sdk(lambda: c.responses.create(model="smart", input="hi", background=True))
        with trio.fail_after(5):
            while not mock.received:       # the quick one is at the member, sleeping its 1.5 s
                await trio.sleep(0.01)
        mock.latency = 60
        slow = await sdk(lambda: c.responses.create(model="smart", input="hi", background=True))
        running = gw.app.background.running
        assert running >= 1 and gw.server.active_requests == running     # counted as requests in flight
        with trio.fail_after(15):
            await gw.app.shutdown(4.0)                   # the quick one ends within the grace
        assert gw.app.background.running == 1
        gw.app.background.nursery.cancel_scope.cancel()  # the grace is over: what the app's nursery does
        await _idle(gw)
        store = gw.app.items
        assert decode_turn(store.get(turn_key("-", quick.id))).shown["status"] == "completed"
        slow_turn = decode_turn(store.get(turn_key("-", slow.id)))
        assert slow_turn.shown["status"] == "failed" and "shut down" in slow_turn.shown["error"]["message"]
        assert gw.app.background.status()["shut_down"] == 1
