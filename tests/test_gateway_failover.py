"""Failover and fault attribution over real sockets, with the SDKs as clients."""
from __future__ import annotations

import anthropic
import openai
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with, last_record, sdk

pytestmark = pytest.mark.sdk

TWO_VENDORS = {
    "providers": {
        "first": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-a"},
        "second": {"protocol": "openai", "base_url": "{b}/v1", "key": "sk-b"},
    },
    "pools": {"smart": {"strategy": "ordered", "members": [
        {"provider": "first", "model": "m1", "priority": 0},
        {"provider": "second", "model": "m2", "priority": 1}]}},
}
TWO_ANTHROPIC = {
    "providers": {
        "first": {"protocol": "anthropic", "base_url": "{a}", "key": "ak-a"},
        "second": {"protocol": "anthropic", "base_url": "{b}", "key": "ak-b"},
    },
    "pools": {"claude": {"strategy": "ordered", "members": [
        {"provider": "first", "model": "c1", "priority": 0},
        {"provider": "second", "model": "c2", "priority": 1}]}},
}


def oai(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def chat(client, **kw):
    return client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}], **kw)


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 503}, {"reset": "before"}, {"error": "rate"}])
async def test_buffered_failover_to_second_member(fault):
    a, b = MockVendor(reply="from a"), MockVendor(reply="from b")
    a.fail_next(fault)
    async with gateway_with(TWO_VENDORS, a=a, b=b) as gw:
        raw = await sdk(lambda: oai(gw.url).chat.completions.with_raw_response.create(
            model="smart", messages=[{"role": "user", "content": "hi"}]))
        result = raw.parse()
        record = (await last_record(gw))
    assert raw.headers["x-busbar-request-id"] == record["id"]   # look the path up by this id
    assert result.choices[0].message.content == "from b"
    assert [x["member"].split("/")[-1] for x in record["attempts"]] == ["m1", "m2"]
    assert [s["state"] for s in record["path"]] == ["received", "routed", "dispatched", "failing_over",
                                                     "dispatched", "streaming", "done"]


async def test_client_error_is_returned_untouched_and_not_retried():
    a, b = MockVendor(), MockVendor()
    a.fail_next({"error": "invalid", "message": "messages.0.content: bad value"})
    async with gateway_with(TWO_VENDORS, a=a, b=b) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: chat(oai(gw.url)))
        assert "messages.0.content: bad value" in str(exc.value)
        assert b.received == []
        assert (await last_record(gw))["state"] == "failed"


async def test_flood_of_client_errors_never_opens_breaker():
    a, b = MockVendor(reply="a ok"), MockVendor(reply="b ok")
    a.always = {"error": "invalid"}
    async with gateway_with(TWO_VENDORS, a=a, b=b) as gw:
        client = oai(gw.url)
        for _ in range(30):
            with pytest.raises(openai.BadRequestError):
                await sdk(lambda: chat(client))
        a.always = None
        result = await sdk(lambda: chat(client))
    assert result.choices[0].message.content == "a ok"   # member 1 still in rotation
    assert b.received == []


async def test_context_length_error_lands_on_larger_member():
    config = {
        "providers": TWO_VENDORS["providers"],
        "pools": {"smart": {"members": [{"provider": "first", "model": "small", "context": 8000},
                                        {"provider": "second", "model": "large", "context": 200000}]}},
    }
    a, b = MockVendor(reply="small"), MockVendor(reply="large")
    a.always = {"error": "context"}
    async with gateway_with(config, a=a, b=b) as gw:
        for _ in range(6):
            result = await sdk(lambda: chat(oai(gw.url)))
            assert result.choices[0].message.content == "large"
        snapshot = gw.gateway.router.snapshot(trio.current_time())
    small = snapshot["pools"]["smart"]["members"][0]
    assert small["model"] == "small"
    # not the member's fault: no failure counted toward its breaker
    assert small["breaker"]["state"] == "closed" and small["breaker"]["consecutive_failures"] == 0


async def test_buffered_reset_mid_body_fails_over_and_blames_the_member():
    """Headers sent, body cut: the member's fault (not a gateway bug): the
    request fails over, the breaker counts it, and nothing stays in flight."""
    a, b = MockVendor(reply="never seen " * 50), MockVendor(reply="from b")
    a.fail_next({"reset": "during"})
    async with gateway_with(TWO_VENDORS, a=a, b=b) as gw:
        result = await sdk(lambda: chat(oai(gw.url)))
        record = await last_record(gw)
        snapshot = gw.gateway.router.snapshot(trio.current_time())
    assert result.choices[0].message.content == "from b"
    assert [(x["member"].split("/")[-1], x["outcome"]) for x in record["attempts"]] == [("m1", "server"),
                                                                                        ("m2", "ok")]
    assert "broke off" in record["attempts"][0]["message"]
    first = snapshot["pools"]["smart"]["members"][0]
    assert first["model"] == "m1" and first["breaker"]["consecutive_failures"] == 1
    assert [m["in_flight"] for m in snapshot["pools"]["smart"]["members"]] == [0, 0]


async def test_alert_rule_logs_its_line(caplog):
    """`alert: true` (billing by default) writes one operator line, key id only."""
    a, b = MockVendor(reply="from a"), MockVendor(reply="from b")
    a.fail_next({"error": "billing"})
    with caplog.at_level("WARNING", logger="busbar.alert"):
        async with gateway_with(TWO_VENDORS, a=a, b=b) as gw:
            result = await sdk(lambda: chat(oai(gw.url)))
    assert result.choices[0].message.content == "from b"
    lines = [r.getMessage() for r in caplog.records if r.name == "busbar.alert"]
    assert len(lines) == 1 and "billing" in lines[0] and "first#0:" in lines[0]
    assert "sk-a" not in lines[0]


async def test_stream_reset_before_content_fails_over_transparently():
    a, b = MockVendor(reply="never seen"), MockVendor(reply="the full answer from b")
    a.fail_next({"reset": "during", "after": 1})    # head + role chunk, then the socket dies
    async with gateway_with(TWO_VENDORS, a=a, b=b) as gw:
        chunks = await sdk(lambda: list(chat(oai(gw.url), stream=True)))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "the full answer from b"


async def test_stream_error_event_first_fails_over():
    a, b = MockVendor(), MockVendor(reply="b answers")
    a.fail_next({"error_event": "overloaded"})
    async with gateway_with(TWO_ANTHROPIC, a=a, b=b) as gw:
        def run():
            client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
            with client.messages.stream(model="claude", max_tokens=50,
                                        messages=[{"role": "user", "content": "x"}]) as s:
                return "".join(s.text_stream)
        assert await sdk(run) == "b answers"


def streamed_text(url: str) -> str:
    """The OpenAI SDK's streamed answer from pool `smart`, whole (raises as the SDK does)."""
    return "".join(c.choices[0].delta.content or "" for c in chat(oai(url), stream=True) if c.choices)


async def test_stream_failure_after_content_raises_in_sdk():
    a, b = MockVendor(reply="a b c d e f g h"), MockVendor()
    a.fail_next({"reset": "during", "after": 4})
    async with gateway_with(TWO_VENDORS, a=a, b=b) as gw:
        with pytest.raises(openai.APIError):
            await sdk(lambda: streamed_text(gw.url))
        assert b.received == []                         # no retry after bytes went out
        assert (await last_record(gw))["state"] == "failed"


async def test_anthropic_stream_failure_after_content_raises():
    a, b = MockVendor(reply="a b c d e f"), MockVendor()
    a.fail_next({"malformed": True, "after": 5})
    async with gateway_with(TWO_ANTHROPIC, a=a, b=b) as gw:
        def run():
            client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
            with client.messages.stream(model="claude", max_tokens=50,
                                        messages=[{"role": "user", "content": "x"}]) as s:
                return "".join(s.text_stream)
        with pytest.raises(anthropic.APIError):
            await sdk(run)


class BodyStallVendor(MockVendor):
    """Answers 200 with the head and the first bytes of a chunked JSON body,
    then goes silent with the connection open."""

    async def handle(self, request, responder):
        await responder.start(200, [(b"content-type", b"application/json")], b'{"id": "chatcmpl-')
        await trio.sleep(10)


async def test_a_buffered_body_stalled_after_its_head_fails_over_at_its_bound():
    """A buffered answer whose body stops coming is bounded by the idle /
    first_byte timeout (the connection's ReadBound), fails over and blames
    the member, well before the vendor's silence ends."""
    config = {**TWO_VENDORS, "pipelines": {"default": {"timeouts": {"first_byte": 0.3, "idle": 0.3}}}}
    async with gateway_with(config, a=BodyStallVendor(), b=MockVendor(reply="from b")) as gw:
        start = trio.current_time()
        result = await sdk(lambda: chat(oai(gw.url)))
        took = trio.current_time() - start
        record = await last_record(gw)
    assert result.choices[0].message.content == "from b"
    assert [(x["member"].split("/")[-1], x["outcome"]) for x in record["attempts"]] == [("m1", "server"),
                                                                                        ("m2", "ok")]
    assert "stalled" in record["attempts"][0]["message"]
    assert took < 3


async def test_stall_before_first_byte_fails_over():
    config = {**TWO_VENDORS, "pipelines": {"default": {"timeouts": {"first_byte": 0.3}}}}
    a, b = MockVendor(), MockVendor(reply="b was quick")
    a.fail_next({"stall": 5})
    async with gateway_with(config, a=a, b=b) as gw:
        start = trio.current_time()
        chunks = await sdk(lambda: list(chat(oai(gw.url), stream=True)))
        took = trio.current_time() - start
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "b was quick"
    assert took < 3       # failed over at first_byte (0.3 s), not when the 5 s stall ended


async def test_idle_timeout_counts_from_the_last_chunk_not_the_streams_start():
    """`timeouts.idle` bounds the silence between chunks: a stream whose
    chunks come 0.12 s apart runs well past 0.3 s and completes."""
    config = {**TWO_VENDORS, "pipelines": {"default": {"timeouts": {"idle": 0.3}}}}
    a = MockVendor(reply="one two three four five six seven", chunk_delay=0.12)
    async with gateway_with(config, a=a, b=MockVendor()) as gw:
        start = trio.current_time()
        chunks = await sdk(lambda: list(chat(oai(gw.url), stream=True)))
        took = trio.current_time() - start
        record = await last_record(gw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "one two three four five six seven"
    assert took > 0.6 and [x["outcome"] for x in record["attempts"]] == ["ok"]


async def test_a_stream_silent_past_idle_ends_with_an_error_in_the_clients_protocol():
    """Content went out, then the upstream goes quiet past `timeouts.idle`:
    the stream ends with the client protocol's error event (its SDK raises)
    when the idle bound passes, not when the upstream speaks again."""
    config = {**TWO_VENDORS, "pipelines": {"default": {"timeouts": {"idle": 0.3}}}}
    a = MockVendor(reply="one two three four")
    a.fail_next({"stall": 5, "after": 3})      # head, role and two words, then silence
    async with gateway_with(config, a=a, b=MockVendor()) as gw:
        got = []

        def run():
            for chunk in chat(oai(gw.url), stream=True):
                got.append(chunk.choices[0].delta.content or "" if chunk.choices else "")
        start = trio.current_time()
        with pytest.raises(openai.APIError, match="stalled"):
            await sdk(run)
        took = trio.current_time() - start
        record = await last_record(gw)
    assert "".join(got).startswith("one")
    assert took < 4      # the 5 s silence was not waited out
    assert "stalled" in record["error"]


async def test_all_members_failing_gives_error_in_client_protocol():
    a, b = MockVendor(), MockVendor()
    a.always = b.always = {"status": 500}
    async with gateway_with(TWO_ANTHROPIC, a=a, b=b) as gw:
        with pytest.raises(anthropic.InternalServerError) as exc:
            await sdk(lambda: anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0).messages.create(
                model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}]))
    assert exc.value.status_code == 502
    assert exc.value.body["type"] == "error"


async def test_all_keys_rate_limited_gives_429_with_retry_after():
    config = {"providers": {"only": {"protocol": "openai", "base_url": "{a}/v1", "keys": ["k1", "k2"]}},
              "pools": {"smart": {"members": [{"provider": "only", "model": "m"}]}}}
    a = MockVendor()
    a.fail_next({"error": "rate", "retry_after": 7}, {"error": "rate", "retry_after": 9})
    async with gateway_with(config, a=a) as gw:
        with pytest.raises(openai.RateLimitError) as exc:
            await sdk(lambda: chat(oai(gw.url)))
    retry_after = float(exc.value.response.headers["retry-after"])
    assert 6 <= retry_after <= 8            # the earliest recovery of the two keys
    assert sorted(r["key"] for r in a.received) == ["k1", "k2"]


async def test_request_too_large_for_every_member_is_a_client_error():
    config = {"providers": TWO_VENDORS["providers"],
              "pools": {"smart": {"members": [{"provider": "first", "model": "small", "context": 50},
                                              {"provider": "second", "model": "large", "context": 100}]}}}
    a, b = MockVendor(), MockVendor()
    async with gateway_with(config, a=a, b=b) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: oai(gw.url).chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "word " * 400}]))
        assert exc.value.code == "context_length_exceeded"
    assert a.received == [] and b.received == []


async def test_context_error_on_every_member_returns_the_vendor_message():
    config = {"providers": TWO_VENDORS["providers"],
              "pools": {"smart": {"members": [{"provider": "first", "model": "small", "context": 8000},
                                              {"provider": "second", "model": "large", "context": 16000}]}}}
    a, b = MockVendor(), MockVendor()
    a.always = b.always = {"error": "context"}
    async with gateway_with(config, a=a, b=b) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: chat(oai(gw.url)))
        assert "maximum context length" in str(exc.value)
        snapshot = gw.gateway.router.snapshot(trio.current_time())
    assert all(m["breaker"]["state"] == "closed" for m in snapshot["pools"]["smart"]["members"])


@pytest.mark.slow
async def test_on_exhausted_wait_sleeps_until_the_key_recovers():
    config = {"providers": {"only": {"protocol": "openai", "base_url": "{a}/v1", "key": "k1"}},
              "pools": {"smart": {"on_exhausted": {"action": "wait", "max_wait": 3},
                                  "members": [{"provider": "only", "model": "m"}]}}}
    a = MockVendor(reply="after the wait")
    a.fail_next({"error": "rate", "retry_after": 1})
    async with gateway_with(config, a=a) as gw:
        # the request that met the rate limit waits for its key and tries again
        t0 = trio.current_time()
        result = await sdk(lambda: chat(oai(gw.url)))
        waited = trio.current_time() - t0
        assert result.choices[0].message.content == "after the wait"
        assert 0.9 <= waited < 3
        assert len(a.received) == 2
        # a request arriving while every member cools waits too
        a.fail_next({"error": "rate", "retry_after": 1})
        await sdk(lambda: chat(oai(gw.url)))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sdk, lambda: chat(oai(gw.url)))
            nursery.start_soon(sdk, lambda: chat(oai(gw.url)))
        assert len(a.received) == 6


async def test_on_exhausted_fallback_pool_takes_over():
    config = {"providers": {"main": {"protocol": "openai", "base_url": "{a}/v1", "key": "k1"},
                            "spare": {"protocol": "anthropic", "base_url": "{b}", "key": "k2"}},
              "pools": {"smart": {"on_exhausted": {"action": "fallback", "pool": "backup"},
                                  "members": [{"provider": "main", "model": "m"}]},
                        "backup": {"members": [{"provider": "spare", "model": "c"}]}}}
    a, b = MockVendor(), MockVendor(reply="from the backup pool")
    a.always = {"error": "billing"}
    async with gateway_with(config, a=a, b=b) as gw:
        result = await sdk(lambda: chat(oai(gw.url)))
    assert result.choices[0].message.content == "from the backup pool"
    assert b.received[-1]["protocol"] == "anthropic"


@pytest.mark.parametrize("pool", ["same_protocol", "cross_protocol"])
async def test_garbage_200_from_upstream_fails_over(pool):
    config = {"providers": {"first": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"},
                            "ant": {"protocol": "anthropic", "base_url": "{a}", "key": "k"},
                            "second": {"protocol": "openai", "base_url": "{b}/v1", "key": "k"}},
              "pools": {"smart": {"strategy": "ordered", "members": [
                  {"provider": "first" if pool == "same_protocol" else "ant", "model": "m1", "priority": 0},
                  {"provider": "second", "model": "m2", "priority": 1}]}}}
    a, b = MockVendor(), MockVendor(reply="clean answer")
    a.fail_next({"malformed": True})
    async with gateway_with(config, a=a, b=b) as gw:
        result = await sdk(lambda: chat(oai(gw.url)))
        record = await last_record(gw)
    assert result.choices[0].message.content == "clean answer"
    assert record["attempts"][0]["outcome"] == "server"


CROSS = {"providers": {"ant": {"protocol": "anthropic", "base_url": "{a}", "key": "k"},
                       "second": {"protocol": "openai", "base_url": "{b}/v1", "key": "k"}},
         "pools": {"smart": {"strategy": "ordered", "members": [
             {"provider": "ant", "model": "m1", "priority": 0},
             {"provider": "second", "model": "m2", "priority": 1}]}}}
# an Anthropic delta whose text is not a string: JSON, well framed, the wrong type
TYPED_GARBAGE = ('event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0, '
                 '"delta": {"type": "text_delta", "text": true}}\n\n')


async def test_a_wrong_typed_upstream_chunk_before_content_fails_over():
    """Before the commit point, a chunk the decoder cannot type-check is the
    member's fault like garbage bytes: the stream goes to the next member. (Before
    `ir.check_event`, the `true` reached the OpenAI encoder as a TypeError.)"""
    a, b = MockVendor(reply="never seen"), MockVendor(reply="clean answer")
    a.fail_next({"inject": TYPED_GARBAGE, "after": 1})     # right after message_start, before any content
    async with gateway_with(CROSS, a=a, b=b) as gw:
        assert await sdk(lambda: streamed_text(gw.url)) == "clean answer"
        record = await last_record(gw)
    assert [x["outcome"] for x in record["attempts"]] == ["server", "ok"]
    assert "malformed" in record["attempts"][0]["message"]


async def test_a_wrong_typed_upstream_chunk_after_content_ends_the_stream_with_the_clients_error():
    a, b = MockVendor(reply="a b c d e f"), MockVendor()
    a.fail_next({"inject": TYPED_GARBAGE, "after": 4})     # after content went out
    async with gateway_with(CROSS, a=a, b=b) as gw:
        with pytest.raises(openai.APIError):
            await sdk(lambda: streamed_text(gw.url))
        record = await last_record(gw)
    assert b.received == []                         # no retry after bytes went out
    assert record["state"] == "failed" and [x["outcome"] for x in record["attempts"]] == ["server"]
