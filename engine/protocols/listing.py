"""Model listing (`GET`) in each SDK's own shape: the gateway's pools are
its models.

* `/v1/models` (and `/models`): OpenAI's list, or Anthropic's when the caller
  is an Anthropic client (an `anthropic-version` or `x-api-key` header);
* `/v1/models/{id}`: one model, in the same two shapes;
* `/v1beta/models` and `/v1beta/models/{name}` (and `/v1/...` with Gemini's
  `x-goog-api-key`, which google-genai uses too): Gemini's (`models/` names,
  supported generation methods).

Bodies of the lists are rendered once per config (`Listing`); I/O-free.
"""
from __future__ import annotations

from urllib.parse import unquote

import orjson

from busbar.faults import ClientError
from busbar.protocols.base import JSON_CT, Headers, header

_CREATED_AT = "2024-01-01T00:00:00Z"
_GEMINI_METHODS = ["generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents"]


def _openai(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "busbar"}


def _anthropic(name: str) -> dict:
    return {"type": "model", "id": name, "display_name": name, "created_at": _CREATED_AT}


def _gemini(name: str) -> dict:
    return {"name": f"models/{name}", "baseModelId": name, "version": "busbar", "displayName": name,
            "description": "A Busbar pool", "supportedGenerationMethods": _GEMINI_METHODS}


class Listing:
    """The pools as models, for every listing route."""

    def __init__(self, names: list[str], created: int):
        self.names = list(names)
        self.known = set(self.names)
        self.created = created
        # OpenAI's list also carries Anthropic's fields, so a client that sends
        # neither header still parses it either way (as before this module)
        data = [{**_openai(n, created), "type": "model", "display_name": n, "created_at": _CREATED_AT}
                for n in self.names]
        edges = {"first_id": self.names[0] if self.names else None, "last_id": self.names[-1] if self.names else None}
        self.openai_body = orjson.dumps({"object": "list", "data": data, "has_more": False, **edges})
        self.anthropic_body = orjson.dumps({"data": [_anthropic(n) for n in self.names], "has_more": False, **edges})
        self.gemini_body = orjson.dumps({"models": [_gemini(n) for n in self.names]})

    def answer(self, path: bytes, headers: Headers) -> tuple[int, Headers, bytes] | None:
        """The answer to a GET of a listing route, or None (not one)."""
        caller = _caller(path, headers)
        if path in (b"/v1/models", b"/models", b"/v1beta/models"):
            return 200, [JSON_CT], {"anthropic": self.anthropic_body, "gemini": self.gemini_body}.get(
                caller, self.openai_body)
        text = path.decode("latin-1")
        if text.startswith(("/v1/models/", "/models/", "/v1beta/models/")):
            name = unquote(text.split("/models/", 1)[1])
            if caller == "gemini":
                return self._one(caller, name.removeprefix("models/"), _gemini)
            if caller == "anthropic":
                return self._one(caller, name, _anthropic)
            return self._one("openai", name, lambda n: _openai(n, self.created))
        return None

    def _one(self, protocol: str, name: str, shape) -> tuple[int, Headers, bytes]:
        if name in self.known:
            return 200, [JSON_CT], orjson.dumps(shape(name))
        from busbar.protocols import get_dialect
        pools = ", ".join(self.names) or "none configured"
        return get_dialect(protocol).render_error(ClientError(
            404, f"The model `{name}` does not exist; the models here are Busbar's pools ({pools}).", "not_found"))


def _caller(path: bytes, headers: Headers) -> str:
    """Whose SDK is listing: Gemini's path or key header (google-genai lists
    under /v1 too), Anthropic's version or key header, else OpenAI."""
    if path.startswith(b"/v1beta/") or header(headers, b"x-goog-api-key") is not None:
        return "gemini"
    if header(headers, b"anthropic-version") is not None or header(headers, b"x-api-key") is not None:
        return "anthropic"
    return "openai"
