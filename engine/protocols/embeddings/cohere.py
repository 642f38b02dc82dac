"""Cohere `POST /v2/embed` and `POST /v2/rerank` (and the same bodies as
Cohere's models take them on Bedrock `invoke`, see `bedrock.py`)."""
from __future__ import annotations

import uuid

from busbar.protocols.embeddings import ir as eir
from busbar.protocols.operation import OpCodec, OperationDialect, bad

INPUT_TYPES_IN = {"search_query": "query", "search_document": "document", "classification": "classification",
                  "clustering": "clustering"}
INPUT_TYPES_OUT = {v: k for k, v in INPUT_TYPES_IN.items()}
INPUT_TYPES_OUT["similarity"] = "clustering"       # Cohere's closest: symmetric use
TRUNCATE_IN = {"NONE": "none", "START": "start", "END": "end"}


def parse_embed(obj: dict, texts_field: str = "texts") -> eir.EmbedRequest:
    texts = obj.get(texts_field)
    if texts is None and isinstance(obj.get("inputs"), list):     # v2 `inputs`: text content only
        texts = []
        for i, item in enumerate(obj["inputs"]):
            parts = item.get("content") if isinstance(item, dict) else None
            if not isinstance(parts, list) or any(p.get("type") != "text" for p in parts):
                raise bad(f"inputs[{i}].content", "only text content can be embedded through Busbar")
            texts.append("".join(p.get("text", "") for p in parts))
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise bad(texts_field, "a non-empty array of strings is required")
    if obj.get("images"):
        raise bad("images", "image embeddings are not translated; send texts")
    input_type = obj.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES_IN:
        raise bad("input_type", f"must be one of {', '.join(INPUT_TYPES_IN)}, got {input_type!r}")
    types = obj.get("embedding_types") or ["float"]
    if not isinstance(types, list):
        raise bad("embedding_types", "must be an array")
    truncate = obj.get("truncate")
    return eir.EmbedRequest(texts, INPUT_TYPES_IN.get(input_type), obj.get("output_dimension"), tuple(types),
                            TRUNCATE_IN.get(str(truncate).upper()) if truncate else None, str(obj.get("model") or ""))


def render_embed(req: eir.EmbedRequest, model: str | None, ctx) -> dict:
    body: dict = {} if model is None else {"model": model}
    body["texts"] = eir.text_inputs(req, "cohere")
    body["input_type"] = INPUT_TYPES_OUT.get(req.input_type, "search_document")   # required by v3+ models
    body["embedding_types"] = ["float"]
    if req.dimensions is not None:
        body["output_dimension"] = req.dimensions
    if req.truncate is not None:
        body["truncate"] = req.truncate.upper()
    return body


def embed_vectors(obj: dict) -> list:
    """The float vectors of a Cohere embed answer (by type, or the v1 bare list)."""
    emb = obj["embeddings"]
    if isinstance(emb, list):
        return emb
    if emb.get("float") is not None:
        return emb["float"]
    if emb.get("base64") is not None:
        return [eir.from_base64(v) for v in emb["base64"]]
    raise ValueError("no float or base64 embeddings in the answer")


def _parse_embed_response(obj: dict) -> eir.EmbedResponse:
    units = ((obj.get("meta") or {}).get("billed_units") or {})
    return eir.EmbedResponse(embed_vectors(obj), "", units.get("input_tokens"), obj.get("id") or "")


def _render_embed_response(resp: eir.EmbedResponse, model: str, req: eir.EmbedRequest | None = None) -> dict:
    types = req.encodings if req is not None else ("float",)
    embeddings: dict = {}
    if "float" in types:
        embeddings["float"] = [eir.floats(v) for v in resp.vectors]
    if "base64" in types:
        embeddings["base64"] = [eir.to_base64(v) for v in resp.vectors]
    body = {"id": resp.id or str(uuid.uuid4()), "embeddings": embeddings, "response_type": "embeddings_by_type",
            "meta": {"api_version": {"version": "2"}}}
    if req is not None:
        body["texts"] = [t for t in req.inputs if isinstance(t, str)]
    if resp.input_tokens is not None:
        body["meta"]["billed_units"] = {"input_tokens": resp.input_tokens}
    return body


def parse_rerank(obj: dict) -> eir.RerankRequest:
    query, docs = obj.get("query"), obj.get("documents")
    if not isinstance(query, str) or not query:
        raise bad("query", "a non-empty string is required")
    if not isinstance(docs, list) or not docs:
        raise bad("documents", "a non-empty array is required")
    texts = []
    for i, d in enumerate(docs):
        if isinstance(d, dict) and isinstance(d.get("text"), str):      # v1's {text: ...} documents
            d = d["text"]
        if not isinstance(d, str):
            raise bad(f"documents[{i}]", "must be a string")
        texts.append(d)
    return eir.RerankRequest(query, texts, obj.get("top_n"), obj.get("max_tokens_per_doc"), str(obj.get("model") or ""))


def render_rerank(req: eir.RerankRequest, model: str | None, ctx) -> dict:
    body: dict = {} if model is None else {"model": model}
    body.update(query=req.query, documents=req.documents)
    if req.top_n is not None:
        body["top_n"] = req.top_n
    if req.max_tokens_per_doc is not None:
        body["max_tokens_per_doc"] = req.max_tokens_per_doc
    return body


def parse_rerank_response(obj: dict) -> eir.RerankResponse:
    results = [(int(r["index"]), float(r["relevance_score"])) for r in obj["results"]]
    units = ((obj.get("meta") or {}).get("billed_units") or {})
    return eir.RerankResponse(results, "", units.get("search_units"), obj.get("id") or "")


def render_rerank_response(resp: eir.RerankResponse, model: str, req=None) -> dict:
    body = {"id": resp.id or str(uuid.uuid4()),
            "results": [{"index": i, "relevance_score": s} for i, s in resp.results],
            "meta": {"api_version": {"version": "2"}}}
    if resp.search_units is not None:
        body["meta"]["billed_units"] = {"search_units": resp.search_units}
    return body


class CohereEmbed(OperationDialect):
    protocol = "cohere"
    operation = "embed"
    request_name = "v2 embed request"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/v2/embed"


class CohereRerank(OperationDialect):
    protocol = "cohere"
    operation = "rerank"
    request_name = "v2 rerank request"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return base_path.rstrip("/") + "/v2/rerank"


CohereEmbed.codec = OpCodec(parse_embed, render_embed, _parse_embed_response, _render_embed_response)
CohereRerank.codec = OpCodec(parse_rerank, render_rerank, parse_rerank_response, render_rerank_response)
