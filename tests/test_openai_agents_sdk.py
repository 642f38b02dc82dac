"""The OpenAI Agents SDK (`openai-agents`, import name `agents`; the test extra) drives
the gateway over real sockets, with its own run loop and function tools, through a
pool whose one member speaks another protocol (ADR 0022):

- its Responses model chains a run by `previous_response_id` (`auto_previous_response_id`,
  then `last_response_id` into a second run): each request carries only what is new, the
  gateway puts the conversation back for a member of each other protocol (ADR 0024);
- the same run streamed (`Runner.run_streamed`);
- a session (`SQLiteSession`, in memory): the SDK resends the items it kept, the
  gateway's own output items among them;
- a run paused for a tool's approval, resumed from its `RunState`;
- a handoff: the chain goes on with the new agent's instructions and tools;
- a structured `output_type`: its JSON Schema reaches a Messages member as its output format;
- its Chat Completions model: the whole history every turn, tool calls included.

The SDK runs in its own asyncio loop in a worker thread; tracing is off (no network but
the simulated vendors).  An httpx hook records what the SDK sent the gateway, the
simulated vendor what reached it.
"""
from __future__ import annotations

import asyncio

import openai
import orjson
import pytest
from pydantic import BaseModel

from busbar.mock import MockVendor
from harness import gateway_with, sdk
from test_previous_response import conversation
from test_translation_e2e import config_for

MEMBERS = ["openai", "anthropic", "gemini", "bedrock", "cohere"]     # every protocol but the client's own
VENDOR_SECRETS = {"AKIDVENDOR": "vendor-secret"}                    # config_for's Bedrock member signs


@pytest.fixture(scope="module")
def agents():
    """The SDK, imported when a test here runs: its 2 s of imports are no cost to a run
    that only collects this file (`pytest -m pure`)."""
    module = pytest.importorskip("agents", reason="openai-agents is not installed (pip install -e '.[test]')")
    module.set_tracing_disabled(True)       # the SDK's tracing exports to OpenAI: never here
    return module


class Wire:
    """What the SDK sent the gateway: (path, JSON body) per request, from an httpx hook."""

    def __init__(self):
        self.sent: list[tuple[str, dict]] = []

    async def __call__(self, request) -> None:
        self.sent.append((request.url.path, orjson.loads(request.content)))


def run_config(gw, wire: Wire, *, responses: bool = True):
    """The SDK's per-run model provider at the gateway (no process-wide default client)."""
    import agents
    client = openai.AsyncOpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0,
                                http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [wire]}))
    return agents.RunConfig(model_provider=agents.OpenAIProvider(openai_client=client, use_responses=responses),
                            tracing_disabled=True)


def weather_agent(calls: list[str]):
    """An agent whose one function tool records the city it was asked about."""
    import agents

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        calls.append(city)
        return f"sunny in {city}"

    return agents.Agent(name="weather", instructions="Answer briefly.", model="smart", tools=[get_weather])


def in_asyncio(script):
    """Run the SDK's coroutine function in its own asyncio loop, in a worker thread."""
    return sdk(lambda: asyncio.run(script()))


def calls_in(result) -> list:
    """The function calls among a run's model responses."""
    return [item for r in result.raw_responses for item in r.output if item.type == "function_call"]


def vendor_saw(mock: MockVendor, vendor: str) -> list[dict]:
    """What reached the simulated vendor, all of it in the member's protocol."""
    sent = [r for r in mock.received if r["protocol"] == vendor]
    assert len(sent) == len(mock.received)
    return sent


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("vendor", MEMBERS)
async def test_a_responses_agent_chains_its_tool_loop_and_its_next_run_by_response_id(vendor, stream, agents):
    """`auto_previous_response_id`: the tool loop's second request is the tool's output and
    the first answer's id; the next run starts from `last_response_id`.  The member (never
    OpenAI Responses) gets the whole conversation each time, put back by the gateway."""
    mock, wire, tool_calls = MockVendor(use_tools=True, aws_credentials=VENDOR_SECRETS), Wire(), []
    async with gateway_with(config_for(vendor), a=mock) as gw:
        config, agent = run_config(gw, wire), weather_agent(tool_calls)

        async def run(text: str, **kw):
            if not stream:
                return await agents.Runner.run(agent, text, run_config=config, **kw)
            result = agents.Runner.run_streamed(agent, text, run_config=config, **kw)
            kinds = [event.item.type async for event in result.stream_events() if event.type == "run_item_stream_event"]
            assert kinds == ["tool_call_item", "tool_call_output_item", "message_output_item"]
            return result

        async def script():
            first = await run("Weather in Paris?", auto_previous_response_id=True)
            second = await run("And in Lyon?", previous_response_id=first.last_response_id)
            return first, second

        first, second = await in_asyncio(script)
        store = gw.app.items
    # the tool ran with the arguments the simulated vendor produced, once per run
    assert tool_calls == ["Paris", "Paris"]
    assert [orjson.loads(c.arguments) for c in calls_in(first) + calls_in(second)] == [{"city": "Paris"}] * 2
    assert first.final_output == second.final_output == "tool said: sunny in Paris"
    # four requests, each continuing the response before it by id, each with only what is new
    ids = [r.response_id for r in first.raw_responses + second.raw_responses]
    assert len(set(ids)) == 4 and all(i.startswith("resp_") for i in ids)
    assert [path for path, _ in wire.sent] == ["/v1/responses"] * 4
    bodies = [body for _, body in wire.sent]
    assert [b.get("previous_response_id") for b in bodies] == [None, *ids[:3]]
    assert [b.get("stream", False) for b in bodies] == [stream] * 4
    call_ids = [c.call_id for c in calls_in(first) + calls_in(second)]
    assert [[(i.get("type", "message"), i.get("call_id")) for i in b["input"]] for b in bodies] == [
        [("message", None)], [("function_call_output", call_ids[0])],
        [("message", None)], [("function_call_output", call_ids[1])]]
    assert bodies[1]["input"][0]["output"] == "sunny in Paris"
    # the member got the whole conversation every time, in its own protocol
    sent = vendor_saw(mock, vendor)
    system, turns = conversation(sent[3])
    assert system == ["Answer briefly."]
    assert turns == [("user", "Weather in Paris?"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris"),
                     ("assistant", "tool said: sunny in Paris"),
                     ("user", "And in Lyon?"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris")]
    assert store.continued == 3


@pytest.mark.sdk
@pytest.mark.parametrize("vendor, think", [("openai", False), ("anthropic", False), ("anthropic", True)],
                         ids=["openai", "anthropic", "anthropic-thinking"])
async def test_a_session_resends_the_items_the_sdk_kept_and_the_member_gets_them(vendor, think, agents):
    """No response ids: the SDK's session keeps the run's items (the gateway's own output
    items, with their ids and status) and sends them all back as the next run's input.
    Thinking on: the Messages member's signed thinking comes out as reasoning items the
    session keeps, and each tool-result turn gets its signed block back (the simulated
    vendor refuses one without, as Anthropic does)."""
    mock, wire, tool_calls = MockVendor(use_tools=True, think=think), Wire(), []
    async with gateway_with(config_for(vendor), a=mock) as gw:
        config, agent = run_config(gw, wire), weather_agent(tool_calls)

        async def script():
            session = agents.SQLiteSession("weather-chat")
            first = await agents.Runner.run(agent, "Weather in Paris?", run_config=config, session=session)
            second = await agents.Runner.run(agent, "Thanks!", run_config=config, session=session)
            return first, second, await session.get_items()

        first, second, kept = await in_asyncio(script)
        store = gw.app.items
    assert tool_calls == ["Paris", "Paris"]
    assert first.final_output == second.final_output == "tool said: sunny in Paris"
    bodies = [body for _, body in wire.sent]
    assert all("previous_response_id" not in b for b in bodies)
    # the second run's first request: everything the first run said, as the SDK kept it
    resent = bodies[2]["input"]
    thought = ["reasoning"] if think else []
    assert [i.get("type", "message") for i in resent] == [
        "message", *thought, "function_call", "function_call_output", *thought, "message", "message"]
    answer = next(i for i in resent if i.get("role") == "assistant")
    assert answer["id"] == first.raw_responses[1].output[-1].id and answer["status"] == "completed"
    assert len(kept) == 8 + 4 * think             # a reasoning item before each of the four answers
    assert mock.thoughts_seen == 2 * think        # each run's tool-result turn
    sent = vendor_saw(mock, vendor)
    _, turns = conversation(sent[3])
    assert turns == [("user", "Weather in Paris?"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris"),
                     ("assistant", "tool said: sunny in Paris"),
                     ("user", "Thanks!"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris")]
    assert store.continued == 0


@pytest.mark.sdk
async def test_a_run_paused_for_tool_approval_resumes_from_its_state_by_response_id(agents):
    """Human in the loop: a tool with `needs_approval` stops the run before it runs; the
    resumed run (`Runner.run(agent, state)`) runs it and sends its output continuing the
    paused response."""
    mock, wire, ran = MockVendor(use_tools=True), Wire(), []

    @agents.function_tool(needs_approval=True)
    def get_weather(city: str) -> str:
        """Weather for a city."""
        ran.append(city)
        return f"sunny in {city}"

    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        config = run_config(gw, wire)
        agent = agents.Agent(name="careful", instructions="Answer briefly.", model="smart", tools=[get_weather])

        async def script():
            paused = await agents.Runner.run(agent, "Weather in Paris?", run_config=config,
                                             auto_previous_response_id=True)
            asked, before = [(i.name, orjson.loads(i.arguments)) for i in paused.interruptions], list(ran)
            state = paused.to_state()
            for item in paused.interruptions:
                state.approve(item)
            return paused, asked, before, await agents.Runner.run(agent, state, run_config=config)

        paused, asked, before, resumed = await in_asyncio(script)
    assert asked == [("get_weather", {"city": "Paris"})] and before == []
    assert ran == ["Paris"]
    assert resumed.final_output == "tool said: sunny in Paris"
    bodies = [body for _, body in wire.sent]
    assert len(bodies) == 2 and bodies[1]["previous_response_id"] == paused.last_response_id
    (call,) = calls_in(paused)
    assert bodies[1]["input"] == [{"type": "function_call_output", "call_id": call.call_id, "output": "sunny in Paris"}]
    _, turns = conversation(vendor_saw(mock, "anthropic")[1])
    assert turns == [("user", "Weather in Paris?"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris")]


class Forecast(BaseModel):
    city: str
    sky: str


@pytest.mark.sdk
async def test_a_structured_output_type_is_the_members_output_format(agents):
    """`output_type=Forecast`: the SDK asks for `text.format` (a strict JSON Schema) and
    parses the answer into the model; a Messages member gets the schema as its
    `output_config.format`."""
    mock, wire = MockVendor(reply='{"city": "Paris", "sky": "sunny"}'), Wire()
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        config = run_config(gw, wire)
        agent = agents.Agent(name="forecaster", instructions="Answer in JSON.", model="smart", output_type=Forecast)
        result = await in_asyncio(lambda: agents.Runner.run(agent, "Weather in Paris?", run_config=config))
    assert result.final_output == Forecast(city="Paris", sky="sunny")
    (asked,) = [body["text"]["format"] for _, body in wire.sent]
    assert asked["type"] == "json_schema" and asked["strict"] is True
    (seen,) = vendor_saw(mock, "anthropic")
    assert seen["body"]["output_config"]["format"] == {"type": "json_schema", "schema": asked["schema"]}
    assert asked["schema"]["required"] == ["city", "sky"]


@pytest.mark.sdk
async def test_a_handoff_continues_the_chain_with_the_new_agents_instructions_and_tools(agents):
    """The triage agent's only tool is the handoff; the simulated member calls it, and the
    next request (by `previous_response_id`) is the weather agent's: the member gets its
    instructions and tools, and the conversation with the handoff call in it."""
    mock, wire = MockVendor(use_tools=True), Wire()
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        config, weather = run_config(gw, wire), weather_agent([])
        triage = agents.Agent(name="triage", instructions="Hand weather questions over.", model="smart",
                              handoffs=[weather])
        result = await in_asyncio(lambda: agents.Runner.run(triage, "Weather in Paris?", run_config=config,
                                                            auto_previous_response_id=True))
    assert result.last_agent is weather
    assert result.final_output == 'tool said: {"assistant": "weather"}'
    (handoff,) = calls_in(result)
    assert handoff.name == "transfer_to_weather"
    bodies = [body for _, body in wire.sent]
    assert bodies[1]["previous_response_id"] == result.raw_responses[0].response_id
    assert [b["instructions"] for b in bodies] == ["Hand weather questions over.", "Answer briefly."]
    first, second = vendor_saw(mock, "anthropic")
    assert [t["name"] for t in first["body"]["tools"]] == ["transfer_to_weather"]
    assert [t["name"] for t in second["body"]["tools"]] == ["get_weather"]
    system, turns = conversation(second)
    assert system == ["Answer briefly."]
    assert turns == [("user", "Weather in Paris?"), ("assistant", "call:transfer_to_weather"),
                     ("user", 'result:{"assistant": "weather"}')]


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["run", "run_streamed"])
async def test_a_chat_completions_agent_runs_its_tool_loop_on_a_messages_member(stream, agents):
    """`OpenAIProvider(use_responses=False)`: the SDK's OpenAIChatCompletionsModel sends
    the whole history (the assistant's tool_calls and the tool message) to
    /v1/chat/completions; the member speaks Anthropic Messages."""
    mock, wire, tool_calls = MockVendor(use_tools=True), Wire(), []
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        config, agent = run_config(gw, wire, responses=False), weather_agent(tool_calls)

        async def script():
            if not stream:
                return await agents.Runner.run(agent, "Weather in Paris?", run_config=config)
            result = agents.Runner.run_streamed(agent, "Weather in Paris?", run_config=config)
            deltas = [event.data.delta async for event in result.stream_events()
                      if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"]
            assert "".join(deltas) == "tool said: sunny in Paris"
            return result

        result = await in_asyncio(script)
    assert tool_calls == ["Paris"]
    assert [b.get("stream", False) for _, b in wire.sent] == [stream] * 2
    assert result.final_output == "tool said: sunny in Paris"
    assert [path for path, _ in wire.sent] == ["/v1/chat/completions"] * 2
    messages = wire.sent[1][1]["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    (call,) = messages[2]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
    assert messages[3]["tool_call_id"] == call["id"] and messages[3]["content"] == "sunny in Paris"
    system, turns = conversation(vendor_saw(mock, "anthropic")[1])
    assert system == ["Answer briefly."]
    assert turns == [("user", "Weather in Paris?"), ("assistant", "call:get_weather"), ("user", "result:sunny in Paris")]
