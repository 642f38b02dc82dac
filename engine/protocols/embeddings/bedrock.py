"""Bedrock `POST /model/{modelId}/invoke` for embedding and rerank models.

InvokeModel's body is the model family's own: Amazon Titan embeddings
(`inputText`), Cohere embed (`texts`, as Cohere's v2 without `model`) and
rerank (`query` + `documents`).  A client's body says which it is
(`BedrockInvoke.for_body`); a member's model id says which to send
(`BedrockEmbed.for_model`).  Titan embeds one text per call: a batch for a
Titan member is split into one call per text (`split` / `join`, sent by
`Exchange._fan_out`).  Chat on invoke is not served: Converse is."""
from __future__ import annotations

from busbar.faults import ClientError
from busbar.protocols import bedrock
from busbar.protocols.embeddings import cohere
from busbar.protocols.embeddings import ir as eir
from busbar.protocols.operation import OpCodec, OperationDialect, bad


def _parse_titan(obj: dict) -> eir.EmbedRequest:
    text = obj.get("inputText")
    if not isinstance(text, str) or not text:
        raise bad("inputText", "a non-empty string is required")
    types = obj.get("embeddingTypes") or ["float"]
    return eir.EmbedRequest([text], None, obj.get("dimensions"), tuple(types))


def _render_titan(req: eir.EmbedRequest, model: str, ctx) -> dict:
    [text] = eir.text_inputs(req, "bedrock")         # one per call: `TitanEmbed.split` made it so
    body: dict = {"inputText": text}
    if req.dimensions is not None:
        body["dimensions"] = req.dimensions
    if req.input_type is not None:
        ctx.warnings.append(f"dropped input type '{req.input_type}': Titan embeddings take none")
    return body


def _parse_titan_response(obj: dict) -> eir.EmbedResponse:
    vector = obj.get("embedding")
    if vector is None:
        vector = (obj.get("embeddingsByType") or {})["float"]
    return eir.EmbedResponse([vector], "", obj.get("inputTextTokenCount"))


def _render_titan_response(resp: eir.EmbedResponse, model: str, req=None) -> dict:
    vector = eir.floats(resp.vectors[0])
    return {"embedding": vector, "inputTextTokenCount": resp.input_tokens or 0, "embeddingsByType": {"float": vector}}


def _parse_cohere(obj: dict) -> eir.EmbedRequest:
    return cohere.parse_embed(obj)


def _render_cohere(req: eir.EmbedRequest, model: str, ctx) -> dict:
    return cohere.render_embed(req, None, ctx)      # the model is in the path


def _parse_cohere_response(obj: dict) -> eir.EmbedResponse:
    return eir.EmbedResponse(cohere.embed_vectors(obj), "", None, obj.get("id") or "")


def _render_cohere_response(resp: eir.EmbedResponse, model: str, req=None) -> dict:
    body = cohere._render_embed_response(resp, model, req)
    body.pop("meta", None)
    return body


def _render_rerank(req: eir.RerankRequest, model: str, ctx) -> dict:
    body = cohere.render_rerank(req, None, ctx)
    body["api_version"] = 2                        # required by Cohere's rerank on Bedrock
    return body


def _render_rerank_response(resp: eir.RerankResponse, model: str, req=None) -> dict:
    body = cohere.render_rerank_response(resp, model, req)
    body.pop("meta", None)
    return body


class _BedrockOperation(OperationDialect):
    protocol = "bedrock"

    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return bedrock.model_path(base_path, model, "invoke")

    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes:
        return body    # the model is in the path


class TitanEmbed(_BedrockOperation):
    operation = "embed"
    request_name = "Titan embeddings body"
    inputs_per_call = 1
    parallel_calls = 4          # a batch's calls in flight at once, per attempt

    def split(self, req: eir.EmbedRequest) -> list[eir.EmbedRequest]:
        return eir.split(req, self.inputs_per_call)

    def join(self, parts: list[eir.EmbedResponse]) -> eir.EmbedResponse:
        return eir.join(parts)


class CohereEmbedOnBedrock(_BedrockOperation):
    operation = "embed"
    request_name = "Cohere embed body"


class CohereRerankOnBedrock(_BedrockOperation):
    operation = "rerank"
    request_name = "Cohere rerank body"


TitanEmbed.codec = OpCodec(_parse_titan, _render_titan, _parse_titan_response, _render_titan_response)
CohereEmbedOnBedrock.codec = OpCodec(_parse_cohere, _render_cohere, _parse_cohere_response, _render_cohere_response)
CohereRerankOnBedrock.codec = OpCodec(cohere.parse_rerank, _render_rerank, cohere.parse_rerank_response,
                                      _render_rerank_response)
TITAN, COHERE_EMBED, COHERE_RERANK = TitanEmbed(), CohereEmbedOnBedrock(), CohereRerankOnBedrock()


class BedrockEmbed(TitanEmbed):
    """A Bedrock member's embeddings: the body its model family takes."""

    def for_model(self, model: str) -> OperationDialect:
        return COHERE_EMBED if "cohere." in model else TITAN


class BedrockInvoke(_BedrockOperation):
    """A client's InvokeModel call: which body it is decides the dialect."""
    operation = "invoke"
    request_name = "InvokeModel body"

    def for_body(self, obj: dict) -> OperationDialect:
        if "inputText" in obj:
            return TITAN
        if "texts" in obj or "inputs" in obj:
            return COHERE_EMBED
        if "query" in obj and "documents" in obj:
            return COHERE_RERANK
        raise ClientError(400, "Busbar serves InvokeModel for embedding and rerank models (Amazon Titan `inputText`, "
                               "Cohere `texts` or `query` + `documents` bodies); call Converse for chat models.")

    def peer(self, provider, model: str):
        raise AssertionError("for_body picks the dialect before routing")


def _unreachable(*args):
    raise AssertionError("BedrockInvoke only picks the dialect (for_body); it never translates")


# parsing goes to the body's own dialect; nothing else is ever asked of it
BedrockInvoke.codec = OpCodec(lambda obj: BedrockInvoke.for_body(None, obj).codec.parse_request(obj),
                              _unreachable, _unreachable, _unreachable)
