"""OpenAI Responses (`POST {base}/responses`).

Errors, auth and inbound handling are Chat Completions' (same vendor, same
error body); the request and response shapes are item lists.
"""
from __future__ import annotations

import time
import uuid

import orjson

from engine import ir
from engine.faults import ClientError
from engine.protocols import common as c
from engine.protocols.openai import OpenAIDialect

P = "responses"
SR = ir.StopReason

_REQUEST_KEYS = frozenset({
    "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
    "max_output_tokens", "temperature", "top_p", "text", "reasoning", "stream", "user",
    "metadata"})
_MSG_KEYS = frozenset({"type", "role", "content"})
_TEXT_KEYS = frozenset({"type", "text"})
_IMAGE_KEYS = frozenset({"type", "image_url", "detail"})
_FILE_KEYS = frozenset({"type", "file_data", "file_url", "filename"})
_CALL_KEYS = frozenset({"type", "call_id", "name", "arguments"})
_OUTPUT_KEYS = frozenset({"type", "call_id", "output"})
_REASONING_KEYS = frozenset({"type", "summary", "encrypted_content"})
_TOOL_KEYS = frozenset({"type", "name", "parameters", "strict", "description"})
_RESPONSE_KEYS = frozenset({"id", "object", "created_at", "status", "error", "incomplete_details",
                            "model", "output", "usage", "output_text"})

fit_id = c.id_fitter(64, None)


class ResponsesDialect(OpenAIDialect):
    name = "responses"
    forward_headers = (b"openai-organization", b"openai-project")

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/responses"

    def parse_request(self, obj: dict, params: dict | None = None) -> ir.Request:
        try:
            return _parse_request(obj)
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, ClientError):
                raise
            raise ClientError(400, f"Malformed Responses request: {exc!r}") from None

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


def _content_part(p: dict):
    kind = p.get("type")
    if kind in ("input_text", "output_text"):
        return ir.Text(p["text"], c.extras_of(p, _TEXT_KEYS, P))
    if kind == "refusal":
        return ir.Refusal(p["refusal"])
    if kind == "input_image" and p.get("image_url") is not None:
        url, data, media_type = c.image_parts_from_url(p["image_url"])
        return ir.Image(url, data, media_type, p.get("detail"), c.extras_of(p, _IMAGE_KEYS, P))
    if kind == "input_file" and (p.get("file_data") is not None or p.get("file_url") is not None):
        ext = c.extras_of(p, _FILE_KEYS, P)
        if p.get("file_data") is not None:
            media_type, data = c.split_data_uri(p["file_data"])
            if data is None:
                return ir.Opaque(P, "input_file", p)
            return ir.Document(data=data, media_type=media_type, name=p.get("filename"), extras=ext)
        return ir.Document(url=p["file_url"], name=p.get("filename"), extras=ext)
    return ir.Opaque(P, str(kind), p)


def _parts(content) -> list:
    if isinstance(content, str):
        return [ir.Text(content)]
    return [_content_part(p) for p in content]


def _reasoning(item: dict) -> ir.Reasoning:
    summary = item.get("summary") or []
    text = "\n\n".join(s.get("text", "") for s in summary)
    sig, origin = c.sig_in(item.get("encrypted_content"), P)
    ext = c.extras_of(item, _REASONING_KEYS, P)
    if len(summary) > 1:
        ext = c.with_note(ext, P, "$summary", summary)
    return ir.Reasoning(text, sig, origin, ext)


def _parse_items(items: list) -> list[ir.Message]:
    out: list[ir.Message] = []

    def turn(role: str, fresh: bool = False) -> ir.Message:
        if not fresh and out and out[-1].role == role:
            return out[-1]
        m = ir.Message(role, [])
        out.append(m)
        return m

    tool_turn = None
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            tool_turn = None
            role = item["role"]
            ext = c.extras_of(item, _MSG_KEYS, P)
            parts = _parts(item["content"])
            if role == "assistant":
                m = turn(ir.ASSISTANT)
                m.content.extend(parts)
                if ext:
                    m.extras = ext
            elif role in ("system", "developer"):
                if role == "developer":
                    ext = c.with_note(ext, P, "$role", "developer")
                out.append(ir.Message(ir.SYSTEM, parts, ext))
            else:
                out.append(ir.Message(ir.USER, parts, ext))
        elif kind == "function_call":
            tool_turn = None
            args, raw = c.args_from_str(item.get("arguments"))
            turn(ir.ASSISTANT).content.append(
                ir.ToolCall(item["call_id"], item["name"], args, raw, c.extras_of(item, _CALL_KEYS, P)))
        elif kind == "reasoning":
            tool_turn = None
            turn(ir.ASSISTANT).content.append(_reasoning(item))
        elif kind == "function_call_output":
            output = item["output"]
            parts = [ir.Text(output)] if isinstance(output, str) else [_content_part(p) for p in output]
            if tool_turn is None:
                tool_turn = turn(ir.USER, fresh=True)
            tool_turn.content.append(ir.ToolResult(item["call_id"], parts, extras=c.extras_of(item, _OUTPUT_KEYS, P)))
        else:
            tool_turn = None
            # Hosted-tool calls, item references...: kept for Responses only.
            role = ir.USER if kind.endswith("_output") or kind == "item_reference" else ir.ASSISTANT
            turn(role).content.append(ir.Opaque(P, f"item:{kind}", item))
    return out


def _parse_request(obj: dict) -> ir.Request:
    inp = obj.get("input")
    if inp is None:
        messages = []
    elif isinstance(inp, str):
        messages = [ir.Message(ir.USER, [ir.Text(inp)])]
    elif isinstance(inp, list):
        messages = _parse_items(inp)
    else:
        raise c.bad("input", "must be a string or an array of input items")
    req = ir.Request(messages)
    if obj.get("instructions") is not None:
        req.system = [ir.Text(obj["instructions"])]
    req.max_tokens = obj.get("max_output_tokens")
    req.temperature = obj.get("temperature")
    req.top_p = obj.get("top_p")
    req.stream = obj.get("stream") is True
    req.user = obj.get("user")
    req.metadata = obj.get("metadata")
    req.parallel_tool_calls = obj.get("parallel_tool_calls")
    notes: dict = {}
    extras = c.extras_of(obj, _REQUEST_KEYS, P) or {}
    for t in obj.get("tools") or ():
        if t.get("type") == "function":
            strict = t.get("strict")
            req.tools.append(ir.Tool(t["name"], t.get("parameters"), t.get("description"),
                                     True if strict is None else strict, c.extras_of(t, _TOOL_KEYS, P)))
        else:
            req.tools.append(ir.Opaque(P, str(t.get("type")), t))
    tc = obj.get("tool_choice")
    if tc is not None:
        if tc in ("auto", "none", "required"):
            req.tool_choice = ir.ToolChoice(tc)
        elif isinstance(tc, dict) and tc.get("type") == "function":
            req.tool_choice = ir.ToolChoice("tool", tc["name"])
        else:
            extras.setdefault(P, {})["tool_choice"] = tc
    text = obj.get("text")
    if text:
        fmt = text.get("format")
        if fmt is not None:
            kind = fmt["type"]
            if kind == "json_schema":
                req.response_format = ir.ResponseFormat("json_schema", fmt.get("schema"), fmt.get("name"),
                                                        fmt.get("strict"), fmt.get("description"))
            else:
                req.response_format = ir.ResponseFormat(kind)
        rest = {k: v for k, v in text.items() if k != "format"}
        if rest:
            extras.setdefault(P, {})["text"] = rest
    rs = obj.get("reasoning")
    if rs:
        if rs.get("effort") is not None:
            req.reasoning = ir.ReasoningConfig(effort=rs["effort"])
        rest = {k: v for k, v in rs.items() if k != "effort"}
        if rest:
            notes["$reasoning"] = rest
    if notes:
        extras.setdefault(P, {}).update(notes)
    req.extras = extras or None
    return req


# ---------------------------------------------------------------------------
# rendering


def _text(p: ir.Text, ctx: c.RenderCtx, where: str, assistant: bool) -> dict:
    ctx.foreign(p.extras, f"{where}.")
    kind = "output_text" if assistant else "input_text"
    return c.splice({"type": kind, "text": p.text}, p.extras, P)


def _plain(parts: list) -> bool:
    return len(parts) == 1 and type(parts[0]) is ir.Text and not c.own(parts[0].extras, P)


def _input_parts(parts: list, ctx: c.RenderCtx, where: str) -> list:
    out = []
    for j, p in enumerate(parts):
        t = type(p)
        w = f"{where}[{j}]"
        if t is ir.Text:
            out.append(_text(p, ctx, w, False))
        elif t is ir.Image:
            ctx.foreign(p.extras, f"{w}.")
            out.append(c.splice({"type": "input_image", "image_url": c.image_url(p),
                                 "detail": p.detail or "auto"}, p.extras, P))
        elif t is ir.Document:
            ctx.foreign(p.extras, f"{w}.")
            if p.data is not None:
                f = {"type": "input_file", "file_data": c.data_uri(p.media_type, p.data)}
            elif p.url is not None:
                f = {"type": "input_file", "file_url": p.url}
            else:
                ctx.unsupported(w, "plain-text documents have no Responses input_file form")
                continue
            if p.name is not None:
                f["filename"] = p.name
            out.append(c.splice(f, p.extras, P))
        elif t is ir.JsonData:
            out.append({"type": "input_text", "text": c.json_text(p.value)})
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                out.append(raw)
        elif t is ir.Reasoning or t is ir.RedactedReasoning:
            ctx.hint(w, "reasoning in a user message")
        else:
            ctx.unsupported(w, f"{c.part_kind(p)} in a user message")
    return out


def _message(role: str, parts: list, ctx: c.RenderCtx, where: str, extras) -> dict:
    if _plain(parts):
        ctx.foreign(parts[0].extras, f"{where}[0].")
        content = parts[0].text
    else:
        content = _input_parts(parts, ctx, where)
    return c.splice({"type": "message", "role": role, "content": content}, extras, P)


def _reasoning_item(p: ir.Reasoning, ctx: c.RenderCtx, where: str) -> dict | None:
    if c.foreign_reasoning(p, ctx, where):
        return None
    ctx.foreign(p.extras, f"{where}.")
    summary = c.note(p.extras, P, "$summary")
    if summary is None or "\n\n".join(s.get("text", "") for s in summary) != p.text:
        summary = [{"type": "summary_text", "text": p.text}] if p.text else []
    item: dict = {"type": "reasoning", "summary": summary}
    if p.signature is not None:
        item["encrypted_content"] = p.signature
    return c.splice(item, p.extras, P)


def _assistant_items(m: ir.Message, ctx: c.RenderCtx, where: str, items: list) -> None:
    run: list = []       # consecutive text/refusal parts -> one message item

    def flush():
        if not run:
            return
        if len(run) == 1 and type(run[0]) is ir.Text and not c.own(run[0].extras, P):
            ctx.foreign(run[0].extras, f"{where}.")
            content = run[0].text
        else:
            content = [{"type": "refusal", "refusal": x.text} if type(x) is ir.Refusal
                       else _text(x, ctx, where, True) for x in run]
        items.append(c.splice({"type": "message", "role": "assistant", "content": content}, m.extras, P))
        run.clear()

    for j, p in enumerate(m.content):
        t = type(p)
        w = f"{where}.content[{j}]"
        if t is ir.Text or t is ir.Refusal:
            run.append(p)
            continue
        flush()
        if t is ir.ToolCall:
            ctx.foreign(p.extras, f"{w}.")
            items.append(c.splice({"type": "function_call", "call_id": fit_id(p.id), "name": p.name,
                                   "arguments": c.args_to_str(p)}, p.extras, P))
        elif t is ir.Reasoning:
            item = _reasoning_item(p, ctx, w)
            if item is not None:
                items.append(item)
        elif t is ir.RedactedReasoning:
            c.foreign_reasoning(p, ctx, w) or ctx.hint(w, "redacted reasoning")
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                items.append(raw)
        else:
            ctx.unsupported(w, f"{c.part_kind(p)} in an assistant message")
    flush()


def _output(p: ir.ToolResult, ctx: c.RenderCtx, where: str):
    if _plain(p.content):
        ctx.foreign(p.content[0].extras, f"{where}.content[0].")
        return p.content[0].text
    if len(p.content) == 1 and type(p.content[0]) is ir.JsonData:
        return c.json_text(p.content[0].value)
    return _input_parts(p.content, ctx, f"{where}.content")


def _render_items(req: ir.Request, ctx: c.RenderCtx) -> list:
    items: list = []
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        ctx.foreign(m.extras, f"{where}.")
        if m.role == ir.ASSISTANT:
            _assistant_items(m, ctx, where, items)
        elif m.role == ir.SYSTEM:
            role = c.note(m.extras, P, "$role", "system")
            items.append(_message(role, m.content, ctx, f"{where}.content", m.extras))
        else:
            pending: list = []
            for j, p in enumerate(m.content):
                t = type(p)
                if t is ir.ToolResult or (t is ir.Opaque and p.kind.startswith("item:")):
                    if pending:
                        items.append(_message("user", pending, ctx, f"{where}.content", m.extras))
                        pending = []
                    w = f"{where}.content[{j}]"
                    if t is ir.Opaque:
                        raw = ctx.opaque(p, f"{w}.")
                        if raw is not None:
                            items.append(raw)
                        continue
                    ctx.foreign(p.extras, f"{w}.")
                    if p.is_error:
                        ctx.hint(f"{w}.is_error", "Responses tool outputs have no error flag")
                    items.append(c.splice({"type": "function_call_output", "call_id": fit_id(p.id),
                                           "output": _output(p, ctx, w)}, p.extras, P))
                else:
                    pending.append(p)
            if pending or not m.content:
                items.append(_message("user", pending, ctx, f"{where}.content", m.extras))
    return items


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    body: dict = {"model": model, "input": _render_items(req, ctx)}
    if req.system:
        for j, p in enumerate(req.system):
            ctx.foreign(p.extras, f"system[{j}].")
        body["instructions"] = "\n\n".join(p.text for p in req.system)
    if req.tools:
        tools = []
        for i, t in enumerate(req.tools):
            if type(t) is ir.Opaque:
                raw = ctx.opaque(t, f"tools[{i}].")
                if raw is not None:
                    tools.append(raw)
                continue
            ctx.foreign(t.extras, f"tools[{i}].")
            tool = {"type": "function", "name": t.name, "parameters": t.parameters,
                    "strict": bool(t.strict)}
            if t.description is not None:
                tool["description"] = t.description
            tools.append(c.splice(tool, t.extras, P))
        body["tools"] = tools
    tc = req.tool_choice
    if tc is not None:
        body["tool_choice"] = {"type": "function", "name": tc.name} if tc.mode == "tool" else tc.mode
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    max_tokens = req.max_tokens if req.max_tokens is not None else max_tokens_default
    if max_tokens is not None:
        body["max_output_tokens"] = max_tokens
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    for name in ("top_k", "seed", "frequency_penalty", "presence_penalty"):
        if getattr(req, name) is not None:
            ctx.unsupported(name)
    if req.stop is not None:
        ctx.unsupported("stop", "the Responses API has no stop sequences")
    text: dict = dict(c.note(req.extras, P, "text") or {})
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            fmt: dict = {"type": "json_schema", "name": rf.name or "response", "schema": rf.schema or {}}
            if rf.strict is not None:
                fmt["strict"] = rf.strict
            if rf.description is not None:
                fmt["description"] = rf.description
            text["format"] = fmt
        else:
            text["format"] = {"type": rf.type}
    if text:
        body["text"] = text
    reasoning: dict = dict(c.note(req.extras, P, "$reasoning") or {})
    if req.reasoning is not None:
        effort = "none" if c.reasoning_off(req.reasoning) else c.effort_for(req.reasoning)
        if effort is not None:
            reasoning["effort"] = effort
        else:
            ctx.hint("reasoning", "thinking enabled without a budget or effort")
    if reasoning:
        body["reasoning"] = reasoning
    if req.stream:
        body["stream"] = True
    if req.user is not None:
        body["user"] = req.user
    if req.metadata is not None:
        body["metadata"] = req.metadata
    ctx.foreign(req.extras, "")
    return c.splice(body, req.extras, P)


# ---------------------------------------------------------------------------
# responses


def _parse_response(obj: dict) -> ir.Response:
    content: list = []
    for item in obj.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            content.extend(_parts(item.get("content") or []))
        elif kind == "function_call":
            args, raw = c.args_from_str(item.get("arguments"))
            content.append(ir.ToolCall(item["call_id"], item["name"], args, raw,
                                       c.extras_of(item, _CALL_KEYS, P)))
        elif kind == "reasoning":
            content.append(_reasoning(item))
        else:
            content.append(ir.Opaque(P, f"item:{kind}", item))
    status = obj.get("status")
    reason = (obj.get("incomplete_details") or {}).get("reason")
    if status == "incomplete":
        stop = SR.CONTENT_FILTER if reason == "content_filter" else SR.MAX_TOKENS
    elif status == "failed" or status == "cancelled":
        stop = SR.OTHER
    elif any(type(p) is ir.Refusal for p in content):
        stop = SR.REFUSAL
    else:
        stop = SR.END_TURN
    u = obj.get("usage") or {}
    itd = u.get("input_tokens_details") or {}
    otd = u.get("output_tokens_details") or {}
    usage = ir.Usage(u.get("input_tokens") or 0, u.get("output_tokens") or 0,
                     itd.get("cached_tokens") or 0, itd.get("cache_write_tokens") or 0,
                     otd.get("reasoning_tokens") or 0, u.get("total_tokens"))
    return ir.Response(obj.get("id") or "", obj.get("model") or "", content,
                       c.infer_stop(content, stop), None, usage, c.extras_of(obj, _RESPONSE_KEYS, P))


def render_usage(u: ir.Usage) -> dict:
    return {"input_tokens": u.input_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens,
                                     "cache_write_tokens": u.cache_creation_tokens},
            "output_tokens": u.output_tokens,
            "output_tokens_details": {"reasoning_tokens": u.reasoning_tokens},
            "total_tokens": u.total}


def _render_response(resp: ir.Response, model: str) -> dict:
    rid = resp.id or f"resp_{uuid.uuid4().hex}"
    output: list = []
    run: list = []
    n = 0

    def flush():
        nonlocal n
        if run:
            output.append({"type": "message", "id": f"msg_{rid}_{n}", "role": "assistant",
                           "status": "completed", "content": list(run)})
            run.clear()
            n += 1

    for p in resp.content:
        t = type(p)
        if t is ir.Text:
            run.append(c.splice({"type": "output_text", "text": p.text, "annotations": []}, p.extras, P))
        elif t is ir.Refusal:
            run.append({"type": "refusal", "refusal": p.text})
        elif t is ir.ToolCall:
            flush()
            output.append(c.splice({"type": "function_call", "id": f"fc_{p.id}", "call_id": p.id,
                                    "name": p.name, "arguments": c.args_to_str(p),
                                    "status": "completed"}, p.extras, P))
        elif t is ir.Reasoning:
            flush()
            item = {"type": "reasoning", "id": f"rs_{rid}_{n}",
                    "summary": [{"type": "summary_text", "text": p.text}] if p.text else []}
            sig = c.sig_out(p, P)
            if sig is not None:
                item["encrypted_content"] = sig
            output.append(c.splice(item, p.extras, P))
            n += 1
        elif t is ir.Opaque and p.protocol == P:
            flush()
            output.append(p.raw)
    flush()
    stop = resp.stop_reason
    status, incomplete = "completed", None
    if stop is SR.MAX_TOKENS or stop is SR.CONTEXT_WINDOW:
        status, incomplete = "incomplete", {"reason": "max_output_tokens"}
    elif stop is SR.CONTENT_FILTER or (stop is SR.REFUSAL and not any(type(p) is ir.Refusal for p in resp.content)):
        status, incomplete = "incomplete", {"reason": "content_filter"}
    body = {"id": rid, "object": "response", "created_at": int(time.time()), "status": status,
            "error": None, "incomplete_details": incomplete, "model": model, "output": output,
            "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": render_usage(resp.usage)}
    return c.splice(body, resp.extras, P)


dialect = ResponsesDialect()
