"""Gemini `:embedContent` (one text) and `:batchEmbedContents` (many; what
google-genai's `models.embed_content` calls).  Members are always called with
the batch form; a client's single call is translated to it and back."""
from __future__ import annotations

import orjson

from busbar.protocols import gemini
from busbar.protocols.embeddings import ir as eir
from busbar.protocols.operation import OpCodec, OperationDialect, bad

TASKS_IN = {"RETRIEVAL_QUERY": "query", "RETRIEVAL_DOCUMENT": "document", "SEMANTIC_SIMILARITY": "similarity",
            "CLASSIFICATION": "classification", "CLUSTERING": "clustering",
            "QUESTION_ANSWERING": "query", "FACT_VERIFICATION": "query", "CODE_RETRIEVAL_QUERY": "query"}
TASKS_OUT = {"query": "RETRIEVAL_QUERY", "document": "RETRIEVAL_DOCUMENT", "similarity": "SEMANTIC_SIMILARITY",
             "classification": "CLASSIFICATION", "clustering": "CLUSTERING"}


def _get(obj: dict, camel: str, snake: str):
    """A field in proto3 JSON, which accepts both spellings."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _text(content, where: str) -> str:
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list) or not parts:
        raise bad(where, "a content with text parts is required")
    if any(not isinstance(p, dict) or not isinstance(p.get("text"), str) for p in parts):
        raise bad(where, "only text parts can be embedded through Busbar")
    return "".join(p["text"] for p in parts)


def _one(item: dict, where: str) -> tuple[str, str | None, int | None]:
    task = _get(item, "taskType", "task_type")
    if task is not None and task not in TASKS_IN:
        raise bad(f"{where}.taskType", f"unknown task type {task!r}")
    dims = _get(item, "outputDimensionality", "output_dimensionality")
    return _text(item.get("content"), f"{where}.content"), task, dims


def _parse_single(obj: dict) -> eir.EmbedRequest:
    text, task, dims = _one(obj, "(body)")
    return eir.EmbedRequest([text], TASKS_IN.get(task), dims)


def _parse_batch(obj: dict) -> eir.EmbedRequest:
    requests = obj.get("requests")
    if not isinstance(requests, list) or not requests:
        raise bad("requests", "a non-empty array is required")
    rows = [_one(r if isinstance(r, dict) else {}, f"requests[{i}]") for i, r in enumerate(requests)]
    # one envelope per call elsewhere: the first request's task and size stand for all
    return eir.EmbedRequest([t for t, _, _ in rows], TASKS_IN.get(rows[0][1]), rows[0][2])


def _render_batch(req: eir.EmbedRequest, model: str, ctx) -> dict:
    name = model if model.startswith("models/") else f"models/{model}"
    extra: dict = {}
    if req.input_type is not None:
        extra["taskType"] = TASKS_OUT[req.input_type]
    if req.dimensions is not None:
        extra["outputDimensionality"] = req.dimensions
    if req.truncate == "start":
        ctx.warnings.append("dropped truncate 'start': Gemini truncates the end")
    return {"requests": [{"model": name, "content": {"parts": [{"text": t}]}, **extra}
                         for t in eir.text_inputs(req, "gemini")]}


def _usage(obj: dict) -> int | None:
    usage = obj.get("usageMetadata") or {}
    return usage.get("promptTokenCount")


def _parse_batch_response(obj: dict) -> eir.EmbedResponse:
    return eir.EmbedResponse([e["values"] for e in obj["embeddings"]], "", _usage(obj))


def _parse_single_response(obj: dict) -> eir.EmbedResponse:
    return eir.EmbedResponse([obj["embedding"]["values"]], "", _usage(obj))


def _usage_body(resp: eir.EmbedResponse) -> dict:
    if resp.input_tokens is None:
        return {}
    return {"usageMetadata": {"promptTokenCount": resp.input_tokens, "totalTokenCount": resp.input_tokens}}


def _render_batch_response(resp: eir.EmbedResponse, model: str, req=None) -> dict:
    return {"embeddings": [{"values": eir.floats(v)} for v in resp.vectors], **_usage_body(resp)}


def _render_single_response(resp: eir.EmbedResponse, model: str, req=None) -> dict:
    return {"embedding": {"values": eir.floats(resp.vectors[0])}, **_usage_body(resp)}


class GeminiEmbedBatch(OperationDialect):
    protocol = "gemini"
    operation = "embed"
    request_name = "batchEmbedContents request"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return gemini.model_path(base_path, model, ":batchEmbedContents")

    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes:
        # each request names the model again, and Gemini wants it to be the path's
        name = model if model.startswith("models/") else f"models/{model}"
        requests = obj.get("requests")
        if not isinstance(requests, list):
            return body
        return orjson.dumps({**obj, "requests": [{**r, "model": name} if isinstance(r, dict) else r
                                                 for r in requests]})


class GeminiEmbedOne(GeminiEmbedBatch):
    """A client's `:embedContent`: parsed and answered in the single shape,
    sent to members as a batch of one."""
    request_name = "embedContent request"


GeminiEmbedBatch.codec = OpCodec(_parse_batch, _render_batch, _parse_batch_response, _render_batch_response)
GeminiEmbedOne.codec = OpCodec(_parse_single, _render_batch, _parse_single_response, _render_single_response)
