"""Resuming a background Responses stream (ADR 0026): `GET /v1/responses/{id}?stream=true
&starting_after=N` replays the events after N from the log the running replica keeps, then
follows the live rest.  Pure tests of the log and the refusals, then the openai SDK over
sockets against a translated (Anthropic) and a passed-through (Responses) member whose
chunks are paced, so the resume happens mid-stream."""
from __future__ import annotations

import json
import pathlib
import shutil
import time

import openai
import pytest
import trio

import busbar.background as background
from busbar.background import (RELAY_CUT, RELAY_END, BackgroundRuns, FellBehind, RelayedLog, StreamLog,
                               final_shown, pending_shown, resume_refusal, starting_after_of)
from busbar.faults import ClientError
from busbar.mock import MockVendor
from harness import gateway_with, sdk
from test_previous_response import client
from test_translation_e2e import config_for

WORDS = " ".join(f"w{i}" for i in range(24))


def _event(seq: int, kind: str = "response.output_text.delta", pad: str = "") -> bytes:
    return (b'event: %s\ndata: {"type":"%s","sequence_number":%d,"delta":"%s"}\n\n'
            % (kind.encode(), kind.encode(), seq, pad.encode()))


# ---------------------------------------------------------------------------
# pure: the log and the refusals

@pytest.mark.pure
async def test_the_log_keeps_whole_events_whatever_the_chunking_and_replays_after_a_sequence_number():
    stream = b"".join(_event(i) for i in range(6)) + b": keep-alive comment\n\n"
    for cut in (1, 7, 50, len(stream)):
        log = StreamLog()
        for i in range(0, len(stream), cut):
            log.feed(stream[i:i + cut])
        assert list(log.seqs) == list(range(6)) and log.last == 5
        events, position = await log.read(log.start(2))
        assert events == [_event(i) for i in range(3, 6)] and position == 6
    assert b"".join((await log.read(log.start(-1)))[0]) == stream.split(b": keep")[0]
    log.close(1.0)
    assert await log.read(log.start(5)) == ([], 6)            # resumed after the last event: nothing, the end
    with pytest.raises(ClientError) as info:
        log.start(6)                                            # no reader saw an event not yet written
    assert info.value.status == 400 and info.value.param == "starting_after"


@pytest.mark.pure
async def test_a_reader_follows_live_events_and_one_left_too_far_behind_is_told(monkeypatch):
    log = StreamLog()
    log.feed(_event(0))
    got = []

    async def reader():
        position = log.start(-1)
        while True:
            events, position = await log.read(position)
            if not events:
                return
            got.append(b"".join(events))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        for i in range(1, 4):
            await trio.sleep(0.01)
            log.feed(_event(i))
        await trio.sleep(0.01)
        log.close(1.0)
    assert b"".join(got) == b"".join(_event(i) for i in range(4)) and len(got) == 4     # one wake-up each

    monkeypatch.setattr(background, "MAX_LOG_BYTES", 1000)
    log = StreamLog()
    log.feed(_event(0, pad="x" * 100))
    slow = log.start(-1)
    for i in range(1, 40):
        log.feed(_event(i, pad="x" * 100))
    assert log.size <= 1000 and log.dropped > 0 and log.last == 39
    with pytest.raises(FellBehind):
        await log.read(slow)                              # its next event went with the bound
    with pytest.raises(ClientError) as info:
        log.start(0)
    assert info.value.param == "starting_after" and "no longer kept" in info.value.message
    events, _ = await log.read(log.start(log.seqs[log.head] - 1))
    assert events[-1] == _event(39, pad="x" * 100)


@pytest.mark.pure
def test_what_cannot_be_streamed_again_says_why():
    assert starting_after_of(None) == -1 and starting_after_of("7") == 7 and starting_after_of("-3") == -1
    with pytest.raises(ClientError) as info:
        starting_after_of("seven")
    assert info.value.param == "starting_after"
    cases = [({"status": "completed"}, "background: true"),
             (pending_shown("smart", 1, 10.0), "without `stream: true`"),
             (pending_shown("smart", 1, 10.0, stream=True), "another gateway replica"),
             (final_shown(pending_shown("smart", 1, 10.0, stream=True), "completed"), "no longer be streamed")]
    for shown, says in cases:
        err = resume_refusal(shown, "resp_1")
        assert err.status == 400 and err.param == "stream" and says in err.message


@pytest.mark.pure
async def test_a_reader_on_another_replica_reads_the_relayed_events_and_polls_for_more(monkeypatch):
    monkeypatch.setattr(background, "RELAY_POLL_S", 0.001)
    relayed = [_event(i) for i in range(3)]
    calls = []

    async def command(*args):               # LRANGE name start stop, as Redis answers it
        calls.append(args)
        start, stop = args[2], args[3]
        return relayed[start:stop + 1]
    pending = [True]

    async def still_pending():
        return pending[0]
    log = RelayedLog(command, "list", relayed[:2], still_pending)
    position = log.start(0)                 # running: nothing to refuse, even past the last relayed
    assert await log.read(position) == ([_event(1)], 2)
    relayed += [_event(3), RELAY_END]
    assert await log.read(2) == ([_event(2), _event(3)], 4) and calls   # polled for the rest
    assert await log.read(4) == ([], 4)                                  # the end
    ended = RelayedLog(command, "list", relayed, still_pending)
    assert await ended.read(ended.start(3)) == ([], 4)                   # after the last: nothing
    with pytest.raises(ClientError) as info:
        ended.start(4)
    assert info.value.param == "starting_after"
    cut = RelayedLog(command, "list", [_event(0), RELAY_CUT], still_pending)
    assert await cut.read(cut.start(-1)) == ([_event(0)], 1)
    with pytest.raises(FellBehind):
        await cut.read(1)                                                # the relay stopped short
    quiet = RelayedLog(command, "nothing", [_event(0)], still_pending)
    relayed[:] = [_event(0)]
    pending[0] = False                                                   # the run ended, no end was relayed
    with pytest.raises(FellBehind) as info:
        await quiet.read(1)
    assert "stopped relaying" in info.value.message


@pytest.mark.pure
def test_finished_logs_are_forgotten_after_their_time_and_beyond_their_budget(monkeypatch):
    now = [1000.0]
    runs = BackgroundRuns(wall=lambda: now[0])
    for i in range(3):
        log = runs.logs[f"k{i}"] = StreamLog()
        log.feed(_event(0, pad="x" * 200))
        log.close(now[0] + i)
        runs.finished_bytes += log.size
    runs.logs["live"] = StreamLog()
    monkeypatch.setattr(background, "MAX_FINISHED_BYTES", 2 * runs.logs["k0"].size)
    runs._sweep()
    assert set(runs.logs) == {"k1", "k2", "live"}               # the longest finished went first
    now[0] += background.RESUME_KEEP_S + 1.5
    runs._sweep()
    assert set(runs.logs) == {"k2", "live"} and runs.finished_bytes == runs.logs["k2"].size
    now[0] += 1
    runs._sweep()
    assert set(runs.logs) == {"live"} and runs.finished_bytes == 0      # a running stream's log stays


# ---------------------------------------------------------------------------
# over sockets, the openai SDK as the client

def _first_events(c: openai.OpenAI, n: int) -> list:
    """A background stream's first `n` events, then its client goes away."""
    with c.responses.create(model="smart", input="count", stream=True, background=True) as stream:
        events = []
        for event in stream:
            events.append(event)
            if len(events) == n:
                return events
    return events


def _resume(c: openai.OpenAI, response_id: str, starting_after: int | None = None, pause: float = 0.0) -> list:
    """`retrieve(..., stream=True, starting_after=...)`: each event with the time it came."""
    kw = {} if starting_after is None else {"starting_after": starting_after}
    out = []
    with c.responses.retrieve(response_id, stream=True, **kw) as stream:
        for event in stream:
            out.append((event, time.monotonic()))
            time.sleep(pause)
    return out


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", ["anthropic", "responses"])
async def test_a_resumed_reader_gets_exactly_the_missing_events_then_the_live_rest(vendor):
    mock = MockVendor(reply=WORDS, chunk_delay=0.1)
    async with gateway_with(config_for(vendor), a=mock) as gw:
        c = client(gw)
        seen = await sdk(lambda: _first_events(c, 5))          # the client saw 5 events, then lost its connection
        response_id, cursor = seen[0].response.id, seen[-1].sequence_number
        assert seen[0].type == "response.created"
        resumed = await sdk(lambda: _resume(c, response_id, cursor))
        done = time.monotonic()
        events = [e for e, _ in resumed]
        # the missing events, in order, their sequence numbers continuing the seen ones, then the final event
        assert [e.sequence_number for e in events] == list(range(cursor + 1, cursor + 1 + len(events)))
        assert events[-1].type == "response.completed" and events[-1].response.output_text == WORDS
        assert events[-1].response.id == response_id
        deltas = [e.delta for e in seen + events if e.type == "response.output_text.delta"]
        assert "".join(deltas) == WORDS
        assert done - resumed[0][1] > 0.5                  # really mid-stream: the rest came live, paced
        # after the end: the same events again, from the log
        again = await sdk(lambda: _resume(c, response_id, cursor))
        assert [e.model_dump() for e, _ in again] == [e.model_dump() for e in events]
        everything = await sdk(lambda: _resume(c, response_id))           # no starting_after: every event
        assert [e.sequence_number for e, _ in everything] == list(range(0, events[-1].sequence_number + 1))
        assert [e.model_dump() for e, _ in everything[:5]] == [e.model_dump() for e in seen]
        # the SDK's stream helper (it asks for every event and skips those up to starting_after itself)
        def helper():
            with c.responses.stream(response_id=response_id, starting_after=cursor) as stream:
                return [e.sequence_number for e in stream], stream.get_final_response()
        numbers, final = await sdk(helper)
        assert numbers == [e.sequence_number for e in events] and final.output_text == WORDS
        # resuming after the last event: an empty stream; beyond it: a 400 naming starting_after
        assert await sdk(lambda: _resume(c, response_id, events[-1].sequence_number)) == []
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: _resume(c, response_id, events[-1].sequence_number + 1))
        assert info.value.body["param"] == "starting_after"
        assert (await sdk(lambda: c.responses.retrieve(response_id))).status == "completed"
        assert gw.app.background.status()["resumed"] >= 5


@pytest.mark.sdk
async def test_what_cannot_be_resumed_is_a_clear_error(monkeypatch):
    mock = MockVendor(reply="one two three")
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: _resume(c, "resp_nope", 3))
        sync = await sdk(lambda: c.responses.create(model="smart", input="hi"))
        polled = await sdk(lambda: c.responses.create(model="smart", input="hi", background=True))
        streamed = (await sdk(lambda: list(c.responses.create(model="smart", input="hi", stream=True,
                                                              background=True))))[-1].response
        for response_id, says in ((sync.id, "background: true"), (polled.id, "without `stream: true`")):
            with pytest.raises(openai.BadRequestError) as info:
                await sdk(lambda: _resume(c, response_id))
            assert info.value.body["param"] == "stream" and says in info.value.message
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: _resume(c, streamed.id, "x"))
        assert info.value.body["param"] == "starting_after"
        assert [e.type for e, _ in await sdk(lambda: _resume(c, streamed.id))][-1] == "response.completed"
        # past the time a finished stream's events are kept: OpenAI's "can no longer be streamed"
        monkeypatch.setattr(background, "RESUME_KEEP_S", 0.0)
        with pytest.raises(openai.BadRequestError) as info:
            await sdk(lambda: _resume(c, streamed.id))
        assert "no longer be streamed" in info.value.message
        # a deleted response: its status entry is gone, and its events with it
        monkeypatch.setattr(background, "RESUME_KEEP_S", 300.0)
        await sdk(lambda: c.responses.delete(streamed.id))
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: _resume(c, streamed.id))


@pytest.mark.sdk
async def test_a_slow_reader_slows_neither_the_run_nor_another_reader():
    mock = MockVendor(reply=WORDS, chunk_delay=0.05)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        seen = await sdk(lambda: _first_events(c, 2))
        response_id = seen[0].response.id
        t0 = time.monotonic()
        finished = {}

        async def read(name, pause):
            finished[name] = (await sdk(lambda: _resume(c, response_id, -1, pause)), time.monotonic())

        async def poll():
            resp = await sdk(lambda: c.responses.retrieve(response_id))
            while resp.status == "in_progress":
                await trio.sleep(0.05)
                resp = await sdk(lambda: c.responses.retrieve(response_id))
            finished["run"] = (resp, time.monotonic())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read, "slow", 0.25)
            nursery.start_soon(read, "fast", 0.0)
            nursery.start_soon(poll)
        slow, fast = finished["slow"][0], finished["fast"][0]
        assert [e.model_dump() for e, _ in slow] == [e.model_dump() for e, _ in fast]     # all, in order
        assert slow[-1][0].type == "response.completed" and len(slow) > 20
        run_took, fast_took, slow_took = (finished[k][1] - t0 for k in ("run", "fast", "slow"))
        assert finished["run"][0].status == "completed"
        assert slow_took > 0.25 * len(slow) * 0.9         # the slow one read at its own pace ...
        assert run_took < slow_took / 2 and fast_took < slow_took / 2   # ... which held back nobody
        assert gw.app.background.status()["resume_readers"] == 0


@pytest.mark.sdk
async def test_a_resumed_reader_leaving_does_not_touch_the_run():
    mock = MockVendor(reply=WORDS, chunk_delay=0.1)
    async with gateway_with(config_for("responses"), a=mock) as gw:
        c = client(gw)
        seen = await sdk(lambda: _first_events(c, 3))
        response_id = seen[0].response.id

        def leave_early():
            with c.responses.retrieve(response_id, stream=True, starting_after=2) as stream:
                return next(iter(stream))
        first = await sdk(leave_early)
        assert first.sequence_number == 3
        with trio.fail_after(20):
            while gw.app.background.running:
                await trio.sleep(0.05)
        final = await sdk(lambda: c.responses.retrieve(response_id))
        assert final.status == "completed" and final.output_text == WORDS
        assert gw.app.background.status()["resume_readers"] == 0


@pytest.mark.sdk
async def test_a_cancelled_stream_resumed_ends_with_its_cancelled_event():
    mock = MockVendor(reply=" ".join(f"w{i}" for i in range(60)), chunk_delay=0.3)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = client(gw)
        seen = await sdk(lambda: _first_events(c, 3))          # its client is gone
        response_id = seen[0].response.id
        got = []

        async def read():
            got.extend(await sdk(lambda: _resume(c, response_id, seen[-1].sequence_number)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            await trio.sleep(0.8)
            assert (await sdk(lambda: c.responses.cancel(response_id))).status == "cancelled"
        last = got[-1][0]
        assert last.type == "response.completed" and last.response.status == "cancelled"
        assert [e.sequence_number for e, _ in got] == list(range(seen[-1].sequence_number + 1, last.sequence_number + 1))


@pytest.mark.sdk
async def test_a_background_stream_whose_client_leaves_before_its_first_event_is_cancelled():
    """Nobody saw its id (it comes with the first event), so nobody could ever retrieve,
    resume or cancel it: the run stops with its client instead of generating unseen."""
    mock = MockVendor(reply=WORDS, latency=30)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0, timeout=1.0)
        with pytest.raises(openai.APITimeoutError):
            await sdk(lambda: c.responses.create(model="smart", input="hi", stream=True, background=True))
        with trio.fail_after(10):
            while mock.in_flight or gw.app.background.running:     # the member's call went with it
                await trio.sleep(0.02)
        assert gw.app.background.status()["started"] == 1


@pytest.mark.sdk
async def test_a_cached_background_stream_is_resumable_too():
    config = config_for("anthropic")
    config["pools"]["smart"]["cache"] = {"mode": "exact"}
    mock = MockVendor(reply="one two three four")
    async with gateway_with(config, a=mock) as gw:
        c = client(gw)
        for _ in range(2):                                     # the second is a cache replay
            events = await sdk(lambda: list(c.responses.create(model="smart", input="x", stream=True,
                                                               background=True)))
        assert len(mock.received) == 1
        again = await sdk(lambda: _resume(c, events[0].response.id, 1))
        assert [e.model_dump() for e, _ in again] == [e.model_dump() for e in events[2:]]


@pytest.mark.sdk
async def test_the_js_sdk_resumes_a_background_stream():
    js = pathlib.Path(__file__).parent / "js"
    if shutil.which("node") is None or not (js / "node_modules").is_dir():
        pytest.skip("node or the JS SDKs (tests/js, npm ci) are not installed")
    mock = MockVendor(reply=WORDS, chunk_delay=0.1)
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        with trio.fail_after(120):
            done = await trio.run_process(["node", str(js / "background_resume.mjs"), gw.url, "smart"],
                                          capture_stdout=True, capture_stderr=True, check=False)
    row = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert row["ok"], row.get("error") or done.stderr.decode()[-2000:]
    assert row["numbers"] == list(range(row["cursor"] + 1, row["cursor"] + 1 + len(row["numbers"])))
    assert row["last"] == "response.completed" and row["text"] == WORDS and row["seen"] + row["rest"] == WORDS
