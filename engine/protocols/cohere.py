"""Cohere v2 Chat (`POST {base}/v2/chat`).

Errors are `{"message": ...}` with the meaning in the HTTP status (the SDK
raises BadRequestError, UnauthorizedError, TooManyRequestsError ... by status).
"""
from __future__ import annotations

import uuid

import orjson

from engine import ir
from engine.faults import ClientError
from engine.protocols import common as c
from engine.protocols.base import KIND_STATUS, Dialect, Headers

P = "cohere"
SR = ir.StopReason

_REQUEST_KEYS = frozenset({
    "model", "messages", "tools", "strict_tools", "response_format", "max_tokens", "stop_sequences",
    "temperature", "seed", "frequency_penalty", "presence_penalty", "k", "p", "tool_choice",
    "thinking", "stream"})
_MSG_KEYS = frozenset({"role", "content", "tool_calls", "tool_plan", "tool_call_id"})
_TEXT_KEYS = frozenset({"type", "text"})
_IMAGE_KEYS = frozenset({"type", "image_url"})
_CALL_KEYS = frozenset({"id", "type", "function"})
_FUNC_KEYS = frozenset({"name", "description", "parameters"})
_RESPONSE_KEYS = frozenset({"id", "finish_reason", "message", "usage"})

FINISH_IN = {"COMPLETE": SR.END_TURN, "STOP_SEQUENCE": SR.STOP_SEQUENCE, "MAX_TOKENS": SR.MAX_TOKENS,
             "TOOL_CALL": SR.TOOL_USE, "ERROR": SR.OTHER, "TIMEOUT": SR.OTHER}
FINISH_OUT = {SR.END_TURN: "COMPLETE", SR.STOP_SEQUENCE: "STOP_SEQUENCE", SR.MAX_TOKENS: "MAX_TOKENS",
              SR.TOOL_USE: "TOOL_CALL", SR.CONTENT_FILTER: "ERROR", SR.REFUSAL: "COMPLETE",
              SR.PAUSE: "COMPLETE", SR.CONTEXT_WINDOW: "MAX_TOKENS", SR.OTHER: "ERROR"}


class CohereDialect(Dialect):
    name = "cohere"
    kind_status = {**KIND_STATUS, "request_too_large": 400}

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        return err.status, self.error_headers(err), orjson.dumps({"message": err.message})

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/v2/chat"

    def error_message(self, obj) -> tuple[str, str | None]:
        if isinstance(obj, dict):
            message = obj.get("message")
            if message is None and isinstance(obj.get("error"), dict):
                message = obj["error"].get("message")
            return str(message or ""), None
        return "", None

    # ---- translation -----------------------------------------------------
    def parse_request(self, obj: dict, params: dict | None = None) -> ir.Request:
        try:
            return _parse_request(obj)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, ClientError):
                raise
            raise ClientError(400, f"Malformed v2 chat request: {exc!r}") from None

    def render_request(self, req: ir.Request, model: str, *, max_tokens_default: int | None = None,
                       unsupported: str = "reject") -> tuple[bytes, list[str]]:
        ctx = c.RenderCtx(P, unsupported)
        return orjson.dumps(_render_request(req, model, max_tokens_default, ctx)), ctx.warnings

    def parse_response(self, obj: dict) -> ir.Response:
        return _parse_response(obj)

    def render_response(self, resp: ir.Response, model: str) -> bytes:
        return orjson.dumps(_render_response(resp, model))


# ---------------------------------------------------------------------------
# parsing


def _parts(content) -> list:
    if isinstance(content, str):
        return [ir.Text(content)]
    out: list = []
    for p in content:
        kind = p.get("type")
        if kind == "text":
            out.append(ir.Text(p["text"], c.extras_of(p, _TEXT_KEYS, P)))
        elif kind == "image_url":
            iu = p["image_url"]
            url, data, media_type = c.image_parts_from_url(iu["url"])
            out.append(ir.Image(url, data, media_type, iu.get("detail"), c.extras_of(p, _IMAGE_KEYS, P)))
        elif kind == "thinking":
            out.append(ir.Reasoning(p["thinking"], None, P))
        elif kind == "document":
            doc = p["document"]
            ext = c.extras_of(doc, {"data"}, P)
            out.append(ir.JsonData(doc["data"], ext))
        else:
            out.append(ir.Opaque(P, str(kind), p))
    return out


def _tool_plan(text: str) -> ir.Text:
    return ir.Text(text, {P: {"$tool_plan": True}})


def _calls(calls) -> list:
    out = []
    for call in calls or ():
        fn = call.get("function") or {}
        args, raw = c.args_from_str(fn.get("arguments"))
        out.append(ir.ToolCall(call["id"], fn.get("name", ""), args, raw, c.extras_of(call, _CALL_KEYS, P)))
    return out


def _parse_request(obj: dict) -> ir.Request:
    system: list = []
    out: list[ir.Message] = []
    tool_turn = None
    for i, m in enumerate(c.require_list(obj, "messages")):
        role = m["role"]
        ext = c.extras_of(m, _MSG_KEYS, P)
        if role == "tool":
            result = ir.ToolResult(m["tool_call_id"], _parts(m["content"]), extras=ext)
            if tool_turn is None:
                tool_turn = ir.Message(ir.USER, [])
                out.append(tool_turn)
            tool_turn.content.append(result)
            continue
        tool_turn = None
        if role == "system":
            parts = _parts(m["content"])
            if not out:
                system.extend(parts)
            else:
                out.append(ir.Message(ir.SYSTEM, parts, ext))
        elif role == "user":
            out.append(ir.Message(ir.USER, _parts(m["content"]), ext))
        elif role == "assistant":
            parts = _parts(m["content"]) if m.get("content") is not None else []
            if m.get("tool_plan") is not None:
                parts.append(_tool_plan(m["tool_plan"]))
            parts.extend(_calls(m.get("tool_calls")))
            out.append(ir.Message(ir.ASSISTANT, parts, ext))
        else:
            raise c.bad(f"messages[{i}].role", f"unknown role {role!r}")
    req = ir.Request(out, system)
    req.max_tokens = obj.get("max_tokens")
    req.temperature = obj.get("temperature")
    req.top_p = obj.get("p")
    req.top_k = obj.get("k")
    req.seed = obj.get("seed")
    req.frequency_penalty = obj.get("frequency_penalty")
    req.presence_penalty = obj.get("presence_penalty")
    if obj.get("stop_sequences") is not None:
        req.stop = list(obj["stop_sequences"])
    req.stream = obj.get("stream") is True
    strict = obj.get("strict_tools")
    for t in obj.get("tools") or ():
        if t.get("type", "function") == "function":
            f = t["function"]
            req.tools.append(ir.Tool(f["name"], f.get("parameters"), f.get("description"), strict,
                                     c.extras_of(f, _FUNC_KEYS, P)))
        else:
            req.tools.append(ir.Opaque(P, str(t.get("type")), t))
    extras = c.extras_of(obj, _REQUEST_KEYS, P) or {}
    if strict is not None and not req.tools:
        extras.setdefault(P, {})["strict_tools"] = strict
    tc = obj.get("tool_choice")
    if tc is not None:
        mode = {"REQUIRED": "required", "NONE": "none"}.get(tc)
        if mode is None:
            extras.setdefault(P, {})["tool_choice"] = tc
        else:
            req.tool_choice = ir.ToolChoice(mode)
    rf = obj.get("response_format")
    if rf is not None:
        if rf.get("type") == "json_object":
            schema = rf.get("json_schema")
            req.response_format = ir.ResponseFormat("json_schema", schema) if schema is not None \
                else ir.ResponseFormat("json_object")
        else:
            req.response_format = ir.ResponseFormat(rf.get("type", "text"))
    th = obj.get("thinking")
    if th is not None:
        req.reasoning = ir.ReasoningConfig(enabled=th.get("type") != "disabled",
                                           budget_tokens=th.get("token_budget"))
    req.extras = extras or None
    return req


# ---------------------------------------------------------------------------
# rendering


def _plain(parts: list) -> bool:
    return len(parts) == 1 and type(parts[0]) is ir.Text and not c.own(parts[0].extras, P)


def _content(parts: list, ctx: c.RenderCtx, where: str, role: str):
    if _plain(parts):
        ctx.foreign(parts[0].extras, f"{where}[0].")
        return parts[0].text
    out = []
    for j, p in enumerate(parts):
        t = type(p)
        w = f"{where}[{j}]"
        if t is ir.Text or t is ir.Refusal:
            ctx.foreign(p.extras, f"{w}.")
            out.append(c.splice({"type": "text", "text": p.text}, p.extras, P))
        elif t is ir.Image and role == "user":
            ctx.foreign(p.extras, f"{w}.")
            iu = {"url": c.image_url(p)}
            if p.detail is not None:
                iu["detail"] = p.detail
            out.append(c.splice({"type": "image_url", "image_url": iu}, p.extras, P))
        elif t is ir.JsonData:
            if role == "tool" and isinstance(p.value, dict):
                out.append({"type": "document", "document": c.splice({"data": p.value}, p.extras, P)})
            else:
                out.append({"type": "text", "text": c.json_text(p.value)})
        elif t is ir.Reasoning and role == "assistant":
            if p.origin not in (None, P):
                ctx.hint(w, f"{p.origin} reasoning cannot be replayed to cohere")
                continue
            out.append({"type": "thinking", "thinking": p.text})
        elif t is ir.RedactedReasoning or t is ir.Reasoning:
            ctx.hint(w, "Cohere has no redacted reasoning")
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                out.append(raw)
        else:
            ctx.unsupported(w, f"{c.part_kind(p)} in a {role} message")
    return out


def _render_assistant(m: ir.Message, ctx: c.RenderCtx, where: str) -> dict:
    content: list = []
    calls: list = []
    plan = None
    for j, p in enumerate(m.content):
        t = type(p)
        if t is ir.ToolCall:
            ctx.foreign(p.extras, f"{where}.content[{j}].")
            calls.append(c.splice({"id": p.id, "type": "function",
                                   "function": {"name": p.name, "arguments": c.args_to_str(p)}}, p.extras, P))
        elif t is ir.Text and c.note(p.extras, P, "$tool_plan"):
            plan = p.text if plan is None else plan + p.text
        else:
            content.append(p)
    out: dict = {"role": "assistant"}
    if content:
        out["content"] = _content(content, ctx, f"{where}.content", "assistant")
    if plan is not None:
        out["tool_plan"] = plan
    if calls:
        out["tool_calls"] = calls
    return out


def _render_messages(req: ir.Request, ctx: c.RenderCtx) -> list:
    msgs: list = []
    if req.system:
        msgs.append({"role": "system", "content": _content(req.system, ctx, "system", "system")})
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        ctx.foreign(m.extras, f"{where}.")
        if m.role == ir.ASSISTANT:
            msgs.append(c.splice(_render_assistant(m, ctx, where), m.extras, P))
        elif m.role == ir.SYSTEM:
            msgs.append(c.splice({"role": "system", "content": _content(m.content, ctx, f"{where}.content", "system")},
                                 m.extras, P))
        else:
            pending: list = []
            for j, p in enumerate(m.content):
                if type(p) is ir.ToolResult:
                    if pending:
                        msgs.append(c.splice({"role": "user", "content": _content(pending, ctx, f"{where}.content", "user")}, m.extras, P))
                        pending = []
                    w = f"{where}.content[{j}]"
                    ctx.foreign(p.extras, f"{w}.")
                    if p.is_error:
                        ctx.hint(f"{w}.is_error", "Cohere tool messages have no error flag")
                    msgs.append(c.splice({"role": "tool", "tool_call_id": p.id,
                                          "content": _content(p.content, ctx, f"{w}.content", "tool") if p.content else ""},
                                         p.extras, P))
                else:
                    pending.append(p)
            if pending or not m.content:
                msgs.append(c.splice({"role": "user", "content": _content(pending, ctx, f"{where}.content", "user")}, m.extras, P))
    return msgs


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    body: dict = {"model": model, "messages": _render_messages(req, ctx)}
    if req.tools:
        tools = []
        stricts = set()
        for i, t in enumerate(req.tools):
            if type(t) is ir.Opaque:
                raw = ctx.opaque(t, f"tools[{i}].")
                if raw is not None:
                    tools.append(raw)
                continue
            ctx.foreign(t.extras, f"tools[{i}].")
            f: dict = {"name": t.name}
            if t.description is not None:
                f["description"] = t.description
            f["parameters"] = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
            tools.append({"type": "function", "function": c.splice(f, t.extras, P)})
            stricts.add(t.strict)
        body["tools"] = tools
        if len(stricts) == 1 and (strict := stricts.pop()) is not None:
            body["strict_tools"] = strict
        elif True in stricts:
            ctx.hint("tools.strict", "Cohere's strict_tools applies to all tools or none")
    tc = req.tool_choice
    if tc is not None:
        if tc.mode == "required":
            body["tool_choice"] = "REQUIRED"
        elif tc.mode == "none":
            body["tool_choice"] = "NONE"
        elif tc.mode == "tool":
            ctx.unsupported("tool_choice", "Cohere cannot force a specific tool")
    if req.parallel_tool_calls is False:
        ctx.unsupported("parallel_tool_calls", "Cohere cannot disable parallel tool calls")
    max_tokens = req.max_tokens if req.max_tokens is not None else max_tokens_default
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["p"] = req.top_p
    if req.top_k is not None:
        body["k"] = req.top_k
    if req.seed is not None:
        body["seed"] = req.seed
    if req.frequency_penalty is not None:
        body["frequency_penalty"] = req.frequency_penalty
    if req.presence_penalty is not None:
        body["presence_penalty"] = req.presence_penalty
    if req.stop is not None:
        body["stop_sequences"] = req.stop
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            body["response_format"] = {"type": "json_object", "json_schema": rf.schema or {}}
        else:
            body["response_format"] = {"type": rf.type}
    cfg = req.reasoning
    if cfg is not None:
        if c.reasoning_off(cfg):
            body["thinking"] = {"type": "disabled"}
        else:
            th: dict = {"type": "enabled"}
            budget = c.budget_for(cfg)
            if budget is not None:
                th["token_budget"] = budget
            body["thinking"] = th
    if req.stream:
        body["stream"] = True
    if req.user is not None:
        ctx.hint("user", "Cohere has no end-user field")
    if req.metadata:
        ctx.hint("metadata", "Cohere has no request metadata")
    ctx.foreign(req.extras, "")
    return c.splice(body, req.extras, P)


# ---------------------------------------------------------------------------
# responses


def _parse_response(obj: dict) -> ir.Response:
    msg = obj.get("message") or {}
    content = _parts(msg.get("content") or [])
    if msg.get("tool_plan"):
        content.append(_tool_plan(msg["tool_plan"]))
    content.extend(_calls(msg.get("tool_calls")))
    stop = c.infer_stop(content, FINISH_IN.get(obj.get("finish_reason"), SR.END_TURN))
    u = obj.get("usage") or {}
    tokens = u.get("tokens") or u.get("billed_units") or {}
    usage = ir.Usage(int(tokens.get("input_tokens") or 0), int(tokens.get("output_tokens") or 0),
                     int(u.get("cached_tokens") or 0))
    extras = c.extras_of(obj, _RESPONSE_KEYS, P)
    if u.get("billed_units") is not None:
        extras = c.with_note(extras, P, "$billed", u["billed_units"])
    rest = {k: v for k, v in msg.items() if k not in ("role", "content", "tool_plan", "tool_calls")}
    if rest:
        extras = c.with_note(extras, P, "$message", rest)
    return ir.Response(obj.get("id") or "", "", content, stop, None, usage, extras)


def render_usage(u: ir.Usage, billed: dict | None) -> dict:
    out: dict = {"billed_units": billed or {"input_tokens": u.input_tokens - u.cached_tokens,
                                            "output_tokens": u.output_tokens},
                 "tokens": {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}}
    if u.cached_tokens:
        out["cached_tokens"] = u.cached_tokens
    return out


def _render_response(resp: ir.Response, model: str) -> dict:
    content: list = []
    calls: list = []
    plan = None
    for p in resp.content:
        t = type(p)
        if t is ir.Text and c.note(p.extras, P, "$tool_plan"):
            plan = p.text if plan is None else plan + p.text
        elif t is ir.Text or t is ir.Refusal:
            content.append(c.splice({"type": "text", "text": p.text}, p.extras, P))
        elif t is ir.Reasoning:
            content.append({"type": "thinking", "thinking": p.text})
        elif t is ir.ToolCall:
            calls.append(c.splice({"id": p.id, "type": "function",
                                   "function": {"name": p.name, "arguments": c.args_to_str(p)}}, p.extras, P))
        elif t is ir.Opaque and p.protocol == P:
            content.append(p.raw)
    msg: dict = {"role": "assistant", "content": content}
    if plan is not None:
        msg["tool_plan"] = plan
    if calls:
        msg["tool_calls"] = calls
    extra_msg = c.note(resp.extras, P, "$message")
    if extra_msg:
        msg.update(extra_msg)
    body = {"id": resp.id or str(uuid.uuid4()), "finish_reason": FINISH_OUT[resp.stop_reason],
            "message": msg, "usage": render_usage(resp.usage, c.note(resp.extras, P, "$billed"))}
    return c.splice(body, resp.extras, P)


dialect = CohereDialect()
