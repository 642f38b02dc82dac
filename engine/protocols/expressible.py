"""Which member protocols can say a request, decided before any member is picked.

A request that uses something one protocol cannot express (a named tool
choice for Cohere, an image URL for Bedrock, a vendor-only field of another
protocol) must not be sent to a member speaking it: the render would refuse
it (a 400 for the whole request) although another member of the pool could
have answered.  So the gateway filters members *before* routing picks one:

    features = required(ir_request, policy)      # once per request, ~µs
    refused = refusals(features, protocol)       # per distinct protocol: set lookups

* `required` walks the IR once and names each feature it uses, with the
  first IR path that uses it (`{"tool_choice.tool": "tool_choice",
  "user.image.url": "messages[0].content[1]"}`).  A feature is a part kind
  at a place (`user.`, `assistant.`, `system.`, `result.` for inside a tool
  result), a request-level setting (`tool_choice.tool`, `top_k`,
  `temperature.above_1`, ...), or a vendor-only field or part of protocol X
  that its renderers would reject elsewhere (`vendor.X:key`).
* What a protocol cannot say is not a second hand-written table next to the
  renderers (it would drift from them): each feature is declared once with an
  exemplar request using it (`FEATURES`), and a protocol's refusals are
  compiled on first use by rendering each exemplar with that protocol's own
  `render_request` (`cannot(protocol)`).  The per-request check is then set
  lookups.  Vendor-only fields follow the one rule `RenderCtx.foreign` applies
  (accepted by the protocol whose body carries them, `family`, and where
  `common.CROSS_MAPPED` maps them).
* A property test (tests/test_expressible.py) proves the check and the
  renderers agree on random requests from every protocol.

I/O-free and IR-only; the gateway driver turns the refusals into the
routing filter (`busbar.routing.Needs.refused`) and the request record.
"""
from __future__ import annotations

from functools import cache
from typing import Callable

from busbar import ir
from busbar.faults import ClientError
from busbar.protocols import common as c

COMMON_IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})


# ---------------------------------------------------------------------------
# what a request uses

def _image_kind(p: ir.Image) -> str:
    if p.data is not None:
        return "image" if p.media_type in COMMON_IMAGE_TYPES else "image.type"
    url = p.url or ""
    mime = p.media_type or c.guess_media_type(url)
    where = "image.s3" if url.startswith("s3://") else "image.url"
    if mime is None:
        return where + "_untyped"
    return where if mime in COMMON_IMAGE_TYPES else where + "_type"


def _document_kind(p: ir.Document) -> str:
    if p.text is not None:
        return "document.text"
    if p.data is not None:
        if p.media_type == "application/pdf":
            return "document.pdf"
        if p.media_type == "text/plain":
            return "document.plain"
        return "document.data" if p.media_type else "document.untyped"
    url = p.url or ""
    if url.startswith("s3://"):
        return "document.s3"
    return "document.url" if (p.media_type or c.guess_media_type(url)) else "document.url_untyped"


def _rejected_extras(extras: ir.Extras | None, where: str, degrade: bool, out: dict) -> None:
    """The vendor-only fields `RenderCtx.foreign` would refuse in a protocol
    other than their own: not private notes, SDK helpers, empty/default
    values, hints, or (policy degrade) degradable server-side features."""
    if not extras:
        return
    for proto, fields in extras.items():
        silent = c.SILENT.get(proto, ())
        hints = c.HINTS.get(proto, ())
        for key, value in fields.items():
            if key[:1] == "$" or key in silent or key in hints or c.meaningless(proto, key, value) \
                    or c.carried_out(proto, key, value):
                continue
            if degrade and c.degradable(proto, key) is not None:
                continue
            out.setdefault(f"vendor.{proto}:{key}", f"{where}{key}")


def _opaque(p: ir.Opaque, where: str, degrade: bool, out: dict) -> None:
    if p.kind in c.HINTS.get(p.protocol, ()):
        return
    if degrade and c.degradable(p.protocol, p.kind) is not None:
        return
    out.setdefault(f"vendor.{p.protocol}:{p.kind}", f"{where}{p.kind}")


def _part(p, place: str, where: str, degrade: bool, out: dict) -> None:
    t = type(p)
    if t is ir.Text:
        _rejected_extras(p.extras, f"{where}.", degrade, out)
        return
    if t is ir.Reasoning or t is ir.RedactedReasoning:
        return          # another vendor's reasoning is a hint everywhere: dropped, never refused
    if t is ir.Opaque:
        _opaque(p, f"{where}.", degrade, out)
        return
    _rejected_extras(p.extras, f"{where}.", degrade, out)
    if t is ir.Image:
        kind = _image_kind(p)
    elif t is ir.Document:
        kind = _document_kind(p)
    elif t is ir.ToolCall:
        if p.raw_arguments is None:
            return
        kind = "call.raw_arguments"
    elif t is ir.ToolResult:
        for k, x in enumerate(p.content):
            _part(x, "result", f"{where}.content[{k}]", degrade, out)
        return
    elif t is ir.JsonData:
        kind = "json"
    elif t is ir.Refusal:
        kind = "refusal"
    else:
        kind = t.__name__.lower()
    out.setdefault(f"{place}.{kind}", where)


def required(req: ir.Request, policy: str = "degrade") -> dict[str, str]:
    """The features `req` uses, each with the first IR path that uses it.
    `policy` is the pool's `unsupported`: under "reject" degradable
    server-side features count too; under "drop" nothing is refused, but the
    same features are reported so routing can still prefer lossless members."""
    degrade = policy != "reject"
    out: dict[str, str] = {}
    if req.extras:
        _rejected_extras(req.extras, "", degrade, out)
    for j, p in enumerate(req.system):
        if type(p) is not ir.Text or p.extras is not None:     # an Opaque has no extras
            _part(p, "system", f"system[{j}]", degrade, out)
    history = False
    Text, ToolCall, ToolResult, Refusal = ir.Text, ir.ToolCall, ir.ToolResult, ir.Refusal
    for i, m in enumerate(req.messages):
        if m.extras:
            _rejected_extras(m.extras, f"messages[{i}].", degrade, out)
        place = "user" if m.role == ir.USER else "assistant" if m.role == ir.ASSISTANT else "system"
        refusals = 0
        for j, p in enumerate(m.content):
            t = type(p)
            if t is Text:                # the common parts with nothing to say: no path built
                if p.extras is None:
                    continue
            elif t is ToolCall:
                history = True
                if p.raw_arguments is None and p.extras is None:
                    continue
            elif t is ToolResult:
                history = True
            elif t is Refusal:
                refusals += 1
                if refusals == 2:
                    out.setdefault(f"{place}.refusal.second", f"messages[{i}].content[{j}]")
            _part(p, place, f"messages[{i}].content[{j}]", degrade, out)
    for i, t in enumerate(req.tools):
        if type(t) is ir.Opaque:
            _opaque(t, f"tools[{i}].", degrade, out)
        elif t.extras:
            _rejected_extras(t.extras, f"tools[{i}].", degrade, out)
    tc = req.tool_choice
    if tc is not None and tc.mode != "auto":
        mode = "none_with_history" if tc.mode == "none" and history else tc.mode
        out["tool_choice." + mode] = "tool_choice"
    if req.parallel_tool_calls is False:
        out["parallel_tool_calls.false"] = "parallel_tool_calls"
    if req.temperature is not None:
        out["temperature.above_1" if req.temperature > 1 else "temperature"] = "temperature"
    if req.top_p is not None:
        out["top_p"] = "top_p"
    if req.top_k is not None:
        out["top_k"] = "top_k"
    if req.seed is not None:
        out["seed"] = "seed"
    if req.frequency_penalty is not None:
        out["frequency_penalty"] = "frequency_penalty"
    if req.presence_penalty is not None:
        out["presence_penalty"] = "presence_penalty"
    if req.stop:
        out["stop"] = "stop"
    rf = req.response_format
    if rf is not None:
        out["response_format." + rf.type] = "response_format"
    return out


# ---------------------------------------------------------------------------
# the features, declared once with an exemplar each

def _hi() -> ir.Message:
    return ir.Message(ir.USER, [ir.Text("hi")])


def _tool() -> ir.Tool:
    return ir.Tool("lookup", {"type": "object", "properties": {"q": {"type": "string"}}})


def _in_user(part: Callable) -> Callable[[], ir.Request]:
    return lambda: ir.Request([ir.Message(ir.USER, [ir.Text("look"), part()])])


def _in_assistant(part: Callable) -> Callable[[], ir.Request]:
    return lambda: ir.Request([_hi(), ir.Message(ir.ASSISTANT, [part()]), _hi()])


def _in_system(part: Callable) -> Callable[[], ir.Request]:
    return lambda: ir.Request([_hi(), ir.Message(ir.ASSISTANT, [ir.Text("ok")]),
                               ir.Message(ir.SYSTEM, [part()]), _hi()])


def _in_result(part: Callable) -> Callable[[], ir.Request]:
    return lambda: ir.Request(
        [_hi(), ir.Message(ir.ASSISTANT, [ir.ToolCall("call_1", "lookup", {"q": "x"})]),
         ir.Message(ir.USER, [ir.ToolResult("call_1", [ir.Text("found"), part()])])], tools=[_tool()])


def _with(**fields) -> Callable[[], ir.Request]:
    return lambda: ir.Request([_hi()], tools=[_tool()], **{k: v() if callable(v) else v for k, v in fields.items()})


_PNG = "iVBORw0KGgo="
_KINDS: dict[str, Callable] = {
    "image": lambda: ir.Image(data=_PNG, media_type="image/png"),
    "image.type": lambda: ir.Image(data=_PNG, media_type="image/bmp"),
    "image.url": lambda: ir.Image(url="https://example.com/cat.png"),
    "image.url_type": lambda: ir.Image(url="https://example.com/cat.bmp", media_type="image/bmp"),
    "image.url_untyped": lambda: ir.Image(url="https://example.com/cat"),
    "image.s3": lambda: ir.Image(url="s3://bucket/cat.png"),
    "image.s3_type": lambda: ir.Image(url="s3://bucket/cat.bmp", media_type="image/bmp"),
    "image.s3_untyped": lambda: ir.Image(url="s3://bucket/cat"),
    "document.pdf": lambda: ir.Document(data="JVBERi0=", media_type="application/pdf", name="doc"),
    "document.plain": lambda: ir.Document(data="aGVsbG8=", media_type="text/plain", name="doc"),
    "document.data": lambda: ir.Document(data="YSxiCg==", media_type="text/csv", name="doc"),
    "document.untyped": lambda: ir.Document(data="YSxiCg==", name="doc"),
    "document.text": lambda: ir.Document(text="hello", name="doc"),
    "document.url": lambda: ir.Document(url="https://example.com/a.pdf"),
    "document.url_untyped": lambda: ir.Document(url="https://example.com/a"),
    "document.s3": lambda: ir.Document(url="s3://bucket/a.pdf"),
    "json": lambda: ir.JsonData({"k": 1}),
    "refusal": lambda: ir.Refusal("no"),
}

# where each exemplar puts its feature (the render's error names a field at or under it)
_AT = {"user": "messages[0].content[1]", "assistant": "messages[1].content[0]",
       "system": "messages[2].content[0]", "result": "messages[2].content[0].content[1]"}

FEATURES: dict[str, Callable[[], ir.Request]] = {
    **{f"user.{k}": _in_user(p) for k, p in _KINDS.items()},
    **{f"assistant.{k}": _in_assistant(p) for k, p in _KINDS.items()},
    **{f"system.{k}": _in_system(p) for k, p in _KINDS.items()},
    **{f"result.{k}": _in_result(p) for k, p in _KINDS.items()},
    "assistant.refusal.second": lambda: ir.Request([_hi(), ir.Message(ir.ASSISTANT, [ir.Refusal("no"),
                                                                                     ir.Refusal("never")]), _hi()]),
    "assistant.call.raw_arguments": lambda: ir.Request(
        [_hi(), ir.Message(ir.ASSISTANT, [ir.ToolCall("call_1", "lookup", {}, raw_arguments="not json")]),
         ir.Message(ir.USER, [ir.ToolResult("call_1", [ir.Text("found")])])], tools=[_tool()]),
    "tool_choice.tool": _with(tool_choice=lambda: ir.ToolChoice("tool", "lookup")),
    "tool_choice.required": _with(tool_choice=lambda: ir.ToolChoice("required")),
    "tool_choice.none": _with(tool_choice=lambda: ir.ToolChoice("none")),
    "tool_choice.none_with_history": lambda: ir.Request(
        [_hi(), ir.Message(ir.ASSISTANT, [ir.ToolCall("call_1", "lookup", {"q": "x"})]),
         ir.Message(ir.USER, [ir.ToolResult("call_1", [ir.Text("found")])])],
        tools=[_tool()], tool_choice=ir.ToolChoice("none")),
    "parallel_tool_calls.false": _with(parallel_tool_calls=False),
    "temperature": _with(temperature=0.5),
    "temperature.above_1": _with(temperature=1.5),
    "top_p": _with(top_p=0.9),
    "top_k": _with(top_k=40),
    "seed": _with(seed=7),
    "frequency_penalty": _with(frequency_penalty=0.5),
    "presence_penalty": _with(presence_penalty=0.5),
    "stop": _with(stop=["END"]),
    "response_format.text": _with(response_format=lambda: ir.ResponseFormat("text")),
    "response_format.json_object": _with(response_format=lambda: ir.ResponseFormat("json_object")),
    "response_format.json_schema": _with(response_format=lambda: ir.ResponseFormat(
        "json_schema", {"type": "object", "properties": {}})),
}


_AT_FEATURE = {"assistant.refusal.second": "messages[1].content[1]"}


@cache
def cannot(protocol: str) -> dict[str, tuple[str, str]]:
    """The features `protocol` cannot express, each as (the field under the
    feature's place that its renderer names, e.g. `.url`; its reason);
    compiled once by rendering every exemplar (stop sequences count as
    expressible where the gateway emulates them)."""
    from busbar.protocols import get_dialect

    dialect = get_dialect(protocol)
    out: dict[str, tuple[str, str]] = {}
    for feature, exemplar in FEATURES.items():
        req = exemplar()
        if dialect.stop_emulated:
            req.stop = None
        try:
            dialect.render_request(req, "model", max_tokens_default=256, unsupported="degrade")
        except ClientError as err:
            _, sep, why = err.message.partition(" protocol: ")
            at = _AT_FEATURE.get(feature) or _AT.get(feature.partition(".")[0])
            param = err.param or ""
            suffix = param[len(at):] if at is not None and param.startswith(at) else ""
            out[feature] = (suffix, why.rstrip(".") if sep else err.message)
    return out


@cache
def family(protocol: str) -> str:
    """The protocol whose body `protocol` sends (`Dialect.family`): its
    renders take that protocol's vendor-only fields as their own, as
    `RenderCtx.foreign` does (Claude's InvokeModel body is Anthropic's)."""
    from busbar.protocols import get_dialect
    return get_dialect(protocol).family


def refusal(features: dict[str, str], protocol: str) -> tuple[str, str] | None:
    """The first feature `protocol` cannot express, as (the IR path of the
    field its render would name, the reason); None when it can say them all."""
    missing = cannot(protocol)
    body = family(protocol)
    for feature, path in features.items():
        if feature[:7] == "vendor.":
            proto, _, key = feature[7:].partition(":")
            if proto != body and key not in c.CROSS_MAPPED.get((proto, body), ()):
                return path, f"{proto}-only field, no {protocol} equivalent"
        else:
            found = missing.get(feature)
            if found is not None:
                return path + found[0], found[1]
    return None
