"""Model listing (`GET`) in each SDK's own shape: the gateway's pools are
its models.

* `/v1/models` (and `/models`): OpenAI's list, or Anthropic's when the caller
  is an Anthropic client (an `anthropic-version` or `x-api-key` header);
* `/v1/models/{id}`: one model, in the same two shapes;
* `/v1beta/models` and `/v1beta/models/{name}` (and `/v1/...` with Gemini's
  `x-goog-api-key`, which google-genai uses too): Gemini's (`models/` names,
  supported generation methods);
* Bedrock's control plane (`boto3.client("bedrock")`, ADR 0021):
  `/inference-profiles` (ListInferenceProfiles, `type` and `maxResults` /
  `nextToken` honoured) and `/inference-profiles/{id}`: each pool as a
  system-defined inference profile whose models are its members' models;
  `/foundation-models` (ListFoundationModels, its `by*` filters) and
  `/foundation-models/{id}`: each pool as a text model of provider Busbar.

Bodies of the lists are rendered once per config (`Listing`); I/O-free.
"""
from __future__ import annotations

from urllib.parse import unquote

import orjson

from busbar.faults import ClientError
from busbar.protocols.base import JSON_CT, Headers, header, query_param
from busbar.protocols.bedrock import resource_id

_CREATED_AT = "2024-01-01T00:00:00Z"
_GEMINI_METHODS = ["generateContent", "streamGenerateContent", "countTokens", "embedContent", "batchEmbedContents"]


def _openai(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "busbar"}


def _anthropic(name: str) -> dict:
    return {"type": "model", "id": name, "display_name": name, "created_at": _CREATED_AT}


def _gemini(name: str) -> dict:
    return {"name": f"models/{name}", "baseModelId": name, "version": "busbar", "displayName": name,
            "description": "A Busbar pool", "supportedGenerationMethods": _GEMINI_METHODS}


_ACCOUNT = "000000000000"        # the account in the ARNs Busbar shows (its pools belong to no AWS account)
_PROFILES_MAX = 1000


def _bedrock_profile(name: str, models: list[str], region: str) -> dict:
    arns = [f"arn:aws:bedrock:{region}::foundation-model/{m}" for m in dict.fromkeys(models or [name])][:5]
    return {"inferenceProfileName": name, "description": "A Busbar pool", "createdAt": _CREATED_AT,
            "updatedAt": _CREATED_AT,
            "inferenceProfileArn": f"arn:aws:bedrock:{region}:{_ACCOUNT}:inference-profile/{name}",
            "models": [{"modelArn": a} for a in arns], "inferenceProfileId": name, "status": "ACTIVE",
            "type": "SYSTEM_DEFINED"}


def _bedrock_model(name: str, region: str) -> dict:
    return {"modelArn": f"arn:aws:bedrock:{region}::foundation-model/{name}", "modelId": name, "modelName": name,
            "providerName": "Busbar", "inputModalities": ["TEXT"], "outputModalities": ["TEXT"],
            "responseStreamingSupported": True, "customizationsSupported": [], "inferenceTypesSupported": ["ON_DEMAND"],
            "modelLifecycle": {"status": "ACTIVE"}}


# ListFoundationModels filters: query name -> the value a Busbar pool has
_MODEL_FILTERS = {"byProvider": "busbar", "byOutputModality": "TEXT", "byInferenceType": "ON_DEMAND",
                  "byCustomizationType": None}


class Listing:
    """The pools as models, for every listing route.  `models`: each pool's
    member models (Bedrock's inference profiles list them)."""

    def __init__(self, names: list[str], created: int, models: dict[str, list[str]] | None = None):
        self.names = list(names)
        self.models = dict(models or {})
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

    def answer(self, path: bytes, headers: Headers, query: bytes = b"") -> tuple[str, tuple[int, Headers, bytes]] | None:
        """(the protocol that answers, the answer) to a GET of a listing route,
        or None (not one)."""
        if path.startswith((b"/inference-profiles", b"/foundation-models")):
            found = self._bedrock(path.decode("latin-1"), headers, query)
            return None if found is None else ("bedrock", found)
        caller = _caller(path, headers)
        if path in (b"/v1/models", b"/models", b"/v1beta/models"):
            return caller, (200, [JSON_CT], {"anthropic": self.anthropic_body, "gemini": self.gemini_body}.get(
                caller, self.openai_body))
        found = self._by_name(path, caller)
        return None if found is None else (caller, found)

    def _by_name(self, path: bytes, caller: str) -> tuple[int, Headers, bytes] | None:
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

    def _bedrock(self, path: str, headers: Headers, query: bytes) -> tuple[int, Headers, bytes] | None:
        region = _region(headers)
        if path == "/inference-profiles":
            kind = query_param(query, "type")
            names = self.names if kind in (None, "SYSTEM_DEFINED") else []
            start = _int(query_param(query, "nextToken"), 0)
            size = min(max(_int(query_param(query, "maxResults"), _PROFILES_MAX), 1), _PROFILES_MAX)
            page = names[start:start + size]
            body: dict = {"inferenceProfileSummaries": [_bedrock_profile(n, self.models.get(n, []), region)
                                                        for n in page]}
            if start + size < len(names):
                body["nextToken"] = str(start + size)
            return 200, [JSON_CT], orjson.dumps(body)
        if path == "/foundation-models":
            wanted = all(query_param(query, q) is None or (v is not None and query_param(query, q).lower() == v.lower())
                         for q, v in _MODEL_FILTERS.items())
            return 200, [JSON_CT], orjson.dumps({"modelSummaries": [_bedrock_model(n, region) for n in self.names]
                                                 if wanted else []})
        for prefix, shape in (("/inference-profiles/", lambda n: _bedrock_profile(n, self.models.get(n, []), region)),
                              ("/foundation-models/", lambda n: {"modelDetails": _bedrock_model(n, region)})):
            if path.startswith(prefix) and "/" not in path[len(prefix):]:
                return self._one("bedrock", resource_id(unquote(path[len(prefix):])), shape)
        return None


def _caller(path: bytes, headers: Headers) -> str:
    """Whose SDK is listing: Gemini's path or key header (google-genai lists
    under /v1 too), Anthropic's version or key header, else OpenAI."""
    if path.startswith(b"/v1beta/") or header(headers, b"x-goog-api-key") is not None:
        return "gemini"
    if header(headers, b"anthropic-version") is not None or header(headers, b"x-api-key") is not None:
        return "anthropic"
    return "openai"


def _int(text: str | None, default: int) -> int:
    try:
        return int(text) if text is not None else default
    except ValueError:
        return default


def _region(headers: Headers) -> str:
    """The region a SigV4 caller signed for (its credential scope), else us-east-1."""
    auth = header(headers, b"authorization") or b""
    _, _, scope = auth.partition(b"Credential=")
    parts = scope.split(b",", 1)[0].split(b"/")
    return parts[2].decode("latin-1") if len(parts) >= 5 else "us-east-1"
