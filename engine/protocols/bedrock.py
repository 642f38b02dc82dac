"""AWS Bedrock Converse (`POST /model/{modelId}/converse`, `/converse-stream`).

The model id and the stream flag live in the path (`params["model"]`,
`params["action"]`).  Requests are signed with SigV4 by the gateway
(`busbar.aws.sigv4`), so this module adds no auth header and reads no key.
Errors are restJson: the exception name travels in `x-amzn-ErrorType`
(botocore picks the exception class from it) and the body is `{"message"}`.
"""
from __future__ import annotations

import re
import time

import orjson

from busbar import ir
from busbar.aws import eventstream as es
from busbar.aws.sigv4 import Credentials, SignatureError, sign, verify
from busbar.faults import ClientError, Fault, FaultClass
from busbar.protocols import common as c
from busbar.protocols import streaming as s
from busbar.protocols.base import (Codec, ErrorRow, ErrorTable, Dialect, Headers, StreamError, classify_generic, header,
                                   path_segment)

P = "bedrock"
# sampling knobs: IR field -> this dialect's name (None: it has none)
SAMPLING = {"temperature": "temperature", "top_p": "topP", "seed": None, "frequency_penalty": None,
            "presence_penalty": None, "stop": "stopSequences"}   # top_k: additionalModelRequestFields
SR = ir.StopReason

_REQUEST_KEYS = frozenset({"messages", "system", "inferenceConfig", "toolConfig",
                           "additionalModelRequestFields", "outputConfig", "requestMetadata"})
_RESPONSE_KEYS = frozenset({"output", "stopReason", "usage", "metrics", "additionalModelResponseFields"})
_USAGE_KEYS = frozenset({"inputTokens", "outputTokens", "totalTokens", "cacheReadInputTokens",
                         "cacheWriteInputTokens"})

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}
DOC_FORMATS = {"application/pdf": "pdf", "text/csv": "csv", "application/msword": "doc",
               "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
               "application/vnd.ms-excel": "xls",
               "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
               "text/html": "html", "text/plain": "txt", "text/markdown": "md"}
DOC_TYPES = {v: k for k, v in DOC_FORMATS.items()}

STOP_IN = {"end_turn": SR.END_TURN, "tool_use": SR.TOOL_USE, "max_tokens": SR.MAX_TOKENS,
           "stop_sequence": SR.STOP_SEQUENCE, "guardrail_intervened": SR.CONTENT_FILTER,
           "content_filtered": SR.CONTENT_FILTER, "malformed_model_output": SR.OTHER,
           "malformed_tool_use": SR.OTHER, "model_context_window_exceeded": SR.CONTEXT_WINDOW}
STOP_OUT = {SR.END_TURN: "end_turn", SR.TOOL_USE: "tool_use", SR.MAX_TOKENS: "max_tokens",
            SR.STOP_SEQUENCE: "stop_sequence", SR.CONTENT_FILTER: "content_filtered",
            SR.REFUSAL: "content_filtered", SR.CONTEXT_WINDOW: "model_context_window_exceeded",
            SR.PAUSE: "end_turn", SR.OTHER: "malformed_model_output"}

# The error vocabulary, both ways: kind -> (status, the exception name of
# an HTTP error as botocore raises it (client.exceptions.<name>), the
# exception frame that ends a ConverseStream); the frames' names read back.
ERRORS = ErrorTable("bedrock", {
    "invalid_request": ErrorRow(400, "ValidationException", event="validationException"),
    "authentication": ErrorRow(403, "UnrecognizedClientException", event="internalServerException"),
    "permission": ErrorRow(403, "AccessDeniedException", event="internalServerException"),
    "not_found": ErrorRow(404, "ResourceNotFoundException", event="internalServerException"),
    "request_too_large": ErrorRow(400, "ValidationException", event="validationException"),
    "rate_limit": ErrorRow(429, "ThrottlingException", event="throttlingException"),
    "billing": ErrorRow(429, "ThrottlingException", event="throttlingException"),
    "overloaded": ErrorRow(503, "ServiceUnavailableException", event="serviceUnavailableException"),
    "api_error": ErrorRow(500, "InternalServerException", event="internalServerException"),
    "upstream": ErrorRow(502, "InternalServerException", event="modelStreamErrorException"),
    "timeout": ErrorRow(408, "ModelTimeoutException", event="modelStreamErrorException"),
}, read={  # exception frames as the HTTP status they stand for
    "internalServerException": 500, "modelStreamErrorException": 500, "modelErrorException": 500,
    "modelNotReadyException": 429, "serviceQuotaExceededException": 400, "accessDeniedException": 403,
    "resourceNotFoundException": 404, "modelTimeoutException": 408,
})
_RATE = frozenset({"ThrottlingException", "ModelNotReadyException", "TooManyRequestsException",
                   "ServiceQuotaExceededException"})
_AUTH = frozenset({"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException",
                   "AccessDeniedException", "IncompleteSignatureException",
                   "MissingAuthenticationTokenException", "InvalidClientTokenId"})
_SERVER = frozenset({"ModelErrorException", "ModelTimeoutException", "InternalServerException",
                     "ServiceUnavailableException", "ModelStreamErrorException",
                     "ResourceNotFoundException", "InternalFailure"})

fit_id = c.id_fitter(64, re.compile(r"[^a-zA-Z0-9_.:-]"))
_BAD_NAME = re.compile(r"[^A-Za-z0-9\-()\[\] ]|(?<= ) ")


class SigV4Signer:
    """Signs each upstream call with the provider's AWS credentials (built
    once at config load; the region comes from the config or the base URL)."""

    __slots__ = ("credentials", "region", "host")

    def __init__(self, credentials, region: str, host: str):
        self.credentials = credentials
        self.region = region
        self.host = host

    def __call__(self, path: str, headers: Headers, body: bytes) -> Headers:
        return [(k.lower().encode(), v.encode()) for k, v in sign(
            "POST", path, "", headers, body, credentials=self.credentials, region=self.region, host=self.host)]



# Anthropic beta flags Claude on Bedrock serves (AWS's Claude Messages API
# guide); Bedrock refuses any other with "invalid beta flag".  A flag from
# an Anthropic client's header that is not listed is dropped with a hint;
# the flags a Bedrock client sent itself go as they are.
BEDROCK_BETAS = frozenset({
    "computer-use-2024-10-22", "computer-use-2025-01-24", "computer-use-2025-11-24",
    "token-efficient-tools-2025-02-19", "interleaved-thinking-2025-05-14", "output-128k-2025-02-19",
    "dev-full-thinking-2025-05-14", "context-1m-2025-08-07", "context-management-2025-06-27",
    "effort-2025-11-24", "tool-search-tool-2025-10-19", "tool-examples-2025-10-29",
    "fine-grained-tool-streaming-2025-05-14",
})


def claude_model(model: str) -> bool:
    """Whether a Bedrock model id (or inference profile, or ARN) is a Claude model."""
    low = model.lower()
    return "anthropic." in low or "claude" in low


def claude_betas(req, ctx: c.RenderCtx) -> list[str]:
    """The beta flags to send Claude on Bedrock: those a Bedrock client gave
    (`$beta`), then those of an Anthropic client's header (`$header_beta`)
    that Bedrock serves; the others are reported as dropped hints."""
    betas = list(c.note(req.extras, "anthropic", "$beta") or ())
    for flag in c.note(req.extras, "anthropic", "$header_beta") or ():
        if flag in betas:
            continue
        if flag in BEDROCK_BETAS:
            betas.append(flag)
        else:
            ctx.hint("anthropic-beta", f"the beta {flag!r} is not one Claude on Bedrock serves")
    return betas


def resource_id(model: str) -> str:
    """The id an ARN names (`arn:aws:bedrock:us-east-1:1234:inference-profile/smart` -> `smart`;
    an application inference profile's, a foundation model's), so a client may
    address a pool by the ARN its listing shows; a plain id as it is."""
    return model.rsplit("/", 1)[-1] if model.startswith("arn:") else model


def model_path(base_path: str, model: str, action: str) -> str:
    """`{base}/model/{modelId}/{action}` for every Bedrock call (Converse,
    ConverseStream, InvokeModel), the model id quoted as one segment."""
    return f"{base_path.rstrip('/')}/model/{path_segment(model)}/{action}"


class BedrockDialect(Dialect):
    name = "bedrock"
    request_id_header = b"x-amzn-requestid"      # botocore's `ResponseMetadata.RequestId`, errors too
    request_name = "Converse request"
    # model and streaming are in the path
    body_shape = {"messages": (list,), "system": (list,), "inferenceConfig": (dict,), "toolConfig": (dict,)}
    kind_status = ERRORS.status
    error_headers_kept = (b"x-amzn-errortype",)     # botocore names the exception from it

    # ---- inbound ---------------------------------------------------------
    def inbound_key(self, headers: Headers, query: bytes) -> str | None:
        return None    # SigV4: see verify_signed

    signed_requests = True
    tool_fields = ("toolConfig",)
    vision_markers = (b'"image"',)

    def verify_signed(self, method: str, path: str, query: str, headers: Headers, body: bytes,
                      lookup_secret) -> str:
        try:
            return verify(method, path, query, headers, body, lookup_secret=lookup_secret)
        except SignatureError as exc:
            raise ClientError(403, exc.message, "permission", code=exc.code) from None

    def inbound_model(self, params: dict, obj: dict) -> str | None:
        model = params.get("model")
        return resource_id(model) if isinstance(model, str) else None

    def inbound_stream(self, params: dict, obj: dict) -> bool:
        return params.get("action") == "converse-stream"

    no_route_code = "UnknownOperationException"
    no_route_hint = ("Busbar serves Bedrock's POST /model/{modelId}/converse, /converse-stream, /invoke, "
                     "/invoke-with-response-stream and /count-tokens, and GET /inference-profiles and "
                     "/foundation-models (the pools); other Bedrock operations (guardrails, async invoke, "
                     "batch and customization jobs, ...) are not served.")

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        # an AWS exception name given explicitly (e.g. by the SigV4 verifier) wins
        if err.code and err.code.endswith("Exception"):
            name = err.code
        else:
            name = ERRORS.row(err.kind, "invalid_request").type
        headers = self.error_headers(err)
        headers.append((b"x-amzn-errortype", name.encode()))
        return err.status, headers, orjson.dumps({"message": err.message})

    # ---- outbound --------------------------------------------------------
    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return model_path(base_path, model, "converse-stream" if stream else "converse")

    def auth_headers(self, key: str | None) -> Headers:
        return []

    def build_signer(self, spec: dict, host: str):
        if spec.get("access_key_id") and spec.get("secret_access_key"):
            credentials = Credentials(spec["access_key_id"], spec["secret_access_key"], spec.get("session_token"))
        else:
            credentials = Credentials.from_env()
        region = spec.get("region")
        if not region:
            m = re.search(r"bedrock-runtime[.-]([a-z0-9-]+)\.amazonaws", spec["base_url"])
            region = m.group(1) if m else "us-east-1"
        return None if credentials is None else SigV4Signer(credentials, region, host)

    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes:
        return body    # the model is in the path

    def error_message(self, obj) -> tuple[str, str | None]:
        if isinstance(obj, dict):
            message = obj.get("message") or obj.get("Message") or ""
            code = obj.get("__type") or obj.get("code") or obj.get("Code")
            return str(message), _error_name(code) if isinstance(code, str) else None
        return "", None

    def header_code(self, headers: Headers) -> str | None:
        raw = header(headers, b"x-amzn-errortype")
        return _error_name(raw.decode("latin-1")) if raw else None

    def classify(self, status: int, headers: Headers, body: bytes) -> Fault:
        _, message, code = self.error_parts(status, headers, body)
        fault = classify_generic(status, headers, message, code)
        if code in _RATE:
            return Fault(FaultClass.RATE, status, message, fault.retry_after, code)
        if code in _AUTH:
            return Fault(FaultClass.AUTH, status, message, fault.retry_after, code)
        if code in _SERVER:
            return Fault(FaultClass.SERVER, status, message, fault.retry_after, code)
        return fault

def _error_name(code: str) -> str:
    """botocore's rule: drop anything after ':' and before the last '#'."""
    return code.split(":", 1)[0].rsplit("#", 1)[-1]


# ---------------------------------------------------------------------------
# parsing


def _image(img: dict):
    media_type = f"image/{img['format']}"
    src = img["source"]
    if "bytes" in src:
        return ir.Image(data=src["bytes"], media_type=media_type)
    if "s3Location" in src:
        loc = src["s3Location"]
        ext = {P: {"$bucketOwner": loc["bucketOwner"]}} if "bucketOwner" in loc else None
        return ir.Image(url=loc["uri"], media_type=media_type, extras=ext)
    return None


def _document(doc: dict):
    media_type = DOC_TYPES.get(doc.get("format", "txt"))
    src = doc["source"]
    ext = c.extras_of(doc, {"format", "name", "source"}, P)
    if "bytes" in src:
        return ir.Document(data=src["bytes"], media_type=media_type, name=doc.get("name"), extras=ext)
    if "text" in src:
        return ir.Document(text=src["text"], media_type=media_type, name=doc.get("name"), extras=ext)
    if "s3Location" in src:
        return ir.Document(url=src["s3Location"]["uri"], media_type=media_type, name=doc.get("name"), extras=ext)
    return None


def _block(b: dict):
    if type(b) is not dict:
        raise TypeError("a content block is an object")    # parse_request locates it
    if "text" in b:
        return ir.Text(b["text"])
    if "image" in b:
        part = _image(b["image"])
    elif "document" in b:
        part = _document(b["document"])
    elif "toolUse" in b:
        tu = b["toolUse"]
        return ir.ToolCall(tu["toolUseId"], tu["name"], tu.get("input") or {}, None,
                           c.extras_of(tu, {"toolUseId", "name", "input"}, P))
    elif "toolResult" in b:
        tr = b["toolResult"]
        parts = []
        for x in tr.get("content") or ():
            if "text" in x:
                parts.append(ir.Text(x["text"]))
            elif "json" in x:
                parts.append(ir.JsonData(x["json"]))
            else:
                parts.append(_block(x))
        return ir.ToolResult(tr["toolUseId"], parts, tr.get("status") == "error", None,
                             c.extras_of(tr, {"toolUseId", "content", "status"}, P))
    elif "reasoningContent" in b:
        rc = b["reasoningContent"]
        if "reasoningText" in rc:
            rt = rc["reasoningText"]
            sig, origin = c.sig_in(rt.get("signature"), P)
            return ir.Reasoning(rt["text"], sig, origin)
        if "redactedContent" in rc:
            data, origin = c.sig_in_b64(rc["redactedContent"], P)     # a blob: base64
            return ir.RedactedReasoning(data, origin)
        part = None
    else:
        part = None
    if part is None:
        return ir.Opaque(P, next(iter(b), "block"), b)
    return part


_CACHE_POINT = {"cachePoint": {"type": "default"}}


def _with_cache_points(blocks: list, parse) -> list:
    """Parsed blocks, each `cachePoint` folded into the part before it as a
    `$cachePoint` note (so Anthropic can say it as `cache_control`)."""
    out: list = []
    for b in blocks:
        if "cachePoint" in b and len(b) == 1 and out and type(out[-1]) is not ir.Opaque:
            out[-1].extras = c.with_note(out[-1].extras, P, "$cachePoint", b["cachePoint"])
        else:
            out.append(parse(b))
    return out


def _cache_point(part) -> dict | None:
    """The cachePoint block to send after `part`, if it is a cache breakpoint."""
    if not c.cache_breakpoint(part.extras):
        return None
    own = c.note(part.extras, P, "$cachePoint")
    return {"cachePoint": own} if own is not None else _CACHE_POINT


def _parse_request(obj: dict) -> ir.Request:
    messages = []
    for i, m in enumerate(c.require_list(obj, "messages")):
        role = m["role"]
        if role not in ("user", "assistant", "system"):
            raise c.bad(f"messages[{i}].role", f"unknown role {role!r}")
        messages.append(ir.Message(role, _with_cache_points(m["content"], _block)))
    req = ir.Request(messages)
    extras = c.extras_of(obj, _REQUEST_KEYS, P) or {}
    guard = []
    for b in obj.get("system") or ():
        if "text" in b:
            req.system.append(ir.Text(b["text"]))
        elif "cachePoint" in b and req.system:
            req.system[-1].extras = {P: {"$cachePoint": b["cachePoint"]}}
        else:
            guard.append(b)
    if guard:
        extras.setdefault(P, {})["system"] = guard
    ic = obj.get("inferenceConfig") or {}
    req.max_tokens = ic.get("maxTokens")
    c.read_sampling(ic, req, SAMPLING)
    tcfg = obj.get("toolConfig")
    if tcfg is not None:
        for t in tcfg.get("tools") or ():
            spec = t.get("toolSpec")
            if "cachePoint" in t and req.tools and type(req.tools[-1]) is ir.Tool:
                req.tools[-1].extras = c.with_note(req.tools[-1].extras, P, "$cachePoint", t["cachePoint"])
                continue
            if spec is not None:
                schema = (spec.get("inputSchema") or {}).get("json")
                req.tools.append(ir.Tool(spec["name"], schema, spec.get("description"), spec.get("strict"),
                                         c.extras_of(spec, {"name", "inputSchema", "description", "strict"}, P)))
            else:
                req.tools.append(ir.Opaque(P, next(iter(t), "tool"), t))
        choice = tcfg.get("toolChoice")
        if choice is not None:
            if "auto" in choice:
                req.tool_choice = ir.ToolChoice("auto")
            elif "any" in choice:
                req.tool_choice = ir.ToolChoice("required")
            elif "tool" in choice:
                req.tool_choice = ir.ToolChoice("tool", choice["tool"]["name"])
    amrf = obj.get("additionalModelRequestFields")
    if amrf:
        amrf = dict(amrf)
        top_k = amrf.pop("top_k", None)
        if top_k is not None:
            req.top_k = top_k
        beta = amrf.pop("anthropic_beta", None)
        if isinstance(beta, list) and beta:     # Claude's beta flags: the Anthropic family's note (anthropic.betas_of)
            extras.setdefault("anthropic", {})["$beta"] = beta
        elif beta is not None:
            amrf["anthropic_beta"] = beta
        th = amrf.pop("thinking", None)
        if isinstance(th, dict):
            req.reasoning = ir.ReasoningConfig(enabled=th.get("type") != "disabled",
                                               budget_tokens=th.get("budget_tokens"))
        elif th is not None:
            amrf["thinking"] = th
        if amrf:
            extras.setdefault(P, {})["additionalModelRequestFields"] = amrf
    oc = obj.get("outputConfig")
    if oc:
        tf = oc.get("textFormat")
        if tf is not None:
            js = tf["structure"]["jsonSchema"]
            schema = js["schema"]
            req.response_format = ir.ResponseFormat(
                "json_schema", orjson.loads(schema) if isinstance(schema, str) else schema,
                js.get("name"), None, js.get("description"))
        if oc.get("effort") is not None:
            if req.reasoning is None:
                req.reasoning = ir.ReasoningConfig()
            req.reasoning.effort = oc["effort"]
    if obj.get("requestMetadata") is not None:
        req.metadata = obj["requestMetadata"]
    req.extras = extras or None
    return req


# ---------------------------------------------------------------------------
# rendering


def _image_block(p: ir.Image, ctx: c.RenderCtx, where: str) -> dict | None:
    ctx.foreign(p.extras, f"{where}.")
    if p.detail not in (None, "auto"):
        ctx.hint(f"{where}.detail", "Bedrock has no image detail setting")
    fmt = IMAGE_FORMATS.get(p.media_type or "") or (
        IMAGE_FORMATS.get(c.guess_media_type(p.url) or "") if p.url else None)
    if fmt is None:
        ctx.unsupported(f"{where}.media_type", "Bedrock images must be png, jpeg, gif or webp")
        return None
    if p.data is not None:
        src: dict = {"bytes": p.data}
    elif p.url and p.url.startswith("s3://"):
        loc = {"uri": p.url}
        owner = c.note(p.extras, P, "$bucketOwner")
        if owner is not None:
            loc["bucketOwner"] = owner
        src = {"s3Location": loc}
    else:
        ctx.unsupported(f"{where}.url", "Bedrock takes image bytes or S3 locations; Busbar does not fetch URLs")
        return None
    return {"image": {"format": fmt, "source": src}}


def _document_block(p: ir.Document, ctx: c.RenderCtx, where: str) -> dict | None:
    ctx.foreign(p.extras, f"{where}.")
    fmt = DOC_FORMATS.get(p.media_type or "") or (
        DOC_FORMATS.get(c.guess_media_type(p.url) or "") if p.url else None)
    if p.text is not None:
        src: dict = {"text": p.text}
        fmt = fmt or "txt"
    elif p.data is not None:
        src = {"bytes": p.data}
    elif p.url and p.url.startswith("s3://"):
        src = {"s3Location": {"uri": p.url}}
    else:
        ctx.unsupported(f"{where}.url", "Bedrock takes document bytes, text or S3 locations; Busbar does not fetch URLs")
        return None
    if fmt is None:
        ctx.unsupported(f"{where}.media_type", f"Bedrock document formats are {sorted(DOC_TYPES)}")
        return None
    name = _BAD_NAME.sub("-", p.name or "document") or "document"
    return {"document": c.splice({"format": fmt, "name": name, "source": src}, p.extras, P)}


def _blocks(parts: list, ctx: c.RenderCtx, where: str) -> list:
    out = []
    many = len(parts) > 1
    for j, p in enumerate(parts):
        before = len(out)
        _block_out(p, ctx, f"{where}[{j}]", many, out)
        if len(out) > before and type(p) is not ir.Opaque and p.extras:     # an Opaque has no extras
            cp = _cache_point(p)
            if cp is not None:
                out.append(cp)
    return out


def _block_out(p, ctx: c.RenderCtx, w: str, many: bool, out: list) -> None:
    t = type(p)
    if t is ir.Text or t is ir.Refusal:
        if many and not p.text:
            return        # Bedrock rejects blank text blocks
        ctx.foreign(p.extras, f"{w}.")
        out.append({"text": p.text})
    elif t is ir.ToolCall:
        ctx.foreign(p.extras, f"{w}.")
        out.append({"toolUse": c.splice({"toolUseId": fit_id(p.id), "name": p.name,
                                         "input": c.args_object(p, ctx, f"{w}.")}, p.extras, P)})
    elif t is ir.ToolResult:
        ctx.foreign(p.extras, f"{w}.")
        content = []
        for k, x in enumerate(p.content):
            tx = type(x)
            if tx is ir.Text:
                ctx.foreign(x.extras, f"{w}.content[{k}].")
                content.append({"text": x.text})
            elif tx is ir.JsonData:
                content.append({"json": x.value})
            elif tx is ir.Image:
                b = _image_block(x, ctx, f"{w}.content[{k}]")
                if b is not None:
                    content.append(b)
            elif tx is ir.Document:
                b = _document_block(x, ctx, f"{w}.content[{k}]")
                if b is not None:
                    content.append(b)
            else:
                ctx.unsupported(f"{w}.content[{k}]", f"{c.part_kind(x)} in a tool result")
        tr: dict = {"toolUseId": fit_id(p.id), "content": content}
        if p.is_error:
            tr["status"] = "error"
        out.append({"toolResult": c.splice(tr, p.extras, P)})
    elif t is ir.Image:
        b = _image_block(p, ctx, w)
        if b is not None:
            out.append(b)
    elif t is ir.Document:
        b = _document_block(p, ctx, w)
        if b is not None:
            out.append(b)
    elif t is ir.JsonData:
        out.append({"text": c.json_text(p.value)})
    elif t is ir.Reasoning:
        if c.foreign_reasoning(p, ctx, w):
            return
        rt: dict = {"text": p.text}
        if p.signature is not None:
            rt["signature"] = p.signature
        out.append({"reasoningContent": {"reasoningText": rt}})
    elif t is ir.RedactedReasoning:
        if c.foreign_reasoning(p, ctx, w):
            return
        out.append({"reasoningContent": {"redactedContent": p.data}})
    elif t is ir.Opaque:
        raw = ctx.opaque(p, f"{w}.")
        if raw is not None:
            out.append(raw)


def _has_tool_blocks(req: ir.Request) -> bool:
    for m in req.messages:
        for p in m.content:
            if type(p) is ir.ToolCall or type(p) is ir.ToolResult:
                return True
    return False


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    # `model` travels in the path for this protocol, not in the body
    messages: list[dict] = []
    for i, m in enumerate(req.messages):
        if m.role == ir.SYSTEM:
            continue
        where = f"messages[{i}]"
        ctx.foreign(m.extras, f"{where}.")
        blocks = _blocks(m.content, ctx, f"{where}.content")
        if not blocks and m.content:
            continue    # everything in it was dropped
        if messages and messages[-1]["role"] == m.role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": m.role, "content": blocks})
    for msg in messages:
        blocks = msg["content"]
        if msg["role"] == ir.USER:
            n = sum(1 for b in blocks if "toolResult" in b)
            if n and any("toolResult" not in b for b in blocks[:n]):
                msg["content"] = [b for b in blocks if "toolResult" in b] + [b for b in blocks if "toolResult" not in b]
    body: dict = {"messages": messages}
    system = []
    for j, p in enumerate(c.system_texts(req, ctx)):
        ctx.foreign(p.extras, f"system[{j}].")
        if p.text:      # Bedrock rejects blank system text
            system.append({"text": p.text})
        cp = _cache_point(p)
        if cp is not None:
            system.append(cp)
    guard = c.note(req.extras, P, "system")
    if guard:
        system.extend(guard)
    if system:
        body["system"] = system
    ic: dict = {}
    max_tokens = req.max_tokens if req.max_tokens is not None else max_tokens_default
    if max_tokens is not None:
        ic["maxTokens"] = max_tokens
    c.write_sampling(req, ic, SAMPLING, ctx, {"temperature": (1, "Bedrock accepts 0..1")})
    if ic:
        body["inferenceConfig"] = ic
    tc = req.tool_choice
    if req.tools and not (tc is not None and tc.mode == "none" and not _has_tool_blocks(req)):
        tools = []
        for i, t in c.each_tool(req.tools, ctx, tools):
            spec: dict = {"name": t.name}
            if t.description:
                spec["description"] = t.description
            spec["inputSchema"] = {"json": t.parameters if t.parameters is not None
                                   else {"type": "object", "properties": {}}}
            if t.strict is not None:
                spec["strict"] = t.strict
            tools.append({"toolSpec": c.splice(spec, t.extras, P)})
            cp = _cache_point(t)
            if cp is not None:
                tools.append(cp)
        tool_config: dict = {"tools": tools}
        if tc is not None:
            if tc.mode == "auto":
                tool_config["toolChoice"] = {"auto": {}}
            elif tc.mode == "required":
                tool_config["toolChoice"] = {"any": {}}
            elif tc.mode == "tool":
                tool_config["toolChoice"] = {"tool": {"name": tc.name}}
            else:
                ctx.unsupported("tool_choice", "Bedrock has no tool choice 'none' once tools are in the conversation")
        body["toolConfig"] = tool_config
    elif tc is not None and not req.tools:
        ctx.hint("tool_choice", "Bedrock takes a tool choice only together with tools")
    if req.parallel_tool_calls is False:
        ctx.unsupported("parallel_tool_calls", "Bedrock cannot disable parallel tool use")
    amrf: dict = dict(c.note(req.extras, P, "additionalModelRequestFields") or {})
    if req.top_k is not None:
        amrf["top_k"] = req.top_k
    oc: dict = {}
    cfg = req.reasoning
    if cfg is not None:
        # Claude-family `thinking` rides in additionalModelRequestFields;
        # effort is Converse's own outputConfig.effort.
        if c.reasoning_off(cfg):
            amrf["thinking"] = {"type": "disabled"}
        elif cfg.budget_tokens is not None:
            amrf["thinking"] = {"type": "enabled", "budget_tokens": cfg.budget_tokens}
        elif cfg.effort is None:
            ctx.hint("reasoning", "thinking enabled without a budget or effort")
        if cfg.effort is not None and cfg.effort != "none":
            oc["effort"] = cfg.effort
    betas = claude_betas(req, ctx) if claude_model(model) else None
    if betas:
        amrf["anthropic_beta"] = betas
    if amrf:
        body["additionalModelRequestFields"] = amrf
    rf = req.response_format
    if rf is not None:
        if rf.type == "json_schema":
            js: dict = {"schema": orjson.dumps(rf.schema or {}).decode()}
            if rf.name is not None:
                js["name"] = rf.name
            if rf.description is not None:
                js["description"] = rf.description
            oc["textFormat"] = {"type": "json_schema", "structure": {"jsonSchema": js}}
        elif rf.type == "json_object":
            ctx.unsupported("response_format", "Bedrock structured output needs a JSON schema")
    if oc:
        body["outputConfig"] = oc
    if req.metadata:
        if all(isinstance(v, str) for v in req.metadata.values()):
            body["requestMetadata"] = req.metadata
        else:
            ctx.hint("metadata", "Bedrock request metadata values must be strings")
    if req.user is not None:
        ctx.hint("user", "Bedrock has no end-user field")
    ctx.foreign(req.extras, "")
    return c.splice(body, req.extras, P)


# ---------------------------------------------------------------------------
# responses


def _parse_response(obj: dict) -> ir.Response:
    msg = (obj.get("output") or {}).get("message") or {}
    content = [_block(b) for b in msg.get("content") or ()]
    raw = obj.get("stopReason")
    stop = c.infer_stop(content, STOP_IN.get(raw, SR.END_TURN))
    extras = c.extras_of(obj, _RESPONSE_KEYS, P)
    if raw is not None and raw != STOP_OUT[stop]:
        extras = c.with_note(extras, P, "$stop", raw)
    amrf = obj.get("additionalModelResponseFields")
    stop_seq = None
    if isinstance(amrf, dict):
        stop_seq = (amrf.get("delta") or {}).get("stop_sequence")
        extras = c.with_note(extras, P, "$amrf", amrf)
    if obj.get("metrics") is not None:
        extras = c.with_note(extras, P, "$metrics", obj["metrics"])
    u = obj.get("usage") or {}
    usage = usage_in(u)
    u_rest = {k: v for k, v in u.items() if k not in _USAGE_KEYS}
    if u_rest:
        extras = c.with_note(extras, P, "$usage", u_rest)
    return ir.Response("", "", content, stop, stop_seq, usage, extras)


def render_usage(u: ir.Usage) -> dict:
    out = {"inputTokens": max(0, u.input_tokens - u.cached_tokens - u.cache_creation_tokens),
           "outputTokens": u.output_tokens, "totalTokens": u.total}
    if u.cached_tokens:
        out["cacheReadInputTokens"] = u.cached_tokens
    if u.cache_creation_tokens:
        out["cacheWriteInputTokens"] = u.cache_creation_tokens
    return out


def _render_response(resp: ir.Response, model: str) -> dict:
    blocks = []
    for p in resp.content:
        t = type(p)
        if t is ir.Text or t is ir.Refusal:
            blocks.append({"text": p.text})
        elif t is ir.ToolCall:
            blocks.append({"toolUse": c.splice({"toolUseId": p.id, "name": p.name, "input": p.arguments},
                                               p.extras, P)})
        elif t is ir.Reasoning:
            rt: dict = {"text": p.text}
            sig = c.sig_out(p, P)
            if sig is not None:
                rt["signature"] = sig
            blocks.append({"reasoningContent": {"reasoningText": rt}})
        elif t is ir.RedactedReasoning:
            blocks.append({"reasoningContent": {"redactedContent": c.sig_out_b64(p, P)}})
        elif t is ir.Opaque and p.protocol == P:
            blocks.append(p.raw)
    stop = c.note(resp.extras, P, "$stop")
    if stop is None or STOP_IN.get(stop) is not resp.stop_reason:
        stop = STOP_OUT[resp.stop_reason]
    usage = render_usage(resp.usage)
    extra_usage = c.note(resp.extras, P, "$usage")
    if extra_usage:
        usage.update(extra_usage)
    body: dict = {"output": {"message": {"role": "assistant", "content": blocks}}, "stopReason": stop,
                  "usage": usage, "metrics": c.note(resp.extras, P, "$metrics") or {"latencyMs": 0}}
    amrf = c.note(resp.extras, P, "$amrf")
    if amrf is not None:
        body["additionalModelResponseFields"] = amrf
    elif resp.stop_sequence is not None:
        body["additionalModelResponseFields"] = {"delta": {"stop_sequence": resp.stop_sequence}}
    return c.splice(body, resp.extras, P)


dialect = BedrockDialect()


# ---------------------------------------------------------------------------
# streaming: ConverseStream eventstream frames <-> IR events (busbar.protocols.streaming)


def usage_in(u: dict) -> ir.Usage:
    read = u.get("cacheReadInputTokens") or 0
    write = u.get("cacheWriteInputTokens") or 0
    return ir.Usage((u.get("inputTokens") or 0) + read + write, u.get("outputTokens") or 0, read, write, 0,
                    u.get("totalTokens"))


_TEXT, _TOOL, _REASONING, _REDACTED = 1, 2, 3, 4


class FrameDecoder:
    """Eventstream framing and its failures, shared by the ConverseStream and
    InvokeModel stream decoders: `feed` hands each frame to `_message`; a
    framing or payload error fails the decoder for good."""

    __slots__ = ("_frames", "_failed")
    _what = "eventstream event"       # named in a malformed payload's error

    def feed(self, data: bytes) -> list[ir.Event]:
        if self._failed:
            raise StreamError("decoder already failed")
        out: list = []
        try:
            for m in self._frames.feed(data):
                self._message(m, out)
            for e in out:
                ir.check_event(e)      # as the SSE decoders (busbar.protocols.streaming)
        except StreamError:
            self._failed = True
            raise
        except es.EventStreamError as exc:
            self._failed = True
            raise StreamError(f"malformed eventstream frame: {exc}") from None
        except s.MALFORMED as exc:
            self._failed = True
            raise StreamError(f"malformed {self._what}: {exc!r}"[:300]) from None
        return out

    def _close_frames(self) -> None:
        try:
            self._frames.close()
        except es.EventStreamError as exc:
            self._failed = True
            raise StreamError(str(exc)) from None

    def _message(self, m: es.Message, out: list) -> None:
        raise NotImplementedError


class StreamDecoder(FrameDecoder):
    """ConverseStream frames -> IR.  Text and reasoning blocks start with
    their first delta (Bedrock has no text contentBlockStart); the stop
    reason (messageStop) is held until the usage (metadata) that follows it.
    Exception and error frames become an ErrorEvent whose `raw` names the
    exception the way `BedrockDialect.classify` reads it; the `p` padding of
    real payloads is ignored."""

    __slots__ = ("_blocks", "_next", "_stop", "_seq", "_tools", "_done")
    _what = "ConverseStream event"

    def __init__(self):
        self._frames = es.Decoder()
        self._blocks: dict[int, list] = {}    # open blocks: contentBlockIndex -> [IR index, kind]
        self._next = 0
        self._stop: SR | None = None
        self._seq: str | None = None
        self._tools = False
        self._done = False
        self._failed = False

    def close(self) -> list[ir.Event]:
        self._close_frames()
        out: list = []
        if not self._done:
            if self._stop is None:
                self._failed = True
                raise StreamError("ConverseStream ended before messageStop (truncated)")
            self._done = True
            out.append(ir.MessageStop(self._stop, self._seq))
        return out

    def _open(self, wire: int, kind: int, part, out: list) -> int:
        i = self._next
        self._next += 1
        self._blocks[wire] = [i, kind]
        out.append(ir.BlockStart(i, part))
        return i

    def _message(self, m: es.Message, out: list) -> None:
        if self._done:
            return
        h = m.headers
        mt = h.get(":message-type")
        if mt != "event":
            self._error(mt, h, m.payload, out)
            return
        et = h[":event-type"]
        obj = s.loads(m.payload) if m.payload else {}
        if et == "contentBlockDelta":
            wire = obj["contentBlockIndex"]
            d = obj["delta"]
            b = self._blocks.get(wire)
            if "text" in d:
                i = b[0] if b is not None else self._open(wire, _TEXT, ir.Text(""), out)
                if d["text"]:
                    out.append(ir.TextDelta(i, d["text"]))
            elif "toolUse" in d:
                i = b[0] if b is not None else self._open(wire, _TOOL, ir.ToolCall("", "", {}), out)
                if d["toolUse"].get("input"):
                    out.append(ir.ToolArgsDelta(i, d["toolUse"]["input"]))
            elif "reasoningContent" in d:
                rc = d["reasoningContent"]
                if "redactedContent" in rc:
                    if b is None:
                        self._open(wire, _REDACTED, ir.RedactedReasoning(rc["redactedContent"], P), out)
                    return
                i = b[0] if b is not None else self._open(wire, _REASONING, ir.Reasoning("", None, P), out)
                if rc.get("text"):
                    out.append(ir.ReasoningDelta(i, rc["text"]))
                if rc.get("signature"):
                    out.append(ir.SignatureDelta(i, rc["signature"]))
            # citations, images, tool results: no IR stream form
        elif et == "contentBlockStart":
            tu = (obj.get("start") or {}).get("toolUse")
            if tu is not None:
                self._tools = True
                self._open(obj["contentBlockIndex"], _TOOL, ir.ToolCall(tu.get("toolUseId") or "", tu.get("name") or "", {}),
                           out)
        elif et == "contentBlockStop":
            b = self._blocks.pop(obj["contentBlockIndex"], None)
            if b is not None:
                out.append(ir.BlockStop(b[0]))
        elif et == "messageStart":
            out.append(ir.MessageStart("", ""))
        elif et == "messageStop":
            for b in self._blocks.values():
                out.append(ir.BlockStop(b[0]))
            self._blocks.clear()
            stop = STOP_IN.get(obj.get("stopReason"), SR.END_TURN)
            self._stop = SR.TOOL_USE if stop is SR.END_TURN and self._tools else stop
            amrf = obj.get("additionalModelResponseFields")
            if isinstance(amrf, dict):
                self._seq = (amrf.get("delta") or {}).get("stop_sequence")
        elif et == "metadata":
            if obj.get("usage"):
                out.append(ir.UsageEvent(usage_in(obj["usage"])))
            if self._stop is not None:
                self._done = True
                out.append(ir.MessageStop(self._stop, self._seq))

    def _error(self, mt, h: dict, payload: bytes, out: list) -> None:
        self._done = True
        out.append(exception_event(mt, h, payload))


def exception_event(mt, h: dict, payload: bytes) -> ir.ErrorEvent:
    """An eventstream `exception` (modelled: `:exception-type`, `{"message"}`)
    or `error` frame (`:error-code`, `:error-message`) as the ErrorEvent that
    ends a stream, its `raw` naming the exception the way
    `BedrockDialect.classify` reads it (ConverseStream and
    InvokeModelWithResponseStream share them)."""
    if mt == "exception":
        et = h.get(":exception-type") or "internalServerException"
        obj = s.loads(payload) if payload else {}
        message = str(obj.get("message") or obj.get("Message") or et) if isinstance(obj, dict) else et
        status = ERRORS.status_of(et)
    elif mt == "error":
        et = str(h.get(":error-code") or "InternalFailure")
        message = str(h.get(":error-message") or et)
        status = 500
    else:
        raise StreamError(f"eventstream frame with :message-type {mt!r}")
    name = et[:1].upper() + et[1:]          # the exception's name as x-amzn-ErrorType spells it
    return s.error_event(dialect, status, message, name, orjson.dumps({"message": message, "__type": name}))


def exception_frame(kind: str, message: str) -> bytes:
    """The exception frame that ends a Bedrock stream with an error of `kind`
    (botocore raises it as EventStreamError)."""
    return es.encode(es.exception_message(ERRORS.row(kind, "api_error").event, s.dumps({"message": message})))


def _frame(event_type: str, payload: bytes) -> bytes:
    return es.encode(es.event_message(event_type, payload))


@s.handlers
class StreamEncoder(s.Encoder):
    """IR -> ConverseStream frames: messageStart, contentBlockStart (tool use
    only), contentBlockDelta, contentBlockStop (every block, text included),
    messageStop, then metadata with the usage.  Errors are exception frames,
    which botocore raises as EventStreamError."""

    content_type = b"application/vnd.amazon.eventstream"
    __slots__ = ("_started", "_blocks", "_next", "_usage", "_t0")

    def __init__(self, model: str):
        super().__init__()
        self._started = False
        self._blocks: dict[int, tuple] = {}    # IR index -> (kind, delta payload prefix, origin)
        self._next = 0
        self._usage: ir.Usage | None = None
        self._t0 = time.monotonic()

    def _on_MessageStart(self, ev: ir.MessageStart) -> bytes:
        self._started = True
        if ev.usage is not None:
            self._usage = ev.usage
        return _frame("messageStart", b'{"role":"assistant"}')

    def _on_BlockStart(self, ev: ir.BlockStart) -> bytes:
        out = self._ensure_started()
        part = ev.part
        t = type(part)
        k = str(self._next).encode()
        pre = b'{"contentBlockIndex":' + k + b',"delta":'
        if t is ir.Text or t is ir.Refusal:
            self._blocks[ev.index] = (_TEXT, pre, None)
        elif t is ir.ToolCall:
            self._blocks[ev.index] = (_TOOL, pre, None)
            start = {"contentBlockIndex": self._next,
                     "start": {"toolUse": {"toolUseId": fit_id(part.id or "tooluse"), "name": part.name}}}
            out += _frame("contentBlockStart", s.dumps(start))
        elif t is ir.Reasoning:
            self._blocks[ev.index] = (_REASONING, pre, part.origin)
        elif t is ir.RedactedReasoning:
            self._blocks[ev.index] = (_REDACTED, pre, None)
            data = c.sig_out_b64(part, P)        # a blob: a tagged foreign one is base64 as a whole
            out += _frame("contentBlockDelta", pre + s.dumps({"reasoningContent": {"redactedContent": data}}) + b"}")
        else:
            return out
        self._next += 1
        return out

    def _on_TextDelta(self, ev: ir.TextDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _TEXT or not ev.text:
            return b""
        return _frame("contentBlockDelta", b[1] + b'{"text":' + s.dumps(ev.text) + b"}}")

    def _on_ToolArgsDelta(self, ev: ir.ToolArgsDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _TOOL or not ev.partial_json:
            return b""
        return _frame("contentBlockDelta", b[1] + b'{"toolUse":{"input":' + s.dumps(ev.partial_json) + b"}}}")

    def _on_ReasoningDelta(self, ev: ir.ReasoningDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _REASONING or not ev.text:
            return b""
        return _frame("contentBlockDelta", b[1] + b'{"reasoningContent":{"text":' + s.dumps(ev.text) + b"}}}")

    def _on_SignatureDelta(self, ev: ir.SignatureDelta) -> bytes:
        b = self._blocks.get(ev.index)
        if b is None or b[0] != _REASONING:
            return b""
        sig = c.sig_out(ir.Reasoning("", ev.signature, b[2]), P)
        return _frame("contentBlockDelta", b[1] + b'{"reasoningContent":{"signature":' + s.dumps(sig) + b"}}}")

    def _on_BlockStop(self, ev: ir.BlockStop) -> bytes:
        b = self._blocks.pop(ev.index, None)
        if b is None:
            return b""
        return _frame("contentBlockStop", b[1][:-9] + b"}")    # {"contentBlockIndex":k}

    def _on_UsageEvent(self, ev: ir.UsageEvent) -> bytes:
        self._usage = ev.usage
        return b""

    def _on_MessageStop(self, ev: ir.MessageStop) -> bytes:
        out = self._ensure_started() + self._stop_open_blocks()
        stop: dict = {"stopReason": STOP_OUT[ev.stop_reason]}
        if ev.stop_sequence is not None:
            stop["additionalModelResponseFields"] = {"delta": {"stop_sequence": ev.stop_sequence}}
        meta = {"usage": render_usage(self._usage or ir.Usage()),
                "metrics": {"latencyMs": int((time.monotonic() - self._t0) * 1000)}}
        return out + _frame("messageStop", s.dumps(stop)) + _frame("metadata", s.dumps(meta))

    def _error(self, kind: str, message: str) -> bytes:
        return exception_frame(kind, message)


BedrockDialect.codec = Codec(_parse_request, _render_request, _parse_response, _render_response,
                             StreamDecoder, StreamEncoder, usage_in)
