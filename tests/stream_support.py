"""Shared pieces of the streaming codec tests: an IR event-stream strategy,
per-dialect normalizers (what each wire can express), vendor stream
fixtures, and wire readers for schema checks."""
from __future__ import annotations

import base64
import json
import pathlib

import orjson
from hypothesis import strategies as st

from busbar import ir
from busbar.aws import eventstream as es
from busbar.protocols import PROTOCOLS, get_dialect
from busbar.protocols import anthropic, bedrock, cohere, gemini, openai
from busbar.protocols.sse import SSESplitter

SR = ir.StopReason
ROOT = pathlib.Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------------------
# strategies

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=12)
names = st.from_regex(r"[a-zA-Z][a-zA-Z0-9_]{0,15}", fullmatch=True)
tool_ids = st.from_regex(r"(call|toolu|tooluse)_[a-zA-Z0-9]{4,20}", fullmatch=True)
signatures = st.binary(min_size=1, max_size=24).map(lambda b: base64.b64encode(b).decode())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3), max_leaves=6)
json_objects = st.dictionaries(names, json_values, max_size=4)


@st.composite
def usages(draw) -> ir.Usage:
    plain = draw(st.integers(0, 5000))
    cached = draw(st.integers(0, 2000))
    creation = draw(st.integers(0, 2000))
    output = draw(st.integers(0, 5000))
    reasoning = draw(st.integers(0, output))
    return ir.Usage(plain + cached + creation, output, cached, creation, reasoning)


@st.composite
def _fragments(draw, text: str) -> list[str]:
    cuts = sorted(set(draw(st.lists(st.integers(0, len(text)), max_size=4))))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


@st.composite
def ir_streams(draw, kinds=("text", "tool", "reasoning", "refusal", "redacted"), max_blocks: int = 4) -> list:
    """MessageStart (BlockStart delta* BlockStop)* UsageEvent MessageStop."""
    events: list = [ir.MessageStart(draw(st.from_regex(r"[a-z0-9_]{0,12}", fullmatch=True)), "m",
                                     draw(st.none() | usages()))]
    for i in range(draw(st.integers(0, max_blocks))):
        kind = draw(st.sampled_from(kinds))
        if kind == "text" or kind == "refusal":
            events.append(ir.BlockStart(i, ir.Text("") if kind == "text" else ir.Refusal("")))
            events += [ir.TextDelta(i, t) for t in draw(st.lists(texts, max_size=4))]
        elif kind == "tool":
            events.append(ir.BlockStart(i, ir.ToolCall(draw(tool_ids), draw(names), {})))
            args = orjson.dumps(draw(json_objects)).decode()
            events += [ir.ToolArgsDelta(i, f) for f in draw(_fragments(args))]
        elif kind == "redacted":
            events.append(ir.BlockStart(i, ir.RedactedReasoning(draw(signatures))))
        else:
            events.append(ir.BlockStart(i, ir.Reasoning("", None, None)))
            events += [ir.ReasoningDelta(i, t) for t in draw(st.lists(texts, max_size=3))]
            if draw(st.booleans()):
                events.append(ir.SignatureDelta(i, draw(signatures)))
        events.append(ir.BlockStop(i))
    events.append(ir.UsageEvent(draw(usages())))
    stop = draw(st.sampled_from(list(SR)))
    seq = draw(st.text(min_size=1, max_size=5)) if stop is SR.STOP_SEQUENCE else None
    events.append(ir.MessageStop(stop, seq))
    return events


@st.composite
def splits(draw, data: bytes) -> list[bytes]:
    """`data` cut at random points (possibly inside a UTF-8 sequence or a frame header)."""
    cuts = sorted(set(draw(st.lists(st.integers(0, len(data)), max_size=12))))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# ---------------------------------------------------------------------------
# running codecs


def encode(proto: str, events: list, model: str = "client-model") -> bytes:
    enc = get_dialect(proto).stream_encoder(model)
    return b"".join(enc.encode(e) for e in events) + enc.finish()


def decode(proto: str, chunks) -> list:
    dec = get_dialect(proto).stream_decoder()
    out: list = []
    for chunk in ([chunks] if isinstance(chunks, bytes) else chunks):
        out += dec.feed(chunk)
    return out + dec.close()


# ---------------------------------------------------------------------------
# what each dialect can express


class Block:
    __slots__ = ("kind", "part", "deltas")

    def __init__(self, kind, part):
        self.kind = kind
        self.part = part
        self.deltas: list = []


def _blocks(events: list) -> tuple[list[Block], list]:
    blocks, rest, open_ = [], [], {}
    for e in events:
        t = type(e)
        if t is ir.BlockStart:
            b = Block(type(e.part), e.part)
            open_[e.index] = b
            blocks.append(b)
        elif t in (ir.TextDelta, ir.ToolArgsDelta, ir.ReasoningDelta, ir.SignatureDelta):
            value = e.signature if t is ir.SignatureDelta else e.partial_json if t is ir.ToolArgsDelta else e.text
            if value:
                open_[e.index].deltas.append((t, value))
        elif t is ir.BlockStop:
            del open_[e.index]
        else:
            rest.append(e)
    return blocks, rest


NO_REASONING: set[str] = set()     # Chat streams reasoning as delta.reasoning_content (text only)
NO_SIGNATURE = {"openai", "cohere"}
NO_REFUSAL = {"anthropic", "gemini", "bedrock", "cohere"}
DROPS_EMPTY = {"openai", "gemini", "bedrock"}       # blocks with no delta leave no trace
MERGES = {"openai": {ir.Text, ir.Refusal, ir.Reasoning}, "gemini": {ir.Text, ir.Reasoning}}   # adjacent same-kind blocks fuse
FIT = {"openai": openai.fit_id, "anthropic": anthropic.fit_id, "bedrock": bedrock.fit_id}


# protocols whose stream events are another's (Claude's InvokeModel chunks are Messages events)
FAMILY = {"bedrock-invoke": "anthropic"}


def stop_for(proto: str, stop: SR, has_tools: bool, has_refusal: bool) -> SR:
    """The stop reason a `proto` round trip yields for `stop`."""
    proto = FAMILY.get(proto, proto)
    if proto == "openai":
        out = SR.END_TURN if stop is SR.REFUSAL and has_refusal else openai.FINISH_IN[openai.FINISH_OUT[stop]]
    elif proto == "anthropic":
        out = anthropic.STOP_IN[anthropic.STOP_OUT[stop]]
    elif proto == "responses":
        if stop in (SR.MAX_TOKENS, SR.CONTEXT_WINDOW):
            return SR.MAX_TOKENS
        if stop is SR.CONTENT_FILTER:
            return SR.CONTENT_FILTER
        return SR.TOOL_USE if has_tools else SR.END_TURN
    elif proto == "gemini":
        out = gemini.FINISH_IN.get(gemini.FINISH_OUT[stop], SR.OTHER)
    elif proto == "bedrock":
        out = bedrock.STOP_IN[bedrock.STOP_OUT[stop]]
    else:
        out = cohere.FINISH_IN[cohere.FINISH_OUT[stop]]
    return SR.TOOL_USE if out is SR.END_TURN and has_tools else out


def usage_for(proto: str, u: ir.Usage) -> ir.Usage:
    proto = FAMILY.get(proto, proto)
    return ir.Usage(u.input_tokens, u.output_tokens, u.cached_tokens,
                    0 if proto in ("gemini", "cohere") else u.cache_creation_tokens,
                    0 if proto in ("bedrock", "cohere") else u.reasoning_tokens, u.total)


def canonical(proto: str, events: list) -> list:
    """`events` reduced to what a `proto` stream can carry, in the event form
    its decoder produces (block boundaries, deltas one to one)."""
    proto = FAMILY.get(proto, proto)
    blocks, rest = _blocks(events)
    out_blocks: list[Block] = []
    for b in blocks:
        kind = b.kind
        if kind in (ir.Reasoning, ir.RedactedReasoning) and proto in NO_REASONING:
            continue
        if kind is ir.RedactedReasoning:
            if proto in ("gemini", "cohere", "openai"):
                continue        # no redacted form
            if proto == "responses":      # a reasoning item with only encrypted_content
                nb = Block(ir.Reasoning, ir.Reasoning("", None, None))
                nb.deltas = [(ir.SignatureDelta, b.part.data)]
                out_blocks.append(nb)
                continue
            out_blocks.append(Block(kind, ir.RedactedReasoning(b.part.data)))
            continue
        if kind is ir.Refusal and proto in NO_REFUSAL:
            kind = ir.Text
        deltas = b.deltas
        if proto in NO_SIGNATURE:
            deltas = [d for d in deltas if d[0] is not ir.SignatureDelta]
        if kind is ir.ToolCall:
            part = ir.ToolCall(FIT.get(proto, lambda x: x)(b.part.id), b.part.name, {})
            if proto == "gemini":
                joined = "".join(v for _, v in deltas)
                deltas = [(ir.ToolArgsDelta, orjson.dumps(orjson.loads(joined) if joined else {}).decode())]
        elif kind is ir.Reasoning:
            part = ir.Reasoning("", None, None)
        else:
            part = kind("")
        if not deltas and kind is not ir.ToolCall and proto in DROPS_EMPTY:
            continue
        if (out_blocks and kind in MERGES.get(proto, ()) and out_blocks[-1].kind is kind):
            out_blocks[-1].deltas += deltas
            continue
        nb = Block(kind, part)
        nb.deltas = list(deltas)
        out_blocks.append(nb)
    has_tools = any(b.kind is ir.ToolCall for b in out_blocks)
    has_refusal = any(b.kind is ir.Refusal for b in out_blocks)
    out: list = [ir.MessageStart("", "", None)]
    for i, b in enumerate(out_blocks):
        out.append(ir.BlockStart(i, b.part))
        for t, v in b.deltas:
            out.append(t(i, v))
        out.append(ir.BlockStop(i))
    for e in rest:
        t = type(e)
        if t is ir.UsageEvent:
            out.append(ir.UsageEvent(usage_for(proto, e.usage)))
        elif t is ir.MessageStop:
            seq = e.stop_sequence if proto in ("anthropic", "bedrock") else None
            out.append(ir.MessageStop(stop_for(proto, e.stop_reason, has_tools, has_refusal), seq))
    return out


def decoded_canonical(proto: str, events: list) -> list:
    """A decoder's output in the same form (origins, ids of parts and the
    MessageStart details aside)."""
    out = []
    for e in events:
        t = type(e)
        if t is ir.MessageStart:
            out.append(ir.MessageStart("", "", None))
        elif t is ir.BlockStart and type(e.part) is ir.Reasoning:
            out.append(ir.BlockStart(e.index, ir.Reasoning("", None, None)))
        elif t is ir.BlockStart and type(e.part) is ir.RedactedReasoning:
            out.append(ir.BlockStart(e.index, ir.RedactedReasoning(e.part.data)))
        elif t is ir.BlockStart and type(e.part) is ir.ToolCall:
            out.append(ir.BlockStart(e.index, ir.ToolCall(e.part.id, e.part.name, {})))
        elif t is ir.BlockStart and type(e.part) is ir.Text:
            out.append(ir.BlockStart(e.index, ir.Text("")))
        elif t is ir.UsageEvent:
            u = e.usage
            out.append(ir.UsageEvent(ir.Usage(u.input_tokens, u.output_tokens, u.cached_tokens,
                                              u.cache_creation_tokens, u.reasoning_tokens, u.total)))
        else:
            out.append(e)
    return out


def check_grammar(events: list) -> None:
    """MessageStart (BlockStart delta* BlockStop)* UsageEvent? MessageStop, indexes 0, 1, 2 ..."""
    assert type(events[0]) is ir.MessageStart, events[0]
    assert type(events[-1]) is ir.MessageStop, events[-1]
    nxt, cur = 0, None
    for e in events[1:-1]:
        t = type(e)
        if t is ir.BlockStart:
            assert cur is None and e.index == nxt, e
            cur, nxt = e.index, nxt + 1
        elif t is ir.BlockStop:
            assert e.index == cur, e
            cur = None
        elif t is ir.UsageEvent:
            assert cur is None
        else:
            assert e.index == cur, e
    assert cur is None


def summary(events: list) -> dict:
    """What any-to-any translation must preserve: text, tool calls (name,
    parsed arguments), the stop reason, usage in/out."""
    blocks, rest = _blocks(events)
    text = "".join(v for b in blocks if b.kind in (ir.Text, ir.Refusal) for t, v in b.deltas)
    calls = []
    for b in blocks:
        if b.kind is ir.ToolCall:
            joined = "".join(v for _, v in b.deltas)
            calls.append((b.part.name, orjson.loads(joined) if joined else {}))
    stop = usage = None
    for e in rest:
        if type(e) is ir.MessageStop:
            stop = e.stop_reason
        elif type(e) is ir.UsageEvent:
            usage = (e.usage.input_tokens, e.usage.output_tokens)
    return {"text": text, "calls": calls, "stop": stop, "usage": usage}


# ---------------------------------------------------------------------------
# wire readers (for schema checks)


def wire_events(proto: str, data: bytes) -> list[tuple[str | None, object]]:
    """(event name or frame type, parsed JSON) of each event on the wire."""
    if proto == "bedrock":
        out = []
        for m in es.decode_all(data):
            kind, name = m.kind()
            out.append((name, orjson.loads(m.payload) if m.payload else None))
        return out
    if proto == "bedrock-invoke":        # chunk frames: base64 Messages events (named by their type)
        out = []
        for m in es.decode_all(data):
            kind, name = m.kind()
            if name == "chunk":
                obj = orjson.loads(base64.b64decode(orjson.loads(m.payload)["bytes"]))
                out.append((obj["type"], obj))
            else:
                out.append((name, orjson.loads(m.payload) if m.payload else None))
        return out
    sse = SSESplitter()
    events = sse.feed(data)
    assert sse.pending == b"", "stream ends inside an event"
    return [(e.event, orjson.loads(e.data)) for e in events if e.data != b"[DONE]"]


_SCHEMAS: dict = {}


def validator(proto: str, name: str | None = None):
    import jsonschema
    schema = _SCHEMAS.get(proto)
    if schema is None:
        schema = _SCHEMAS[proto] = json.loads((ROOT / "schemas" / proto / "stream-event.schema.json").read_text())
    if proto == "bedrock":
        return jsonschema.Draft202012Validator({"$ref": f"#/$defs/{name}", "$defs": schema["$defs"]})
    return jsonschema.Draft202012Validator(schema)


def assert_schema_valid(proto: str, data: bytes) -> None:
    for name, obj in wire_events(proto, data):
        schema_of = proto
        if proto == "bedrock-invoke" and name.endswith("Exception"):
            schema_of = "bedrock"            # an exception frame: Bedrock's, as ConverseStream's
        elif proto in ("anthropic", "responses", "bedrock-invoke"):
            assert name == obj["type"], (name, obj)
        errors = sorted(validator(schema_of, name).iter_errors(obj), key=str)
        assert not errors, f"{proto} event {obj} invalid: {errors[0].message}"


# ---------------------------------------------------------------------------
# vendor stream fixtures: text then a tool call (from protocols.md; the
# Anthropic one is the SDK's own fixture, Bedrock's carries the `p` padding)


def _sse(objs, named: bool = False, sep: bytes = b"\n\n") -> bytes:
    out = b""
    for o in objs:
        data = o if isinstance(o, bytes) else orjson.dumps(o)
        if named:
            out += b"event: " + o["type"].encode() + b"\n"
        out += b"data: " + data + sep
    return out


def _chunk(delta, finish=None, usage=None, choices=True):
    body = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return body


FIXTURES = {
    "openai": _sse([
        _chunk({"role": "assistant", "content": ""}),
        _chunk({"content": "Let me "}), _chunk({"content": "check."}),
        _chunk({"tool_calls": [{"index": 0, "id": "call_abc", "type": "function",
                                "function": {"name": "get_weather", "arguments": ""}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"location\":"}}]}),
        _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]}),
        _chunk({}, "tool_calls"),
        _chunk(None, usage={"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27}, choices=False),
        b"[DONE]"]),
    "anthropic": _sse([
        {"type": "message_start", "message": {"id": "msg_019Q1hrJbZG26Fb9BQhrkHEr", "type": "message", "role": "assistant",
                                              "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": None,
                                              "stop_sequence": None, "usage": {"input_tokens": 20, "cache_creation_input_tokens": 0,
                                                                               "cache_read_input_tokens": 0, "output_tokens": 1,
                                                                               "service_tier": "standard"}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "ping"},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "check."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn",
                                                                      "name": "get_weather", "caller": {"type": "direct"}, "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"locati"}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "on\": \"Paris\"}"}},
        {"type": "content_block_stop", "index": 1},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None}, "usage": {"output_tokens": 7}},
        {"type": "message_stop"}], named=True),
    "responses": _sse([
        {"type": "response.created", "sequence_number": 0, "response": {"id": "resp_1", "object": "response", "created_at": 1,
                                                                        "status": "in_progress", "model": "gpt-x", "output": [], "usage": None}},
        {"type": "response.in_progress", "sequence_number": 1, "response": {"id": "resp_1", "object": "response", "created_at": 1,
                                                                            "status": "in_progress", "model": "gpt-x", "output": [], "usage": None}},
        {"type": "response.output_item.added", "sequence_number": 2, "output_index": 0,
         "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", "sequence_number": 3, "item_id": "msg_1", "output_index": 0, "content_index": 0,
         "part": {"type": "output_text", "text": "", "annotations": []}},
        {"type": "response.output_text.delta", "sequence_number": 4, "item_id": "msg_1", "output_index": 0, "content_index": 0,
         "delta": "Let me ", "logprobs": []},
        {"type": "response.output_text.delta", "sequence_number": 5, "item_id": "msg_1", "output_index": 0, "content_index": 0,
         "delta": "check.", "logprobs": []},
        {"type": "response.output_text.done", "sequence_number": 6, "item_id": "msg_1", "output_index": 0, "content_index": 0,
         "text": "Let me check.", "logprobs": []},
        {"type": "response.content_part.done", "sequence_number": 7, "item_id": "msg_1", "output_index": 0, "content_index": 0,
         "part": {"type": "output_text", "text": "Let me check.", "annotations": []}},
        {"type": "response.output_item.done", "sequence_number": 8, "output_index": 0,
         "item": {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                  "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]}},
        {"type": "response.output_item.added", "sequence_number": 9, "output_index": 1,
         "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather", "arguments": "",
                  "status": "in_progress"}},
        {"type": "response.function_call_arguments.delta", "sequence_number": 10, "item_id": "fc_1", "output_index": 1,
         "delta": "{\"location\":"},
        {"type": "response.function_call_arguments.delta", "sequence_number": 11, "item_id": "fc_1", "output_index": 1,
         "delta": "\"Paris\"}"},
        {"type": "response.function_call_arguments.done", "sequence_number": 12, "item_id": "fc_1", "output_index": 1,
         "name": "get_weather", "arguments": "{\"location\":\"Paris\"}"},
        {"type": "response.output_item.done", "sequence_number": 13, "output_index": 1,
         "item": {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "get_weather",
                  "arguments": "{\"location\":\"Paris\"}", "status": "completed"}},
        {"type": "response.completed", "sequence_number": 14, "response": {
            "id": "resp_1", "object": "response", "created_at": 1, "status": "completed", "model": "gpt-x", "output": [],
            "usage": {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": 7,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 27}}}], named=True),
    "gemini": _sse([
        {"candidates": [{"content": {"parts": [{"text": "Let me "}], "role": "model"}, "index": 0}],
         "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 2, "totalTokenCount": 22},
         "modelVersion": "gemini-2.5-flash", "responseId": "abc"},
        {"candidates": [{"content": {"parts": [{"text": "check."}], "role": "model"}, "index": 0}],
         "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 3, "totalTokenCount": 23},
         "modelVersion": "gemini-2.5-flash", "responseId": "abc"},
        {"candidates": [{"content": {"parts": [{"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}}],
                                     "role": "model"}, "finishReason": "STOP", "index": 0}],
         "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 7, "totalTokenCount": 27},
         "modelVersion": "gemini-2.5-flash", "responseId": "abc"}], sep=b"\r\n\r\n"),
    "bedrock": b"".join(es.encode(es.event_message(t, orjson.dumps(p))) for t, p in [
        ("messageStart", {"p": "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN", "role": "assistant"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Let me "}, "p": "abcdefghijklmnop"}),
        ("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "check."}, "p": "abcdefghijk"}),
        ("contentBlockStop", {"contentBlockIndex": 0, "p": "abc"}),
        ("contentBlockStart", {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "tooluse_abc123", "name": "get_weather"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{\"location\":"}}}),
        ("contentBlockDelta", {"contentBlockIndex": 1, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
        ("contentBlockStop", {"contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use", "p": "ab"}),
        ("metadata", {"usage": {"inputTokens": 20, "outputTokens": 7, "totalTokens": 27}, "metrics": {"latencyMs": 800},
                      "p": "abcdef"})]),
    "cohere": _sse([
        {"type": "message-start", "id": "fba98ad3", "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "",
                                                                          "tool_calls": [], "citations": []}}},
        {"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}},
        {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Let me "}}}},
        {"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "check."}}}},
        {"type": "content-end", "index": 0},
        {"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
            "id": "get_weather_p1t92w7gfgq7", "type": "function", "function": {"name": "get_weather", "arguments": ""}}}}},
        {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": "{\"location\":"}}}}},
        {"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls": {"function": {"arguments": "\"Paris\"}"}}}}},
        {"type": "tool-call-end", "index": 0},
        {"type": "message-end", "id": None, "delta": {"finish_reason": "TOOL_CALL", "usage": {
            "billed_units": {"input_tokens": 20.0, "output_tokens": 7.0}, "tokens": {"input_tokens": 20.0, "output_tokens": 7.0}}}}]),
}

def _chunks(sse: bytes) -> bytes:
    """A Messages SSE stream as Bedrock's InvokeModelWithResponseStream sends it."""
    frames = b""
    for event in SSESplitter().feed(sse):
        data = event.data
        if data == b'{"type":"message_stop"}':
            data = orjson.dumps({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
                "inputTokenCount": 20, "outputTokenCount": 7, "invocationLatency": 800, "firstByteLatency": 300}})
        frames += es.encode(es.event_message("chunk", orjson.dumps({"bytes": base64.b64encode(data).decode()})))
    return frames


FIXTURES["bedrock-invoke"] = _chunks(FIXTURES["anthropic"])
FIXTURE_SUMMARY = {"text": "Let me check.", "calls": [("get_weather", {"location": "Paris"})],
                   "stop": SR.TOOL_USE, "usage": (20, 7)}

assert set(FIXTURES) == set(PROTOCOLS)
