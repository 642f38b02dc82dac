"""Official SDK acceptance of every stream encoder, without a network: the
encoded bytes are served by an in-process transport (httpx / httpx2
MockTransport, a botocore before-send hook) to each vendor's own client,
whose stream parser and accumulator must rebuild the same final message,
and must raise on the encoder's error event."""
from __future__ import annotations

import warnings

import httpx
import httpx2
import pytest

from busbar import ir
from busbar.protocols import get_dialect

pytestmark = pytest.mark.pure

SR = ir.StopReason
URL = "http://busbar.test"


def scenario(stop: SR = SR.TOOL_USE, tool: bool = True, reasoning: bool = False) -> list:
    events = [ir.MessageStart("src_1", "vendor-model", ir.Usage(20, 0, 5))]
    i = 0
    if reasoning:
        events += [ir.BlockStart(0, ir.Reasoning("", None, "anthropic")), ir.ReasoningDelta(0, "Let me think"),
                   ir.ReasoningDelta(0, " about it."), ir.SignatureDelta(0, "c2lnbmF0dXJl"), ir.BlockStop(0)]
        i = 1
    events += [ir.BlockStart(i, ir.Text("")), ir.TextDelta(i, "Hello"), ir.TextDelta(i, ", \"wörld\"\n"),
               ir.BlockStop(i)]
    if tool:
        i += 1
        events += [ir.BlockStart(i, ir.ToolCall("call_a1", "get_weather", {})), ir.ToolArgsDelta(i, '{"location":'),
                   ir.ToolArgsDelta(i, ' "Paris", "days": [1, 2]}'), ir.BlockStop(i)]
    events += [ir.UsageEvent(ir.Usage(20, 7, 5)), ir.MessageStop(stop)]
    return events


TEXT = 'Hello, "wörld"\n'
ARGS = {"location": "Paris", "days": [1, 2]}


def body(proto: str, events: list, error: tuple | None = None, model: str = "client-model") -> bytes:
    enc = get_dialect(proto).stream_encoder(model)
    out = b"".join(enc.encode(e) for e in events)
    return out + (enc.error(*error) if error else enc.finish())


def handler(proto: str, data: bytes, mod):
    ct = get_dialect(proto).stream_content_type.decode()

    def handle(request):
        return mod.Response(200, headers={"content-type": ct}, content=data)
    return mod.MockTransport(handle)


def chunked(data: bytes, n: int = 7):
    return [data[i:i + n] for i in range(0, len(data), n)]


# ---------------------------------------------------------------------------
# OpenAI Chat Completions and Responses


def _openai(data: bytes):
    import openai
    return openai.OpenAI(api_key="k", base_url=URL + "/v1", max_retries=0,
                         http_client=httpx2.Client(transport=handler("openai", data, httpx2)))


def test_openai_sdk_accumulates():
    client = _openai(body("openai", scenario()))
    with client.chat.completions.stream(model="client-model", messages=[{"role": "user", "content": "hi"}]) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert final.model == "client-model"
    assert choice.message.content == TEXT
    [call] = choice.message.tool_calls
    assert call.id == "call_a1" and call.function.name == "get_weather"
    import json
    assert json.loads(call.function.arguments) == ARGS
    assert choice.finish_reason == "tool_calls"
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (20, 7)
    assert final.usage.prompt_tokens_details.cached_tokens == 5


def test_openai_sdk_raises_on_error_event():
    import openai
    client = _openai(body("openai", scenario()[:4], error=("overloaded", "upstream broke")))
    stream = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError, match="upstream broke"):
        for _ in stream:
            pass


def test_responses_sdk_accumulates():
    client = _openai(body("responses", scenario(reasoning=True)))
    with client.responses.stream(model="client-model", input="hi") as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    assert final.status == "completed"
    assert final.output_text == TEXT
    calls = [o for o in final.output if o.type == "function_call"]
    assert [(c.call_id, c.name) for c in calls] == [("call_a1", "get_weather")]
    import json
    assert json.loads(calls[0].arguments) == ARGS
    [rs] = [o for o in final.output if o.type == "reasoning"]
    assert rs.summary[0].text == "Let me think about it."
    assert rs.encrypted_content == "busbar:anthropic:c2lnbmF0dXJl"   # tagged: only Anthropic can verify it
    assert (final.usage.input_tokens, final.usage.output_tokens) == (20, 7)


def test_responses_sdk_sees_incomplete():
    client = _openai(body("responses", scenario(stop=SR.MAX_TOKENS, tool=False)))
    with client.responses.stream(model="m", input="hi") as stream:
        kinds = [e.type for e in stream]
    assert kinds[-1] == "response.incomplete"


def test_responses_sdk_does_not_complete_on_error():
    client = _openai(body("responses", scenario()[:4], error=("rate_limit", "slow down")))
    with client.responses.stream(model="m", input="hi") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-1].response.error.code == "rate_limit_exceeded"


# ---------------------------------------------------------------------------
# Anthropic


def _anthropic(data: bytes):
    import anthropic
    return anthropic.Anthropic(api_key="k", base_url=URL, max_retries=0,
                               http_client=httpx2.Client(transport=handler("anthropic", data, httpx2)))


def test_anthropic_sdk_accumulates():
    client = _anthropic(body("anthropic", scenario(reasoning=True)))
    with client.messages.stream(model="client-model", max_tokens=100,
                                messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == TEXT
    thinking, txt, tool = final.content
    assert thinking.type == "thinking" and thinking.thinking == "Let me think about it."
    assert thinking.signature == "c2lnbmF0dXJl"          # Anthropic's own: untagged
    assert txt.text == TEXT
    assert (tool.id, tool.name, tool.input) == ("call_a1", "get_weather", ARGS)
    assert final.stop_reason == "tool_use"
    assert final.model == "client-model"
    u = final.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.output_tokens) == (15, 5, 7)


def test_anthropic_sdk_raises_on_error_event():
    import anthropic
    client = _anthropic(body("anthropic", scenario()[:4], error=("overloaded", "upstream broke")))
    with pytest.raises(anthropic.APIStatusError, match="upstream broke"):
        with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
            stream.get_final_message()


# ---------------------------------------------------------------------------
# Gemini


def _genai(data: bytes):
    from google import genai
    from google.genai import types
    return genai.Client(api_key="k", http_options=types.HttpOptions(
        base_url=URL, httpx_client=httpx.Client(transport=handler("gemini", data, httpx))))


def test_genai_sdk_reads_chunks():
    client = _genai(body("gemini", scenario(reasoning=True)))
    chunks = list(client.models.generate_content_stream(model="client-model", contents="hi"))
    text, thoughts, calls, sigs = "", "", [], []
    for chunk in chunks:
        for part in chunk.candidates[0].content.parts or ():
            if part.thought:
                thoughts += part.text or ""
                if part.thought_signature:
                    sigs.append(part.thought_signature)
            elif part.function_call:
                calls.append((part.function_call.id, part.function_call.name, part.function_call.args))
            elif part.text:
                text += part.text
    assert text == TEXT
    assert thoughts == "Let me think about it."
    assert sigs == [b"busbar:anthropic:c2lnbmF0dXJl"]          # bytes on Gemini's wire; tagged foreign
    assert calls == [("call_a1", "get_weather", ARGS)]
    last = chunks[-1]
    assert last.candidates[0].finish_reason.value == "STOP"
    assert (last.usage_metadata.prompt_token_count, last.usage_metadata.candidates_token_count) == (20, 7)
    assert last.model_version == "client-model"


def test_genai_sdk_raises_on_error_event():
    from google.genai import errors
    client = _genai(body("gemini", scenario()[:4], error=("rate_limit", "quota, later")))
    with pytest.raises(errors.APIError) as exc:
        for _ in client.models.generate_content_stream(model="m", contents="hi"):
            pass
    assert exc.value.code == 429


# ---------------------------------------------------------------------------
# Cohere


def _cohere(data: bytes):
    import cohere
    return cohere.ClientV2(api_key="k", base_url=URL,
                           httpx_client=httpx.Client(transport=handler("cohere", data, httpx)))


def _cohere_events(data: bytes) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(_cohere(data).chat_stream(model="client-model", messages=[{"role": "user", "content": "hi"}]))


def test_cohere_sdk_reads_events():
    events = _cohere_events(body("cohere", scenario(reasoning=True)))
    text = thinking = args = ""
    calls = []
    end = None
    for ev in events:
        if ev.type == "content-delta":
            text += ev.delta.message.content.text or ""
            thinking += ev.delta.message.content.thinking or ""
        elif ev.type == "tool-call-start":
            tc = ev.delta.message.tool_calls
            calls.append((tc.id, tc.function.name))
        elif ev.type == "tool-call-delta":
            args += ev.delta.message.tool_calls.function.arguments
        elif ev.type == "message-end":
            end = ev
    assert [e.type for e in events][0] == "message-start"
    assert text == TEXT and thinking == "Let me think about it."
    import json
    assert calls == [("call_a1", "get_weather")] and json.loads(args) == ARGS
    assert end.delta.finish_reason == "TOOL_CALL"
    assert (end.delta.usage.tokens.input_tokens, end.delta.usage.tokens.output_tokens) == (20, 7)


def test_cohere_sdk_sees_error():
    events = _cohere_events(body("cohere", scenario()[:4], error=("api_error", "upstream broke")))
    assert events[-1].type == "message-end"
    assert events[-1].delta.finish_reason == "ERROR" and events[-1].delta.error == "upstream broke"


# ---------------------------------------------------------------------------
# Bedrock: a real boto3 client; the HTTP exchange is answered in botocore's
# before-send hook, so its own eventstream parser reads the frames


class _Raw:
    def __init__(self, data: bytes):
        self.data = data

    def stream(self, **kwargs):
        yield from chunked(self.data, 11)

    def read(self, *a, **k):
        return self.data

    def close(self):
        pass


def _converse_stream(data: bytes) -> list:
    import boto3
    from botocore.awsrequest import AWSResponse
    client = boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="AKID",
                          aws_secret_access_key="secret", endpoint_url=URL)

    def answer(request, **kwargs):
        return AWSResponse(request.url, 200, {"content-type": "application/vnd.amazon.eventstream"}, _Raw(data))
    client.meta.events.register("before-send.bedrock-runtime.ConverseStream", answer)
    response = client.converse_stream(modelId="client-model", messages=[{"role": "user", "content": [{"text": "hi"}]}])
    return list(response["stream"])


def test_boto3_reads_frames():
    events = _converse_stream(body("bedrock", scenario(reasoning=True)))
    text = thinking = args = ""
    sig = starts = stop = usage = None
    stops = []
    for ev in events:
        if "contentBlockDelta" in ev:
            d = ev["contentBlockDelta"]["delta"]
            text += d.get("text", "")
            args += d.get("toolUse", {}).get("input", "")
            thinking += d.get("reasoningContent", {}).get("text", "")
            sig = d.get("reasoningContent", {}).get("signature", sig)
        elif "contentBlockStart" in ev:
            starts = ev["contentBlockStart"]["start"]["toolUse"]
        elif "contentBlockStop" in ev:
            stops.append(ev["contentBlockStop"]["contentBlockIndex"])
        elif "messageStop" in ev:
            stop = ev["messageStop"]["stopReason"]
        elif "metadata" in ev:
            usage = ev["metadata"]["usage"]
    assert list(events[0]) == ["messageStart"]
    assert text == TEXT and thinking == "Let me think about it." and sig == "busbar:anthropic:c2lnbmF0dXJl"
    import json
    assert starts == {"toolUseId": "call_a1", "name": "get_weather"} and json.loads(args) == ARGS
    assert stops == [0, 1, 2]          # every block ends, text included
    assert stop == "tool_use"
    assert (usage["inputTokens"], usage["outputTokens"], usage["cacheReadInputTokens"]) == (15, 7, 5)


def test_boto3_raises_on_exception_frame():
    from botocore.exceptions import EventStreamError
    with pytest.raises(EventStreamError) as exc:
        _converse_stream(body("bedrock", scenario()[:4], error=("rate_limit", "Too many tokens")))
    assert exc.value.response["Error"]["Code"] == "throttlingException"


def test_redacted_reasoning_reaches_sdks():
    """Encrypted reasoning from one vendor keeps its origin tag, in each wire's own spelling."""
    events = [ir.MessageStart("src", "m"), ir.BlockStart(0, ir.RedactedReasoning("EqQBCgIYAhIM", "anthropic")),
              ir.BlockStop(0), ir.BlockStart(1, ir.Text("")), ir.TextDelta(1, "ok"), ir.BlockStop(1),
              ir.UsageEvent(ir.Usage(3, 1)), ir.MessageStop(SR.END_TURN)]
    frames = _converse_stream(body("bedrock", events))          # a blob: base64 on the wire
    assert frames[1]["contentBlockDelta"]["delta"]["reasoningContent"]["redactedContent"] == \
        b"busbar:anthropic:EqQBCgIYAhIM"
    client = _anthropic(body("anthropic", events))
    with client.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "redacted_thinking" and final.content[0].data == "EqQBCgIYAhIM"
    with _openai(body("responses", events)).responses.stream(model="m", input="hi") as stream:
        final = stream.get_final_response()
    assert final.output[0].type == "reasoning" and final.output[0].encrypted_content == "busbar:anthropic:EqQBCgIYAhIM"
    assert final.output_text == "ok"
