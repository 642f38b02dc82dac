"""Cohere v2 Chat (`POST {base}/v2/chat`).

Errors are `{"message": ...}` with the meaning in the HTTP status (the SDK
raises BadRequestError, UnauthorizedError, TooManyRequestsError ... by status).
"""
from __future__ import annotations

import uuid

import orjson

from busbar import ir
from busbar.faults import ClientError
from busbar.protocols import common as c
from busbar.protocols import streaming as s
from busbar.protocols.base import Codec, ErrorRow, ErrorTable, Dialect, Headers, StreamError

P = "cohere"
# sampling knobs: IR field -> this dialect's name (None: it has none)
SAMPLING = {"temperature": "temperature", "top_p": "p", "top_k": "k", "seed": "seed",
            "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty", "stop": "stop_sequences"}
SR = ir.StopReason

_REQUEST_KEYS = frozenset({
    "model", "messages", "tools", "strict_tools", "response_format", "max_tokens", "stop_sequences",
    "temperature", "seed", "frequency_penalty", "presence_penalty", "k", "p", "tool_choice",
    "thinking", "stream"})
_MSG_KEYS = frozenset({"role", "content", "tool_calls", "tool_plan", "tool_call_id"})
_TEXT_KEYS = frozenset({"type", "text"})
_CALL_KEYS = frozenset({"id", "type", "function"})
_FUNC_KEYS = frozenset({"name", "description", "parameters"})
_RESPONSE_KEYS = frozenset({"id", "finish_reason", "message", "usage"})

FINISH_IN = {"COMPLETE": SR.END_TURN, "STOP_SEQUENCE": SR.STOP_SEQUENCE, "MAX_TOKENS": SR.MAX_TOKENS,
             "TOOL_CALL": SR.TOOL_USE, "ERROR": SR.OTHER, "TIMEOUT": SR.OTHER}
FINISH_OUT = {SR.END_TURN: "COMPLETE", SR.STOP_SEQUENCE: "STOP_SEQUENCE", SR.MAX_TOKENS: "MAX_TOKENS",
              SR.TOOL_USE: "TOOL_CALL", SR.CONTENT_FILTER: "ERROR", SR.REFUSAL: "COMPLETE",
              SR.PAUSE: "COMPLETE", SR.CONTEXT_WINDOW: "MAX_TOKENS", SR.OTHER: "ERROR"}


# The error vocabulary: Cohere errors are `{"message"}` with a status and
# no type name (a stream's error is message-end's `delta.error`, no status).
ERRORS = ErrorTable("cohere", {
    "invalid_request": ErrorRow(400), "authentication": ErrorRow(401), "permission": ErrorRow(403),
    "not_found": ErrorRow(404), "request_too_large": ErrorRow(400), "rate_limit": ErrorRow(429),
    "billing": ErrorRow(402), "overloaded": ErrorRow(503), "api_error": ErrorRow(500),
    "upstream": ErrorRow(502), "timeout": ErrorRow(504),
})


class CohereDialect(Dialect):
    name = "cohere"
    # request_id_header: none; cohere-python reads no request-id header (only raw `headers`)
    json_fields = ("response_format",)
    vision_markers = (b'"image_url"',)
    request_name = "v2 chat request"
    body_shape = {"model": (str,), "stream": (bool,), "messages": (list,), "tools": (list,)}
    kind_status = ERRORS.status
    carries_signed_reasoning = False

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
            out.append(c.parse_image_url_part(p, P))
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
    c.read_sampling(obj, req, SAMPLING)
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
            out.append(c.render_image_url_part(p, P, ctx, w))
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
            msg = _render_assistant(m, ctx, where)
            if len(msg) > 1 or not m.content:
                msgs.append(c.splice(msg, m.extras, P))
        elif m.role == ir.SYSTEM:
            msgs.append(c.splice({"role": "system", "content": _content(m.content, ctx, f"{where}.content", "system")},
                                 m.extras, P))
        else:
            def tool_message(p: ir.ToolResult, w: str) -> dict:
                if p.is_error:
                    ctx.hint(f"{w}.is_error", "Cohere tool messages have no error flag")
                return {"role": "tool", "tool_call_id": p.id,
                        "content": _content(p.content, ctx, f"{w}.content", "tool") if p.content else ""}
            msgs.extend(c.chat_user_turn(m, where, ctx, P, lambda parts, w: _content(parts, ctx, w, "user"),
                                         tool_message))
    return msgs


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    body: dict = {"model": model, "messages": _render_messages(req, ctx)}
    if req.tools:
        tools = []
        stricts = set()
        for i, t in c.each_tool(req.tools, ctx, tools):
            f: dict = {"name": t.name}
            if t.description is not None:
                f["description"] = t.description
            f["parameters"] = t.parameters if t.parameters is not None else {"type": "object", "properties": {}}
            tools.append({"type": "function", "function": c.splice(f, t.extras, P)})
            stricts.add(t.strict)
        body["tools"] = tools
        if stricts == {True}:
            body["strict_tools"] = True
        elif True in stricts:
            ctx.hint("tools.strict", "Cohere's strict_tools applies to all tools or none")
        elif False in stricts:
            body["strict_tools"] = False
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
    c.write_sampling(req, body, SAMPLING, ctx)
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
    usage = usage_in(u)
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


# ---------------------------------------------------------------------------
# streaming: v2 chat SSE <-> IR events (busbar.protocols.streaming)



def usage_in(u: dict) -> ir.Usage:
    tokens = u.get("tokens") or u.get("billed_units") or {}
    return ir.Usage(int(tokens.get("input_tokens") or 0), int(tokens.get("output_tokens") or 0),
                    int(u.get("cached_tokens") or 0))


class StreamDecoder(s.SSEDecoder):
    """v2 chat events -> IR.  content-* and tool-call-* map one to one (their
    indexes are separate namespaces); tool-plan-delta text is a Text block
    marked as the tool plan (like the buffered parse), closed when the first
    tool call starts; message-end carries usage and the finish reason, or an
    error."""

    __slots__ = ("_content", "_calls", "_plan", "_next", "_tools", "_done")
    protocol = P

    def __init__(self):
        super().__init__()
        self._content: dict[int, list] = {}   # open content blocks: index -> [IR index, is thinking]
        self._calls: dict[int, int] = {}      # open tool calls: index -> IR index
        self._plan = -1                       # the open tool-plan block
        self._next = 0
        self._tools = False
        self._done = False

    def _start(self, part, out: list) -> int:
        i = self._next
        self._next += 1
        out.append(ir.BlockStart(i, part))
        return i

    def _end_plan(self, out: list) -> None:
        if self._plan >= 0:
            out.append(ir.BlockStop(self._plan))
            self._plan = -1

    def _event(self, name, data: bytes, out: list) -> None:
        if self._done or data == b"[DONE]":
            return
        obj = s.loads(data)
        kind = obj["type"]
        if kind == "content-delta":
            b = self._content.get(obj["index"])
            if b is None:      # lenient: content never announced by content-start
                self._end_plan(out)
                b = self._content[obj["index"]] = [self._start(ir.Text(""), out), False]
            content = obj["delta"]["message"]["content"]
            if b[1]:
                text = content.get("thinking")
                if text:
                    out.append(ir.ReasoningDelta(b[0], text))
            else:
                text = content.get("text")
                if text:
                    out.append(ir.TextDelta(b[0], text))
        elif kind == "tool-call-delta":
            i = self._calls.get(obj["index"])
            if i is not None:
                args = ((obj["delta"]["message"].get("tool_calls") or {}).get("function") or {}).get("arguments")
                if args:
                    out.append(ir.ToolArgsDelta(i, args))
        elif kind == "tool-plan-delta":
            text = obj["delta"]["message"].get("tool_plan")
            if text:
                if self._plan < 0:
                    self._plan = self._start(ir.Text("", {P: {"$tool_plan": True}}), out)
                out.append(ir.TextDelta(self._plan, text))
        elif kind == "content-start":
            self._end_plan(out)
            content = ((obj.get("delta") or {}).get("message") or {}).get("content") or {}
            thinking = content.get("type") == "thinking"
            i = self._start(ir.Reasoning("", None, P) if thinking else ir.Text(""), out)
            self._content[obj["index"]] = [i, thinking]
            text = content.get("thinking" if thinking else "text")
            if text:
                out.append((ir.ReasoningDelta if thinking else ir.TextDelta)(i, text))
        elif kind == "content-end":
            b = self._content.pop(obj["index"], None)
            if b is not None:
                out.append(ir.BlockStop(b[0]))
        elif kind == "tool-call-start":
            self._end_plan(out)
            call = obj["delta"]["message"]["tool_calls"]
            fn = call.get("function") or {}
            self._tools = True
            i = self._calls[obj["index"]] = self._start(ir.ToolCall(call.get("id") or "", fn.get("name") or "", {}), out)
            if fn.get("arguments"):
                out.append(ir.ToolArgsDelta(i, fn["arguments"]))
        elif kind == "tool-call-end":
            i = self._calls.pop(obj["index"], None)
            if i is not None:
                out.append(ir.BlockStop(i))
        elif kind == "message-start":
            out.append(ir.MessageStart(obj.get("id") or "", ""))
        elif kind == "message-end":
            d = obj.get("delta") or {}
            self._close_all(out)
            self._done = True
            if d.get("error"):
                message = str(d["error"])
                out.append(s.error_event(dialect, 500, message, d.get("finish_reason"),
                                         orjson.dumps({"message": message})))
                return
            if d.get("usage"):
                out.append(ir.UsageEvent(usage_in(d["usage"])))
            stop = FINISH_IN.get(d.get("finish_reason"), SR.END_TURN)
            out.append(ir.MessageStop(SR.TOOL_USE if stop is SR.END_TURN and self._tools else stop))
        # citation-start/end, debug: no IR form

    def _close_all(self, out: list) -> None:
        self._end_plan(out)
        for b in self._content.values():
            out.append(ir.BlockStop(b[0]))
        for i in self._calls.values():
            out.append(ir.BlockStop(i))
        self._content.clear()
        self._calls.clear()

    def _end(self, out: list) -> None:
        if not self._done:
            raise StreamError("Cohere stream ended before message-end (truncated)")


_B_TEXT, _B_THINK, _B_PLAN, _B_TOOL = 1, 2, 3, 4


@s.handlers
class StreamEncoder(s.Encoder):
    """IR -> v2 chat events.  Text and thinking blocks are content-start /
    content-delta / content-end (one content index each); a Text block marked
    as the tool plan becomes tool-plan-delta events; tool calls are
    tool-call-start / delta / end with their own index; message-end carries
    the finish reason and usage."""

    __slots__ = ("_id", "_blocks", "_ncontent", "_ncalls", "_usage", "_started")

    def __init__(self, model: str):
        super().__init__()
        self._id = ""
        self._started = False
        self._blocks: dict[int, tuple] = {}    # IR index -> (kind, index bytes)
        self._ncontent = 0
        self._ncalls = 0
        self._usage: ir.Usage | None = None

    def _on_MessageStart(self, ev: ir.MessageStart) -> bytes:
        self._started = True
        self._id = ev.id or str(uuid.uuid4())
        if ev.usage is not None:
            self._usage = ev.usage
        return b"data: " + s.dumps({"type": "message-start", "id": self._id, "delta": {"message": {
            "role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}) + b"\n\n"

    def _on_BlockStart(self, ev: ir.BlockStart) -> bytes:
        out = self._ensure_started()
        part = ev.part
        t = type(part)
        if t is ir.Text and c.note(part.extras, P, "$tool_plan"):
            self._blocks[ev.index] = (_B_PLAN, b"")
            return out
        if t is ir.Text or t is ir.Refusal or t is ir.Reasoning:
            k = str(self._ncontent).encode()
            self._ncontent += 1
            kind = _B_THINK if t is ir.Reasoning else _B_TEXT
            self._blocks[ev.index] = (kind, k)
            content = b'{"type":"thinking","thinking":""}' if kind == _B_THINK else b'{"type":"text","text":""}'
            return out + b'data: {"type":"content-start","index":' + k + b',"delta":{"message":{"content":' + content + b"}}}\n\n"
        if t is ir.ToolCall:
            k = str(self._ncalls).encode()
            self._ncalls += 1
            self._blocks[ev.index] = (_B_TOOL, k)
            call = {"id": part.id, "type": "function", "function": {"name": part.name, "arguments": ""}}
            return (out + b'data: {"type":"tool-call-start","index":' + k + b',"delta":{"message":{"tool_calls":'
                    + s.dumps(call) + b"}}}\n\n")
        return out     # redacted reasoning: no Cohere form

    def _on_TextDelta(self, ev: ir.TextDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or not ev.text:
            return b""
        if b[0] == _B_TEXT:
            return (b'data: {"type":"content-delta","index":' + b[1] + b',"delta":{"message":{"content":{"text":'
                    + s.dumps(ev.text) + b"}}}}\n\n")
        if b[0] == _B_PLAN:
            return b'data: {"type":"tool-plan-delta","delta":{"message":{"tool_plan":' + s.dumps(ev.text) + b"}}}\n\n"
        return b""

    def _on_ReasoningDelta(self, ev: ir.ReasoningDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _B_THINK or not ev.text:
            return b""
        return (b'data: {"type":"content-delta","index":' + b[1] + b',"delta":{"message":{"content":{"thinking":'
                + s.dumps(ev.text) + b"}}}}\n\n")

    def _on_SignatureDelta(self, ev) -> bytes:
        return b""

    def _on_ToolArgsDelta(self, ev: ir.ToolArgsDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _B_TOOL or not ev.partial_json:
            return b""
        return (b'data: {"type":"tool-call-delta","index":' + b[1]
                + b',"delta":{"message":{"tool_calls":{"function":{"arguments":' + s.dumps(ev.partial_json)
                + b"}}}}}\n\n")

    def _on_BlockStop(self, ev: ir.BlockStop) -> bytes:
        b = self._blocks.pop(ev.index, None)
        if b is None or b[0] == _B_PLAN:
            return b""
        if b[0] == _B_TOOL:
            return b'data: {"type":"tool-call-end","index":' + b[1] + b"}\n\n"
        return b'data: {"type":"content-end","index":' + b[1] + b"}\n\n"

    def _on_UsageEvent(self, ev: ir.UsageEvent) -> bytes:
        self._usage = ev.usage
        return b""

    def _on_MessageStop(self, ev: ir.MessageStop) -> bytes:
        out = self._ensure_started() + self._stop_open_blocks()
        delta: dict = {"finish_reason": FINISH_OUT[ev.stop_reason]}
        if self._usage is not None:
            delta["usage"] = render_usage(self._usage, None)
        return out + b"data: " + s.dumps({"type": "message-end", "id": self._id, "delta": delta}) + b"\n\n"

    def _error(self, kind: str, message: str) -> bytes:
        return b"data: " + s.dumps({"type": "message-end", "id": self._id or None,
                                    "delta": {"finish_reason": "ERROR", "error": message}}) + b"\n\n"


CohereDialect.codec = Codec(_parse_request, _render_request, _parse_response, _render_response,
                            StreamDecoder, StreamEncoder, usage_in)
