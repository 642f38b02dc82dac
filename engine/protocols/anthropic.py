"""Anthropic Messages (`POST {base}/v1/messages`)."""
from __future__ import annotations

import orjson

from engine.faults import ClientError
from engine.protocols.base import KIND_STATUS, Dialect, Headers, bearer_token, header

ANTHROPIC_VERSION = b"2023-06-01"


class AnthropicDialect(Dialect):
    name = "anthropic"
    forward_headers = (b"anthropic-version", b"anthropic-beta")
    kind_status = {**KIND_STATUS, "overloaded": 529}

    _error_types = {
        "invalid_request": "invalid_request_error",
        "authentication": "authentication_error",
        "permission": "permission_error",
        "not_found": "not_found_error",
        "request_too_large": "request_too_large",
        "rate_limit": "rate_limit_error",
        "billing": "billing_error",
        "overloaded": "overloaded_error",
        "api_error": "api_error",
        "upstream": "api_error",
        "timeout": "timeout_error",
    }

    def inbound_key(self, headers: Headers, query: bytes) -> str | None:
        # Current SDKs may send `Authorization: Bearer`, older ones x-api-key.
        key = header(headers, b"x-api-key")
        return key.decode("latin-1") if key else bearer_token(headers)

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        body = orjson.dumps({"type": "error", "error": {
            "type": self._error_types.get(err.kind, "invalid_request_error"),
            "message": err.message,
        }})
        return err.status, self.error_headers(err), body

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


dialect = AnthropicDialect()
