"""Responses `truncation: "auto"` through members of other protocols (ADR 0028),
over real sockets with the openai SDK (and the OpenAI Agents SDK) as the client:
an Anthropic-protocol and a Chat-Completions-protocol simulated member whose
context is small get the conversation without its earliest turns; a larger
member takes it whole first; `disabled` and absent fail as before."""
from __future__ import annotations

import asyncio
import re

import openai
import pytest

from busbar.mock import MockVendor
from harness import gateway_with, last_record, sdk

pytestmark = pytest.mark.sdk

OLD = "ancient history " * 60        # ~240 tokens a turn, by the gateway's estimate
TOOLS = [{"type": "function", "name": "lookup", "description": "Look a thing up.",
          "parameters": {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}}]


def conversation() -> list[dict]:
    """Three user turns: two old ones (the second with a tool call and its result),
    and the newest, whose tool call and result must reach the member together."""
    return [
        {"role": "user", "content": "FIRST " + OLD},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "SECOND " + OLD},
        {"type": "function_call", "call_id": "call_old", "name": "lookup", "arguments": '{"q": "old"}'},
        {"type": "function_call_output", "call_id": "call_old", "output": "OLDRESULT " + OLD},
        {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "THIRD question, the newest"},
        {"type": "function_call", "call_id": "call_new", "name": "lookup", "arguments": '{"q": "new"}'},
        {"type": "function_call_output", "call_id": "call_new", "output": "NEWRESULT"},
    ]


PROVIDERS = {"ant": {"protocol": "anthropic", "base_url": "{a}", "key": "ak"},       # mock a
             "chat": {"protocol": "openai", "base_url": "{b}/v1", "key": "sk"}}      # mock b


def config(*members: dict) -> dict:
    used = {m["provider"] for m in members}
    return {"providers": {name: p for name, p in PROVIDERS.items() if name in used},
            "pools": {"smart": {"strategy": "ordered", "members": list(members)}}}


def member(provider: str, context: int, priority: int = 0) -> dict:
    return {"provider": provider, "model": f"{provider}-{context}", "context": context, "priority": priority,
            "max_tokens": 64}


def client(gw) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)


def create(gw, **kw):
    return client(gw).responses.with_raw_response.create(
        model="smart", instructions="Answer briefly.", input=conversation(), tools=TOOLS, **kw)


def assert_kept_the_newest_turn_only(raw: str) -> None:
    assert "ancient history" not in raw and "OLDRESULT" not in raw and "call_old" not in raw
    assert "THIRD question" in raw and "NEWRESULT" in raw and "call_new" in raw and "Answer briefly." in raw


@pytest.mark.parametrize("provider", ["ant", "chat"])
async def test_auto_drops_the_earliest_turns_for_a_small_member(provider):
    """The member's declared context is smaller than the conversation: the gateway drops
    the two old turns before dispatch (one attempt), keeps the instructions and the
    newest turn with its tool call and result, and says so (record, header, body)."""
    a, b = MockVendor(reply="short answer"), MockVendor(reply="short answer")
    async with gateway_with(config(member(provider, 200)), a=a, b=b) as gw:
        raw = await sdk(lambda: create(gw, truncation="auto"))
        record = await last_record(gw)
    vendor = a if provider == "ant" else b
    assert len(vendor.received) == 1
    assert_kept_the_newest_turn_only(vendor.received[0]["raw"])
    body = raw.parse()
    assert body.output_text == "short answer" and body.truncation == "auto"
    warning = raw.headers["x-busbar-warning"]
    assert "degraded 'truncation'" in warning and "6 message(s)" in warning
    assert [(x["outcome"], x.get("dropped")) for x in record["attempts"]] == [("ok", 6)]


async def test_a_member_still_saying_too_long_gets_less_each_time_bounded():
    """The estimate says it fits; the model says it does not (the simulated vendor's
    own context limit): again with one turn fewer, then two, within `truncate: 2`."""
    a = MockVendor(reply="fits now", max_input_tokens=300)
    async with gateway_with(config(member("ant", 100_000)), a=a) as gw:
        raw = await sdk(lambda: create(gw, truncation="auto"))
        record = await last_record(gw)
    assert raw.parse().output_text == "fits now"
    sent = [r["raw"] for r in a.received]
    assert len(sent) == 3
    assert "FIRST" in sent[0] and "FIRST" not in sent[1] and "SECOND" in sent[1]
    assert_kept_the_newest_turn_only(sent[2])
    assert [(x["outcome"], x.get("dropped")) for x in record["attempts"]] == [
        ("context", None), ("context", 2), ("ok", 6)]
    # bounded: one more old turn than `truncate` allows, and the context error is the client's
    a2 = MockVendor(max_input_tokens=1)
    async with gateway_with(config(member("ant", 100_000)), a=a2) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: create(gw, truncation="auto"))
    assert "prompt is too long" in str(exc.value)
    assert len(a2.received) == 3


async def test_a_larger_member_takes_the_whole_conversation_before_any_is_dropped():
    """A pool with a larger member uses it before losing conversation: the small one
    says too long, the large one gets every turn."""
    a, b = MockVendor(reply="small", max_input_tokens=300), MockVendor(reply="large")
    async with gateway_with(config(member("ant", 100_000, 0), member("chat", 200_000, 1)), a=a, b=b) as gw:
        raw = await sdk(lambda: create(gw, truncation="auto"))
        record = await last_record(gw)
    assert raw.parse().output_text == "large"
    assert len(a.received) == 1 and len(b.received) == 1
    assert "FIRST" in b.received[0]["raw"] and "OLDRESULT" in b.received[0]["raw"]
    assert "x-busbar-warning" not in raw.headers
    assert [(x["member"].split("/")[-1], x["outcome"], x.get("dropped")) for x in record["attempts"]] == [
        ("ant-100000", "context", None), ("chat-200000", "ok", None)]


@pytest.mark.parametrize("truncation", [None, "disabled"], ids=["absent", "disabled"])
async def test_disabled_and_absent_fail_as_before(truncation):
    kw = {} if truncation is None else {"truncation": truncation}
    a = MockVendor()
    async with gateway_with(config(member("ant", 200)), a=a) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: create(gw, **kw))
    assert exc.value.code == "context_length_exceeded" and "can take this request" in exc.value.message
    assert a.received == []
    a = MockVendor(max_input_tokens=300)
    async with gateway_with(config(member("ant", 100_000)), a=a) as gw:
        with pytest.raises(openai.BadRequestError) as exc:
            await sdk(lambda: create(gw, **kw))
    assert "prompt is too long" in str(exc.value) and len(a.received) == 1


async def test_auto_with_nothing_droppable_fails_as_disabled_does():
    """One user turn too long for every member: no turn may go, so the client gets
    the same context-length error as without truncation."""
    a = MockVendor()
    async with gateway_with(config(member("ant", 200)), a=a) as gw:
        errors = []
        for kw in ({"truncation": "auto"}, {}):
            with pytest.raises(openai.BadRequestError) as exc:
                await sdk(lambda: client(gw).responses.create(model="smart", input="FIRST " + OLD * 3, **kw))
            # (the size it names is the embedded count with `auto`, the body's bytes / 4 without)
            errors.append((exc.value.status_code, exc.value.code, re.sub(r"~\d+", "~N", exc.value.message)))
    assert errors[0] == errors[1] and errors[0][:2] == (400, "context_length_exceeded")
    assert a.received == []


@pytest.mark.parametrize("provider", ["ant", "chat"])
async def test_a_streamed_auto_request_is_shortened_and_says_so(provider):
    a, b = MockVendor(reply="streamed short answer"), MockVendor(reply="streamed short answer")
    async with gateway_with(config(member(provider, 200)), a=a, b=b) as gw:
        def run():
            stream = client(gw).responses.create(model="smart", instructions="Answer briefly.", input=conversation(),
                                                 tools=TOOLS, truncation="auto", stream=True)
            return list(stream)
        events = await sdk(run)
        record = await last_record(gw)
    vendor = a if provider == "ant" else b
    assert_kept_the_newest_turn_only(vendor.received[0]["raw"])
    assert events[0].type == "response.created" and events[0].response.truncation == "auto"
    done = events[-1]
    assert done.type == "response.completed" and done.response.truncation == "auto"
    assert done.response.output_text == "streamed short answer"
    assert record["attempts"][0]["dropped"] == 6


async def test_a_responses_member_gets_the_field_itself():
    """Same protocol: the bytes pass through, `truncation` in them; the gateway drops nothing."""
    a = MockVendor(reply="vendor truncates")
    cfg = {"providers": {"oai": {"protocol": "responses", "base_url": "{a}/v1", "key": "sk"}},
           "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt"}]}}}
    async with gateway_with(cfg, a=a) as gw:
        raw = await sdk(lambda: create(gw, truncation="auto"))
    assert raw.parse().output_text == "vendor truncates"
    assert a.received[0]["body"]["truncation"] == "auto" and "FIRST" in a.received[0]["raw"]


async def test_the_agents_sdk_with_truncation_auto():
    """`ModelSettings(truncation="auto")`, the run's input a long history: a Claude
    member with a small context gets only the newest turn."""
    agents = pytest.importorskip("agents", reason="openai-agents is not installed (pip install -e '.[test]')")
    agents.set_tracing_disabled(True)
    a = MockVendor(reply="agent answer")
    async with gateway_with(config(member("ant", 200)), a=a) as gw:
        async def script():
            openai_client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
            run_config = agents.RunConfig(model_provider=agents.OpenAIProvider(openai_client=openai_client),
                                          tracing_disabled=True)
            agent = agents.Agent(name="brief", instructions="Answer briefly.", model="smart",
                                 model_settings=agents.ModelSettings(truncation="auto"))
            history = [item for item in conversation() if item.get("type") is None][:4]
            history.append({"role": "user", "content": "THIRD question, the newest"})
            return await agents.Runner.run(agent, history, run_config=run_config)
        result = await sdk(lambda: asyncio.run(script()))
    assert result.final_output == "agent answer"
    raw = a.received[0]["raw"]
    assert "ancient history" not in raw and "THIRD question" in raw and "Answer briefly." in raw


@pytest.mark.parametrize("vendor", ["gemini", "bedrock", "cohere"])
async def test_every_other_protocol_gets_the_shortened_conversation(vendor):
    """The same cut for the remaining member protocols (rendered by each one's codec)."""
    from test_translation_e2e import config_for
    cfg = config_for(vendor)
    cfg["pools"]["smart"]["members"][0]["context"] = 200
    a = MockVendor(reply="short answer", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(cfg, a=a) as gw:
        raw = await sdk(lambda: create(gw, truncation="auto"))
        record = await last_record(gw)
    assert raw.parse().output_text == "short answer" and raw.parse().truncation == "auto"
    assert len(a.received) == 1 and a.received[0]["protocol"] == vendor
    assert_kept_the_newest_turn_only(a.received[0]["raw"])
    assert record["attempts"][0]["dropped"] == 6
