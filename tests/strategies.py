"""Hypothesis strategies for the IR and the seven wire protocols.

Built bottom-up like the schemas they mirror: leaves (text, ids, base64
blobs), parts (text, image, document, tool call, tool result, reasoning),
messages, conversations, requests and responses.  Every strategy takes a
`Caps` record saying what a protocol can express, so `ir_request(CAPS[p])`
draws exactly the IR subset protocol `p` round-trips without loss, and
`wire_request(p)` is that subset rendered on `p`'s wire (valid by
construction and checked against `schemas/<p>/request.schema.json`).
"""
from __future__ import annotations

import base64
import functools
import string
from dataclasses import dataclass

import orjson
from hypothesis import strategies as st

from busbar import ir
from busbar.protocols import get_dialect

PROTOCOLS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere", "bedrock-invoke")
# protocols whose body is another's (same IR subset, same lossy corners)
FAMILY = {"bedrock-invoke": "anthropic"}


def family(proto: str) -> str:
    """The protocol whose body `proto` speaks (itself for six of the seven)."""
    return FAMILY.get(proto, proto)


@dataclass(frozen=True)
class Caps:
    """What a protocol can say, as far as the IR is concerned."""
    name: str
    alternating: bool = False        # one merged user turn holds tool results + text
    multi_system: bool = True        # several system text blocks
    mid_system: bool = False         # system messages later in the conversation
    image_url: bool = True
    image_detail: frozenset = frozenset({None})
    image_url_media: bool = False    # url images come back with a media type
    docs: frozenset = frozenset()    # "pdf", "text", "url"
    doc_names: str = "none"          # "none" | "optional" | "required"
    result_media: bool = False       # images inside tool results
    result_error: bool = False       # is_error on tool results
    result_json: str = "none"        # "none" | "dict" | "any"
    result_multi_text: bool = True
    result_names: bool = False       # ToolResult.name is filled in by the parser
    refusal: bool = False
    reasoning: str = "none"          # "none" | "signed" | "optional_sig" | "unsigned"
    redacted: bool = False
    assistant_order: str = "any"     # "any" | "texts_refusal_calls" | "content_calls"
    top_k: bool = False
    seed: bool = False
    penalties: bool = False
    stop: bool = True
    temp_max: float = 2.0
    tool_choices: frozenset = frozenset({"auto", "none", "required", "tool"})
    parallel: str = "any"            # "any" | "with_choice" | "none"
    strict: frozenset = frozenset({None, True, False})
    params_none: bool = True         # tools may take no parameters (None)
    response_formats: frozenset = frozenset({"text", "json_object", "json_schema"})
    rf_meta: str = "full"            # "full" (name, strict, description) | "name_desc" | "none"
    reasoning_cfg: str = "effort"
    user: bool = False
    metadata: bool = False
    stream: bool = True
    max_tokens_required: bool = False
    # responses side
    resp_id: bool = True
    resp_model: bool = True
    resp_stops: frozenset = frozenset()
    resp_total: bool = True
    usage_creation: bool = True
    usage_reasoning: bool = True
    resp_text_single: bool = False
    resp_reasoning_id: bool = False


_ALL_STOPS = frozenset(ir.StopReason)
CAPS: dict[str, Caps] = {
    "openai": Caps(
        "openai", mid_system=True, image_detail=frozenset({None, "auto", "low", "high"}), docs=frozenset({"pdf"}),
        doc_names="optional", refusal=True, assistant_order="texts_refusal_calls", seed=True, penalties=True,
        user=True, metadata=True, resp_text_single=True, result_multi_text=True,
        resp_stops=frozenset({ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.CONTENT_FILTER,
                              ir.StopReason.REFUSAL})),
    "responses": Caps(
        "responses", multi_system=False, mid_system=True, image_detail=frozenset({"auto", "low", "high"}),
        docs=frozenset({"pdf", "url"}), doc_names="optional", result_media=True, refusal=True, reasoning="optional_sig",
        stop=False, strict=frozenset({True, False}), user=True, metadata=True, resp_reasoning_id=True,
        resp_stops=frozenset({ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.CONTENT_FILTER,
                              ir.StopReason.REFUSAL})),
    "anthropic": Caps(
        "anthropic", alternating=True, docs=frozenset({"pdf", "text", "url"}), doc_names="optional",
        result_media=True, result_error=True, reasoning="signed", redacted=True, top_k=True, temp_max=1.0,
        parallel="with_choice", params_none=False, response_formats=frozenset({"json_schema"}), rf_meta="none",
        reasoning_cfg="anthropic", user=True, max_tokens_required=True, resp_total=False,
        resp_stops=frozenset({ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.STOP_SEQUENCE,
                              ir.StopReason.PAUSE, ir.StopReason.REFUSAL, ir.StopReason.CONTEXT_WINDOW})),
    "gemini": Caps(
        "gemini", alternating=True, image_url_media=True, docs=frozenset({"pdf", "url"}), result_media=True,
        result_error=True, result_json="dict", result_multi_text=False, result_names=True, reasoning="optional_sig",
        top_k=True, seed=True, penalties=True, parallel="none", strict=frozenset({None}), rf_meta="none",
        reasoning_cfg="gemini", usage_creation=False,
        resp_stops=frozenset({ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.CONTENT_FILTER,
                              ir.StopReason.OTHER})),
    "bedrock": Caps(
        "bedrock", alternating=True, image_url=False, docs=frozenset({"pdf", "text"}), doc_names="required",
        result_media=True, result_error=True, result_json="any", reasoning="optional_sig", redacted=True, top_k=True,
        temp_max=1.0, tool_choices=frozenset({"auto", "required", "tool"}), parallel="none", params_none=False,
        response_formats=frozenset({"json_schema"}), rf_meta="name_desc", reasoning_cfg="bedrock", metadata=True,
        resp_id=False, resp_model=False, usage_reasoning=False,
        resp_stops=frozenset({ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.STOP_SEQUENCE,
                              ir.StopReason.CONTENT_FILTER, ir.StopReason.CONTEXT_WINDOW, ir.StopReason.OTHER})),
    "cohere": Caps(
        "cohere", mid_system=True, image_detail=frozenset({None, "auto", "low", "high"}), result_json="dict",
        reasoning="unsigned", assistant_order="content_calls", top_k=True, seed=True, penalties=True,
        tool_choices=frozenset({"required", "none"}), parallel="none", params_none=False, rf_meta="none",
        reasoning_cfg="cohere", resp_model=False, resp_total=False, usage_creation=False, usage_reasoning=False,
        resp_stops=frozenset({ir.StopReason.END_TURN, ir.StopReason.MAX_TOKENS, ir.StopReason.STOP_SEQUENCE,
                              ir.StopReason.OTHER})),
}
CAPS["bedrock-invoke"] = CAPS["anthropic"]      # Claude's InvokeModel body is Anthropic Messages

# ---------------------------------------------------------------------------
# leaves

_ALPHABET = string.ascii_letters + string.digits + " .,!?'-_:/()é漢🙂\n\"\\"
texts = st.text(alphabet=_ALPHABET, min_size=1, max_size=24).filter(lambda s: s.strip() != "")
names = st.from_regex(r"[a-z][a-z0-9_]{0,11}", fullmatch=True)
call_ids = st.from_regex(r"call_[A-Za-z0-9]{6,14}", fullmatch=True)
b64 = st.binary(min_size=1, max_size=24).map(lambda b: base64.b64encode(b).decode())
image_types = st.sampled_from(["image/png", "image/jpeg", "image/gif", "image/webp"])
scalars = st.one_of(st.none(), st.booleans(), st.integers(-1000, 1000), texts)
json_values = st.recursive(scalars, lambda kids: st.one_of(
    st.lists(kids, max_size=3), st.dictionaries(names, kids, max_size=3)), max_leaves=6)
json_objects = st.dictionaries(names, json_values, max_size=4)
schemas = st.builds(
    lambda props, req: {"type": "object", "properties": props, **({"required": sorted(req)} if req else {})},
    st.dictionaries(names, st.sampled_from([{"type": "string"}, {"type": "integer"}, {"type": "boolean"},
                                            {"type": "array", "items": {"type": "string"}}]), max_size=3),
    st.just([]))

# ---------------------------------------------------------------------------
# parts


@functools.cache
def text_parts(caps: Caps):
    return st.builds(ir.Text, texts)


@functools.cache
def images(caps: Caps):
    detail = st.sampled_from(sorted(caps.image_detail, key=str))
    data = st.builds(lambda d, m, det: ir.Image(data=d, media_type=m, detail=det), b64, image_types, detail)
    if not caps.image_url:
        return data
    url = st.builds(lambda n, det: ir.Image(url=f"https://example.com/img/{n}.png",
                                            media_type="image/png" if caps.image_url_media else None, detail=det),
                    names, detail)
    return st.one_of(data, url)


@functools.cache
def documents(caps: Caps):
    if caps.doc_names == "none":
        doc_name = st.none()
    elif caps.doc_names == "optional":
        doc_name = st.one_of(st.none(), st.from_regex(r"[A-Za-z][A-Za-z0-9 ]{0,10}[A-Za-z0-9]", fullmatch=True))
    else:
        doc_name = st.from_regex(r"[A-Za-z][A-Za-z0-9\-]{0,10}", fullmatch=True)
    kinds = []
    if "pdf" in caps.docs:
        kinds.append(st.builds(lambda d, n: ir.Document(data=d, media_type="application/pdf", name=n), b64, doc_name))
    if "text" in caps.docs:
        kinds.append(st.builds(lambda t, n: ir.Document(text=t, media_type="text/plain", name=n), texts, doc_name))
    if "url" in caps.docs:
        media = "application/pdf" if caps.image_url_media else None
        kinds.append(st.builds(lambda u, n: ir.Document(url=f"https://example.com/doc/{u}.pdf", media_type=media,
                                                        name=None if caps.name == "gemini" else n), names, doc_name))
    return st.one_of(kinds) if kinds else st.nothing()


@functools.cache
def user_parts(caps: Caps):
    extra = [images(caps)]
    if caps.docs:
        extra.append(documents(caps))
    return st.tuples(st.lists(text_parts(caps), min_size=1, max_size=2),
                     st.lists(st.one_of(extra), max_size=2)).map(lambda t: t[0] + t[1])


@functools.cache
def reasoning_parts(caps: Caps):
    if caps.reasoning == "none":
        return st.nothing()
    if caps.reasoning == "signed":
        sig = b64
    elif caps.reasoning == "optional_sig":
        sig = st.one_of(st.none(), b64)
    else:
        sig = st.none()
    extras = st.none()
    if caps.name == "responses":
        extras = st.from_regex(r"rs_[a-z0-9]{6}", fullmatch=True).map(lambda i: {"responses": {"id": i}})
    parts = [st.builds(lambda t, s, e: ir.Reasoning(t, s, caps.name, e), texts, sig, extras)]
    if caps.redacted:
        parts.append(st.builds(lambda d: ir.RedactedReasoning(d, caps.name), b64))
    return st.one_of(parts)


@functools.cache
def tool_result_content(caps: Caps):
    if caps.result_json == "dict" and caps.name == "gemini":
        # Gemini: one text, or one structured object (not a lone output/error key)
        obj = json_objects.filter(lambda d: not (len(d) == 1 and next(iter(d)) in ("output", "error")) and d)
        body = st.one_of(st.builds(lambda t: [ir.Text(t)], texts), st.builds(lambda o: [ir.JsonData(o)], obj))
    else:
        leaves = [text_parts(caps)]
        if caps.result_json == "dict":
            leaves.append(st.builds(ir.JsonData, json_objects.filter(bool)))
        elif caps.result_json == "any":
            leaves.append(st.builds(ir.JsonData, json_values))
        body = st.lists(st.one_of(leaves), min_size=1, max_size=2 if caps.result_multi_text else 1)
    if caps.result_media:
        media = st.lists(st.builds(lambda d, m: ir.Image(data=d, media_type=m,
                                                         detail="auto" if caps.name == "responses" else None),
                                   b64, image_types), max_size=1)
        return st.tuples(body, media).map(lambda t: t[0] + t[1])
    return body


# ---------------------------------------------------------------------------
# conversations


@st.composite
def conversation(draw, caps: Caps, tools: list[ir.Tool]):
    """user (assistant [tool results] user)* - the shape every vendor accepts."""
    messages: list[ir.Message] = []
    rounds = draw(st.integers(1, 3))
    n_calls = 0
    for r in range(rounds):
        user = ir.Message(ir.USER, draw(user_parts(caps)))
        if messages and messages[-1].role == ir.USER and caps.alternating:
            messages[-1].content.extend(user.content)
        else:
            if caps.mid_system and messages and draw(st.booleans()):
                messages.append(ir.Message(ir.SYSTEM, [ir.Text(draw(texts))]))
            messages.append(user)
        if r == rounds - 1:
            break
        content: list = []
        if caps.reasoning != "none" and draw(st.booleans()):
            content.append(draw(reasoning_parts(caps)))
        if draw(st.booleans()) or not tools:
            content.append(ir.Text(draw(texts)))
        if caps.refusal and draw(st.integers(0, 4)) == 0:
            content.append(ir.Refusal(draw(texts)))
        calls = []
        if tools:
            for _ in range(draw(st.integers(0, 2))):
                tool = draw(st.sampled_from(tools))
                calls.append(ir.ToolCall(f"call_{draw(st.from_regex(r'[A-Za-z0-9]{8}', fullmatch=True))}{n_calls}",
                                         tool.name, draw(json_objects)))
                n_calls += 1
        if caps.assistant_order == "any":
            content = draw(st.permutations(content + calls))
        else:
            content = content + calls
        if not content:
            content = [ir.Text(draw(texts))]
        messages.append(ir.Message(ir.ASSISTANT, list(content)))
        if calls:
            results = [ir.ToolResult(c.id, draw(tool_result_content(caps)),
                                     draw(st.booleans()) if caps.result_error else False,
                                     c.name if caps.result_names else None) for c in calls]
            messages.append(ir.Message(ir.USER, results))
    return messages


@functools.cache
def tool_defs(caps: Caps):
    params = schemas if not caps.params_none else st.one_of(st.none(), schemas)
    desc = st.one_of(st.none(), texts)
    return st.lists(st.builds(ir.Tool, names, params, desc, st.sampled_from(sorted(caps.strict, key=str))),
                    max_size=3, unique_by=lambda t: t.name)


@functools.cache
def reasoning_configs(caps: Caps):
    efforts = st.sampled_from(["minimal", "low", "medium", "high"])
    budget = st.integers(1024, 32000)
    if caps.reasoning_cfg == "effort":
        return st.builds(lambda e: ir.ReasoningConfig(effort=e), st.sampled_from(["none", "minimal", "low", "medium", "high"]))
    if caps.reasoning_cfg == "anthropic":
        return st.one_of(st.just(ir.ReasoningConfig(enabled=False)),
                         st.builds(lambda b: ir.ReasoningConfig(enabled=True, budget_tokens=b), budget),
                         st.builds(lambda e: ir.ReasoningConfig(effort=e), st.sampled_from(["low", "medium", "high", "max"])),
                         st.builds(lambda b, e: ir.ReasoningConfig(True, b, e), budget, st.sampled_from(["low", "high"])))
    if caps.reasoning_cfg == "gemini":
        return st.one_of(st.builds(lambda b: ir.ReasoningConfig(budget_tokens=b), st.integers(0, 32000)),
                         st.just(ir.ReasoningConfig(enabled=True)),
                         st.builds(lambda e: ir.ReasoningConfig(effort=e), efforts))
    if caps.reasoning_cfg == "bedrock":
        return st.one_of(st.just(ir.ReasoningConfig(enabled=False)),
                         st.builds(lambda b: ir.ReasoningConfig(enabled=True, budget_tokens=b), budget),
                         st.builds(lambda e: ir.ReasoningConfig(effort=e), efforts))
    return st.one_of(st.just(ir.ReasoningConfig(enabled=False)), st.just(ir.ReasoningConfig(enabled=True)),
                     st.builds(lambda b: ir.ReasoningConfig(enabled=True, budget_tokens=b), budget))


@functools.cache
def response_formats(caps: Caps):
    kinds = sorted(caps.response_formats)
    meta = caps.rf_meta

    def build(kind, schema, name, strict, desc):
        if kind != "json_schema":
            return ir.ResponseFormat(kind)
        if meta == "full":
            return ir.ResponseFormat(kind, schema, name, strict, desc)
        if meta == "name_desc":
            return ir.ResponseFormat(kind, schema, name, None, desc)
        return ir.ResponseFormat(kind, schema)
    return st.builds(build, st.sampled_from(kinds), schemas, names,
                     st.one_of(st.none(), st.booleans()), st.one_of(st.none(), texts))


def _opt(strategy, enabled: bool = True):
    return st.one_of(st.none(), strategy) if enabled else st.none()


@st.composite
def ir_request(draw, caps: Caps):
    """An IR request inside what `caps` can express (so it round-trips)."""
    tools = draw(tool_defs(caps))
    if caps.name == "cohere" and tools:      # one strict_tools flag for all tools
        flag = draw(st.sampled_from([None, True, False]))
        for t in tools:
            t.strict = flag
    req = ir.Request(draw(conversation(caps, tools)))
    req.system = draw(st.lists(text_parts(caps), max_size=2 if caps.multi_system else 1))
    req.tools = tools
    choices = sorted(caps.tool_choices - ({"tool"} if not tools else set())) if tools or caps.name != "bedrock" else []
    if choices:
        mode = draw(_opt(st.sampled_from(choices)))
        if mode is not None:
            req.tool_choice = ir.ToolChoice(mode, draw(st.sampled_from([t.name for t in tools])) if mode == "tool" else None)
    if caps.parallel == "any" or (caps.parallel == "with_choice" and req.tool_choice is not None
                                  and req.tool_choice.mode != "none"):
        req.parallel_tool_calls = draw(_opt(st.booleans()))
    req.max_tokens = draw(st.integers(1, 8192)) if caps.max_tokens_required else draw(_opt(st.integers(1, 8192)))
    temps = [0.0, 0.3, 0.7, 1.0] + ([1.5] if caps.temp_max > 1 else [])
    req.temperature = draw(_opt(st.sampled_from(temps)))
    req.top_p = draw(_opt(st.sampled_from([0.5, 0.9, 1.0])))
    req.top_k = draw(_opt(st.integers(1, 100), caps.top_k))
    req.seed = draw(_opt(st.integers(0, 2**31), caps.seed))
    req.frequency_penalty = draw(_opt(st.sampled_from([-1.0, 0.0, 0.5]), caps.penalties))
    req.presence_penalty = draw(_opt(st.sampled_from([-1.0, 0.0, 0.5]), caps.penalties))
    req.stop = draw(_opt(st.lists(texts, min_size=1, max_size=3), caps.stop))
    req.response_format = draw(_opt(response_formats(caps)))
    req.reasoning = draw(_opt(reasoning_configs(caps)))
    req.stream = draw(st.booleans()) if caps.stream else False
    req.user = draw(_opt(names, caps.user))
    req.metadata = draw(_opt(st.dictionaries(names, names, min_size=1, max_size=2), caps.metadata))
    return req


# ---------------------------------------------------------------------------
# responses


@st.composite
def ir_usage(draw, caps: Caps):
    cached = draw(st.integers(0, 500))
    creation = draw(st.integers(0, 500)) if caps.usage_creation else 0
    inp = cached + creation + draw(st.integers(0, 5000))
    reasoning = draw(st.integers(0, 300)) if caps.usage_reasoning else 0
    out = reasoning + draw(st.integers(0, 3000))
    total = inp + out + draw(st.sampled_from([0, 0, 7])) if caps.resp_total else None
    return ir.Usage(inp, out, cached, creation, reasoning, total)


@st.composite
def ir_response(draw, caps: Caps, model: str = "pool-model"):
    content: list = []
    if caps.assistant_order == "texts_refusal_calls":
        if draw(st.booleans()):
            content.append(ir.Text(draw(texts)))
    else:
        pool = [st.builds(ir.Text, texts)]
        if caps.reasoning != "none":
            pool.append(reasoning_parts(caps))
        if caps.refusal:
            pool.append(st.builds(ir.Refusal, texts))
        content.extend(draw(st.lists(st.one_of(pool), max_size=3)))
    if caps.resp_reasoning_id:
        for p in content:
            if type(p) is ir.Reasoning:
                p.extras = None
    refusal = False
    if caps.assistant_order == "texts_refusal_calls" and caps.refusal and draw(st.integers(0, 3)) == 0:
        content.append(ir.Refusal(draw(texts)))
    refusal = any(type(p) is ir.Refusal for p in content)
    calls = [ir.ToolCall(f"call_{draw(st.from_regex(r'[A-Za-z0-9]{10}', fullmatch=True))}{i}", draw(names),
                         draw(json_objects)) for i in range(draw(st.integers(0, 2)) if not refusal else 0)]
    if caps.assistant_order == "any" and calls:
        content = draw(st.permutations(content + calls))
    else:
        content = content + calls
    if calls:
        stop = ir.StopReason.TOOL_USE
    elif refusal and caps.refusal:
        stop = ir.StopReason.REFUSAL
    else:
        stops = sorted(caps.resp_stops - ({ir.StopReason.REFUSAL} if caps.refusal else set()), key=str)
        stop = draw(st.sampled_from(stops))
    stop_seq = draw(texts) if stop is ir.StopReason.STOP_SEQUENCE and caps.name in ("anthropic", "bedrock") else None
    return ir.Response(draw(st.from_regex(r"[a-z]{3}_[A-Za-z0-9]{8}", fullmatch=True)) if caps.resp_id else "",
                       model if caps.resp_model else "", list(content), stop, stop_seq, draw(ir_usage(caps)))


# ---------------------------------------------------------------------------
# wire values: the IR subset rendered by the protocol itself


@functools.cache
def wire_request(proto: str):
    """(JSON object, path params) of a valid `proto` request."""
    d = get_dialect(proto)

    def render(req: ir.Request):
        body, _ = d.render_request(req, "pool-model")
        params = {"model": "pool-model",
                  "action": {"gemini": "streamGenerateContent", "bedrock": "converse-stream"}.get(proto)
                  if req.stream else {"gemini": "generateContent", "bedrock": "converse"}.get(proto)}
        return orjson.loads(body), params
    return ir_request(CAPS[proto]).map(render)


@functools.cache
def wire_response(proto: str):
    d = get_dialect(proto)
    return ir_response(CAPS[proto]).map(lambda r: orjson.loads(d.render_response(r, r.model or "pool-model")))


# Hand-written wire shapes the IR renderers never emit (string content,
# deprecated keys, string stop...), read like the vendor schemas.
openai_user_content = st.one_of(texts, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}),
                                                min_size=1, max_size=2))
openai_messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.just("user"), "content": openai_user_content}),
    st.fixed_dictionaries({"role": st.just("assistant"), "content": texts}),
), min_size=1, max_size=4)
openai_raw_requests = st.fixed_dictionaries(
    {"model": st.just("gpt-x"), "messages": openai_messages},
    optional={"max_tokens": st.integers(1, 4096), "stop": st.one_of(texts, st.lists(texts, min_size=1, max_size=4)),
              "temperature": st.sampled_from([0, 0.5, 2]), "n": st.just(1), "stream": st.booleans(),
              "logit_bias": st.just({"50256": -100}), "user": names})
anthropic_blocks = st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts},
                                                  optional={"cache_control": st.just({"type": "ephemeral"})}),
                            min_size=1, max_size=2)
anthropic_raw_requests = st.fixed_dictionaries(
    {"model": st.just("claude-x"), "max_tokens": st.integers(1, 4096),
     "messages": st.lists(st.one_of(texts, anthropic_blocks), min_size=1, max_size=4).map(
         lambda cs: [{"role": "user" if i % 2 == 0 else "assistant", "content": c} for i, c in enumerate(cs)])},
    optional={"system": st.one_of(texts, anthropic_blocks), "stop_sequences": st.lists(texts, max_size=2),
              "top_k": st.integers(1, 50), "metadata": st.builds(lambda u: {"user_id": u}, names),
              "service_tier": st.just("auto"), "container": st.just("cnt_1")})


# ---------------------------------------------------------------------------
# schema validators and comparison helpers shared by the translation tests

import json  # noqa: E402
import pathlib  # noqa: E402

from jsonschema import Draft202012Validator  # noqa: E402

SCHEMAS = pathlib.Path(__file__).resolve().parent.parent / "schemas"


@functools.cache
def validator(proto: str, kind: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / proto / f"{kind}.schema.json").read_text())
    return Draft202012Validator(schema)


def assert_valid(proto: str, kind: str, obj) -> None:
    errors = sorted(validator(proto, kind).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, f"{proto} {kind} fails its schema: " + "; ".join(
        f"{list(e.path)}: {e.message[:200]}" for e in errors[:3])


def strip_notes(value):
    """A copy of an IR value without `$` notes in extras (private bookkeeping)."""
    import dataclasses
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            if f.name == "extras" and v:
                kept = {p: {k: x for k, x in fields.items() if not k.startswith("$")} for p, fields in v.items()}
                kept = {p: fields for p, fields in kept.items() if fields}
                changes[f.name] = kept or None
            else:
                changes[f.name] = strip_notes(v)
        return dataclasses.replace(value, **changes)
    if isinstance(value, list):
        return [strip_notes(v) for v in value]
    return value


def strip_extras(value):
    """A copy of an IR value with every extras map removed."""
    import dataclasses
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: (None if f.name == "extras" else strip_extras(getattr(value, f.name)))
                                             for f in dataclasses.fields(value)})
    if isinstance(value, list):
        return [strip_extras(v) for v in value]
    return value
