"""Each simulated vendor's wire details: routes, auth, replies, streams and
its real error bodies (strings from shared/reference/protocols.md)."""
from __future__ import annotations

import re
import time
import uuid

import orjson

JSON = [(b"content-type", b"application/json")]
SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

_CLASS_STATUS = {"invalid": 400, "context": 400, "auth": 401, "billing": 429, "rate": 429,
                 "overloaded": 529, "server": 500, "unavailable": 503}


def class_for_status(status: int) -> str:
    return {400: "invalid", 401: "auth", 403: "auth", 402: "billing", 429: "rate", 529: "overloaded",
            503: "unavailable"}.get(status, "server" if status >= 500 else "invalid")


def _header(request, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _bearer(request) -> str | None:
    value = _header(request, b"authorization")
    if value and value.lower().startswith("bearer "):
        return value[7:]
    return None


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class OpenAIVendor:
    protocol = "openai"
    _errors = {
        "invalid": (400, "Invalid request.", "invalid_request_error", None, None),
        "context": (400, "This model's maximum context length is 4097 tokens. However, your messages resulted in "
                         "4294 tokens. Please reduce the length of the messages.",
                    "invalid_request_error", "messages", "context_length_exceeded"),
        "auth": (401, "Incorrect API key provided: sk-****. You can find your API key at "
                      "https://platform.openai.com/account/api-keys.", "invalid_request_error", None, "invalid_api_key"),
        "billing": (429, "You exceeded your current quota, please check your plan and billing details. For more "
                         "information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
                    "insufficient_quota", None, "insufficient_quota"),
        "rate": (429, "Rate limit reached for gpt-4o in organization org-mock on tokens per min (TPM): Limit 30000, "
                      "Used 14567, Requested 24754. Please try again in 18.642s.", "tokens", None, "rate_limit_exceeded"),
        "overloaded": (503, "The server is overloaded or not ready yet.", "server_error", None, None),
        "unavailable": (503, "The server is overloaded or not ready yet.", "server_error", None, None),
        "server": (500, "The server had an error while processing your request. Sorry about that!",
                   "server_error", None, None),
    }

    def key(self, request):
        return _bearer(request)

    def is_stream(self, params, obj, request):
        return obj.get("stream") is True

    def error(self, cls, message=None, status=None):
        default_status, text, etype, param, code = self._errors.get(cls, self._errors["invalid"])
        body = {"error": {"message": message or text, "type": etype, "param": param, "code": code}}
        return status or default_status, JSON, orjson.dumps(body)

    def render_reply(self, model, text, usage_in, obj):
        out = max(1, len(text) // 4)
        body = {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "system_fingerprint": "fp_mock",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                             "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": usage_in, "completion_tokens": out, "total_tokens": usage_in + out}}
        return 200, JSON, orjson.dumps(body)

    def stream_headers(self):
        return SSE

    def render_stream(self, model, pieces, usage_in, obj, fault):
        cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())

        def chunk(delta, finish=None, usage=None, choices=True):
            body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "system_fingerprint": "fp_mock",
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if choices else []}
            if usage is not None:
                body["usage"] = usage
            return b"data: " + orjson.dumps(body) + b"\n\n"

        frames = []
        if fault and fault.get("error_event"):
            _, _, err = self.error(fault["error_event"])
            return [b"data: " + err + b"\n\n"]
        frames.append(chunk({"role": "assistant", "content": "", "refusal": None}))
        for piece in pieces:
            frames.append(chunk({"content": piece}))
        frames.append(chunk({}, "stop"))
        if (obj.get("stream_options") or {}).get("include_usage"):
            out = max(1, sum(map(len, pieces)) // 4)
            frames.append(chunk(None, usage={"prompt_tokens": usage_in, "completion_tokens": out,
                                             "total_tokens": usage_in + out}, choices=False))
        frames.append(b"data: [DONE]\n\n")
        return frames

    def garbage(self):
        return b"data: {\"id\": \"chatcmpl-broken\", \"choices\": [{\"delta\": {\"content\": \n\n"


class AnthropicVendor:
    protocol = "anthropic"
    _errors = {
        "invalid": (400, "invalid_request_error", "messages: field required"),
        "context": (400, "invalid_request_error", "prompt is too long: 200251 tokens > 200000 maximum"),
        "auth": (401, "authentication_error", "invalid x-api-key"),
        "billing": (400, "invalid_request_error", "Your credit balance is too low to access the Anthropic API. "
                                                  "Please go to Plans & Billing to upgrade or purchase credits."),
        "rate": (429, "rate_limit_error", "This request would exceed the rate limit for your organization of "
                                          "20,000 input tokens per minute."),
        "overloaded": (529, "overloaded_error", "Overloaded"),
        "unavailable": (529, "overloaded_error", "Overloaded"),
        "server": (500, "api_error", "Internal server error"),
    }

    def key(self, request):
        return _header(request, b"x-api-key") or _bearer(request)

    def is_stream(self, params, obj, request):
        return obj.get("stream") is True

    def error(self, cls, message=None, status=None):
        default_status, etype, text = self._errors.get(cls, self._errors["invalid"])
        body = {"type": "error", "error": {"type": etype, "message": message or text},
                "request_id": f"req_{uuid.uuid4().hex[:24]}"}
        return status or default_status, JSON, orjson.dumps(body)

    def _usage(self, usage_in, out):
        return {"input_tokens": usage_in, "output_tokens": out, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0}

    def render_reply(self, model, text, usage_in, obj):
        out = max(1, len(text) // 4)
        body = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": self._usage(usage_in, out)}
        return 200, JSON, orjson.dumps(body)

    def stream_headers(self):
        return SSE

    def render_stream(self, model, pieces, usage_in, obj, fault):
        def event(name, data):
            return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"

        if fault and fault.get("error_event"):
            _, _, err = self.error(fault["error_event"])
            return [event("error", orjson.loads(err))]
        out = max(1, sum(map(len, pieces)) // 4)
        frames = [event("message_start", {"type": "message_start", "message": {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None, "usage": self._usage(usage_in, 1)}}),
            event("content_block_start", {"type": "content_block_start", "index": 0,
                                          "content_block": {"type": "text", "text": ""}}),
            event("ping", {"type": "ping"})]
        for piece in pieces:
            frames.append(event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                        "delta": {"type": "text_delta", "text": piece}}))
        frames.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        frames.append(event("message_delta", {"type": "message_delta",
                                              "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                              "usage": {"output_tokens": out}}))
        frames.append(event("message_stop", {"type": "message_stop"}))
        return frames

    def garbage(self):
        return b"event: content_block_delta\ndata: {\"type\": \"content_block_del\n\n"


VENDORS = {"openai": OpenAIVendor(), "anthropic": AnthropicVendor()}

_ROUTES = [
    (re.compile(r"^(?:/v1)?/chat/completions$"), "openai"),
    (re.compile(r"^/v1/messages$"), "anthropic"),
]


def match(path: str) -> tuple[str, dict] | None:
    for pattern, protocol in _ROUTES:
        m = pattern.match(path)
        if m and protocol in VENDORS:
            return protocol, m.groupdict()
    return None


def last_user_text(protocol: str, obj: dict) -> str:
    messages = obj.get("messages") or []
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""
