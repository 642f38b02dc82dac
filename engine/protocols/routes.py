"""Which protocol a request path speaks: each vendor's own paths.

Shared by the gateway (client-facing routes) and the simulated vendors
(which serve the same paths a vendor's base_url leads to)."""
from __future__ import annotations

import re
from urllib.parse import unquote

EXACT_ROUTES = {
    b"/v1/chat/completions": "openai",
    b"/chat/completions": "openai",
    b"/v1/responses": "responses",
    b"/responses": "responses",
    b"/v1/messages": "anthropic",
    b"/v2/chat": "cohere",
}
# calls other than chat (busbar.protocols.operation): path -> (protocol, operation)
OPERATION_ROUTES = {
    b"/v1/embeddings": ("openai", "embed"),
    b"/embeddings": ("openai", "embed"),
    b"/v2/embed": ("cohere", "embed"),
    b"/v2/rerank": ("cohere", "rerank"),
    b"/v1/messages/count_tokens": ("anthropic", "count"),
    b"/v1/responses/input_tokens": ("responses", "count"),
    b"/responses/input_tokens": ("responses", "count"),
}
# a stored response (busbar.stored_responses): GET / DELETE /v1/responses/{id}, GET .../input_items
_RESPONSE = re.compile(rb"^/(?:v1/)?responses/(?P<id>[^/]+)(?P<items>/input_items)?$")
_CANCEL = re.compile(rb"^/(?:v1/)?responses/(?P<id>[^/]+)/cancel$")
_GEMINI = re.compile(r"^/(?:v1beta|v1)/models/(?P<model>[^/:]+(?:/[^/:]+)*):(?P<action>generateContent|"
                     r"streamGenerateContent|embedContent|batchEmbedContents|countTokens)$")
_GEMINI_OPERATIONS = {"embedContent": "embed_one", "batchEmbedContents": "embed", "countTokens": "count"}
_BEDROCK = re.compile(r"^/model/(?P<model>.+)/(?P<action>converse|converse-stream|invoke|invoke-with-response-stream|"
                      r"count-tokens)$")
_BEDROCK_OPERATIONS = {"count-tokens": "count"}
# InvokeModel: an Anthropic Messages body (the bedrock-invoke dialect), or an
# embeddings / rerank body, which that dialect's `for_body` hands on
_INVOKE = frozenset({"invoke", "invoke-with-response-stream"})


def match_route(path: bytes) -> tuple[str, dict] | None:
    """(protocol, params) for a POST path, or None.  Gemini and Bedrock carry
    the model (and whether to stream) in the path: params has `model` and
    `action`.  A call other than chat has `operation` in params (see
    `busbar.protocols.operation`)."""
    protocol = EXACT_ROUTES.get(path)
    if protocol is not None:
        return protocol, {}
    other = OPERATION_ROUTES.get(path)
    if other is not None:
        return other[0], {"operation": other[1]}
    text = path.decode("latin-1")
    if text.startswith("/model/"):
        m = _BEDROCK.match(text)
        if m:
            params = {"model": unquote(m["model"]), "action": m["action"]}
            if m["action"] in _INVOKE:
                return "bedrock-invoke", params
            if m["action"] in _BEDROCK_OPERATIONS:
                params["operation"] = _BEDROCK_OPERATIONS[m["action"]]
            return "bedrock", params
        return None
    m = _GEMINI.match(text)
    if m:
        params = {"model": unquote(m["model"]), "action": m["action"]}
        if m["action"] in _GEMINI_OPERATIONS:
            params["operation"] = _GEMINI_OPERATIONS[m["action"]]
        return "gemini", params
    return None


def match_stored_response(path: bytes) -> tuple[str, bool] | None:
    """(response id, whether it names its input items) for a stored-response path, or
    None.  Checked after `match_route` (whose POST-only `/v1/responses/input_tokens` it
    would otherwise shadow)."""
    m = _RESPONSE.match(path)
    if m is None:
        return None
    return unquote(m["id"].decode("latin-1")), m["items"] is not None


def match_response_cancel(path: bytes) -> str | None:
    """The response id of `POST /v1/responses/{id}/cancel` (background mode, ADR 0026), or None."""
    m = _CANCEL.match(path)
    return unquote(m["id"].decode("latin-1")) if m is not None else None


# Paths that look like a protocol's even when no route matched (a typo'd
# suffix), and the protocol of last resort: where a server-level error
# (no route, bad HTTP) is rendered.
# Bedrock's runtime (bedrock-runtime) and control-plane (bedrock) paths, by their
# first segment in botocore's service models
_BEDROCK_PREFIXES = (b"/model/", b"/model-", b"/inference-profiles", b"/foundation-model", b"/async-invoke",
                     b"/guardrail", b"/custom-models", b"/imported-models", b"/evaluation-job",
                     b"/provisioned-model-throughput", b"/prompt-routers", b"/marketplace-model",
                     b"/automated-reasoning-policies", b"/advanced-prompt-optimization-job",
                     b"/logging/modelinvocations")
_PREFIXES = ((b"/v1/messages", "anthropic"), *((p, "bedrock") for p in _BEDROCK_PREFIXES),
             (b"/v1beta/", "gemini"), (b"/v2/", "cohere"))
DEFAULT_PROTOCOL = "openai"


def guess_protocol(path: bytes | None) -> str:
    """The protocol to render a server-level error in when no route matched
    (or the request never got that far)."""
    if path is None:
        return DEFAULT_PROTOCOL
    found = match_route(path)
    if found:
        return found[0]
    for prefix, protocol in _PREFIXES:
        if path.startswith(prefix):
            return protocol
    return DEFAULT_PROTOCOL
