"""Google Gemini generateContent
(`POST {base}/v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`).

The model and the stream flag live in the path (`params["model"]`,
`params["action"]`), not the body.  Function calls historically carry no
ids: parsing synthesizes deterministic ones (`common.synth_id`) and pairs
function responses with calls by name, in order; rendering to Gemini leaves
synthesized ids out again.
"""
from __future__ import annotations

import base64
import re
import uuid

import orjson

from busbar import ir
from busbar.faults import ClientError, Fault, FaultClass
from busbar.protocols import casing
from busbar.protocols import common as c
from busbar.protocols import streaming as s
from busbar.protocols.base import (Codec, Dialect, ErrorRow, ErrorTable, Headers, StreamError, bearer_token,
                                   classify_generic, header, path_segment, query_param)

P = "gemini"
# sampling knobs: IR field -> this dialect's name (None: it has none)
SAMPLING = {"temperature": "temperature", "top_p": "topP", "top_k": "topK", "seed": "seed",
            "frequency_penalty": "frequencyPenalty", "presence_penalty": "presencePenalty", "stop": "stopSequences"}
SR = ir.StopReason

_REQUEST_KEYS = frozenset({"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"})
_GC_KEYS = frozenset({"maxOutputTokens", "temperature", "topP", "topK", "seed", "presencePenalty",
                      "frequencyPenalty", "stopSequences", "responseMimeType", "responseJsonSchema",
                      "responseSchema", "thinkingConfig"})
_PART_MAIN = ("text", "inlineData", "fileData", "functionCall", "functionResponse")
_FD_KEYS = frozenset({"name", "description", "parameters", "parametersJsonSchema"})
_RESPONSE_KEYS = frozenset({"candidates", "usageMetadata", "modelVersion", "responseId", "promptFeedback"})
_CAND_KEYS = frozenset({"content", "finishReason", "index"})

FINISH_IN = {"STOP": SR.END_TURN, "MAX_TOKENS": SR.MAX_TOKENS}
for _r in ("SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
           "IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "IMAGE_OTHER"):
    FINISH_IN[_r] = SR.CONTENT_FILTER
FINISH_OUT = {SR.END_TURN: "STOP", SR.STOP_SEQUENCE: "STOP", SR.TOOL_USE: "STOP",
              SR.MAX_TOKENS: "MAX_TOKENS", SR.CONTEXT_WINDOW: "MAX_TOKENS",
              SR.CONTENT_FILTER: "SAFETY", SR.REFUSAL: "SAFETY", SR.PAUSE: "STOP", SR.OTHER: "OTHER"}
_MODES_IN = {"AUTO": "auto", "ANY": "required", "NONE": "none"}
_MODES_OUT = {"auto": "AUTO", "required": "ANY", "none": "NONE", "tool": "ANY"}
_LEVELS = {"minimal": "MINIMAL", "low": "LOW", "medium": "MEDIUM", "high": "HIGH", "xhigh": "XHIGH",
           "max": "XHIGH"}

_GOOGLE_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                  404: "NOT_FOUND", 409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
                  499: "CANCELLED", 500: "INTERNAL", 501: "UNIMPLEMENTED", 502: "UNAVAILABLE",
                  503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_AUTH_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_SERVICE_BLOCKED", "API_KEY_HTTP_REFERRER_BLOCKED",
                           "API_KEY_IP_ADDRESS_BLOCKED", "ACCESS_TOKEN_EXPIRED", "SERVICE_DISABLED",
                           "CONSUMER_INVALID"})
_DELAY = re.compile(r"([0-9.]+)s")


# The error vocabulary, both ways: kind -> (status, the google.rpc status
# name `error.status` carries for it, as _GOOGLE_STATUS names that status).
ERRORS = ErrorTable("gemini", {
    "invalid_request": ErrorRow(400, "INVALID_ARGUMENT"),
    "authentication": ErrorRow(401, "UNAUTHENTICATED"),
    "permission": ErrorRow(403, "PERMISSION_DENIED"),
    "not_found": ErrorRow(404, "NOT_FOUND"),
    "request_too_large": ErrorRow(400, "INVALID_ARGUMENT"),
    "rate_limit": ErrorRow(429, "RESOURCE_EXHAUSTED"),
    "billing": ErrorRow(429, "RESOURCE_EXHAUSTED"),     # Gemini has no billing error of its own
    "overloaded": ErrorRow(503, "UNAVAILABLE"),
    "api_error": ErrorRow(500, "INTERNAL"),
    "upstream": ErrorRow(502, "UNAVAILABLE"),
    "timeout": ErrorRow(504, "DEADLINE_EXCEEDED"),
}, read={"UNAVAILABLE": 503})



def model_path(base_path: str, model: str, action: str) -> str:
    """`{base}/v1beta/models/{model}{action}` for every Gemini call (chat,
    embeddings, token counting).  The model (a `models/` prefix dropped) is
    quoted as one segment: a client-chosen model must never add a path
    segment, a query, or a line to the upstream request."""
    if model.startswith("models/"):
        model = model[7:]
    return f"{base_path.rstrip('/')}/v1beta/models/{path_segment(model)}{action}"


class GeminiDialect(Dialect):
    name = "gemini"
    # request_id_header: none; google-genai reads no request-id header (only `sdk_http_response.headers`)
    vision_markers = (b'"inline_data"', b'"inlineData"')
    json_markers = (b'"responseMimeType"',)
    request_name = "generateContent request"
    # model and streaming are in the path
    body_shape = {"contents": (list,), "systemInstruction": (dict,), "system_instruction": (dict,),
                  "generationConfig": (dict,), "generation_config": (dict,), "tools": (list,)}
    kind_status = ERRORS.status
    usage_field = "usageMetadata"
    daily_quota_reset = "00:00 America/Los_Angeles"   # when AI Studio's per-day quotas reset

    # ---- inbound ---------------------------------------------------------
    def inbound_key(self, headers: Headers, query: bytes) -> str | None:
        key = header(headers, b"x-goog-api-key")
        if key:
            return key.decode("latin-1")
        return (query_param(query, "key") if query else None) or bearer_token(headers)

    def inbound_model(self, params: dict, obj: dict) -> str | None:
        model = params.get("model")
        return model if isinstance(model, str) else None

    def inbound_stream(self, params: dict, obj: dict) -> bool:
        return params.get("action") == "streamGenerateContent"

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        status = err.status
        error: dict = {"code": status, "message": err.message,
                       "status": _GOOGLE_STATUS.get(status, "INTERNAL" if status >= 500 else "FAILED_PRECONDITION")}
        if err.retry_after is not None:
            error["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                 "retryDelay": f"{max(1, int(err.retry_after + 0.999))}s"}]
        return status, self.error_headers(err), orjson.dumps({"error": error})

    # ---- outbound --------------------------------------------------------
    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return model_path(base_path, model, ":streamGenerateContent?alt=sse" if stream else ":generateContent")

    def auth_headers(self, key: str | None) -> Headers:
        return [(b"x-goog-api-key", key.encode())] if key else []

    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes:
        return body    # the model is in the path

    def error_message(self, obj) -> tuple[str, str | None]:
        error = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(error, dict):
            reason = None
            for d in error.get("details") or ():
                if isinstance(d, dict) and d.get("reason"):
                    reason = d["reason"]
            return str(error.get("message") or ""), reason or error.get("status")
        if isinstance(obj, list) and obj:        # streamed JSON-array errors
            return self.error_message(obj[0])
        return "", None

    def classify(self, status: int, headers: Headers, body: bytes) -> Fault:
        obj, message, code = self.error_parts(status, headers, body)
        fault = classify_generic(status, headers, message, code)
        details = []
        if isinstance(obj, dict) and isinstance(obj.get("error"), dict):
            details = [d for d in obj["error"].get("details") or () if isinstance(d, dict)]
        retry_after = fault.retry_after
        windows = set()    # the quota windows QuotaFailure names: "minute", "day"
        for d in details:
            m = _DELAY.fullmatch(str(d.get("retryDelay", "")))
            if m and retry_after is None:
                retry_after = float(m.group(1))
            for v in d.get("violations") or ():
                quota_id = str(v.get("quotaId", "")) if isinstance(v, dict) else ""
                windows.update(w for w, tag in (("minute", "PerMinute"), ("day", "PerDay")) if tag in quota_id)
        if code in _AUTH_REASONS or (status == 400 and "API key not valid" in message):
            return Fault(FaultClass.AUTH, status, message, retry_after, code)
        if status == 429:
            # Gemini says "exceeded your current quota ... billing" for plain
            # rate limits too: a named per-minute or per-day quota is a rate
            # limit (a spent day benches the key until the daily reset, its
            # retryDelay notwithstanding); only a quota with no short retry is billing.
            cls = fault.cls
            window = "day" if "day" in windows else "minute" if windows else None
            if cls is FaultClass.BILLING and (window or (retry_after is not None and retry_after < 300)):
                cls = FaultClass.RATE
            return Fault(cls, status, message, retry_after, code, window)
        if retry_after != fault.retry_after:
            return Fault(fault.cls, status, message, retry_after, code)
        return fault

# ---------------------------------------------------------------------------
# parsing


def _sig_out(part: ir.Reasoning) -> str | None:
    # thoughtSignature is bytes (base64): a foreign signature is tagged and encoded whole
    return None if part.signature is None else c.sig_out_b64(part, P)


class _Ids:
    """Tool-call ids for one parse: the vendor's when present, else
    synthesized from (seed, ordinal, name); results pair by name, in order."""
    __slots__ = ("seed", "n", "pending")

    def __init__(self, seed: str):
        self.seed = seed
        self.n = 0
        self.pending: dict[str, list[str]] = {}

    def call(self, fc: dict) -> str:
        name = fc.get("name", "")
        tid = fc.get("id") or c.synth_id(self.seed, self.n, name)
        self.n += 1
        self.pending.setdefault(name, []).append(tid)
        return tid

    def result(self, fr: dict) -> str:
        name = fr.get("name", "")
        queue = self.pending.get(name)
        if fr.get("id"):
            if queue and fr["id"] in queue:
                queue.remove(fr["id"])
            return fr["id"]
        if queue:
            return queue.pop(0)
        self.n += 1
        return c.synth_id(self.seed, "orphan", self.n, name)


def _media(blob: dict, url: bool):
    mime = blob.get("mimeType")
    if url:
        if mime and mime.startswith("image/"):
            return ir.Image(url=blob["fileUri"], media_type=mime)
        return ir.Document(url=blob["fileUri"], media_type=mime)
    if mime and mime.startswith("image/"):
        return ir.Image(data=blob["data"], media_type=mime)
    return ir.Document(data=blob["data"], media_type=mime)


def _tool_content(response: dict) -> tuple[list, bool]:
    if len(response) == 1:
        if "output" in response:
            out = response["output"]
            return [ir.Text(out) if isinstance(out, str) else ir.JsonData(out)], False
        if "error" in response:
            err = response["error"]
            return [ir.Text(err) if isinstance(err, str) else ir.JsonData(err)], True
    return [ir.JsonData(response)], False


def _part(p: dict, ids: _Ids):
    rest = p.keys() - {"thought", "thoughtSignature"}
    if "text" in p and p.get("thought"):
        sig, origin = c.sig_in_b64(p.get("thoughtSignature"), P)
        return ir.Reasoning(p["text"], sig, origin, c.extras_of(p, {"text", "thought", "thoughtSignature"}, P))
    for key in _PART_MAIN:
        if key in p:
            ext = c.extras_of(p, {key}, P)
            if key == "text":
                return ir.Text(p["text"], ext)
            if key == "functionCall":
                fc = p["functionCall"]
                tid = ids.call(fc)
                rest = {k: v for k, v in fc.items() if k not in ("name", "args", "id")}
                if rest:
                    ext = c.with_note(ext, P, "$fc", rest)
                return ir.ToolCall(tid, fc["name"], fc.get("args") or {}, None, ext)
            if key == "functionResponse":
                fr = p["functionResponse"]
                content, is_error = _tool_content(fr.get("response") or {})
                for x in fr.get("parts") or ():
                    if "inlineData" in x:
                        content.append(_media(x["inlineData"], False))
                    elif "fileData" in x:
                        content.append(_media(x["fileData"], True))
                return ir.ToolResult(ids.result(fr), content, is_error, fr.get("name"), ext)
            part = _media(p[key], key == "fileData")
            part.extras = ext
            return part
    return ir.Opaque(P, next(iter(rest), "part"), p)


def _content_parts(content: dict, ids: _Ids) -> list:
    return [_part(p, ids) for p in content.get("parts") or ()]


def _lower_types(schema):
    """Gemini's OpenAPI-subset Schema uses upper-case type names."""
    if isinstance(schema, dict):
        out = {}
        for k, v in schema.items():
            if k == "type" and isinstance(v, str):
                out[k] = v.lower()
            elif k in ("properties",) and isinstance(v, dict):
                out[k] = {pk: _lower_types(pv) for pk, pv in v.items()}
            elif k in ("items", "anyOf"):
                out[k] = _lower_types(v)
            else:
                out[k] = v
        return out
    if isinstance(schema, list):
        return [_lower_types(x) for x in schema]
    return schema


def _parse_request(obj: dict) -> ir.Request:
    obj = casing.normalise(obj, casing.GEMINI_REQUEST)   # proto3 JSON: snake_case names too
    ids = _Ids("gemini")
    messages = []
    for i, m in enumerate(c.require_list(obj, "contents")):
        role = m.get("role") or "user"
        if role not in ("user", "model"):
            raise c.bad(f"contents[{i}].role", f"unknown role {role!r}")
        messages.append(ir.Message(ir.ASSISTANT if role == "model" else ir.USER,
                                   _content_parts(m, ids), c.extras_of(m, {"role", "parts"}, P)))
    req = ir.Request(messages)
    si = obj.get("systemInstruction")
    if si is not None:
        if isinstance(si, str):
            req.system = [ir.Text(si)]
        else:
            req.system = _content_parts(si, ids)
            if any(type(p) is not ir.Text for p in req.system):
                raise c.bad("systemInstruction", "only text parts are allowed")
    extras = c.extras_of(obj, _REQUEST_KEYS, P) or {}
    for t in obj.get("tools") or ():
        decls = t.get("functionDeclarations")
        if decls is not None and len(t) == 1:
            for fd in decls:
                ext = c.extras_of(fd, _FD_KEYS, P)
                if "parametersJsonSchema" in fd:
                    params = fd["parametersJsonSchema"]
                elif "parameters" in fd:
                    params = _lower_types(fd["parameters"])
                    ext = c.with_note(ext, P, "$parameters", fd["parameters"])
                else:
                    params = None
                req.tools.append(ir.Tool(fd["name"], params, fd.get("description"), None, ext))
        else:
            req.tools.append(ir.Opaque(P, next(iter(t), "tool"), t))
    fcc = (obj.get("toolConfig") or {}).get("functionCallingConfig")
    if fcc is not None:
        mode = fcc.get("mode", "AUTO")
        names = fcc.get("allowedFunctionNames")
        rest = {k: v for k, v in fcc.items() if k not in ("mode", "allowedFunctionNames")}
        if mode == "ANY" and names and len(names) == 1:
            req.tool_choice = ir.ToolChoice("tool", names[0])
        elif mode in _MODES_IN and not names:
            req.tool_choice = ir.ToolChoice(_MODES_IN[mode])
        else:
            rest = fcc
        if rest:
            extras.setdefault(P, {})["toolConfig"] = {"functionCallingConfig": rest}
    gc = obj.get("generationConfig")
    if gc:
        req.max_tokens = gc.get("maxOutputTokens")
        c.read_sampling(gc, req, SAMPLING)
        mime = gc.get("responseMimeType")
        rest = {k: v for k, v in gc.items() if k not in _GC_KEYS}
        if "responseJsonSchema" in gc:
            req.response_format = ir.ResponseFormat("json_schema", gc["responseJsonSchema"])
        elif "responseSchema" in gc:
            req.response_format = ir.ResponseFormat("json_schema", _lower_types(gc["responseSchema"]))
            extras.setdefault(P, {})["$responseSchema"] = gc["responseSchema"]
        elif mime == "application/json":
            req.response_format = ir.ResponseFormat("json_object")
        elif mime == "text/plain":
            req.response_format = ir.ResponseFormat("text")
        elif mime is not None:
            rest["responseMimeType"] = mime
        tc = gc.get("thinkingConfig")
        if tc is not None:
            cfg = ir.ReasoningConfig()
            budget = tc.get("thinkingBudget")
            if budget == -1:
                cfg.enabled = True
            else:
                cfg.budget_tokens = budget
            if tc.get("thinkingLevel") is not None:
                cfg.effort = tc["thinkingLevel"].lower()
            req.reasoning = cfg
            tc_rest = {k: v for k, v in tc.items() if k not in ("thinkingBudget", "thinkingLevel")}
            if tc_rest:
                extras.setdefault(P, {})["$thinkingConfig"] = tc_rest
        if rest:
            extras.setdefault(P, {})["generationConfig"] = rest
    req.extras = extras or None
    return req


# ---------------------------------------------------------------------------
# rendering


def _blob(p, ctx: c.RenderCtx, where: str) -> dict | None:
    if p.data is not None:
        if not p.media_type:
            ctx.unsupported(f"{where}.media_type", "Gemini inline data needs a MIME type")
            return None
        return {"inlineData": {"mimeType": p.media_type, "data": p.data}}
    if type(p) is ir.Document and p.text is not None:
        return {"inlineData": {"mimeType": "text/plain",
                               "data": base64.b64encode(p.text.encode()).decode()}}
    mime = p.media_type or c.guess_media_type(p.url or "")
    if not mime:
        ctx.unsupported(f"{where}.url", "Gemini file URIs need a MIME type (unknown for this URL)")
        return None
    return {"fileData": {"mimeType": mime, "fileUri": p.url}}


_NO_DATA = object()


def _tool_response(p: ir.ToolResult, ctx: c.RenderCtx, where: str) -> tuple[dict, list]:
    texts: list[str] = []
    data = _NO_DATA          # JSON `null` is data too (a tool may return it)
    media: list = []
    n_media = sum(1 for x in p.content if type(x) is ir.Image or type(x) is ir.Document)
    for j, x in enumerate(p.content):
        t = type(x)
        if t is ir.Text:
            ctx.foreign(x.extras, f"{where}.content[{j}].")
            texts.append(x.text)
        elif t is ir.JsonData:
            if len(p.content) - n_media == 1:
                data = x.value
            else:
                texts.append(c.json_text(x.value))
        elif t is ir.Image or t is ir.Document:
            b = _blob(x, ctx, f"{where}.content[{j}]")
            if b is not None:
                media.append(b)
        else:
            ctx.unsupported(f"{where}.content[{j}]", f"{c.part_kind(x)} in a tool result")
    if data is not _NO_DATA:
        if p.is_error:
            return {"error": data}, media
        return (data if isinstance(data, dict) else {"output": data}), media
    value = "\n".join(texts) if len(texts) != 1 else texts[0]
    return {"error" if p.is_error else "output": value}, media


def _parts(m: ir.Message, ctx: c.RenderCtx, where: str, names: dict) -> list:
    out = []
    for j, p in enumerate(m.content):
        t = type(p)
        w = f"{where}[{j}]"
        if t is ir.Text:
            ctx.foreign(p.extras, f"{w}.")
            out.append(c.splice({"text": p.text}, p.extras, P))
        elif t is ir.ToolCall:
            ctx.foreign(p.extras, f"{w}.")
            fc: dict = {"name": p.name, "args": c.args_object(p, ctx, f"{w}.")}
            if not c.is_synth_id(p.id):
                fc["id"] = p.id
            extra_fc = c.note(p.extras, P, "$fc")
            if extra_fc:
                fc.update(extra_fc)
            out.append(c.splice({"functionCall": fc}, p.extras, P))
        elif t is ir.ToolResult:
            ctx.foreign(p.extras, f"{w}.")
            name = p.name or names.get(p.id)
            if name is None:
                raise ClientError(400, f"Tool result {p.id!r} answers no tool call in this conversation;"
                                  " Gemini needs the function name.", param=f"{w}.tool_use_id")
            response, media = _tool_response(p, ctx, w)
            fr: dict = {"name": name, "response": response}
            if not c.is_synth_id(p.id):
                fr["id"] = p.id
            if media:
                fr["parts"] = media
            out.append(c.splice({"functionResponse": fr}, p.extras, P))
        elif t is ir.Image or t is ir.Document:
            ctx.foreign(p.extras, f"{w}.")
            if t is ir.Image and p.detail not in (None, "auto"):
                ctx.hint(f"{w}.detail", "Gemini has no image detail setting")
            b = _blob(p, ctx, w)
            if b is not None:
                out.append(c.splice(b, p.extras, P))
        elif t is ir.Reasoning:
            if c.foreign_reasoning(p, ctx, w):
                continue
            ctx.foreign(p.extras, f"{w}.")
            th: dict = {"text": p.text, "thought": True}
            if p.signature is not None:
                th["thoughtSignature"] = p.signature
            out.append(c.splice(th, p.extras, P))
        elif t is ir.RedactedReasoning:
            c.foreign_reasoning(p, ctx, w) or ctx.hint(w, "Gemini has no redacted reasoning")
        elif t is ir.Refusal:
            out.append({"text": p.text})
        elif t is ir.JsonData:
            out.append({"text": c.json_text(p.value)})
        elif t is ir.Opaque:
            raw = ctx.opaque(p, f"{w}.")
            if raw is not None:
                out.append(raw)
    return out


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    # `model` travels in the path for this protocol, not in the body
    names = c.tool_names(req.messages)
    contents: list[dict] = []
    for i, m in enumerate(req.messages):
        if m.role == ir.SYSTEM:
            continue
        where = f"messages[{i}]"
        ctx.foreign(m.extras, f"{where}.")
        role = "model" if m.role == ir.ASSISTANT else "user"
        parts = _parts(m, ctx, f"{where}.content", names)
        if not parts and m.content:
            continue    # everything in it was dropped
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
        c.splice(contents[-1], m.extras, P)
    body: dict = {"contents": contents}
    system = c.system_texts(req, ctx)
    if system:
        for j, p in enumerate(system):
            ctx.foreign(p.extras, f"system[{j}].")
        body["systemInstruction"] = {"parts": [c.splice({"text": p.text}, p.extras, P) for p in system]}
    if req.tools:
        decls: list = []
        tools: list = []
        for i, t in c.each_tool(req.tools, ctx, tools):
            if t.strict:
                ctx.hint(f"tools[{i}].strict", "Gemini has no strict schema flag")
            fd: dict = {"name": t.name}
            if t.description is not None:
                fd["description"] = t.description
            original = c.note(t.extras, P, "$parameters")
            if original is not None:
                fd["parameters"] = original
            elif t.parameters is not None:
                fd["parametersJsonSchema"] = t.parameters
            decls.append(c.splice(fd, t.extras, P))
        if decls:
            tools.insert(0, {"functionDeclarations": decls})
        body["tools"] = tools
    tool_config = c.note(req.extras, P, "toolConfig")
    tc = req.tool_choice
    if tc is not None:
        fcc: dict = {"mode": _MODES_OUT[tc.mode]}
        if tc.mode == "tool":
            fcc["allowedFunctionNames"] = [tc.name]
        body["toolConfig"] = {"functionCallingConfig": fcc}
    elif tool_config is not None:
        body["toolConfig"] = tool_config
    if req.parallel_tool_calls is False:
        ctx.unsupported("parallel_tool_calls", "Gemini cannot disable parallel function calls")
    gc: dict = dict(c.note(req.extras, P, "generationConfig") or {})
    max_tokens = req.max_tokens if req.max_tokens is not None else max_tokens_default
    if max_tokens is not None:
        gc["maxOutputTokens"] = max_tokens
    c.write_sampling(req, gc, SAMPLING, ctx)
    rf = req.response_format
    if rf is not None:
        if rf.type == "text":
            gc["responseMimeType"] = "text/plain"
        else:
            gc["responseMimeType"] = "application/json"
            if rf.type == "json_schema" and rf.schema is not None:
                original = c.note(req.extras, P, "$responseSchema")
                if original is not None:
                    gc["responseSchema"] = original
                else:
                    gc["responseJsonSchema"] = rf.schema
    cfg = req.reasoning
    if cfg is not None:
        th: dict = dict(c.note(req.extras, P, "$thinkingConfig") or {})
        if cfg.budget_tokens is not None:
            th["thinkingBudget"] = cfg.budget_tokens
        elif cfg.enabled is False or cfg.effort == "none":
            th["thinkingBudget"] = 0
        elif cfg.effort is None and cfg.enabled:
            th["thinkingBudget"] = -1
        if cfg.effort is not None and cfg.effort != "none":
            th["thinkingLevel"] = _LEVELS.get(cfg.effort, "LOW")
        gc["thinkingConfig"] = th
    if gc:
        body["generationConfig"] = gc
    if req.user is not None:
        ctx.hint("user", "Gemini has no end-user field")
    if req.metadata:
        ctx.hint("metadata", "Gemini API has no request metadata")
    ctx.foreign(req.extras, "")
    return c.splice(body, req.extras, P)


# ---------------------------------------------------------------------------
# responses


def _parse_response(obj: dict) -> ir.Response:
    rid = obj.get("responseId") or ""
    cands = obj.get("candidates") or []
    extras = c.extras_of(obj, _RESPONSE_KEYS, P)
    if not cands:
        stop = SR.CONTENT_FILTER if (obj.get("promptFeedback") or {}).get("blockReason") else SR.OTHER
        content: list = []
        raw_finish = None
    else:
        cand = cands[0]
        content = _content_parts(cand.get("content") or {}, _Ids(rid))
        raw_finish = cand.get("finishReason")
        stop = c.infer_stop(content, FINISH_IN.get(raw_finish, SR.OTHER if raw_finish else SR.END_TURN))
        rest = {k: v for k, v in cand.items() if k not in _CAND_KEYS}
        if rest:
            extras = c.with_note(extras, P, "$candidate", rest)
    if raw_finish is not None and raw_finish != FINISH_OUT[stop]:
        extras = c.with_note(extras, P, "$finish", raw_finish)
    if obj.get("promptFeedback") is not None:
        extras = c.with_note(extras, P, "$promptFeedback", obj["promptFeedback"])
    u = obj.get("usageMetadata") or {}
    usage = usage_in(u)
    u_rest = {k: v for k, v in u.items() if k not in ("promptTokenCount", "candidatesTokenCount",
                                                      "thoughtsTokenCount", "cachedContentTokenCount",
                                                      "totalTokenCount")}
    if u_rest:
        extras = c.with_note(extras, P, "$usage", u_rest)
    return ir.Response(rid, obj.get("modelVersion") or "", content, stop, None, usage, extras)


def render_usage(u: ir.Usage) -> dict:
    out = {"promptTokenCount": u.input_tokens,
           "candidatesTokenCount": max(0, u.output_tokens - u.reasoning_tokens),
           "totalTokenCount": u.total}
    if u.reasoning_tokens:
        out["thoughtsTokenCount"] = u.reasoning_tokens
    if u.cached_tokens:
        out["cachedContentTokenCount"] = u.cached_tokens
    return out


def _render_response(resp: ir.Response, model: str) -> dict:
    parts = []
    for p in resp.content:
        t = type(p)
        if t is ir.Text or t is ir.Refusal:
            parts.append(c.splice({"text": p.text}, p.extras, P))
        elif t is ir.ToolCall:
            fc: dict = {"name": p.name, "args": p.arguments}
            if not c.is_synth_id(p.id):
                fc["id"] = p.id
            extra_fc = c.note(p.extras, P, "$fc")
            if extra_fc:
                fc.update(extra_fc)
            parts.append(c.splice({"functionCall": fc}, p.extras, P))
        elif t is ir.Reasoning:
            th: dict = {"text": p.text, "thought": True}
            sig = _sig_out(p)
            if sig is not None:
                th["thoughtSignature"] = sig
            parts.append(c.splice(th, p.extras, P))
        elif t is ir.Image and p.data is not None:
            parts.append({"inlineData": {"mimeType": p.media_type or "image/png", "data": p.data}})
        elif t is ir.Opaque and p.protocol == P:
            parts.append(p.raw)
    finish = c.note(resp.extras, P, "$finish")
    if finish is None or FINISH_IN.get(finish, SR.OTHER) is not resp.stop_reason:
        finish = FINISH_OUT[resp.stop_reason]
    cand: dict = {"content": {"role": "model", "parts": parts}, "finishReason": finish, "index": 0}
    extra_cand = c.note(resp.extras, P, "$candidate")
    if extra_cand:
        cand.update(extra_cand)
    usage = render_usage(resp.usage)
    extra_usage = c.note(resp.extras, P, "$usage")
    if extra_usage:
        usage.update(extra_usage)
    body: dict = {"candidates": [cand], "usageMetadata": usage, "modelVersion": model,
                  "responseId": resp.id or uuid.uuid4().hex}
    pf = c.note(resp.extras, P, "$promptFeedback")
    if pf is not None:
        body["promptFeedback"] = pf
        if not parts and pf.get("blockReason"):
            body["candidates"] = []
    return c.splice(body, resp.extras, P)


dialect = GeminiDialect()


# ---------------------------------------------------------------------------
# streaming: streamGenerateContent?alt=sse <-> IR events (busbar.protocols.streaming)



def usage_in(u: dict) -> ir.Usage:
    thoughts = u.get("thoughtsTokenCount") or 0
    return ir.Usage(u.get("promptTokenCount") or 0, (u.get("candidatesTokenCount") or 0) + thoughts,
                    u.get("cachedContentTokenCount") or 0, 0, thoughts, u.get("totalTokenCount"))


_TEXT, _THOUGHT = 1, 2


class StreamDecoder(s.SequentialBlockDecoder):
    """GenerateContentResponse chunks -> IR.  Gemini has no block events and
    sends each function call whole: consecutive text (or thought) parts form
    one block; a function call is a block of its own (start, all arguments,
    stop) with the id the buffered parse gives it (`_Ids`).  usageMetadata is
    cumulative on every chunk; the last one is sent before the MessageStop,
    which waits for the end of the body (Gemini has no end event)."""

    __slots__ = ("_started", "_ids", "_stop", "_usage", "_tools", "_done")
    protocol = P

    def __init__(self):
        super().__init__()
        self._started = False
        self._ids: _Ids | None = None
        self._stop: SR | None = None
        self._usage: dict | None = None
        self._tools = False
        self._done = False

    def _event(self, name, data: bytes, out: list) -> None:
        if self._done:
            return
        obj = s.loads(data)
        if isinstance(obj, list):        # a JSON-array framing slipped in: take its chunks
            for item in obj:
                self._event(name, s.dumps(item), out)
            return
        err = obj.get("error")
        if err:
            self._done = True
            if not isinstance(err, dict):
                err = {"message": str(err)}
            code = err.get("code")
            out.append(s.error_event(dialect, code if isinstance(code, int) and 400 <= code < 600 else 500,
                                     str(err.get("message") or "upstream stream error"), err.get("status"), data))
            return
        u = obj.get("usageMetadata")
        if not self._started:
            self._started = True
            rid = obj.get("responseId") or ""
            self._ids = _Ids(rid)
            out.append(ir.MessageStart(rid, obj.get("modelVersion") or "",
                                       ir.Usage(u.get("promptTokenCount") or 0) if u else None))
        if u:
            self._usage = u
        cands = obj.get("candidates")
        if not cands:
            if (obj.get("promptFeedback") or {}).get("blockReason"):
                self._close(out)
                self._stop = SR.CONTENT_FILTER
            return
        cand = cands[0]
        content = cand.get("content")
        if content:
            for p in content.get("parts") or ():
                self._part(p, out)
        finish = cand.get("finishReason")
        if finish:
            self._close(out)
            stop = FINISH_IN.get(finish, SR.OTHER)
            self._stop = SR.TOOL_USE if stop is SR.END_TURN and self._tools else stop

    def _part(self, p: dict, out: list) -> None:
        text = p.get("text")
        if text is not None:
            if p.get("thought"):
                i = self._cur if self._kind == _THOUGHT else self._open(out, _THOUGHT, ir.Reasoning("", None, P))
                if text:
                    out.append(ir.ReasoningDelta(i, text))
                if p.get("thoughtSignature"):
                    out.append(ir.SignatureDelta(i, p["thoughtSignature"]))
            elif text:
                i = self._cur if self._kind == _TEXT else self._open(out, _TEXT, ir.Text(""))
                out.append(ir.TextDelta(i, text))
            return
        fc = p.get("functionCall")
        if fc is not None:
            self._close(out)
            self._tools = True
            extras = {P: {"thoughtSignature": p["thoughtSignature"]}} if p.get("thoughtSignature") else None
            i = self._next
            self._next += 1
            out.append(ir.BlockStart(i, ir.ToolCall(self._ids.call(fc), fc.get("name") or "", {}, None, extras)))
            out.append(ir.ToolArgsDelta(i, orjson.dumps(fc.get("args") or {}).decode()))
            out.append(ir.BlockStop(i))
        # inline data, executable code...: no IR stream form

    def _end(self, out: list) -> None:
        if self._done:
            return
        if self._stop is None:
            raise StreamError("Gemini stream ended before a finishReason (truncated)")
        self._close(out)
        if self._usage:
            out.append(ir.UsageEvent(usage_in(self._usage)))
        self._done = True
        out.append(ir.MessageStop(self._stop))


_B_TEXT, _B_THOUGHT, _B_CALL = 1, 2, 3


@s.handlers
class StreamEncoder(s.Encoder):
    """IR -> GenerateContentResponse chunks.  Each text or thought delta is a
    chunk of its own; a function call is buffered until its block stops (the
    Gemini API sends calls whole); the last chunk carries the finishReason
    and usageMetadata."""

    __slots__ = ("_model", "_tail", "_blocks", "_usage", "_rid")

    def __init__(self, model: str):
        super().__init__()
        self._model = model
        self._rid = ""
        self._tail = b""     # b'],"role":"model"},"index":0}],"modelVersion":..,"responseId":..}\r\n\r\n'
        self._blocks: dict[int, list] = {}    # IR index -> [kind, origin or ToolCall, argument chunks]
        self._usage: ir.Usage | None = None

    def _start(self, rid: str) -> None:
        self._rid = rid or uuid.uuid4().hex
        self._tail = (b'],"role":"model"},"index":0}],"modelVersion":' + s.dumps(self._model)
                      + b',"responseId":' + s.dumps(self._rid) + b"}\r\n\r\n")

    def _chunk(self, part: bytes) -> bytes:
        return b'data: {"candidates":[{"content":{"parts":[' + part + self._tail

    def _on_MessageStart(self, ev: ir.MessageStart) -> bytes:
        self._start(ev.id)
        if ev.usage is not None:
            self._usage = ev.usage
        return b""

    def _on_BlockStart(self, ev: ir.BlockStart) -> bytes:
        if not self._tail:
            self._start("")
        part = ev.part
        t = type(part)
        if t is ir.Text or t is ir.Refusal:
            self._blocks[ev.index] = [_B_TEXT, None, None]
        elif t is ir.Reasoning:
            self._blocks[ev.index] = [_B_THOUGHT, part.origin, None]
        elif t is ir.ToolCall:
            self._blocks[ev.index] = [_B_CALL, part, []]
        return b""       # redacted reasoning: no Gemini form

    def _on_TextDelta(self, ev: ir.TextDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _B_TEXT or not ev.text:
            return b""
        return self._chunk(b'{"text":' + s.dumps(ev.text) + b"}")

    def _on_ReasoningDelta(self, ev: ir.ReasoningDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _B_THOUGHT or not ev.text:
            return b""
        return self._chunk(b'{"text":' + s.dumps(ev.text) + b',"thought":true}')

    def _on_SignatureDelta(self, ev: ir.SignatureDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _B_THOUGHT:
            return b""
        sig = _sig_out(ir.Reasoning("", ev.signature, b[1]))
        return self._chunk(s.dumps({"text": "", "thought": True, "thoughtSignature": sig}))

    def _on_ToolArgsDelta(self, ev: ir.ToolArgsDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is not None and b[0] == _B_CALL:
            b[2].append(ev.partial_json)
        return b""

    def _on_BlockStop(self, ev: ir.BlockStop) -> bytes:
        b = self._blocks.pop(ev.index, None)
        if b is None or b[0] != _B_CALL:
            return b""
        call = b[1]
        args, raw = c.args_from_str("".join(b[2]))   # not a JSON object: Gemini can only say {}
        fc: dict = {"name": call.name, "args": args}
        if call.id and not c.is_synth_id(call.id):
            fc["id"] = call.id
        part: dict = {"functionCall": fc}
        sig = c.note(call.extras, P, "thoughtSignature")
        if sig is not None:
            part["thoughtSignature"] = sig
        return self._chunk(s.dumps(part))

    def _on_UsageEvent(self, ev: ir.UsageEvent) -> bytes:
        self._usage = ev.usage
        return b""

    def _on_MessageStop(self, ev: ir.MessageStop) -> bytes:
        if not self._tail:
            self._start("")
        out = self._stop_open_blocks()
        cand = {"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": FINISH_OUT[ev.stop_reason],
                "index": 0}
        body: dict = {"candidates": [cand]}
        if self._usage is not None:
            body["usageMetadata"] = render_usage(self._usage)
        body["modelVersion"] = self._model
        body["responseId"] = self._rid
        return out + b"data: " + s.dumps(body) + b"\r\n\r\n"

    def _error(self, kind: str, message: str) -> bytes:
        row = ERRORS.row(kind, "api_error")
        error = {"code": row.status, "message": message, "status": row.type}
        return b"data: " + s.dumps({"error": error}) + b"\r\n\r\n"


GeminiDialect.codec = Codec(_parse_request, _render_request, _parse_response, _render_response,
                            StreamDecoder, StreamEncoder, usage_in)
