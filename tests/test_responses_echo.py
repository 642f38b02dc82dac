"""A translated OpenAI Responses answer echoes its request as OpenAI's does (ADR 0024, 0025,
0026, 0028): the request's parameters in the Response object, OpenAI's defaults where it
omitted them, the same in the buffered answer, every streamed response object, a `retrieve`
and a background poll; and a still pending background response cannot be continued.  Pure
tests of the one function that builds the echo and of what a turn keeps of it, then the
openai SDK over sockets against a simulated Anthropic member (a translated answer)."""
from __future__ import annotations

import openai
import orjson
import pytest
import trio

from busbar.background import pending_shown, unfinished
from busbar.item_store import ItemStore, decode_turn, shown_of, turn_key
from busbar.mock import MockVendor
from busbar.protocols.responses import ECHO_DEFAULTS, echo_shown, echoed, kept_echo
from busbar.stored_responses import response_object
from harness import gateway_with, sdk
from test_previous_response import client
from test_translation_e2e import config_for

REPLY = "Arr, otters hold hands."
# every echoed parameter an Anthropic member can be sent (top_logprobs, max_tool_calls and
# text.verbosity are refused for it as Responses-only, ADR 0022)
SENT = dict(instructions="Answer like a pirate.", temperature=0.3, top_p=0.9, max_output_tokens=200,
            metadata={"job": "otters"}, user="u-1", safety_identifier="sid-1", prompt_cache_key="pck",
            truncation="auto", parallel_tool_calls=False, service_tier="flex", reasoning={"effort": "low"},
            text={"format": {"type": "text"}}, tool_choice="none",
            tools=[{"type": "function", "name": "get_weather", "strict": False,
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])


def expected(sent: dict, **more) -> dict:
    """What OpenAI's Response object shows for these request parameters."""
    return echoed({**sent, **more})


def assert_echoes(obj, want: dict) -> None:
    """`obj`: an SDK Response (as received: `to_dict` keeps only the fields sent) or its JSON."""
    got = obj if isinstance(obj, dict) else obj.to_dict()
    assert {k: got.get(k, "<absent>") for k in ECHO_DEFAULTS} == want


# ---------------------------------------------------------------------------
# pure

@pytest.mark.pure
def test_the_echo_of_a_request_that_set_nothing_is_openais_defaults():
    echo = echoed({"model": "m", "input": "hi"})
    assert echo == {
        "background": False, "conversation": None, "instructions": None, "max_output_tokens": None,
        "max_tool_calls": None, "metadata": {}, "parallel_tool_calls": True, "previous_response_id": None, "prompt_cache_key": None,
        "prompt_cache_retention": None, "reasoning": {"effort": None, "summary": None}, "safety_identifier": None,
        "service_tier": "auto", "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
        "tool_choice": "auto", "tools": [], "top_logprobs": 0, "top_p": 1.0, "truncation": "disabled", "user": None}
    echo["metadata"]["x"] = "y"
    echo["tools"].append({})
    assert echoed({})["metadata"] == {} and echoed({})["tools"] == []     # no default shared between answers
    assert kept_echo(echoed({})) == {}          # a turn of such a request keeps nothing more


@pytest.mark.pure
def test_the_echo_carries_what_was_sent_and_fills_nested_defaults():
    echo = echoed({**SENT, "previous_response_id": "resp_1", "store": False, "temperature": 0,
                   "text": {"verbosity": "low"}, "background": True})
    assert echo["instructions"] == SENT["instructions"] and echo["tools"] == SENT["tools"]
    assert echo["previous_response_id"] == "resp_1" and echo["store"] is False and echo["background"] is True
    assert echo["temperature"] == 0                       # a zero is what was sent, not the default
    assert echoed({"conversation": "conv_1"})["conversation"] == {"id": "conv_1"}     # either form, as an object
    assert echo["reasoning"] == {"effort": "low", "summary": None}
    assert echo["text"] == {"format": {"type": "text"}, "verbosity": "low"}
    assert echoed({"temperature": None})["temperature"] == 1.0     # an explicit null: the default


@pytest.mark.pure
def test_a_kept_turn_holds_only_the_set_fields_and_renders_them_back_whole():
    sent = {**SENT, "previous_response_id": "resp_prev"}
    shown = {"id": "resp_1", "object": "response", "status": "completed", "model": "m", "output": [],
             **echoed(sent)}
    kept = kept_echo(shown)
    assert "previous_response_id" not in kept and "store" not in kept and "background" not in kept
    assert "top_logprobs" not in kept and kept["temperature"] == 0.3
    assert echo_shown(kept, "resp_prev", False) == echoed(sent)
    store = ItemStore()
    key, data = store.keep_turn("-", "resp_1", "resp_prev", [{"role": "user", "content": "hi"}], [], False,
                                shown_of(shown))
    obj = response_object("resp_1", decode_turn(data))
    assert {k: obj[k] for k in ECHO_DEFAULTS} == echoed(sent)
    # the bytes a turn pays: none for a request that set nothing
    _, plain = store.keep_turn("-", "resp_2", None, [], [], False, shown_of({**shown, **echoed({})}))
    assert b'"echo"' not in plain


@pytest.mark.pure
def test_a_pending_response_is_refused_as_the_one_continued():
    marker = pending_shown("smart", 1, expires_at=100.0, echo={"temperature": 0.3})
    refusal = unfinished("resp_1", marker, now=50.0)
    assert refusal.status == 400 and refusal.param == "previous_response_id" and refusal.kind == "invalid_request"
    assert "resp_1" in refusal.message and "in_progress" in refusal.message
    assert unfinished("resp_1", {**marker, "status": "queued"}, 50.0).message.count("queued") == 1
    assert unfinished("resp_1", marker, now=101.0) is None           # past its deadline: failed, final
    for status in ("completed", "incomplete", "failed", "cancelled"):
        assert unfinished("resp_1", {**marker, "status": status}, 50.0) is None
    assert unfinished("resp_1", None, 50.0) is None and unfinished("resp_1", {"status": "completed"}, 0) is None


# ---------------------------------------------------------------------------
# over sockets: the openai SDK, a translated (Anthropic) member


def _create(c: openai.OpenAI, stream: bool, **kw):
    """The created object (buffered) or the streamed events' response objects."""
    if not stream:
        return c.responses.create(model="smart", **kw), []
    objects = []
    with c.responses.create(model="smart", stream=True, **kw) as events:
        for event in events:
            if getattr(event, "response", None) is not None:
                objects.append((event.type, event.response))
    return objects[-1][1], objects


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True])
async def test_the_answer_the_retrieve_and_a_continuation_echo_the_request(stream):
    mock = MockVendor(reply=REPLY)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        r, events = await sdk(lambda: _create(c, stream, input="Tell me about otters.", **SENT))
        assert r.output_text == REPLY
        assert r.instructions == SENT["instructions"] and r.temperature == 0.3 and r.metadata == {"job": "otters"}
        assert_echoes(r, expected(SENT))
        if stream:      # response.created, response.in_progress and response.completed alike
            assert [t for t, _ in events] == ["response.created", "response.in_progress", "response.completed"]
            for _, obj in events:
                assert_echoes(obj, expected(SENT))
        assert_echoes(await sdk(lambda: c.responses.retrieve(r.id)), expected(SENT))
        # a continuation shows the id it continued, and only its own parameters (nothing carried over)
        r2, events2 = await sdk(lambda: _create(c, stream, input="More?", previous_response_id=r.id))
        assert r2.previous_response_id == r.id and r2.instructions is None and r2.tools == []
        assert_echoes(r2, expected({}, previous_response_id=r.id))
        for _, obj in events2:
            assert obj.previous_response_id == r.id
        assert_echoes(await sdk(lambda: c.responses.retrieve(r2.id)), expected({}, previous_response_id=r.id))
        # a request that set nothing: OpenAI's defaults, not nulls
        r3, _ = await sdk(lambda: _create(c, stream, input="hi", store=False))
        assert r3.temperature == 1.0 and r3.top_p == 1.0 and r3.truncation == "disabled" and r3.store is False
        assert_echoes(r3, expected({}, store=False))
        assert "Tell me about otters." in str(mock.received[1]["body"])      # the member saw the history


async def _poll(c, r, seen: list):
    with trio.fail_after(10):
        while True:
            got = await sdk(lambda: c.responses.retrieve(r.id))
            seen.append(got)
            if got.status not in ("queued", "in_progress"):
                return got
            await trio.sleep(0.05)


@pytest.mark.sdk
async def test_a_background_response_echoes_its_request_when_created_and_polled():
    mock = MockVendor(reply=REPLY, latency=0.5)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        want = expected(SENT, background=True)
        r = await sdk(lambda: c.responses.create(model="smart", input="Tell me about otters.", background=True,
                                                 **SENT))
        assert r.status == "queued"
        assert_echoes(r, want)
        seen: list = []
        final = await _poll(c, r, seen)
        assert any(p.status == "in_progress" for p in seen)
        for polled in seen:                   # each poll, pending and final
            assert_echoes(polled, want)
        assert final.status == "completed" and final.output_text == REPLY


@pytest.mark.sdk
async def test_a_pending_background_response_is_not_continued_until_it_completed():
    mock = MockVendor(reply=REPLY, latency=0.8)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        r = await sdk(lambda: c.responses.create(model="smart", input="Tell me about otters.", background=True))
        with trio.fail_after(5):
            while not mock.received:          # its own member call is under way
                await trio.sleep(0.01)
        # continuing it before it has an answer: refused in OpenAI's shape, before any member call
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as info:
                await sdk(lambda: _create(c, stream, input="And then?", previous_response_id=r.id))
            err = info.value.body
            assert info.value.status_code == 400 and err["type"] == "invalid_request_error"
            assert err["param"] == "previous_response_id" and r.id in err["message"]
            assert "in_progress" in err["message"]
        assert len(mock.received) == 1
        await _poll(c, r, [])
        # once it has completed it is continued (the member sees its answer), and the continuation shows it
        mock.latency = 0
        nxt = await sdk(lambda: c.responses.create(model="smart", input="And then?", previous_response_id=r.id))
        assert nxt.previous_response_id == r.id and nxt.background is False
        assert REPLY in str(mock.received[-1]["body"])


@pytest.mark.sdk
async def test_a_background_stream_echoes_its_request_in_every_object_and_its_poll():
    mock = MockVendor(reply=REPLY)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        want = expected(SENT, background=True)
        final, events = await sdk(lambda: _create(c, True, input="Tell me about otters.", background=True, **SENT))
        for _, obj in events:
            assert_echoes(obj, want)
        assert_echoes(await sdk(lambda: c.responses.retrieve(final.id)), want)


@pytest.mark.sdk
async def test_a_responses_member_answer_is_passed_through_untouched():
    """Passthrough: the vendor's own object, byte for byte (its echo is the vendor's)."""
    mock = MockVendor(reply=REPLY)
    async with gateway_with(config_for("responses"), a=mock) as gw:
        c = client(gw)
        raw = await sdk(lambda: c.responses.with_raw_response.create(model="smart", input="hi", temperature=0.3))
        body = orjson.loads(raw.http_response.content)
        assert body["id"].startswith("mock-") and body["temperature"] == 0.3   # the vendor's id and echo
