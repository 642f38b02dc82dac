"""OpenAI Chat Completions (`POST {base}/chat/completions`)."""
from __future__ import annotations

import re
import time
import uuid
from urllib.parse import quote

import orjson

from busbar import ir
from busbar.faults import ClientError, VendorQuota
from busbar.protocols import common as c
from busbar.protocols import streaming as s
from busbar.protocols.base import (Codec, ErrorRow, ErrorTable, Dialect, Endpoint, Headers, StreamError, header,
                                   int_header, path_segment)

P = "openai"
# sampling knobs: IR field -> this dialect's name (None: it has none)
SAMPLING = {"temperature": "temperature", "top_p": "top_p", "top_k": None, "seed": "seed",
            "frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty", "stop": "stop"}
SR = ir.StopReason

_REQUEST_KEYS = frozenset({
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "seed", "frequency_penalty",
    "presence_penalty", "stop", "response_format", "reasoning_effort", "stream", "user",
    "metadata", "n"})
_MSG_KEYS = frozenset({"role", "content", "tool_calls", "refusal", "tool_call_id", "reasoning_content"})
_TEXT_KEYS = frozenset({"type", "text"})
_FUNC_KEYS = frozenset({"name", "parameters", "description", "strict"})
_CALL_KEYS = frozenset({"id", "type", "function"})
_RESPONSE_KEYS = frozenset({"id", "object", "created", "model", "choices", "usage"})
_RMSG_KEYS = frozenset({"role", "content", "refusal", "tool_calls"})

FINISH_IN = {"stop": SR.END_TURN, "length": SR.MAX_TOKENS, "tool_calls": SR.TOOL_USE,
             "function_call": SR.TOOL_USE, "content_filter": SR.CONTENT_FILTER}
FINISH_OUT = {SR.END_TURN: "stop", SR.MAX_TOKENS: "length", SR.STOP_SEQUENCE: "stop",
              SR.TOOL_USE: "tool_calls", SR.CONTENT_FILTER: "content_filter",
              SR.REFUSAL: "content_filter", SR.PAUSE: "stop", SR.CONTEXT_WINDOW: "length",
              SR.OTHER: "stop"}

# x-ratelimit-reset-* durations: "6m0s", "1s", "20ms", "1h2m3.5s"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _duration(value: bytes | None) -> float | None:
    if not value:
        return None
    text = value.decode("latin-1").strip()
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def rate_limits(headers: Headers) -> VendorQuota | None:
    """OpenAI's `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`
    (per key and model, per minute; resets are durations)."""
    remaining_requests = int_header(headers, b"x-ratelimit-remaining-requests")
    remaining_tokens = int_header(headers, b"x-ratelimit-remaining-tokens")
    if remaining_requests is None and remaining_tokens is None:
        return None
    return VendorQuota(remaining_requests, _duration(header(headers, b"x-ratelimit-reset-requests")),
                       remaining_tokens, _duration(header(headers, b"x-ratelimit-reset-tokens")),
                       int_header(headers, b"x-ratelimit-limit-requests"),
                       int_header(headers, b"x-ratelimit-limit-tokens"))


# OpenAI rejects tool-call ids longer than 40 characters.
fit_id = c.id_fitter(40, None)


# The error vocabulary (kind -> status, error.type, error.code), both ways.
ERRORS = ErrorTable("openai", {
    "invalid_request": ErrorRow(400, "invalid_request_error"),
    "authentication": ErrorRow(401, "invalid_request_error", "invalid_api_key"),
    "permission": ErrorRow(403, "invalid_request_error", "permission_denied"),
    "not_found": ErrorRow(404, "invalid_request_error", "model_not_found"),
    "request_too_large": ErrorRow(413, "invalid_request_error", "request_too_large"),
    "rate_limit": ErrorRow(429, "requests", "rate_limit_exceeded"),
    "billing": ErrorRow(429, "insufficient_quota", "insufficient_quota"),   # a 429 at OpenAI
    "overloaded": ErrorRow(503, "server_error", "overloaded"),
    "api_error": ErrorRow(500, "server_error"),
    "upstream": ErrorRow(502, "server_error", "upstream_error"),
    "timeout": ErrorRow(504, "server_error", "timeout"),
}, read={  # an in-stream error's code, else its type, as the HTTP status it stands for
    "invalid_request_error": 400, "server_error": 500, "context_length_exceeded": 400,
    "invalid_api_key": 401, "rate_limit_exceeded": 429, "tokens": 429,
})


class OpenAIDialect(Dialect):
    name = "openai"
    request_id_header = b"x-request-id"          # openai-python/-node `_request_id`, `APIError.request_id`
    request_name = "Chat Completions request"
    kind_status = ERRORS.status
    body_shape = {"model": (str,), "stream": (bool,), "messages": (list,), "stream_options": (dict,),
                  "tools": (list,)}
    forward_headers = (b"openai-organization", b"openai-project")
    carries_signed_reasoning = False      # reasoning_content has no signature

    def shown_call_id(self, call_id: str) -> str:
        return fit_id(call_id)

    def rate_limits(self, headers: Headers) -> VendorQuota | None:
        return rate_limits(headers)

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        row = ERRORS.row(err.kind, "invalid_request")
        body = orjson.dumps({"error": {
            "message": err.message,
            "type": row.type,
            "param": err.param,
            "code": err.code or row.code,
        }})
        return err.status, self.error_headers(err), body

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/chat/completions"

    def build_endpoint(self, spec: dict, base_path: str) -> Endpoint:
        # Azure OpenAI speaks this protocol with the model as a deployment in
        # the path and an `api-version` on every request (its SDK's
        # AzureOpenAI client does the same).
        endpoint = super().build_endpoint(spec, base_path)
        if spec.get("api_version"):
            endpoint.query = "api-version=" + quote(spec["api_version"], safe="")
        if spec.get("deployment_paths"):
            endpoint.dialect = _DEPLOYMENTS
        return endpoint

    json_fields = ("response_format",)
    vision_markers = (b'"image_url"',)

    def stream_encoder_options(self, obj: dict) -> dict:
        # the usage chunk only when the client asked for it, as OpenAI does
        return {"include_usage": bool((obj.get("stream_options") or {}).get("include_usage"))}

    def error_message(self, obj) -> tuple[str, str | None]:
        error = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            return str(error.get("message") or ""), str(code) if code else None
        return "", None

# ---------------------------------------------------------------------------
# request parsing


def _texts(content, where: str) -> list[ir.Text]:
    if isinstance(content, str):
        return [ir.Text(content)]
    if not isinstance(content, list):
        raise c.bad(f"{where}.content", "must be a string or an array of text parts")
    out = []
    for p in content:
        if p.get("type") != "text":
            raise c.bad(f"{where}.content", "only text parts are allowed here")
        out.append(ir.Text(p["text"], c.extras_of(p, _TEXT_KEYS, P)))
    return out


def _user_parts(content, where: str) -> list:
    if isinstance(content, str):
        return [ir.Text(content)]
    if not isinstance(content, list):
        raise c.bad(f"{where}.content", "must be a string or an array of content parts")
    parts: list = []
    for p in content:
        kind = p.get("type")
        if kind == "text":
            parts.append(ir.Text(p["text"], c.extras_of(p, _TEXT_KEYS, P)))
        elif kind == "image_url":
            parts.append(c.parse_image_url_part(p, P))
        elif kind == "file" and isinstance(p.get("file"), dict) and "file_data" in p["file"]:
            f = p["file"]
            media_type, data = c.split_data_uri(f["file_data"])
            if data is None:
                parts.append(ir.Opaque(P, "file", p))
            else:
                parts.append(ir.Document(data=data, media_type=media_type, name=f.get("filename")))
        elif kind == "refusal":
            parts.append(ir.Refusal(p["refusal"]))
        else:
            parts.append(ir.Opaque(P, str(kind), p))
    return parts


def _parse_message(m: dict, where: str) -> ir.Message:
    role = m["role"]
    extras = c.extras_of(m, _MSG_KEYS, P)
    if role == "user":
        return ir.Message(ir.USER, _user_parts(m["content"], where), extras)
    if role == "assistant":
        parts: list = []
        reasoning = m.get("reasoning_content")     # OpenAI-compatible servers (DeepSeek, Kimi, vLLM...)
        if isinstance(reasoning, str) and reasoning:
            parts.append(ir.Reasoning(reasoning, None, P))
        content = m.get("content")
        if content is not None:
            parts.extend(_user_parts(content, where))
        if m.get("refusal") is not None:
            parts.append(ir.Refusal(m["refusal"]))
        for call in m.get("tool_calls") or ():
            if call.get("type", "function") != "function":
                parts.append(ir.Opaque(P, "tool_call", call))
                continue
            fn = call["function"]
            args, raw = c.args_from_str(fn.get("arguments"))
            ext = c.extras_of(call, _CALL_KEYS, P)
            parts.append(ir.ToolCall(call["id"], fn["name"], args, raw, ext))
        return ir.Message(ir.ASSISTANT, parts, extras)
    if role in ("system", "developer"):
        if role == "developer":
            extras = c.with_note(extras, P, "$role", "developer")
        return ir.Message(ir.SYSTEM, _texts(m["content"], where), extras)
    raise c.bad(f"{where}.role", f"unknown role {role!r}")


def _parse_request(obj: dict) -> ir.Request:
    messages = c.require_list(obj, "messages")
    system: list[ir.Text] = []
    out: list[ir.Message] = []
    notes: dict = {}
    tool_turn: ir.Message | None = None    # user message collecting consecutive tool results
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if m.get("role") == "tool":
            result = ir.ToolResult(m["tool_call_id"], _texts(m["content"], where),
                                   extras=c.extras_of(m, _MSG_KEYS, P))
            if tool_turn is None:
                tool_turn = ir.Message(ir.USER, [])
                out.append(tool_turn)
            tool_turn.content.append(result)
            continue
        tool_turn = None
        msg = _parse_message(m, where)
        if msg.role == ir.SYSTEM and not out:
            system.extend(msg.content)
            if c.note(msg.extras, P, "$role") == "developer":
                notes["$system_role"] = "developer"
            continue
        out.append(msg)

    req = ir.Request(out, system)
    if "max_completion_tokens" in obj:
        req.max_tokens = obj["max_completion_tokens"]
    elif "max_tokens" in obj:
        req.max_tokens = obj["max_tokens"]
        notes["$max_tokens_key"] = "max_tokens"
    c.read_sampling(obj, req, SAMPLING)
    req.stream = obj.get("stream") is True
    req.user = obj.get("user")
    req.metadata = obj.get("metadata")
    req.parallel_tool_calls = obj.get("parallel_tool_calls")
    if obj.get("reasoning_effort") is not None:
        req.reasoning = ir.ReasoningConfig(effort=obj["reasoning_effort"])

    for t in obj.get("tools") or ():
        if t.get("type") == "function":
            f = t["function"]
            req.tools.append(ir.Tool(f["name"], f.get("parameters"), f.get("description"),
                                     f.get("strict"), c.extras_of(f, _FUNC_KEYS, P)))
        else:
            req.tools.append(ir.Opaque(P, str(t.get("type")), t))

    extras = c.extras_of(obj, _REQUEST_KEYS, P) or {}
    tc = obj.get("tool_choice")
    if tc is not None:
        if tc in ("auto", "none", "required"):
            req.tool_choice = ir.ToolChoice(tc)
        elif isinstance(tc, dict) and tc.get("type") == "function":
            req.tool_choice = ir.ToolChoice("tool", tc["function"]["name"])
        else:
            extras.setdefault(P, {})["tool_choice"] = tc

    rf = obj.get("response_format")
    if rf is not None:
        kind = rf["type"]
        if kind == "json_schema":
            js = rf["json_schema"]
            req.response_format = ir.ResponseFormat("json_schema", js.get("schema"), js.get("name"),
                                                    js.get("strict"), js.get("description"))
        else:
            req.response_format = ir.ResponseFormat(kind)

    so = obj.get("stream_options")
    if so is not None and so == {"include_usage": True} and extras:
        # what every translated stream asks for anyway (see _render_request)
        del extras[P]["stream_options"]
    n = obj.get("n")
    if n is not None and n != 1:
        extras.setdefault(P, {})["n"] = n
    if notes:
        extras.setdefault(P, {}).update(notes)
    if extras and not extras.get(P):
        extras.pop(P, None)
    req.extras = extras or None
    return req


# ---------------------------------------------------------------------------
# request rendering


def _text_part(p: ir.Text, ctx: c.RenderCtx, where: str) -> dict:
    ctx.foreign(p.extras, f"{where}.")
    return c.splice({"type": "text", "text": p.text}, p.extras, P)


def _plain(parts: list) -> bool:
    return len(parts) == 1 and type(parts[0]) is ir.Text and not c.own(parts[0].extras, P)


def _render_texts(parts: list, ctx: c.RenderCtx, where: str):
    if _plain(parts):
        ctx.foreign(parts[0].extras, f"{where}[0].")
        return parts[0].text
    out = []
    for j, p in enumerate(parts):
        t = type(p)
        if t is ir.Text:
            out.append(_text_part(p, ctx, f"{where}[{j}]"))
        elif t is ir.JsonData:
            out.append({"type": "text", "text": c.json_text(p.value)})
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{where}[{j}].")
            if raw is not None:
                out.append(raw)
        else:
            ctx.unsupported(f"{where}[{j}]", f"{c.part_kind(p)} where only text is allowed")
    return out


def _render_user(parts: list, ctx: c.RenderCtx, where: str):
    if _plain(parts):
        ctx.foreign(parts[0].extras, f"{where}[0].")
        return parts[0].text
    out = []
    for j, p in enumerate(parts):
        t = type(p)
        w = f"{where}[{j}]"
        if t is ir.Text:
            out.append(_text_part(p, ctx, w))
        elif t is ir.Image:
            out.append(c.render_image_url_part(p, P, ctx, w))
        elif t is ir.Document:
            if p.data is None:
                ctx.unsupported(w, "documents must be base64 data (file_data) in Chat Completions")
                continue
            f = {"file_data": c.data_uri(p.media_type, p.data)}
            if p.name is not None:
                f["filename"] = p.name
            out.append({"type": "file", "file": f})
        elif t is ir.JsonData:
            out.append({"type": "text", "text": c.json_text(p.value)})
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                out.append(raw)
        elif t is ir.Reasoning or t is ir.RedactedReasoning:
            ctx.hint(w, "Chat Completions carries no reasoning")
        else:
            ctx.unsupported(w, f"{c.part_kind(p)} in a user message")
    return out


def _render_assistant(m: ir.Message, ctx: c.RenderCtx, where: str) -> dict:
    texts: list = []
    calls: list = []
    out: dict = {"role": "assistant"}
    for j, p in enumerate(m.content):
        t = type(p)
        w = f"{where}.content[{j}]"
        if t is ir.Text:
            texts.append(p)
        elif t is ir.ToolCall:
            ctx.foreign(p.extras, f"{w}.")
            calls.append(c.splice({"id": fit_id(p.id), "type": "function",
                                   "function": {"name": p.name, "arguments": c.args_to_str(p)}},
                                  p.extras, P))
        elif t is ir.Refusal:
            if "refusal" in out:
                ctx.unsupported(w, "a second refusal")
            out["refusal"] = p.text
        elif t is ir.Reasoning and p.origin == P and not p.signature:
            # what an OpenAI-compatible server sent as reasoning_content: it wants it back
            out["reasoning_content"] = out.get("reasoning_content", "") + p.text
        elif t is ir.Reasoning or t is ir.RedactedReasoning:
            ctx.hint(w, "Chat Completions carries no reasoning")
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                calls.append(raw) if p.kind == "tool_call" else texts.append(raw)
        else:
            ctx.unsupported(w, f"{c.part_kind(p)} in an assistant message")
    if texts:
        if len(texts) == 1 and type(texts[0]) is ir.Text and not c.own(texts[0].extras, P):
            ctx.foreign(texts[0].extras, f"{where}.content[0].")
            out["content"] = texts[0].text
        else:
            out["content"] = [x if type(x) is dict else _text_part(x, ctx, f"{where}.content")
                              for x in texts]
    else:
        out["content"] = None
    if calls:
        out["tool_calls"] = calls
    return out


def _render_messages(req: ir.Request, ctx: c.RenderCtx) -> list:
    msgs: list = []
    if req.system:
        role = c.note(req.extras, P, "$system_role", "system")
        msgs.append({"role": role, "content": _render_texts(req.system, ctx, "system")})
    for i, m in enumerate(req.messages):
        where = f"messages[{i}]"
        ctx.foreign(m.extras, f"{where}.")
        if m.role == ir.ASSISTANT:
            msg = _render_assistant(m, ctx, where)
            if msg["content"] is not None or "tool_calls" in msg or "refusal" in msg or not m.content:
                msgs.append(c.splice(msg, m.extras, P))   # else: everything in it was dropped
        elif m.role == ir.SYSTEM:
            role = c.note(m.extras, P, "$role", "system")
            msgs.append(c.splice({"role": role, "content": _render_texts(m.content, ctx, f"{where}.content")},
                                 m.extras, P))
        else:
            def tool_message(p: ir.ToolResult, w: str) -> dict:
                if p.is_error:
                    ctx.hint(f"{w}.is_error", "Chat Completions tool messages have no error flag")
                return {"role": "tool", "tool_call_id": fit_id(p.id),
                        "content": _render_texts(p.content, ctx, f"{w}.content") if p.content else ""}
            msgs.extend(c.chat_user_turn(m, where, ctx, P, lambda parts, w: _render_user(parts, ctx, w),
                                         tool_message))
    return msgs


def _function_tool(t: ir.Tool) -> dict:
    f: dict = {"name": t.name}
    if t.description is not None:
        f["description"] = t.description
    if t.parameters is not None:
        f["parameters"] = t.parameters
    if t.strict is not None:
        f["strict"] = t.strict
    return {"type": "function", "function": c.splice(f, t.extras, P)}


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    body: dict = {"model": model, "messages": _render_messages(req, ctx)}
    if req.tools:
        body["tools"] = c.render_tools(req.tools, ctx, _function_tool)
    tc = req.tool_choice
    if tc is not None:
        body["tool_choice"] = ({"type": "function", "function": {"name": tc.name}}
                               if tc.mode == "tool" else tc.mode)
    if req.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    max_tokens = req.max_tokens if req.max_tokens is not None else max_tokens_default
    if max_tokens is not None:
        body[c.note(req.extras, P, "$max_tokens_key", "max_completion_tokens")] = max_tokens
    c.write_sampling(req, body, SAMPLING, ctx)
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            js: dict = {"name": rf.name or "response"}
            if rf.schema is not None:
                js["schema"] = rf.schema
            if rf.strict is not None:
                js["strict"] = rf.strict
            if rf.description is not None:
                js["description"] = rf.description
            body["response_format"] = {"type": "json_schema", "json_schema": js}
        else:
            body["response_format"] = {"type": rf.type}
    effort = c.openai_effort(req, ctx)
    if effort is not None:
        body["reasoning_effort"] = effort
    if req.stream:
        body["stream"] = True
        # usage arrives only when asked for; the gateway always needs it
        so = dict(c.note(req.extras, P, "stream_options") or {})
        so["include_usage"] = True
        body["stream_options"] = so
    if req.user is not None:
        body["user"] = req.user
    if req.metadata is not None:
        body["metadata"] = req.metadata
    ctx.foreign(req.extras, "")
    return c.splice(body, req.extras, P)


# ---------------------------------------------------------------------------
# responses


def _parse_response(obj: dict) -> ir.Response:
    choices = obj.get("choices") or [{}]
    choice = choices[0]
    msg = choice.get("message") or {}
    content: list = []
    reasoning = msg.get("reasoning_content")
    if isinstance(reasoning, str) and reasoning:
        content.append(ir.Reasoning(reasoning, None, P))
    text = msg.get("content")
    if isinstance(text, str):
        content.append(ir.Text(text, {P: {"annotations": msg["annotations"]}} if msg.get("annotations") else None))
    elif isinstance(text, list):
        content.extend(_user_parts(text, "message"))
    if msg.get("refusal") is not None:
        content.append(ir.Refusal(msg["refusal"]))
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        args, raw = c.args_from_str(fn.get("arguments"))
        content.append(ir.ToolCall(call.get("id", ""), fn.get("name", ""), args, raw,
                                   c.extras_of(call, _CALL_KEYS, P)))
    stop = FINISH_IN.get(choice.get("finish_reason"), SR.END_TURN)
    if stop is SR.END_TURN and msg.get("refusal") is not None:
        stop = SR.REFUSAL
    stop = c.infer_stop(content, stop)
    usage = usage_in(obj.get("usage") or {})
    resp = ir.Response(obj.get("id") or "", obj.get("model") or "", content, stop, None, usage,
                       c.extras_of(obj, _RESPONSE_KEYS, P))
    return resp


def render_usage(u: ir.Usage) -> dict:
    ptd = {"cached_tokens": u.cached_tokens}
    if u.cache_creation_tokens:
        ptd["cache_write_tokens"] = u.cache_creation_tokens
    return {"prompt_tokens": u.input_tokens, "completion_tokens": u.output_tokens,
            "total_tokens": u.total, "prompt_tokens_details": ptd,
            "completion_tokens_details": {"reasoning_tokens": u.reasoning_tokens}}


def _render_response(resp: ir.Response, model: str) -> dict:
    texts: list[str] = []
    calls: list = []
    reasoning: list[str] = []     # as OpenAI-compatible servers say it: reasoning_content
    refusal = None
    annotations = None
    for p in resp.content:
        t = type(p)
        if t is ir.Text:
            texts.append(p.text)
            ann = c.note(p.extras, P, "annotations")
            if ann:
                annotations = (annotations or []) + ann
        elif t is ir.ToolCall:
            calls.append(c.splice({"id": p.id, "type": "function",
                                   "function": {"name": p.name, "arguments": c.args_to_str(p)}},
                                  p.extras, P))
        elif t is ir.Refusal:
            refusal = p.text if refusal is None else refusal + p.text
        elif t is ir.Reasoning and p.text:
            reasoning.append(p.text)
        # images and foreign parts have no place in a chat completion
    msg: dict = {"role": "assistant", "content": "".join(texts) if texts else None,
                 "refusal": refusal}
    if annotations:
        msg["annotations"] = annotations
    if reasoning:
        msg["reasoning_content"] = "\n\n".join(reasoning)
    if calls:
        msg["tool_calls"] = calls
    finish = "stop" if resp.stop_reason is SR.REFUSAL and refusal is not None else FINISH_OUT[resp.stop_reason]
    if calls and resp.stop_reason is SR.TOOL_USE:
        finish = "tool_calls"
    body = {"id": resp.id or f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish, "logprobs": None}],
            "usage": render_usage(resp.usage)}
    return c.splice(body, resp.extras, P)


dialect = OpenAIDialect()


# ---------------------------------------------------------------------------
# streaming: chat.completion.chunk SSE <-> IR events (busbar.protocols.streaming)


_TEXT, _REFUSAL, _REASONING, _TOOL = 1, 2, 3, 4


def usage_in(u: dict) -> ir.Usage:
    ptd = u.get("prompt_tokens_details") or {}
    ctd = u.get("completion_tokens_details") or {}
    return ir.Usage(u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0,
                    ptd.get("cached_tokens") or 0, ptd.get("cache_write_tokens") or 0,
                    ctd.get("reasoning_tokens") or 0, u.get("total_tokens"))


class StreamDecoder(s.SequentialBlockDecoder):
    """Chat chunks -> IR.  Chat has no block events: a block starts with the
    first delta of its kind (content, refusal, a new tool-call index, or the
    `reasoning_content` some compatible servers send) and stops when another
    starts or at `finish_reason`.  The stop is held until the usage chunk
    (`stream_options.include_usage`) or `[DONE]`, so usage precedes it."""

    __slots__ = ("_started", "_id", "_tool", "_tool_id", "_seen_tools", "_stop", "_done")
    protocol = P

    def __init__(self):
        super().__init__()
        self._started = False
        self._id = ""
        self._tool = -1         # Chat tool-call index of the open tool block
        self._tool_id = ""      # and its id
        self._seen_tools: set[int] = set()
        self._stop: SR | None = None
        self._done = False      # MessageStop or ErrorEvent emitted

    def _event(self, name, data: bytes, out: list) -> None:
        if self._done:
            return          # [DONE] after the usage chunk, or anything after an error
        if data == b"[DONE]":
            if self._stop is None:      # lenient: [DONE] without a finish_reason
                self._close(out)
                self._stop = SR.TOOL_USE if self._seen_tools else SR.END_TURN
            self._done = True
            out.append(ir.MessageStop(self._stop))
            return
        obj = s.loads(data)
        if obj.get("error"):
            self._done = True
            out.append(_error_event(obj, data))
            return
        if not self._started:
            self._started = True
            self._id = obj.get("id") or ""
            out.append(ir.MessageStart(self._id, obj.get("model") or ""))
        choices = obj.get("choices")
        if choices and not choices[0].get("index"):      # n > 1: the first choice only
            ch = choices[0]
            delta = ch.get("delta")
            if delta:
                text = delta.get("reasoning_content")
                if text:
                    i = self._cur if self._kind == _REASONING else self._open(out, _REASONING, ir.Reasoning("", None, P))
                    out.append(ir.ReasoningDelta(i, text))
                text = delta.get("content")
                if text:
                    i = self._cur if self._kind == _TEXT else self._open(out, _TEXT, ir.Text(""))
                    out.append(ir.TextDelta(i, text))
                text = delta.get("refusal")
                if text:
                    i = self._cur if self._kind == _REFUSAL else self._open(out, _REFUSAL, ir.Refusal(""))
                    out.append(ir.TextDelta(i, text))
                calls = delta.get("tool_calls")
                if calls:
                    self._tool_calls(calls, out)
            finish = ch.get("finish_reason")
            if finish:
                self._close(out)
                stop = FINISH_IN.get(finish, SR.OTHER)
                if stop is SR.END_TURN and self._seen_tools:
                    stop = SR.TOOL_USE
                self._stop = stop
        usage = obj.get("usage")
        if usage:
            out.append(ir.UsageEvent(usage_in(usage)))
            if self._stop is not None and not choices:    # the include_usage chunk: the end
                self._done = True
                out.append(ir.MessageStop(self._stop))

    def _tool_calls(self, calls: list, out: list) -> None:
        for tc in calls:
            idx = tc.get("index", 0)
            fn = tc.get("function") or {}
            tid = tc.get("id")
            # a new call: another index, or (servers that send whole calls without
            # an index) another id
            if self._kind != _TOOL or idx != self._tool or (tid and tid != self._tool_id):
                if idx in self._seen_tools and not tid:
                    raise StreamError("interleaved tool-call deltas (a closed call continued) are not supported")
                name = fn.get("name") or ""
                tid = tid or c.synth_id(self._id, idx, name)
                self._open(out, _TOOL, ir.ToolCall(tid, name, {}))
                self._tool = idx
                self._tool_id = tid
                self._seen_tools.add(idx)
            args = fn.get("arguments")
            if args:
                out.append(ir.ToolArgsDelta(self._cur, args))

    def _end(self, out: list) -> None:
        if self._done:
            return
        if self._stop is None:
            raise StreamError("Chat Completions stream ended before its finish_reason (truncated)")
        self._done = True
        out.append(ir.MessageStop(self._stop))


def _error_event(obj: dict, data: bytes) -> ir.ErrorEvent:
    err = obj.get("error")
    if isinstance(err, dict):
        code = err.get("code") or err.get("type")
        message = str(err.get("message") or "upstream stream error")
        status = ERRORS.status_of(err.get("code"), err.get("type"))
    else:
        code, message, status = None, str(err), 500
        data = orjson.dumps({"error": {"message": message}})
    return s.error_event(dialect, status, message, str(code) if code else None, data)


_CHUNK_TAIL = b',"finish_reason":null}]}\n\n'
_REFUSAL_PRE = b'{"refusal":'
_REASONING_PRE = b'{"reasoning_content":'


@s.handlers
class StreamEncoder(s.Encoder):
    """IR -> Chat chunks.  Text, refusal, reasoning and tool-call deltas are
    spliced into a per-stream byte template; reasoning goes out as
    `delta.reasoning_content`, as OpenAI-compatible servers (DeepSeek, vLLM)
    stream it and as the buffered answer carries it (signatures have no Chat
    form); the finish chunk is followed by the usage chunk (`include_usage`)."""

    __slots__ = ("_model", "_base", "_head", "_text", "_tools", "_ntools", "_usage", "_refused",
                 "_include_usage", "_ended")

    def __init__(self, model: str, *, include_usage: bool = True):
        super().__init__()
        self._model = model
        self._base = b""
        self._head = b""        # b'data: {"id":...,"choices":[{"index":0,"delta":'
        self._text: dict[int, bytes] = {}     # IR index -> delta prefix (content / refusal)
        self._tools: dict[int, bytes] = {}    # IR index -> tool-call arguments delta prefix
        self._ntools = 0
        self._usage: ir.Usage | None = None
        self._refused = False
        self._include_usage = include_usage
        self._ended = False

    def _start(self, cid: str) -> None:
        self._base = (b'{"id":' + s.dumps(cid or f"chatcmpl-{uuid.uuid4().hex}")
                      + b',"object":"chat.completion.chunk","created":' + str(int(time.time())).encode()
                      + b',"model":' + s.dumps(self._model) + b',')
        self._head = b"data: " + self._base + b'"choices":[{"index":0,"delta":'

    def _on_MessageStart(self, ev: ir.MessageStart) -> bytes:
        self._start(ev.id)
        if ev.usage is not None:
            self._usage = ev.usage
        return self._head + b'{"role":"assistant","content":""}' + _CHUNK_TAIL

    def _on_BlockStart(self, ev: ir.BlockStart) -> bytes:
        out = b""
        if not self._head:
            out = self._on_MessageStart(ir.MessageStart("", ""))
        t = type(ev.part)
        if t is ir.Text:
            self._text[ev.index] = b'{"content":'
        elif t is ir.Refusal:
            self._text[ev.index] = _REFUSAL_PRE
        elif t is ir.Reasoning:
            self._text[ev.index] = _REASONING_PRE
        elif t is ir.ToolCall:
            k = self._ntools
            self._ntools += 1
            self._tools[ev.index] = b'{"tool_calls":[{"index":' + str(k).encode() + b',"function":{"arguments":'
            call = {"index": k, "id": fit_id(ev.part.id), "type": "function",
                    "function": {"name": ev.part.name, "arguments": ""}}
            out += self._head + b'{"tool_calls":[' + s.dumps(call) + b"]}" + _CHUNK_TAIL
        return out     # redacted reasoning: no Chat form

    def _on_TextDelta(self, ev: ir.TextDelta) -> bytes:
        pre = self._text.get(ev.index)
        if pre is None or not ev.text:
            return b""
        if pre is _REFUSAL_PRE:
            self._refused = True
        return self._head + pre + s.dumps(ev.text) + b"}" + _CHUNK_TAIL

    def _on_ToolArgsDelta(self, ev: ir.ToolArgsDelta) -> bytes:
        pre = self._tools.get(ev.index)
        if pre is None or not ev.partial_json:
            return b""
        return self._head + pre + s.dumps(ev.partial_json) + b"}}]}" + _CHUNK_TAIL

    _on_ReasoningDelta = _on_TextDelta     # the block's prefix says reasoning_content

    def _on_SignatureDelta(self, ev) -> bytes:
        return b""                          # no Chat form

    def _on_BlockStop(self, ev: ir.BlockStop) -> bytes:
        self._text.pop(ev.index, None)
        self._tools.pop(ev.index, None)
        return b""

    def _on_UsageEvent(self, ev: ir.UsageEvent) -> bytes:
        self._usage = ev.usage
        return b""

    def _on_MessageStop(self, ev: ir.MessageStop) -> bytes:
        out = b"" if self._head else self._on_MessageStart(ir.MessageStart("", ""))
        stop = ev.stop_reason
        finish = "stop" if stop is SR.REFUSAL and self._refused else FINISH_OUT[stop]
        out += self._head + b'{},"finish_reason":"' + finish.encode() + b'"}]}\n\n'
        if self._include_usage and self._usage is not None:
            out += (b"data: " + self._base + b'"choices":[],"usage":'
                    + s.dumps(render_usage(self._usage)) + b"}\n\n")
        self._ended = True
        return out

    def finish(self) -> bytes:
        return b"data: [DONE]\n\n" if self._ended and not self._errored else b""

    def _error(self, kind: str, message: str) -> bytes:
        row = ERRORS.row(kind, "api_error")
        return b"data: " + s.dumps({"error": {"message": message, "type": row.type, "param": None,
                                              "code": row.code}}) + b"\n\n"


def deployment_base(base_path: str, model: str) -> str:
    """Azure OpenAI's base for one deployment: every call's own path goes under it."""
    return f"{base_path.rstrip('/')}/deployments/{path_segment(model)}"


class _DeploymentPaths(OpenAIDialect):
    """Upstream addressing only: BASE/deployments/MODEL/ then the call's own
    path (chat/completions; embeddings: `operation_path`)."""

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return super().upstream_path(deployment_base(base_path, model), model, stream)

    def operation_path(self, dialect, base_path: str, model: str, stream: bool) -> str:
        return dialect.upstream_path(deployment_base(base_path, model), model, stream)


_DEPLOYMENTS = _DeploymentPaths()


OpenAIDialect.codec = Codec(_parse_request, _render_request, _parse_response, _render_response,
                            StreamDecoder, StreamEncoder, usage_in)
