"""OpenAI `POST /v1/embeddings` (also what vLLM, Ollama, TEI and most
OpenAI-compatible servers serve)."""
from __future__ import annotations

from busbar.protocols.embeddings import ir as eir
from busbar.protocols.operation import OpCodec, OperationDialect, bad


def _parse_request(obj: dict) -> eir.EmbedRequest:
    raw = obj.get("input")
    if isinstance(raw, str):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [raw]                       # one input as token ids
    elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
        inputs = raw
    else:
        raise bad("input", "a string, an array of strings, or token ids (non-empty) is required")
    fmt = obj.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad("encoding_format", f"must be 'float' or 'base64', got {fmt!r}")
    dims = obj.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or dims < 1):
        raise bad("dimensions", "must be a positive integer")
    return eir.EmbedRequest(inputs, None, dims, (fmt,), None, str(obj.get("model") or ""))


def _render_request(req: eir.EmbedRequest, model: str, ctx) -> dict:
    # base64 upstream: a quarter of the bytes of JSON floats, decoded in one call
    body: dict = {"model": model, "input": eir.text_inputs(req, "openai"), "encoding_format": "base64"}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    if req.input_type is not None:
        ctx.warnings.append(f"dropped input type '{req.input_type}': OpenAI embeddings take none")
    return body


def _parse_response(obj: dict) -> eir.EmbedResponse:
    rows = sorted(obj["data"], key=lambda d: d.get("index", 0))
    vectors = [eir.from_base64(r["embedding"]) if isinstance(r["embedding"], str) else r["embedding"] for r in rows]
    usage = obj.get("usage") or {}
    return eir.EmbedResponse(vectors, obj.get("model") or "", usage.get("prompt_tokens"))


def _render_response(resp: eir.EmbedResponse, model: str, req: eir.EmbedRequest | None = None) -> dict:
    b64 = req is not None and "base64" in req.encodings
    data = [{"object": "embedding", "index": i, "embedding": eir.to_base64(v) if b64 else eir.floats(v)}
            for i, v in enumerate(resp.vectors)]
    tokens = resp.input_tokens or 0
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


class OpenAIEmbed(OperationDialect):
    protocol = "openai"
    operation = "embed"
    request_name = "embeddings request"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/embeddings"


OpenAIEmbed.codec = OpCodec(_parse_request, _render_request, _parse_response, _render_response)
