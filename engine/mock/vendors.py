"""Each simulated vendor's wire: replies rendered by the protocol modules
themselves (so the mock speaks exactly what the gateway's codecs define and
the official SDKs accept), plus each vendor's real error bodies (statuses
and strings from shared/reference/protocols.md)."""
from __future__ import annotations

import re
import uuid

import orjson

from busbar import ir
from busbar.faults import ClientError
from busbar.protocols import get_dialect
from busbar.protocols.routes import match_route  # noqa: F401  (re-exported for the mock server)

SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def class_for_status(status: int) -> str:
    return {400: "invalid", 401: "auth", 403: "auth", 402: "billing", 429: "rate", 529: "overloaded",
            503: "unavailable"}.get(status, "server" if status >= 500 else "invalid")


# fault class -> (status, ClientError kind, message, code) per vendor: what
# that vendor really sends, so the gateway's classifiers are tested on it.
_OPENAI_ERRORS = {
    "invalid": (400, "invalid_request", "Invalid request.", None),
    "context": (400, "invalid_request", "This model's maximum context length is 4097 tokens. However, your "
                "messages resulted in 4294 tokens. Please reduce the length of the messages.", "context_length_exceeded"),
    "auth": (401, "authentication", "Incorrect API key provided: sk-****. You can find your API key at "
             "https://platform.openai.com/account/api-keys.", "invalid_api_key"),
    "billing": (429, "billing", "You exceeded your current quota, please check your plan and billing details. For "
                "more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                "insufficient_quota"),
    "rate": (429, "rate_limit", "Rate limit reached for gpt-4o in organization org-mock on tokens per min (TPM): "
             "Limit 30000, Used 14567, Requested 24754. Please try again in 18.642s.", "rate_limit_exceeded"),
    "overloaded": (503, "overloaded", "The server is overloaded or not ready yet.", None),
    "unavailable": (503, "overloaded", "The server is overloaded or not ready yet.", None),
    "server": (500, "api_error", "The server had an error while processing your request. Sorry about that!", None),
}
VENDOR_ERRORS = {
    "openai": _OPENAI_ERRORS,
    "responses": _OPENAI_ERRORS,
    "anthropic": {
        "invalid": (400, "invalid_request", "messages: field required", None),
        "context": (400, "invalid_request", "prompt is too long: 200251 tokens > 200000 maximum", None),
        "auth": (401, "authentication", "invalid x-api-key", None),
        "billing": (400, "invalid_request", "Your credit balance is too low to access the Anthropic API. Please go "
                    "to Plans & Billing to upgrade or purchase credits.", None),
        "rate": (429, "rate_limit", "This request would exceed the rate limit for your organization of 20,000 input "
                 "tokens per minute.", None),
        "overloaded": (529, "overloaded", "Overloaded", None),
        "unavailable": (529, "overloaded", "Overloaded", None),
        "server": (500, "api_error", "Internal server error", None),
    },
    "gemini": {
        "invalid": (400, "invalid_request", "Invalid JSON payload received.", None),
        "context": (400, "invalid_request", "The input token count (1200293) exceeds the maximum number of tokens "
                    "allowed (1048576).", None),
        "auth": (400, "invalid_request", "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"),
        "billing": (429, "rate_limit", "You exceeded your current quota, please check your plan and billing details. "
                    "For more information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.", None),
        "rate": (429, "rate_limit", "Resource has been exhausted (e.g. check quota).", None),
        "overloaded": (503, "overloaded", "The model is overloaded. Please try again later.", None),
        "unavailable": (503, "overloaded", "The model is overloaded. Please try again later.", None),
        "server": (500, "api_error", "An internal error has occurred.", None),
    },
    "bedrock": {
        "invalid": (400, "invalid_request", "Malformed input request, please reformat your input and try again.", None),
        "context": (400, "invalid_request", "Input is too long for requested model.", None),
        "auth": (403, "permission", "The security token included in the request is invalid.", "UnrecognizedClientException"),
        "billing": (403, "permission", "You don't have access to the model with the specified model ID.", None),
        "rate": (429, "rate_limit", "Too many tokens, please wait before trying again.", None),
        "overloaded": (503, "overloaded", "The service is unavailable. Please try again later.", None),
        "unavailable": (503, "overloaded", "The service is unavailable. Please try again later.", None),
        "server": (500, "api_error", "The server encountered an internal error.", None),
    },
    "cohere": {
        "invalid": (400, "invalid_request", "invalid request: message must not be empty", None),
        "context": (400, "invalid_request", "too many tokens: total number of tokens (prompt and prediction) cannot "
                    "exceed 2048 - received 6354. Try using a shorter prompt or a smaller max_tokens value.", None),
        "auth": (401, "authentication", "invalid api token", None),
        "billing": (402, "billing", "Your account has reached its billing limit.", None),
        "rate": (429, "rate_limit", "You are using a Trial key, which is limited to 10 API calls / minute.", None),
        "overloaded": (503, "overloaded", "service unavailable", None),
        "unavailable": (503, "overloaded", "service unavailable", None),
        "server": (500, "api_error", "internal server error", None),
    },
}
VENDOR_ERRORS["bedrock-invoke"] = VENDOR_ERRORS["bedrock"]      # InvokeModel: the same service, the same errors


class Vendor:
    """One protocol as a simulated vendor serves it."""

    def __init__(self, protocol: str):
        self.protocol = protocol
        self.dialect = get_dialect(protocol)

    def key(self, request) -> str | None:
        return self.dialect.inbound_key(request.headers, request.query)

    def is_stream(self, params: dict, obj: dict, request) -> bool:
        return self.dialect.inbound_stream(params, obj)

    def error(self, cls: str, message: str | None = None, status: int | None = None):
        table = VENDOR_ERRORS[self.protocol]
        default_status, kind, text, code = table.get(cls, table["invalid"])
        status, headers, body = self.dialect.render_error(ClientError(status or default_status, message or text, kind,
                                                                      code=code))
        return status, headers, body

    def quota_error(self, window: str, retry_after: float, limit: int, model: str):
        """The vendor's own 429 for a spent per-minute or per-day quota: Gemini
        names it in a QuotaFailure violation with a RetryInfo delay; the others
        say it with their rate-limit body and a Retry-After header."""
        seconds = max(1, int(retry_after + 0.999))
        if self.protocol != "gemini":
            status, headers, body = self.error("rate")
            return status, headers + [(b"retry-after", str(seconds).encode())], body
        period = "Day" if window == "day" else "Minute"
        body = {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": VENDOR_ERRORS["gemini"]["billing"][2],
                          "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                              "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                              "quotaId": f"GenerateRequestsPer{period}PerProjectPerModel-FreeTier",
                              "quotaDimensions": {"location": "global", "model": model}, "quotaValue": str(limit)}]},
                              {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds}s"}]}}
        return 429, [(b"content-type", b"application/json")], orjson.dumps(body)

    def rate_headers(self, limit: int, remaining: int, reset: float) -> list:
        """The vendor's rate-limit headers for its per-minute request limit
        (OpenAI durations, Anthropic RFC 3339 instants with the `date` they count from)."""
        if self.protocol in ("openai", "responses"):
            return [(b"x-ratelimit-limit-requests", str(limit).encode()),
                    (b"x-ratelimit-remaining-requests", str(remaining).encode()),
                    (b"x-ratelimit-reset-requests", f"{reset:.3f}s".encode())]
        if self.protocol == "anthropic":
            import email.utils
            import time
            from datetime import datetime, timezone
            now = int(time.time())
            at = datetime.fromtimestamp(now + int(reset + 0.999), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            return [(b"date", email.utils.formatdate(now, usegmt=True).encode()),
                    (b"anthropic-ratelimit-requests-limit", str(limit).encode()),
                    (b"anthropic-ratelimit-requests-remaining", str(remaining).encode()),
                    (b"anthropic-ratelimit-requests-reset", at.encode())]
        return []

    def refusal(self, obj: dict):
        """The vendor's own 400 for a body it refuses before reading it, or None:
        Claude on Bedrock's InvokeModel checks its envelope (no `model`, no
        `stream`, an `anthropic_version`: `bedrock-2023-05-31`, or the dated API
        version the anthropic SDK's AnthropicBedrock sends), as Bedrock does."""
        if self.protocol != "bedrock-invoke":
            return None
        problems = [f"#: extraneous key [{k}] is not permitted" for k in ("model", "stream") if k in obj]
        version = obj.get("anthropic_version")
        if version is None:
            problems.append("#: required key [anthropic_version] not found")
        elif not isinstance(version, str) or not re.fullmatch(r"(bedrock-)?\d{4}-\d{2}-\d{2}", version):
            problems.append(f"#/anthropic_version: {version} is not a valid version")
        if not problems:
            return None
        return self.error("invalid", "Malformed input request: " + ", ".join(problems)
                          + ", please reformat your input and try again.")

    def last_user_text(self, obj: dict, params: dict) -> str:
        """The last user turn's text; a body its protocol does not parse is the
        ClientError a real vendor's validation answers (a 400)."""
        request = self.dialect.parse_request(obj, params)
        for message in reversed(request.messages):
            if message.role == ir.USER:
                text = "".join(p.text for p in message.content if isinstance(p, ir.Text))
                if text:
                    return text
        return ""

    def trailing_assistant_text(self, obj: dict, params: dict) -> str:
        """The text of a trailing assistant turn (a prefill), or ''."""
        try:
            request = self.dialect.parse_request(obj, params)
        except Exception:
            return ""
        if not request.messages or request.messages[-1].role != ir.ASSISTANT:
            return ""
        return "".join(p.text for p in request.messages[-1].content if isinstance(p, ir.Text))

    def tool_step(self, obj: dict, params: dict):
        """With tools on offer: a call of the first tool (required string
        arguments filled in), or, once the last turn carries a tool result,
        the text `tool said: <result>`; None when no tools are offered."""
        try:
            request = self.dialect.parse_request(obj, params)
        except Exception:
            return None
        tools = [t for t in request.tools if isinstance(t, ir.Tool)]
        if not tools or not request.messages:
            return None
        results = [p for p in request.messages[-1].content if isinstance(p, ir.ToolResult)]
        if results:
            said = [x.text if isinstance(x, ir.Text) else str(getattr(x, "value", "")) for x in results[-1].content]
            return "tool said: " + " ".join(said)
        schema = tools[0].parameters or {}
        props = schema.get("properties") or {}
        args = {k: "Paris" for k in schema.get("required") or props if (props.get(k) or {}).get("type") == "string"}
        return ir.ToolCall(f"call_mock{uuid.uuid4().hex[:12]}", tools[0].name, args)

    def render_call(self, model: str, call: ir.ToolCall, usage_in: int, stream: bool,
                    thought: ir.Reasoning | None = None):
        """A tool-call answer, buffered (status, headers, body) or as stream frames;
        `thought`: a signed reasoning block before it (thinking on)."""
        usage = ir.Usage(input_tokens=usage_in, output_tokens=5)
        if not stream:
            resp = ir.Response(id=f"mock-{uuid.uuid4().hex[:20]}", model=model,
                               content=([thought] if thought else []) + [call],
                               stop_reason=ir.StopReason.TOOL_USE, usage=usage)
            return 200, [(b"content-type", b"application/json")], self.dialect.render_response(resp, model)
        import orjson
        encoder = self.dialect.stream_encoder(model)
        first = _thought_events(thought)
        i = 1 if first else 0
        events = [ir.MessageStart(id=f"mock-{uuid.uuid4().hex[:20]}", model=model, usage=ir.Usage(input_tokens=usage_in)),
                  *first, ir.BlockStart(i, ir.ToolCall(call.id, call.name, {}))]
        # two writes: the call's start with the first half of its arguments,
        # then the rest and the ending (a scripted cut can land inside them)
        args = orjson.dumps(call.arguments).decode()
        half = len(args) // 2
        return [b"".join(encoder.encode(e) for e in events) + encoder.encode(ir.ToolArgsDelta(i, args[:half])),
                b"".join(encoder.encode(e) for e in (ir.ToolArgsDelta(i, args[half:]), ir.BlockStop(i),
                                                     ir.UsageEvent(usage), ir.MessageStop(ir.StopReason.TOOL_USE)))
                + encoder.finish()]

    def _response(self, model: str, text: str, usage_in: int, thought: ir.Reasoning | None = None) -> ir.Response:
        return ir.Response(id=f"mock-{uuid.uuid4().hex[:20]}", model=model,
                           content=([thought] if thought else []) + [ir.Text(text)],
                           stop_reason=ir.StopReason.END_TURN,
                           usage=ir.Usage(input_tokens=usage_in, output_tokens=max(1, len(text) // 4)))

    def render_reply(self, model: str, text: str, usage_in: int, obj: dict, thought: ir.Reasoning | None = None):
        body = self.dialect.render_response(self._response(model, text, usage_in, thought), model, None, obj)
        return 200, [(b"content-type", b"application/json")], body

    def stream_headers(self):
        content_type = getattr(self.dialect, "stream_content_type", b"text/event-stream")
        return [(b"content-type", content_type)]

    def stream_events(self, model: str, pieces: list[str], usage_in: int, thought: ir.Reasoning | None = None) -> list:
        usage = ir.Usage(input_tokens=usage_in, output_tokens=max(1, sum(map(len, pieces)) // 4))
        first = _thought_events(thought)
        i = 1 if first else 0
        events = [ir.MessageStart(id=f"mock-{uuid.uuid4().hex[:20]}", model=model, usage=ir.Usage(input_tokens=usage_in)),
                  *first, ir.BlockStart(i, ir.Text(""))]
        events += [ir.TextDelta(i, piece) for piece in pieces if piece]
        events += [ir.BlockStop(i), ir.UsageEvent(usage), ir.MessageStop(ir.StopReason.END_TURN)]
        return events

    def render_stream(self, model: str, pieces: list[str], usage_in: int, obj: dict, fault: dict | None,
                      thought: ir.Reasoning | None = None) -> list[bytes]:
        return [frame for frame, _ in self.stream_frames(model, pieces, usage_in, obj, fault, thought)]

    def stream_frames(self, model: str, pieces: list[str], usage_in: int, obj: dict, fault: dict | None,
                      thought: ir.Reasoning | None = None) -> list[tuple[bytes, str]]:
        """The stream's writes, each with the answer text it carries."""
        # the request's own stream options, as the real vendor reads them
        # (OpenAI: the usage chunk only with stream_options.include_usage)
        encoder = self.dialect.stream_encoder(model, **self.dialect.stream_encoder_options(obj))
        if fault and fault.get("error_event") and not fault.get("after"):
            cls = fault["error_event"]
            _, kind, text, _ = VENDOR_ERRORS[self.protocol].get(cls, VENDOR_ERRORS[self.protocol]["server"])
            first = encoder.encode(self.stream_events(model, pieces, usage_in)[0]) if self.protocol in ("anthropic", "responses", "cohere") else b""
            return [(first + encoder.error(kind, text), "")] if first else [(encoder.error(kind, text), "")]
        # one write per content delta (with the events that lead to it); the
        # preamble and the ending go out whole, as vendors send them, so
        # pacing applies to content only
        groups: list[list] = []
        current: list = []
        for event in self.stream_events(model, pieces, usage_in, thought):
            if type(event) in (ir.TextDelta, ir.ReasoningDelta):
                if not groups:
                    groups.append(current)      # the preamble
                    current = []
                current.append(event)
                groups.append(current)
                current = []
            else:
                current.append(event)
        groups.append(current)
        frames = []
        for n, group in enumerate(groups):
            if fault and fault.get("error_event") and n == fault["after"]:
                # the vendor's in-stream error after `after` writes: a stream dying mid-way
                cls = fault["error_event"]
                _, kind, text, _ = VENDOR_ERRORS[self.protocol].get(cls, VENDOR_ERRORS[self.protocol]["server"])
                frames.append((encoder.error(kind, text), ""))
                break
            data = b"".join(encoder.encode(e) for e in group) + (encoder.finish() if n == len(groups) - 1 else b"")
            frames.append((data, "".join(e.text for e in group if type(e) is ir.TextDelta)))
        return [f for f in frames if f[0]]

    def answer_operation(self, params: dict, obj: dict, model: str, dialect=None):
        """Embeddings, rerank and token counts, deterministic: the same text
        gets the same vector on every vendor path (`mock_vector`).  `dialect`:
        the body's own, when the path serves several (Bedrock's InvokeModel)."""
        from busbar.protocols import counting
        from busbar.protocols.embeddings import ir as eir
        try:
            if dialect is None:
                dialect = get_dialect(self.protocol, params["operation"]).for_body(obj)
            req = dialect.parse_request(obj, params)
        except ClientError as err:
            return self.dialect.render_error(err)
        if isinstance(req, eir.EmbedRequest):
            if any(not isinstance(t, str) for t in req.inputs):
                req.inputs = [" ".join(map(str, t)) if isinstance(t, list) else t for t in req.inputs]
            dims = req.dimensions or DEFAULT_DIMENSIONS.get(self.protocol, 1024)
            resp = eir.EmbedResponse([mock_vector(t, dims) for t in req.inputs], model,
                                     sum(max(1, len(t) // 4) for t in req.inputs), f"mock-{uuid.uuid4().hex[:12]}")
        elif isinstance(req, eir.RerankRequest):
            q = mock_vector(req.query, 256)
            scores = [(i, round((1 + sum(a * b for a, b in zip(q, mock_vector(d, 256)))) / 2, 6))
                      for i, d in enumerate(req.documents)]
            scores.sort(key=lambda r: -r[1])
            resp = eir.RerankResponse(scores[: req.top_n or len(scores)], model, 1, f"mock-{uuid.uuid4().hex[:12]}")
        else:
            resp = counting.CountResponse(counting.estimate(req), model)
        return 200, [(b"content-type", b"application/json")], dialect.render_response(resp, model, req)

    def garbage(self) -> bytes:
        if self.dialect.stream_content_type == b"application/vnd.amazon.eventstream":
            return b"\x00\x00\x00\x30\x00\x00\x00\x10garbage-not-a-valid-eventstream-frame"
        return b'data: {"choices": [{"delta": {"content": \n\n'


DEFAULT_DIMENSIONS = {"openai": 1536, "gemini": 768, "cohere": 1024, "bedrock": 1024, "bedrock-invoke": 1024}


def mock_vector(text: str, dims: int) -> list[float]:
    """A deterministic unit vector for `text`: hashed words (so texts that
    share words are close, as real embeddings of rephrasings are) plus a
    feature of the whole text (so different texts never coincide)."""
    import hashlib
    import re
    vector = [0.0] * dims
    for word in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")
        vector[h % dims] += 1.0 if (h >> 40) & 1 else -1.0
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    vector[h % dims] += 0.25
    norm = sum(x * x for x in vector) ** 0.5 or 1.0
    return [x / norm for x in vector]


def _thought_events(thought: ir.Reasoning | None) -> list:
    """A signed reasoning block as stream events (block 0), or nothing."""
    if thought is None:
        return []
    words = thought.text.split(" ")      # one delta per word: a stream can be cut inside the block
    out = [ir.BlockStart(0, ir.Reasoning("", None, thought.origin))]
    out += [ir.ReasoningDelta(0, w + (" " if k < len(words) - 1 else "")) for k, w in enumerate(words) if w]
    if thought.signature:
        out.append(ir.SignatureDelta(0, thought.signature))
    return out + [ir.BlockStop(0)]


VENDORS = {name: Vendor(name) for name in ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere",
                                           "bedrock-invoke")}
