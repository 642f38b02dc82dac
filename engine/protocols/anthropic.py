"""Anthropic Messages (`POST {base}/v1/messages`)."""
from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime
from email.utils import parsedate_to_datetime

import orjson

from busbar import ir
from busbar.faults import ClientError, VendorQuota
from busbar.protocols import common as c
from busbar.protocols import streaming as s
from busbar.protocols.base import Codec, ErrorRow, ErrorTable, Dialect, Headers, StreamError, bearer_token, header, int_header

ANTHROPIC_VERSION = b"2023-06-01"
P = "anthropic"
# sampling knobs: IR field -> this dialect's name (None: it has none)
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "seed": None,
            "frequency_penalty": None, "presence_penalty": None, "stop": "stop_sequences"}
SR = ir.StopReason
DEFAULT_MAX_TOKENS = 4096
MIN_BUDGET = 1024

_REQUEST_KEYS = frozenset({
    "model", "messages", "max_tokens", "system", "tools", "tool_choice", "temperature",
    "top_p", "top_k", "stop_sequences", "stream", "metadata", "thinking", "output_config"})
_MSG_KEYS = frozenset({"role", "content"})
_TEXT_KEYS = frozenset({"type", "text"})
_SOURCE_KEYS = frozenset({"type", "source"})
_DOC_KEYS = frozenset({"type", "source", "title"})
_USE_KEYS = frozenset({"type", "id", "name", "input"})
_RESULT_KEYS = frozenset({"type", "tool_use_id", "content", "is_error"})
_THINK_KEYS = frozenset({"type", "thinking", "signature"})
_TOOL_KEYS = frozenset({"name", "description", "input_schema", "strict"})
_RESPONSE_KEYS = frozenset({"id", "type", "role", "model", "content", "stop_reason",
                            "stop_sequence", "usage"})
_USAGE_KEYS = frozenset({"input_tokens", "output_tokens", "cache_creation_input_tokens",
                         "cache_read_input_tokens", "output_tokens_details"})
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

STOP_IN = {"end_turn": SR.END_TURN, "max_tokens": SR.MAX_TOKENS, "stop_sequence": SR.STOP_SEQUENCE,
           "tool_use": SR.TOOL_USE, "pause_turn": SR.PAUSE, "refusal": SR.REFUSAL,
           "model_context_window_exceeded": SR.CONTEXT_WINDOW}
STOP_OUT = {SR.END_TURN: "end_turn", SR.MAX_TOKENS: "max_tokens", SR.STOP_SEQUENCE: "stop_sequence",
            SR.TOOL_USE: "tool_use", SR.CONTENT_FILTER: "refusal", SR.REFUSAL: "refusal",
            SR.PAUSE: "pause_turn", SR.CONTEXT_WINDOW: "model_context_window_exceeded",
            SR.OTHER: "end_turn"}
EFFORTS = frozenset({"low", "medium", "high", "xhigh", "max"})

fit_id = c.id_fitter(64, re.compile(r"[^a-zA-Z0-9_-]"))


def _timestamp(value: bytes | None) -> float | None:
    try:
        return datetime.fromisoformat(value.decode("latin-1").strip()).timestamp() if value else None
    except ValueError:
        return None


def rate_limits(headers: Headers) -> VendorQuota | None:
    """Anthropic's `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`
    (`tokens-*` is the most restrictive token limit in effect, else the
    input-token one).  Resets are RFC 3339 instants, made relative to the
    response's own `date` header, so the gateway's clock does not matter."""
    remaining_requests = int_header(headers, b"anthropic-ratelimit-requests-remaining")
    tokens = b"anthropic-ratelimit-tokens-"
    if header(headers, tokens + b"remaining") is None:
        tokens = b"anthropic-ratelimit-input-tokens-"
    remaining_tokens = int_header(headers, tokens + b"remaining")
    if remaining_requests is None and remaining_tokens is None:
        return None
    sent = header(headers, b"date")
    try:
        origin = parsedate_to_datetime(sent.decode("latin-1")).timestamp() if sent else None
    except (TypeError, ValueError):
        origin = None

    def reset(name: bytes) -> float | None:
        at = _timestamp(header(headers, name))
        return max(0.0, at - origin) if at is not None and origin is not None else None

    return VendorQuota(remaining_requests, reset(b"anthropic-ratelimit-requests-reset"),
                       remaining_tokens, reset(tokens + b"reset"),
                       int_header(headers, b"anthropic-ratelimit-requests-limit"),
                       int_header(headers, tokens + b"limit"))


# The error vocabulary (kind -> status, error.type), both ways.
ERRORS = ErrorTable("anthropic", {
    "invalid_request": ErrorRow(400, "invalid_request_error"),
    "authentication": ErrorRow(401, "authentication_error"),
    "permission": ErrorRow(403, "permission_error"),
    "not_found": ErrorRow(404, "not_found_error"),
    "request_too_large": ErrorRow(413, "request_too_large"),
    "rate_limit": ErrorRow(429, "rate_limit_error"),
    "billing": ErrorRow(402, "billing_error"),
    "overloaded": ErrorRow(529, "overloaded_error"),
    "api_error": ErrorRow(500, "api_error"),
    "upstream": ErrorRow(502, "api_error"),
    "timeout": ErrorRow(504, "timeout_error"),
}, read={"api_error": 500})


class AnthropicDialect(Dialect):
    name = "anthropic"
    request_id_header = b"request-id"            # anthropic SDKs' `_request_id`, `APIStatusError.request_id`
    vision_markers = (b'"image"',)
    request_name = "Messages request"
    body_shape = {"model": (str,), "stream": (bool,), "messages": (list,), "system": (str, list),
                  "max_tokens": (int,), "tools": (list,)}
    forward_headers = (b"anthropic-version", b"anthropic-beta")
    varying_headers = (b"anthropic-beta",)
    kind_status = ERRORS.status

    def rate_limits(self, headers: Headers) -> VendorQuota | None:
        return rate_limits(headers)

    def inbound_key(self, headers: Headers, query: bytes) -> str | None:
        # Current SDKs may send `Authorization: Bearer`, older ones x-api-key.
        key = header(headers, b"x-api-key")
        return key.decode("latin-1") if key else bearer_token(headers)

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        body = orjson.dumps({"type": "error", "error": {
            "type": ERRORS.row(err.kind, "invalid_request").type,
            "message": err.message,
        }})
        return err.status, self.error_headers(err), body

    # Beta flags: the `anthropic-beta` header here, a body field on Bedrock's
    # InvokeModel (busbar.protocols.bedrock_invoke); both ride as IR notes:
    # `$header_beta` (this header) and `$beta` (the body field).
    def header_params(self, headers: Headers) -> dict:
        betas = [b.strip() for k, v in headers if k == b"anthropic-beta"
                 for b in v.decode("latin-1").split(",") if b.strip()]
        return {"beta": betas} if betas else {}

    def parse_request(self, obj: dict, params: dict | None = None):
        req = super().parse_request(obj, params)
        if params and params.get("beta"):
            req.extras = c.with_note(req.extras, P, "$header_beta", params["beta"])
        return req

    def request_headers(self, req) -> Headers:
        betas = betas_of(req)
        return [(b"anthropic-beta", ",".join(betas).encode("latin-1"))] if betas else []

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/v1/messages"

    def auth_headers(self, key: str | None) -> Headers:
        headers = [(b"anthropic-version", ANTHROPIC_VERSION)]
        if key:
            headers.append((b"x-api-key", key.encode()))
        return headers

    def error_message(self, obj) -> tuple[str, str | None]:
        error = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(error, dict):
            return str(error.get("message") or ""), error.get("type")
        return "", None

def betas_of(req) -> list[str]:
    """Every beta flag the request carries (the header's, then the body field's), once each."""
    header_betas = c.note(req.extras, P, "$header_beta") or ()
    body_betas = c.note(req.extras, P, "$beta") or ()
    return list(dict.fromkeys([*header_betas, *body_betas]))


# ---------------------------------------------------------------------------
# parsing (requests and responses share the block parser)


def _block(b: dict):
    kind = b["type"]
    if kind == "text":
        return ir.Text(b["text"], c.extras_of(b, _TEXT_KEYS, P))
    if kind == "tool_use":
        return ir.ToolCall(b["id"], b["name"], b.get("input") or {}, None, c.extras_of(b, _USE_KEYS, P))
    if kind == "tool_result":
        content = b.get("content")
        if content is None:
            parts = []
        elif isinstance(content, str):
            parts = [ir.Text(content)]
        else:
            parts = [_block(x) for x in content]
        return ir.ToolResult(b["tool_use_id"], parts, bool(b.get("is_error", False)), None,
                             c.extras_of(b, _RESULT_KEYS, P))
    if kind == "image":
        src = b["source"]
        st = src["type"]
        if st == "base64":
            return ir.Image(data=src["data"], media_type=src["media_type"], extras=c.extras_of(b, _SOURCE_KEYS, P))
        if st == "url":
            return ir.Image(url=src["url"], extras=c.extras_of(b, _SOURCE_KEYS, P))
    elif kind == "document":
        src = b["source"]
        st = src["type"]
        ext = c.extras_of(b, _DOC_KEYS, P)
        if st == "base64":
            return ir.Document(data=src["data"], media_type=src["media_type"], name=b.get("title"), extras=ext)
        if st == "text":
            return ir.Document(text=src["data"], media_type=src.get("media_type", "text/plain"),
                               name=b.get("title"), extras=ext)
        if st == "url":
            return ir.Document(url=src["url"], name=b.get("title"), extras=ext)
    elif kind == "thinking":
        sig, origin = c.sig_in(b.get("signature") or None, P)
        return ir.Reasoning(b["thinking"], sig, origin, c.extras_of(b, _THINK_KEYS, P))
    elif kind == "redacted_thinking":
        data, origin = c.sig_in(b["data"], P)
        return ir.RedactedReasoning(data, origin)
    return ir.Opaque(P, str(kind), b)


def _content(content) -> list:
    if isinstance(content, str):
        return [ir.Text(content)]
    if not isinstance(content, list):
        raise c.bad("messages.content", "must be a string or an array of content blocks")
    return [_block(b) for b in content]


def _parse_request(obj: dict) -> ir.Request:
    messages = []
    for m in c.require_list(obj, "messages"):
        role = m["role"]
        if role not in ("user", "assistant", "system"):
            raise c.bad("messages.role", f"unknown role {role!r}")
        messages.append(ir.Message(role, _content(m["content"]), c.extras_of(m, _MSG_KEYS, P)))
    req = ir.Request(messages)
    system = obj.get("system")
    if system is not None:
        req.system = [ir.Text(system)] if isinstance(system, str) else [_block(b) for b in system]
        if any(type(p) is not ir.Text for p in req.system):
            raise c.bad("system", "only text blocks are allowed")
    req.max_tokens = obj.get("max_tokens")
    c.read_sampling(obj, req, SAMPLING)
    req.stream = obj.get("stream") is True
    notes: dict = {}
    md = obj.get("metadata")
    if md is not None and type(md) is not dict:      # dict() would take a list of pairs, keys of any type
        raise c.bad("metadata", "must be an object")
    if md:
        md = dict(md)
        req.user = md.pop("user_id", None)
        if md:
            req.metadata = md
    for t in obj.get("tools") or ():
        if t.get("type") in (None, "custom"):
            ext = c.extras_of(t, _TOOL_KEYS | {"type"}, P)
            if "type" in t:
                ext = c.with_note(ext, P, "$custom", True)
            req.tools.append(ir.Tool(t["name"], t.get("input_schema"), t.get("description"),
                                     t.get("strict"), ext))
        else:
            req.tools.append(ir.Opaque(P, str(t.get("type")), t))
    tc = obj.get("tool_choice")
    if tc is not None:
        kind = tc["type"]
        req.tool_choice = ir.ToolChoice({"any": "required"}.get(kind, kind), tc.get("name"))
        if "disable_parallel_tool_use" in tc:
            req.parallel_tool_calls = not tc["disable_parallel_tool_use"]
    th = obj.get("thinking")
    oc = obj.get("output_config") or {}
    if th is not None or oc.get("effort") is not None:
        cfg = ir.ReasoningConfig()
        if th is not None:
            kind = th["type"]
            cfg.enabled = kind != "disabled"
            cfg.budget_tokens = th.get("budget_tokens")
            if kind == "adaptive":
                notes["$adaptive"] = True
            if th.get("display") is not None:
                notes["$display"] = th["display"]
        cfg.effort = oc.get("effort")
        req.reasoning = cfg
    fmt = oc.get("format")
    if fmt is not None:
        req.response_format = ir.ResponseFormat("json_schema", fmt.get("schema"))
    extras = c.extras_of(obj, _REQUEST_KEYS, P, notes or None)
    oc_rest = {k: v for k, v in oc.items() if k not in ("effort", "format")}
    if oc_rest:
        extras = c.with_note(extras, P, "$output_config", oc_rest)
    req.extras = extras
    return req


def _parse_response(obj: dict) -> ir.Response:
    content = [_block(b) for b in obj.get("content") or ()]
    stop = STOP_IN.get(obj.get("stop_reason"), SR.END_TURN)
    u = obj.get("usage") or {}
    usage = usage_in(u)
    extras = c.extras_of(obj, _RESPONSE_KEYS, P)
    u_rest = {k: v for k, v in u.items() if k not in _USAGE_KEYS}
    if u_rest:
        extras = c.with_note(extras, P, "$usage", u_rest)
    return ir.Response(obj.get("id") or "", obj.get("model") or "", content,
                       c.infer_stop(content, stop), obj.get("stop_sequence"), usage, extras)


# ---------------------------------------------------------------------------
# rendering


def _image(p: ir.Image, ctx: c.RenderCtx, where: str) -> dict | None:
    ctx.foreign(p.extras, f"{where}.")
    if p.detail not in (None, "auto"):
        ctx.hint(f"{where}.detail", "Anthropic has no image detail setting")
    if p.data is not None:
        if p.media_type not in IMAGE_TYPES:
            ctx.unsupported(f"{where}.media_type", f"Anthropic images must be one of {sorted(IMAGE_TYPES)}")
            return None
        src = {"type": "base64", "media_type": p.media_type, "data": p.data}
    else:
        src = {"type": "url", "url": p.url}
    return c.splice({"type": "image", "source": src}, p.extras, P)


def _document(p: ir.Document, ctx: c.RenderCtx, where: str) -> dict | None:
    ctx.foreign(p.extras, f"{where}.")
    if p.data is not None and p.media_type == "text/plain":
        try:
            text = base64.b64decode(p.data, validate=True).decode()
        except ValueError:
            ctx.unsupported(f"{where}.data", "text/plain document data is not base64 UTF-8")
            return None
        src = {"type": "text", "media_type": "text/plain", "data": text}
    elif p.data is not None:
        if p.media_type != "application/pdf":
            ctx.unsupported(f"{where}.media_type", "Anthropic base64 documents must be application/pdf")
            return None
        src = {"type": "base64", "media_type": p.media_type, "data": p.data}
    elif p.text is not None:
        src = {"type": "text", "media_type": "text/plain", "data": p.text}
    else:
        src = {"type": "url", "url": p.url}
    out = {"type": "document", "source": src}
    if p.name is not None:
        out["title"] = p.name
    return c.splice(out, p.extras, P)


def _text(p: ir.Text, ctx: c.RenderCtx, where: str) -> dict:
    ctx.foreign(p.extras, f"{where}.")
    return _cached(c.splice({"type": "text", "text": p.text}, p.extras, P), p)


def _plain(parts: list) -> bool:
    return len(parts) == 1 and type(parts[0]) is ir.Text and not c.own(parts[0].extras, P) \
        and not c.cache_breakpoint(parts[0].extras)


def _cached(block, part):
    """`block` with `cache_control` where another Claude family (Bedrock's
    `cachePoint`) set a cache breakpoint on `part`."""
    if part.extras and type(block) is dict and "cache_control" not in block and c.cache_breakpoint(part.extras):
        block["cache_control"] = {"type": "ephemeral"}
    return block


def _blocks(parts: list, ctx: c.RenderCtx, where: str, role: str) -> list:
    out = []
    many = len(parts) > 1
    for j, p in enumerate(parts):
        t = type(p)
        w = f"{where}[{j}]"
        if t is ir.Text:
            if many and not p.text and not p.extras:
                continue    # Anthropic rejects empty text blocks; they carry nothing
            out.append(_text(p, ctx, w))
        elif t is ir.ToolCall:
            ctx.foreign(p.extras, f"{w}.")
            out.append(_cached(c.splice({"type": "tool_use", "id": fit_id(p.id), "name": p.name,
                                         "input": c.args_object(p, ctx, f"{w}.")}, p.extras, P), p))
        elif t is ir.ToolResult:
            ctx.foreign(p.extras, f"{w}.")
            b: dict = {"type": "tool_result", "tool_use_id": fit_id(p.id)}
            if p.content:
                if _plain(p.content):
                    ctx.foreign(p.content[0].extras, f"{w}.content[0].")
                    b["content"] = p.content[0].text
                else:
                    b["content"] = _blocks(p.content, ctx, f"{w}.content", "tool")
            if p.is_error:
                b["is_error"] = True
            out.append(_cached(c.splice(b, p.extras, P), p))
        elif t is ir.Image:
            x = _image(p, ctx, w)
            if x is not None:
                out.append(_cached(x, p))
        elif t is ir.Document:
            x = _document(p, ctx, w)
            if x is not None:
                out.append(_cached(x, p))
        elif t is ir.JsonData:
            out.append({"type": "text", "text": c.json_text(p.value)})
        elif t is ir.Refusal:
            out.append({"type": "text", "text": p.text})
        elif t is ir.Reasoning:
            if c.foreign_reasoning(p, ctx, w):
                continue
            ctx.foreign(p.extras, f"{w}.")
            out.append(c.splice({"type": "thinking", "thinking": p.text, "signature": p.signature or ""},
                                p.extras, P))
        elif t is ir.RedactedReasoning:
            if c.foreign_reasoning(p, ctx, w):
                continue
            out.append({"type": "redacted_thinking", "data": p.data})
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                out.append(raw)
    return out


def _render_messages(req: ir.Request, ctx: c.RenderCtx) -> list:
    """Messages with consecutive same-role turns merged (Anthropic requires
    alternation) and tool_result blocks first in their user turn."""
    out: list[dict] = []
    for i, m in enumerate(req.messages):
        if m.role == ir.SYSTEM:
            continue    # hoisted into `system` by c.system_texts
        where = f"messages[{i}]"
        ctx.foreign(m.extras, f"{where}.")
        if _plain(m.content):
            ctx.foreign(m.content[0].extras, f"{where}.content[0].")
            content = m.content[0].text
        else:
            content = _blocks(m.content, ctx, f"{where}.content", m.role)
            if not content and m.content:
                continue    # everything in it was dropped
        if out and out[-1]["role"] == m.role:
            prev = out[-1]
            prev["content"] = _as_blocks(prev["content"]) + _as_blocks(content)
        else:
            out.append({"role": m.role, "content": content})
        c.splice(out[-1], m.extras, P)
    for msg in out:
        blocks = msg["content"]
        if msg["role"] == ir.USER and type(blocks) is list:
            n = sum(1 for b in blocks if b.get("type") == "tool_result")
            if n and any(b.get("type") != "tool_result" for b in blocks[:n]):
                msg["content"] = ([b for b in blocks if b.get("type") == "tool_result"] +
                                  [b for b in blocks if b.get("type") != "tool_result"])
    return out


def _as_blocks(content) -> list:
    return [{"type": "text", "text": content}] if type(content) is str else content


def _render_tool(t: ir.Tool) -> dict:
    out: dict = {"name": t.name}
    if c.note(t.extras, P, "$custom"):
        out["type"] = "custom"
    if t.description is not None:
        out["description"] = t.description
    out["input_schema"] = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
    if t.strict is not None:
        out["strict"] = t.strict
    return _cached(c.splice(out, t.extras, P), t)


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    body: dict = {"model": model}
    system = c.system_texts(req, ctx)
    body["messages"] = _render_messages(req, ctx)
    if system:
        if _plain(system):
            ctx.foreign(system[0].extras, "system[0].")
            body["system"] = system[0].text
        else:
            body["system"] = [_text(p, ctx, f"system[{j}]") for j, p in enumerate(system)]
    cfg = req.reasoning
    budget = None
    output_config: dict = dict(c.note(req.extras, P, "$output_config") or {})
    if cfg is not None:
        thinking = None
        if c.reasoning_off(cfg):
            thinking = {"type": "disabled"}
        elif cfg.budget_tokens is not None:
            budget = max(MIN_BUDGET, cfg.budget_tokens)     # Anthropic's minimum
            thinking = {"type": "enabled", "budget_tokens": budget}
        elif cfg.enabled and (cfg.effort is None or c.note(req.extras, P, "$adaptive")):
            thinking = {"type": "adaptive"}
        if thinking is not None:
            display = c.note(req.extras, P, "$display")
            if display is not None and thinking["type"] != "disabled":
                thinking["display"] = display
            body["thinking"] = thinking
        if cfg.effort is not None and cfg.effort != "none":
            output_config["effort"] = cfg.effort if cfg.effort in EFFORTS else "low"
    max_tokens = req.max_tokens
    if max_tokens is None:
        max_tokens = max_tokens_default or DEFAULT_MAX_TOKENS
        if budget is not None and max_tokens <= budget:
            max_tokens = budget + DEFAULT_MAX_TOKENS
    body["max_tokens"] = max_tokens
    if req.tools:
        body["tools"] = c.render_tools(req.tools, ctx, _render_tool)
    tc = req.tool_choice
    if tc is not None or req.parallel_tool_calls is not None:
        mode = tc.mode if tc is not None else "auto"
        choice: dict = {"type": {"required": "any"}.get(mode, mode)}
        if mode == "tool":
            choice["name"] = tc.name
        if req.parallel_tool_calls is not None:
            if mode == "none":
                ctx.hint("parallel_tool_calls", "meaningless with tool_choice none")
            else:
                choice["disable_parallel_tool_use"] = not req.parallel_tool_calls
        body["tool_choice"] = choice
    c.write_sampling(req, body, SAMPLING, ctx, {"temperature": (1, "Anthropic accepts 0..1")})
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            output_config["format"] = {"type": "json_schema", "schema": rf.schema or {}}
        elif rf.type == "json_object":
            ctx.unsupported("response_format", "Anthropic structured output needs a JSON schema")
    if output_config:
        body["output_config"] = output_config
    if req.user is not None:
        body["metadata"] = {"user_id": req.user}
    if req.metadata:
        ctx.hint("metadata", "Anthropic metadata holds only user_id")
    if req.stream:
        body["stream"] = True
    ctx.foreign(req.extras, "")
    return c.splice(body, req.extras, P)


def render_usage(u: ir.Usage) -> dict:
    out = {"input_tokens": max(0, u.input_tokens - u.cached_tokens - u.cache_creation_tokens),
           "output_tokens": u.output_tokens,
           "cache_creation_input_tokens": u.cache_creation_tokens,
           "cache_read_input_tokens": u.cached_tokens}
    if u.reasoning_tokens:
        out["output_tokens_details"] = {"thinking_tokens": u.reasoning_tokens}
    return out


def _render_response(resp: ir.Response, model: str) -> dict:
    blocks = []
    for p in resp.content:
        t = type(p)
        if t is ir.Text or t is ir.Refusal:
            blocks.append(c.splice({"type": "text", "text": p.text}, p.extras, P))
        elif t is ir.ToolCall:
            blocks.append(c.splice({"type": "tool_use", "id": p.id, "name": p.name,
                                    "input": p.arguments}, p.extras, P))
        elif t is ir.Reasoning:
            blocks.append(c.splice({"type": "thinking", "thinking": p.text,
                                    "signature": c.sig_out(p, P) or ""}, p.extras, P))
        elif t is ir.RedactedReasoning:
            blocks.append({"type": "redacted_thinking", "data": c.sig_out(p, P)})
        elif t is ir.Opaque and p.protocol == P:
            blocks.append(p.raw)
        # images/documents in a response have no Messages block: dropped
    usage = render_usage(resp.usage)
    extra_usage = c.note(resp.extras, P, "$usage")
    if extra_usage:
        usage.update(extra_usage)
    body = {"id": resp.id or f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
            "model": model, "content": blocks, "stop_reason": STOP_OUT[resp.stop_reason],
            "stop_sequence": resp.stop_sequence, "usage": usage}
    return c.splice(body, resp.extras, P)


dialect = AnthropicDialect()


# ---------------------------------------------------------------------------
# streaming: Messages SSE <-> IR events (busbar.protocols.streaming)



_INPUT_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")


def usage_in(u: dict) -> ir.Usage:
    read = u.get("cache_read_input_tokens") or 0
    write = u.get("cache_creation_input_tokens") or 0
    details = u.get("output_tokens_details") or {}
    return ir.Usage((u.get("input_tokens") or 0) + read + write, u.get("output_tokens") or 0, read, write,
                    details.get("thinking_tokens") or 0)


class StreamDecoder(s.SSEDecoder):
    """Messages events -> IR.  The stop reason comes with message_delta; the
    MessageStop goes out at message_stop (or at the end of the body)."""

    __slots__ = ("_blocks", "_next", "_start_usage", "_stop", "_seq", "_tools", "_done")
    protocol = P

    def __init__(self):
        super().__init__()
        self._blocks: dict[int, int] = {}     # open blocks: wire index -> IR index
        self._next = 0
        self._start_usage: dict = {}          # message_start's usage, as sent
        self._stop: SR | None = None
        self._seq: str | None = None
        self._tools = False
        self._done = False

    def _event(self, name, data: bytes, out: list) -> None:
        if self._done or name == "ping":
            return
        obj = s.loads(data)
        kind = obj["type"]
        if kind == "content_block_delta":
            i = self._blocks.get(obj["index"])
            if i is None:
                return
            d = obj["delta"]
            dt = d["type"]
            if dt == "text_delta":
                out.append(ir.TextDelta(i, d["text"]))
            elif dt == "input_json_delta":
                if d["partial_json"]:
                    out.append(ir.ToolArgsDelta(i, d["partial_json"]))
            elif dt == "thinking_delta":
                out.append(ir.ReasoningDelta(i, d["thinking"]))
            elif dt == "signature_delta":
                out.append(ir.SignatureDelta(i, d["signature"]))
            # citations_delta: no IR form
        elif kind == "content_block_start":
            b = obj["content_block"]
            bt = b["type"]
            if bt == "text":
                part = ir.Text("")
            elif bt == "tool_use":
                part = ir.ToolCall(b["id"], b["name"], {})
                self._tools = True
            elif bt == "thinking":
                part = ir.Reasoning("", None, P)
            elif bt == "redacted_thinking":
                part = ir.RedactedReasoning(b["data"], P)
            else:
                return          # server tools, their results...: no IR form
            i = self._blocks[obj["index"]] = self._next
            self._next += 1
            out.append(ir.BlockStart(i, part))
            if bt == "text" and b.get("text"):
                out.append(ir.TextDelta(i, b["text"]))
            elif bt == "thinking":
                if b.get("thinking"):
                    out.append(ir.ReasoningDelta(i, b["thinking"]))
                if b.get("signature"):
                    out.append(ir.SignatureDelta(i, b["signature"]))
        elif kind == "content_block_stop":
            i = self._blocks.pop(obj["index"], None)
            if i is not None:
                out.append(ir.BlockStop(i))
        elif kind == "message_delta":
            d = obj.get("delta") or {}
            stop = STOP_IN.get(d.get("stop_reason"), SR.END_TURN)
            self._stop = SR.TOOL_USE if stop is SR.END_TURN and self._tools else stop
            self._seq = d.get("stop_sequence")
            u = obj.get("usage")
            if u:
                # cumulative; input-side fields it omits keep their message_start values
                merged = dict(u)
                for key in _INPUT_USAGE:
                    if merged.get(key) is None and key in self._start_usage:
                        merged[key] = self._start_usage[key]
                out.append(ir.UsageEvent(usage_in(merged)))
        elif kind == "message_start":
            m = obj["message"]
            u = m.get("usage")
            self._start_usage = u or {}
            out.append(ir.MessageStart(m.get("id") or "", m.get("model") or "", usage_in(u) if u else None))
        elif kind == "message_stop":
            self._end(out)
        elif kind == "error":
            self._done = True
            err = obj.get("error") or {}
            out.append(s.error_event(dialect, ERRORS.status_of(err.get("type")),
                                     str(err.get("message") or "upstream stream error"), err.get("type"), data))
        # ping and unknown events: nothing

    def _end(self, out: list) -> None:
        if self._done:
            return
        if self._stop is None:
            raise StreamError("Messages stream ended before message_delta (truncated)")
        for i in self._blocks.values():
            out.append(ir.BlockStop(i))
        self._blocks.clear()
        self._done = True
        out.append(ir.MessageStop(self._stop, self._seq))


_DELTA = b'event: content_block_delta\ndata: {"type":"content_block_delta","index":'
_TEXT_DELTA = b',"delta":{"type":"text_delta","text":'
_JSON_DELTA = b',"delta":{"type":"input_json_delta","partial_json":'
_THINK_DELTA = b',"delta":{"type":"thinking_delta","thinking":'
_SIG_DELTA = b',"delta":{"type":"signature_delta","signature":'
_B_TEXT, _B_TOOL, _B_THINK, _B_OTHER = 1, 2, 3, 4


@s.handlers
class StreamEncoder(s.Encoder):
    """IR -> Messages events.  Block indexes are renumbered 0, 1 ... in order
    (the SDK's accumulator indexes its content list with them); deltas are
    spliced into byte templates; message_delta carries the stop reason with
    the last usage."""

    __slots__ = ("_model", "_started", "_blocks", "_next", "_usage")

    def __init__(self, model: str):
        super().__init__()
        self._model = model
        self._started = False
        self._blocks: dict[int, tuple] = {}   # IR index -> (wire index bytes, kind, origin)
        self._next = 0
        self._usage: ir.Usage | None = None

    def _on_MessageStart(self, ev: ir.MessageStart) -> bytes:
        self._started = True
        if ev.usage is not None:
            self._usage = ev.usage
        msg = {"id": ev.id or f"msg_{uuid.uuid4().hex}", "type": "message", "role": "assistant",
               "model": self._model, "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": render_usage(ev.usage or ir.Usage())}
        return b"event: message_start\ndata: " + s.dumps({"type": "message_start", "message": msg}) + b"\n\n"

    def _on_BlockStart(self, ev: ir.BlockStart) -> bytes:
        out = self._ensure_started()
        part = ev.part
        t = type(part)
        origin = None
        if t is ir.Text or t is ir.Refusal:
            kind, block = _B_TEXT, {"type": "text", "text": ""}
        elif t is ir.ToolCall:
            kind, block = _B_TOOL, {"type": "tool_use", "id": fit_id(part.id), "name": part.name, "input": {}}
        elif t is ir.Reasoning:
            kind, block, origin = _B_THINK, {"type": "thinking", "thinking": "", "signature": ""}, part.origin
        elif t is ir.RedactedReasoning:
            kind, block = _B_OTHER, {"type": "redacted_thinking", "data": c.sig_out(part, P)}
        else:
            return out
        k = self._next
        self._next += 1
        wire = str(k).encode()
        self._blocks[ev.index] = (wire, kind, origin)
        return out + (b'event: content_block_start\ndata: {"type":"content_block_start","index":' + wire
                      + b',"content_block":' + s.dumps(block) + b"}\n\n")

    def _on_TextDelta(self, ev: ir.TextDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[1] != _B_TEXT or not ev.text:
            return b""
        return _DELTA + b[0] + _TEXT_DELTA + s.dumps(ev.text) + b"}}\n\n"

    def _on_ToolArgsDelta(self, ev: ir.ToolArgsDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[1] != _B_TOOL or not ev.partial_json:
            return b""
        return _DELTA + b[0] + _JSON_DELTA + s.dumps(ev.partial_json) + b"}}\n\n"

    def _on_ReasoningDelta(self, ev: ir.ReasoningDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[1] != _B_THINK or not ev.text:
            return b""
        return _DELTA + b[0] + _THINK_DELTA + s.dumps(ev.text) + b"}}\n\n"

    def _on_SignatureDelta(self, ev: ir.SignatureDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[1] != _B_THINK:
            return b""
        sig = c.sig_out(ir.Reasoning("", ev.signature, b[2]), P)
        return _DELTA + b[0] + _SIG_DELTA + s.dumps(sig) + b"}}\n\n"

    def _on_BlockStop(self, ev: ir.BlockStop) -> bytes:
        b = self._blocks.pop(ev.index, None)
        if b is None:
            return b""
        return (b'event: content_block_stop\ndata: {"type":"content_block_stop","index":' + b[0]
                + b"}\n\n")

    def _on_UsageEvent(self, ev: ir.UsageEvent) -> bytes:
        self._usage = ev.usage
        return b""

    def _on_MessageStop(self, ev: ir.MessageStop) -> bytes:
        out = self._ensure_started() + self._stop_open_blocks()
        delta = {"type": "message_delta",
                 "delta": {"stop_reason": STOP_OUT[ev.stop_reason], "stop_sequence": ev.stop_sequence},
                 "usage": render_usage(self._usage or ir.Usage())}
        return (out + b"event: message_delta\ndata: " + s.dumps(delta)
                + b'\n\nevent: message_stop\ndata: {"type":"message_stop"}\n\n')

    def _error(self, kind: str, message: str) -> bytes:
        etype = ERRORS.row(kind, "api_error").type
        return b"event: error\ndata: " + s.dumps({"type": "error", "error": {"type": etype, "message": message}}) + b"\n\n"


AnthropicDialect.codec = Codec(_parse_request, _render_request, _parse_response, _render_response,
                               StreamDecoder, StreamEncoder, usage_in)
