"""Laws across the 49 (source, target) pairs.

For a request or response that protocol A can express, A -> IR -> B -> IR -> A
keeps everything B can express: text, tool calls and their arguments, tool
results matched by id, images, documents, sampling, usage numbers, the class
of the stop reason.  `core(x, B)` is the comparable view of `x` as seen
through B: it drops or normalises exactly what B cannot say (the documented
lossy corners), so `core(original, B) == core(round_tripped, B)` is the law.
Along the way every rendered body must validate against its schema, and the
"reject" policy must either succeed with hint-only warnings or raise a 400
ClientError that names the field.
"""
from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from busbar import ir
from busbar.faults import ClientError
from busbar.protocols import common as c
from busbar.protocols import get_dialect
from tests import strategies as S

pytestmark = pytest.mark.pure

SETTINGS = settings(max_examples=18, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PAIRS = [(a, b) for a in S.PROTOCOLS for b in S.PROTOCOLS]

# what each protocol carries (for the projection; generation uses S.CAPS)
DOCS = {"openai": {"pdf"}, "responses": {"pdf", "url"}, "anthropic": {"pdf", "text", "url"},
        "gemini": {"pdf", "text", "url"}, "bedrock": {"pdf", "text"}, "cohere": set()}
RESULT_MEDIA = {"anthropic", "bedrock", "gemini", "responses"}
RESULT_ERROR = {"anthropic", "bedrock", "gemini"}
MID_SYSTEM = {"openai", "responses", "cohere"}
REFUSAL = {"openai", "responses"}
STRICT = {"openai", "responses", "anthropic", "bedrock", "cohere"}
USER = {"openai", "responses", "anthropic"}
METADATA = {"openai", "responses", "bedrock"}
NO_TOP_K = {"openai", "responses"}
NO_SEED = {"responses", "anthropic", "bedrock"}
TEMP_MAX_1 = {"anthropic", "bedrock"}
NO_PARALLEL = {"gemini", "bedrock", "cohere"}


def params(proto: str, req: ir.Request) -> dict:
    action = {"gemini": ("generateContent", "streamGenerateContent"),
              "bedrock": ("converse", "converse-stream"),
              "bedrock-invoke": ("invoke", "invoke-with-response-stream")}.get(proto, (None, None))[req.stream]
    return {"model": "pool-model", "action": action}


# ---------------------------------------------------------------------------
# the request seen through protocol B


def _doc(p: ir.Document):
    if p.text is not None:
        return ("doc", "text", p.text)
    if p.data is not None and p.media_type == "text/plain":
        return ("doc", "text", base64.b64decode(p.data).decode())
    if p.data is not None:
        return ("doc", "data", p.data)
    return ("doc", "url", p.url)


def _doc_kind(p: ir.Document) -> str:
    return "text" if p.text is not None or p.media_type == "text/plain" else "pdf" if p.data is not None else "url"


def _media(p, via: str, in_result: bool):
    if type(p) is ir.Image:
        if p.url is not None:
            if via == "bedrock":
                return None
            return ("image", p.url)
        return ("image", p.media_type, p.data)
    if type(p) is ir.Document:
        if _doc_kind(p) not in DOCS[via] or (in_result and via == "gemini" and _doc_kind(p) == "text"):
            return None
        return _doc(p)
    return None


def req_core(req: ir.Request, via: str, source: str):
    ids: dict[str, str] = {}

    def cid(x: str) -> str:
        return ids.setdefault(x, f"#{len(ids)}")

    system = [p.text for p in req.system]
    turns: list[tuple[str, list]] = []
    for m in req.messages:
        if m.role == ir.SYSTEM and via not in MID_SYSTEM:
            system.extend(p.text for p in m.content)
            continue
        items = []
        for p in m.content:
            t = type(p)
            if t is ir.Text:
                items.append(("text", p.text))
            elif t is ir.Refusal:
                items.append(("refusal" if via in REFUSAL and source in REFUSAL else "text", p.text))
            elif t is ir.Image or t is ir.Document:
                x = _media(p, via, False)
                if x is not None:
                    items.append(x)
            elif t is ir.ToolCall:
                items.append(("call", cid(p.id), p.name, orjson.dumps(p.arguments, option=orjson.OPT_SORT_KEYS)))
            elif t is ir.ToolResult:
                texts, media = [], []
                for x in p.content:
                    if type(x) is ir.Text:
                        texts.append(x.text)
                    elif type(x) is ir.JsonData:
                        texts.append(c.json_text(x.value))
                    elif via in RESULT_MEDIA:
                        y = _media(x, via, True)
                        if y is not None:
                            media.append(y)
                items.append(("result", cid(p.id), p.is_error and via in RESULT_ERROR, "\n".join(texts), tuple(media)))
            elif t is ir.Reasoning or t is ir.RedactedReasoning:
                if via == source:
                    items.append(("reasoning", getattr(p, "text", None), getattr(p, "signature", None)
                                  if t is ir.Reasoning else p.data))
        role = m.role
        if not items:
            continue
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(items)
        else:
            turns.append((role, items))
    msgs = []
    for role, items in turns:
        if not items:
            continue
        if role == ir.USER:
            items = [x for x in items if x[0] == "result"] + [x for x in items if x[0] != "result"]
        elif role == ir.ASSISTANT and via in ("openai", "cohere"):
            order = {"text": 0, "reasoning": 0, "refusal": 1, "call": 2}
            items = sorted(items, key=lambda x: order.get(x[0], 0))
        msgs.append((role, tuple(items)))

    has_tool_blocks = any(x[0] in ("call", "result") for _, items in msgs for x in items)
    tc = req.tool_choice
    mode = tc.mode if tc is not None else "auto"
    name = tc.name if tc is not None else None
    tools = req.tools
    if via == "bedrock" and (not tools or (mode == "none" and not has_tool_blocks)):
        tools = [] if mode == "none" else tools
        mode, name = "auto", None
    if via == "bedrock" and mode == "none":
        mode = "auto"
    if via == "cohere" and mode == "tool":
        mode, name = "auto", None
    mixed_cohere = via == "cohere" and len({bool(t.strict) for t in tools}) > 1
    tool_view = tuple((t.name, t.description, orjson.dumps(t.parameters or {"type": "object", "properties": {}},
                                                           option=orjson.OPT_SORT_KEYS),
                       (bool(t.strict) and not mixed_cohere) if via in STRICT else None) for t in tools)
    parallel = req.parallel_tool_calls is not False
    if via in NO_PARALLEL or (via == "anthropic" and mode == "none"):
        parallel = True
    rf = req.response_format
    rf_view = None
    if rf is not None and rf.type != "text":
        if not (rf.type == "json_object" and via in ("anthropic", "bedrock")):
            rf_view = (rf.type, orjson.dumps(rf.schema, option=orjson.OPT_SORT_KEYS) if rf.type == "json_schema" else None)
    cfg = req.reasoning
    if cfg is None:
        think = None
    elif c.reasoning_off(cfg):
        think = "off"
    elif cfg.budget_tokens is None and cfg.effort is None and via in ("openai", "responses", "bedrock"):
        think = None
    else:
        think = "on"
    max_tokens = req.max_tokens
    if max_tokens is None and via == "anthropic":
        budget = cfg.budget_tokens if cfg is not None and not c.reasoning_off(cfg) else None
        max_tokens = 4096 if budget is None or budget < 4096 else budget + 4096
    temperature = req.temperature if not (via in TEMP_MAX_1 and (req.temperature or 0) > 1) else None
    return {
        "system": "\n\n".join(system) if via == "responses" or source == "responses" else tuple(system),
        "messages": tuple(msgs), "tools": tool_view, "tool_choice": (mode, name), "parallel": parallel,
        "max_tokens": max_tokens, "temperature": temperature, "top_p": req.top_p,
        "top_k": None if via in NO_TOP_K else req.top_k,
        "seed": None if via in NO_SEED else req.seed,
        "penalties": (None, None) if via in NO_SEED else (req.frequency_penalty, req.presence_penalty),
        "stop": None if via == "responses" else req.stop,
        "response_format": rf_view, "reasoning": think,
        "stream": req.stream,
        "user": req.user if via in USER else None,
        "metadata": req.metadata if via in METADATA else None,
    }


# ---------------------------------------------------------------------------
# the response seen through protocol B

STOP_CLASS = {ir.StopReason.END_TURN: "end", ir.StopReason.STOP_SEQUENCE: "end", ir.StopReason.PAUSE: "end",
              ir.StopReason.MAX_TOKENS: "length", ir.StopReason.CONTEXT_WINDOW: "length",
              ir.StopReason.TOOL_USE: "tool", ir.StopReason.CONTENT_FILTER: "filter",
              ir.StopReason.REFUSAL: "filter", ir.StopReason.OTHER: "other"}
STOP_KEPT = {"openai": {"end", "length", "tool", "filter"}, "responses": {"end", "length", "tool", "filter"},
             "anthropic": {"end", "length", "tool", "filter"}, "gemini": {"end", "length", "tool", "filter", "other"},
             "bedrock": {"end", "length", "tool", "filter", "other"}, "cohere": {"end", "length", "tool", "other"}}
USAGE_KEPT = {
    "openai": {"input", "output", "cached", "creation", "reasoning", "total"},
    "responses": {"input", "output", "cached", "creation", "reasoning", "total"},
    "anthropic": {"input", "output", "cached", "creation", "reasoning"},
    "gemini": {"input", "output", "cached", "reasoning", "total"},
    "bedrock": {"input", "output", "cached", "creation", "total"},
    "cohere": {"input", "output", "cached"},
}
SIGNATURES = {"anthropic", "bedrock", "gemini", "responses"}


def resp_core(resp: ir.Response, via: str, source: str):
    texts, refusals, calls, reasoning = [], [], [], []
    for p in resp.content:
        t = type(p)
        if t is ir.Text:
            texts.append(p.text)
        elif t is ir.Refusal:
            (refusals if via in REFUSAL and source in REFUSAL else texts).append(p.text)
        elif t is ir.ToolCall:
            calls.append((p.id, p.name, orjson.dumps(p.arguments, option=orjson.OPT_SORT_KEYS)))
        elif t is ir.Reasoning and via != "openai":
            sig = p.signature if via in SIGNATURES and source in SIGNATURES else None
            reasoning.append((p.text, sig))
        elif t is ir.RedactedReasoning and via in ("anthropic", "bedrock"):
            reasoning.append((None, p.data))
    u = resp.usage
    kept = USAGE_KEPT[via] & USAGE_KEPT[source]
    usage = {"input": u.input_tokens, "output": u.output_tokens, "cached": u.cached_tokens,
             "creation": u.cache_creation_tokens, "reasoning": u.reasoning_tokens, "total": u.total}
    return {"text": "".join(texts), "refusal": "".join(refusals), "calls": calls, "reasoning": reasoning,
            "usage": {k: v for k, v in usage.items() if k in kept}}


# ---------------------------------------------------------------------------
# the laws


def _reject_or_hints(d, req: ir.Request):
    """Under "reject" a render either raises a 400 naming the field or only
    drops hints; never a silent loss."""
    try:
        _, warnings = d.render_request(req, "pool-model")
    except ClientError as err:
        assert err.status == 400 and err.param, (err.status, err.param, err.message)
        assert err.param in err.message
        return
    assert all(w.startswith("dropped hint") for w in warnings), warnings


@pytest.mark.slow
@pytest.mark.parametrize("a,b", PAIRS)
def test_request_round_trip_through(a, b):
    da, db = get_dialect(a), get_dialect(b)

    @SETTINGS
    @given(S.ir_request(S.CAPS[a]))
    def law(x):
        wire_a, _ = da.render_request(x, "pool-model")
        ir1 = da.parse_request(orjson.loads(wire_a), params(a, x))
        _reject_or_hints(db, ir1)
        wire_b, warnings = db.render_request(ir1, "pool-model", unsupported="drop")
        obj_b = orjson.loads(wire_b)
        S.assert_valid(b, "request", obj_b)
        ir2 = db.parse_request(obj_b, params(b, ir1))
        wire_a2, _ = da.render_request(ir2, "pool-model", unsupported="drop")
        obj_a2 = orjson.loads(wire_a2)
        S.assert_valid(a, "request", obj_a2)
        ir3 = da.parse_request(obj_a2, params(a, ir2))
        assert req_core(ir3, S.family(b), S.family(a)) == req_core(ir1, S.family(b), S.family(a))
    law()


@pytest.mark.parametrize("a,b", PAIRS)
def test_response_round_trip_through(a, b):
    da, db = get_dialect(a), get_dialect(b)

    @SETTINGS
    @given(S.ir_response(S.CAPS[a]))
    def law(x):
        r1 = da.parse_response(orjson.loads(da.render_response(x, "pool-model")))
        obj_b = orjson.loads(db.render_response(r1, "client-model"))
        S.assert_valid(b, "response", obj_b)
        r2 = db.parse_response(obj_b)
        obj_a = orjson.loads(da.render_response(r2, "pool-model"))
        S.assert_valid(a, "response", obj_a)
        r3 = da.parse_response(obj_a)
        fa, fb = S.family(a), S.family(b)
        assert resp_core(r3, fb, fa) == resp_core(r1, fb, fa)
        cls = STOP_CLASS[r1.stop_reason]
        if cls in STOP_KEPT[fa] & STOP_KEPT[fb]:
            assert STOP_CLASS[r3.stop_reason] == cls
    law()
