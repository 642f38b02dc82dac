"""Stream resume (issue 16): a stream whose upstream dies after content went
out continues on another member, spliced into the client's open stream;
every official SDK gets one complete answer.  Hedged requests are in
tests/test_hedging.py; the splice itself is tested purely in
tests/test_resume_splice.py."""
from __future__ import annotations

import pytest

from busbar.mock import MockVendor
from clients import CLIENTS
from harness import gateway_with, last_record, sdk

PROTOCOLS = ["openai", "anthropic", "responses", "gemini", "cohere", "bedrock", "bedrock-invoke"]
REPLY = "The quick brown fox jumps over the lazy dog and keeps running far away"
RESUME = {"streaming": {"resume": {"max": 1, "max_added_ms": 10000}}}


def config(first: str, second: str, pipeline: dict | None = RESUME) -> dict:
    providers = {}
    for name, protocol, base in (("first", first, "{a}"), ("second", second, "{b}")):
        providers[name] = {"protocol": protocol, "base_url": base}
        if protocol in ("bedrock", "bedrock-invoke"):
            providers[name].update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
        else:
            providers[name]["key"] = "k"
    out = {"providers": providers, "pools": {"smart": {"strategy": "ordered", "members": [
        {"provider": "first", "model": "m1", "priority": 0}, {"provider": "second", "model": "m2", "priority": 1}]}}}
    if pipeline is not None:
        out["pipelines"] = {"default": pipeline}
    return out


def vendors(**kw) -> tuple[MockVendor, MockVendor]:
    creds = {"AKIDVENDOR": "vendor-secret"}
    return MockVendor(reply=REPLY, aws_credentials=creds, **kw), MockVendor(reply=REPLY, aws_credentials=creds, **kw)


def assistant_turn(protocol: str, body: dict) -> str:
    """The trailing assistant text the continuation carried, in the vendor's own shape."""
    from busbar.mock.vendors import VENDORS
    return VENDORS[protocol].trailing_assistant_text(body, {})


@pytest.mark.sdk
@pytest.mark.parametrize("client,first,second", [
    ("openai", "openai", "anthropic"), ("anthropic", "anthropic", "openai"), ("responses", "responses", "gemini"),
    ("gemini", "gemini", "cohere"), ("cohere", "cohere", "bedrock"), ("bedrock", "bedrock", "responses"),
    ("openai", "gemini", "openai"), ("anthropic", "bedrock", "anthropic"),
    ("bedrock-invoke", "bedrock-invoke", "anthropic"), ("anthropic", "bedrock-invoke", "bedrock-invoke"),
])
async def test_a_stream_cut_mid_answer_is_resumed_on_another_member(client, first, second):
    a, b = vendors()
    a.fail_next({"reset": "during", "after": 4})      # the preamble and 3 deltas, then the socket dies
    async with gateway_with(config(first, second), a=a, b=b) as gw:
        text = await sdk(lambda: CLIENTS[client](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    partial, continuation = a.received[-1]["streamed"], b.received[-1]["streamed"]
    assert partial and continuation and len(partial) < len(REPLY)      # it was cut mid-answer
    # one complete answer: the partial plus what the second member produced, the overlap trimmed
    (resumed,) = record["resumed"]
    assert text == partial + continuation[resumed["trimmed"]:] == REPLY
    assert assistant_turn(second, b.received[-1]["body"]) == partial.rstrip()   # sent back, whitespace stripped
    states = [s["state"] for s in record["path"]]
    assert states[-6:] == ["dispatched", "streaming", "failing_over", "dispatched", "streaming", "done"]
    assert [x["outcome"] for x in record["attempts"]] == ["server", "ok"]
    assert resumed["from"].endswith("m1") and resumed["to"].endswith("m2") and resumed["after_chars"] == len(partial)
    assert record["state"] == "done"


@pytest.mark.sdk
@pytest.mark.parametrize("first", ["anthropic", "openai"])
async def test_an_in_stream_overload_error_is_resumed_and_usage_adds_both_attempts(first):
    """The vendor's own mid-stream error event (Anthropic `overloaded_error`
    after three deltas) never reaches the client: the stream goes on
    elsewhere, with one stop reason and the usage of both attempts."""
    import anthropic
    a, b = vendors()
    a.fail_next({"error_event": "overloaded", "after": 4})
    async with gateway_with(config(first, "anthropic"), a=a, b=b) as gw:
        def run():
            client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
            with client.messages.stream(model="smart", max_tokens=256,
                                        messages=[{"role": "user", "content": "x"}]) as s:
                kinds = [event.type for event in s]
                return s.get_final_message(), kinds
        message, kinds = await sdk(run)
        record = await last_record(gw)
    partial, continuation = a.received[-1]["streamed"], b.received[-1]["streamed"]
    assert "".join(block.text for block in message.content) == REPLY
    assert len(message.content) == 1 and message.stop_reason == "end_turn"
    assert kinds.count("message_start") == 1 and kinds.count("message_stop") == 1 and "error" not in kinds
    assert record["attempts"][0]["outcome"] in ("rate", "server")    # overloaded: a class that fails over
    # usage: the broken attempt's (its unreported output estimated from the partial) plus the continuation's
    usage = record["usage"]
    assert message.usage.output_tokens == usage["output_tokens"] == max(1, len(partial) // 4) + max(1, len(continuation) // 4)
    assert message.usage.input_tokens == usage["input_tokens"] > 1


@pytest.mark.sdk
async def test_openai_stream_has_one_finish_reason_and_the_summed_usage():
    import openai
    a, b = vendors()
    a.fail_next({"reset": "during", "after": 3})
    async with gateway_with(config("openai", "gemini"), a=a, b=b) as gw:
        def run():
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
            return list(client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}],
                                                       stream=True, stream_options={"include_usage": True}))
        chunks = await sdk(run)
        record = await last_record(gw)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == REPLY
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert len({c.id for c in chunks}) == 1                    # the same message id throughout
    assert chunks[-1].usage.completion_tokens == record["usage"]["output_tokens"]
    assert chunks[-1].usage.prompt_tokens == record["usage"]["input_tokens"]


@pytest.mark.sdk
@pytest.mark.parametrize("client", PROTOCOLS)
async def test_resume_off_ends_with_todays_honest_error(client):
    a, b = vendors()
    a.fail_next({"reset": "during", "after": 4})
    async with gateway_with(config("anthropic", "openai", pipeline=None), a=a, b=b) as gw:
        with pytest.raises(Exception) as exc:
            await sdk(lambda: CLIENTS[client](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert "AssertionError" not in type(exc.value).__name__
    assert b.received == [] and record["state"] == "failed" and "resumed" not in record


@pytest.mark.sdk
@pytest.mark.parametrize("restate", [10, 1000])
async def test_a_continuation_repeating_the_partial_is_trimmed(restate):
    """A continuation that restates the partial's last words (10 characters)
    or starts the whole answer over: neither repeats on the client."""
    a, b = vendors()
    b.restate = restate
    a.fail_next({"reset": "during", "after": 4})
    async with gateway_with(config("openai", "openai"), a=a, b=b) as gw:
        text = await sdk(lambda: CLIENTS["openai"](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    partial, continuation = a.received[-1]["streamed"], b.received[-1]["streamed"]
    trimmed = record["resumed"][0]["trimmed"]
    assert trimmed == (11 if restate == 10 else len(partial))
    assert text == partial + continuation[trimmed:] == REPLY


@pytest.mark.sdk
async def test_a_cut_inside_tool_call_arguments_ends_honestly():
    import openai
    a, b = vendors(use_tools=True)
    a.fail_next({"reset": "during", "after": 1})      # the call's start and half its arguments
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    async with gateway_with(config("anthropic", "openai"), a=a, b=b) as gw:
        def run():
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
            return list(client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}],
                                                       tools=tools, stream=True))
        with pytest.raises(openai.APIError):
            await sdk(run)
        record = await last_record(gw)
    assert b.received == [] and record["state"] == "failed"
    assert record["resumed"] == [{"from": "smart/first/m1", "refused": "cut inside a tool call's arguments"}]


@pytest.mark.sdk
async def test_a_cut_inside_a_reasoning_block_ends_honestly():
    import anthropic
    a, b = vendors(think=True)                        # "Thinking it over (mock)." first, signed
    a.fail_next({"reset": "during", "after": 3})      # inside the thinking block
    async with gateway_with(config("anthropic", "anthropic"), a=a, b=b) as gw:
        with pytest.raises(anthropic.APIError):
            await sdk(lambda: CLIENTS["anthropic"](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert b.received == [] and record["state"] == "failed"
    assert "reasoning block" in record["resumed"][0]["refused"]


@pytest.mark.sdk
async def test_a_cut_after_the_reasoning_continues_the_text_without_new_reasoning():
    """Cut in the text after a complete (signed) thinking block: the
    continuation asks for no reasoning; the client keeps its one thinking
    block and gets the whole text."""
    import anthropic
    a, b = vendors(think=True)                        # b thinks too: not relayed
    a.fail_next({"reset": "during", "after": 7})      # preamble, 4 thinking deltas, 2 text deltas
    async with gateway_with(config("anthropic", "anthropic"), a=a, b=b) as gw:
        def run():
            client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
            with client.messages.stream(model="smart", max_tokens=2048, thinking={"type": "enabled", "budget_tokens": 1024},
                                        messages=[{"role": "user", "content": "x"}]) as s:
                for _ in s:
                    pass
                return s.get_final_message()
        message = await sdk(run)
        record = await last_record(gw)
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Thinking it over (mock)." and message.content[0].signature
    assert message.content[1].text == REPLY
    assert "thinking" not in b.received[-1]["body"]           # the continuation asks for none
    assert record["resumed"][0]["after_chars"] == len(a.received[-1]["streamed"])


@pytest.mark.sdk
async def test_resume_bounds_max_and_max_added_ms():
    """`max: 1`: a continuation that breaks too ends honestly; and no
    continuation starts later than max_added_ms after the failure."""
    a, b = vendors()
    a.fail_next({"reset": "during", "after": 4})
    b.fail_next({"reset": "during", "after": 10})    # after its continuation went out
    three = config("openai", "anthropic")
    three["providers"]["third"] = {"protocol": "openai", "base_url": "{c}", "key": "k"}
    three["pools"]["smart"]["members"].append({"provider": "third", "model": "m3", "priority": 2})
    c = MockVendor(reply=REPLY)
    async with gateway_with(three, a=a, b=b, c=c) as gw:
        with pytest.raises(Exception):
            await sdk(lambda: CLIENTS["openai"](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert c.received == [] and record["state"] == "failed" and len(record["resumed"]) == 1

    a, b = vendors()
    b.latency = 2.0
    a.fail_next({"reset": "during", "after": 4})
    slow = config("openai", "anthropic", {"streaming": {"resume": {"max": 1, "max_added_ms": 200}}})
    async with gateway_with(slow, a=a, b=b) as gw:
        with pytest.raises(Exception):
            await sdk(lambda: CLIENTS["openai"](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert record["state"] == "failed" and "to" not in record["resumed"][0]
    assert record["path"][-1]["note"] == "resume: max_added_ms passed"


@pytest.mark.integration
async def test_the_trailer_says_the_stream_was_resumed():
    """The head announces the `x-busbar-resumed` trailer when resume is on;
    the trailer carries the number of resumes (read with h11)."""
    import h11
    import trio
    a, b = vendors()
    a.fail_next({"reset": "during", "after": 4})
    async with gateway_with(config("openai", "cohere"), a=a, b=b) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        conn = h11.Connection(h11.CLIENT)
        body = b'{"model":"smart","stream":true,"messages":[{"role":"user","content":"x"}]}'
        await stream.send_all(conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=[
            ("host", "gw"), ("content-type", "application/json"), ("authorization", "Bearer k"),
            ("te", "trailers"), ("content-length", str(len(body)))])) + conn.send(h11.Data(data=body))
            + conn.send(h11.EndOfMessage()))
        events = []
        while not events or type(events[-1]) is not h11.EndOfMessage:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some(65536))
                continue
            events.append(event)
        await stream.aclose()
    head, end = events[0], events[-1]
    assert (b"trailer", b"x-busbar-resumed") in head.headers
    assert list(end.headers) == [(b"x-busbar-resumed", b"1")]
    text = b"".join(e.data for e in events if type(e) is h11.Data)
    assert text.count(b'"finish_reason":"stop"') == 1 and text.endswith(b"data: [DONE]\n\n")
