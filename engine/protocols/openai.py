"""OpenAI Chat Completions (`POST {base}/chat/completions`)."""
from __future__ import annotations

import orjson

from engine.faults import ClientError
from engine.protocols.base import Dialect, Headers


class OpenAIDialect(Dialect):
    name = "openai"
    forward_headers = (b"openai-organization", b"openai-project")

    # kind -> (error.type, error.code)
    _error_types = {
        "invalid_request": ("invalid_request_error", None),
        "authentication": ("invalid_request_error", "invalid_api_key"),
        "permission": ("invalid_request_error", "permission_denied"),
        "not_found": ("invalid_request_error", "model_not_found"),
        "request_too_large": ("invalid_request_error", "request_too_large"),
        "rate_limit": ("requests", "rate_limit_exceeded"),
        "billing": ("insufficient_quota", "insufficient_quota"),
        "overloaded": ("server_error", "overloaded"),
        "api_error": ("server_error", None),
        "upstream": ("server_error", "upstream_error"),
        "timeout": ("server_error", "timeout"),
    }

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        etype, code = self._error_types.get(err.kind, ("invalid_request_error", None))
        body = orjson.dumps({"error": {
            "message": err.message,
            "type": etype,
            "param": err.param,
            "code": err.code or code,
        }})
        return err.status, self.error_headers(err), body

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/chat/completions"

    def error_message(self, obj) -> tuple[str, str | None]:
        error = obj.get("error") if isinstance(obj, dict) else None
        if isinstance(error, dict):
            code = error.get("code") or error.get("type")
            return str(error.get("message") or ""), str(code) if code else None
        return "", None


dialect = OpenAIDialect()
