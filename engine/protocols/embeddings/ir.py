"""The embeddings and rerank IR: what every protocol's envelope can say.

Vectors are plain float sequences here; each codec renders the encoding its
client asked for (`float` lists, or `base64`: little-endian float32 bytes, as
OpenAI and Cohere send them).  Input types are one small vocabulary that each
protocol maps to its own names.
"""
from __future__ import annotations

import base64
import sys
from array import array
from dataclasses import dataclass, field

from busbar import ir

# the input-type vocabulary (what the text is for); None: the protocol's default
INPUT_TYPES = ("query", "document", "similarity", "classification", "clustering")


@dataclass(slots=True)
class EmbedRequest:
    inputs: list                        # texts; token-id lists only from OpenAI clients
    input_type: str | None = None       # one of INPUT_TYPES
    dimensions: int | None = None       # requested output size (None: the model's own)
    encodings: tuple = ("float",)       # what the client wants back: "float" and/or "base64"
    truncate: str | None = None         # "none" | "start" | "end"
    model: str = ""                     # as the client named it (a pool)


@dataclass(slots=True)
class EmbedResponse:
    vectors: list                       # one float sequence per input, in input order
    model: str = ""
    input_tokens: int | None = None     # None: the vendor did not say
    id: str = ""

    @property
    def usage(self) -> ir.Usage | None:
        return None if self.input_tokens is None else ir.Usage(input_tokens=self.input_tokens)


@dataclass(slots=True)
class RerankRequest:
    query: str
    documents: list[str]
    top_n: int | None = None
    max_tokens_per_doc: int | None = None
    model: str = ""


@dataclass(slots=True)
class RerankResponse:
    results: list[tuple[int, float]]    # (document index, relevance score), best first
    model: str = ""
    search_units: int | None = None
    id: str = ""
    extras: dict = field(default_factory=dict)

    usage = None                        # reranking is billed in search units, not tokens


RENDERABLE = ("float", "base64")     # what the gateway renders from any member's vectors


def text_inputs(req: EmbedRequest, target: str) -> list[str]:
    """The inputs as texts for a member of another protocol, or a 400: token
    ids (only OpenAI members read those), or an encoding the gateway cannot
    make from floats (Cohere's int8/binary come only from Cohere itself)."""
    from busbar.faults import ClientError
    if any(not isinstance(x, str) for x in req.inputs):
        raise ClientError(400, f"Token-id inputs cannot be translated to the {target} protocol; send texts.",
                          param="input")
    other = [t for t in req.encodings if t not in RENDERABLE]
    if other:
        raise ClientError(400, f"Embedding types {', '.join(map(str, other))} cannot be made from a {target} member's "
                               "vectors (the gateway renders float and base64).", param="embedding_types")
    return req.inputs


def split(req: EmbedRequest, size: int) -> list[EmbedRequest]:
    """The request as requests of at most `size` inputs each, in order."""
    # built directly: dataclasses.replace costs ~5x more per part
    return [EmbedRequest(req.inputs[i:i + size], req.input_type, req.dimensions, req.encodings, req.truncate, req.model)
            for i in range(0, len(req.inputs), size)]


def join(parts: list[EmbedResponse]) -> EmbedResponse:
    """The answers to `split`'s requests as one: vectors in input order, the
    usage summed (unknown if any part's is)."""
    tokens = [p.input_tokens for p in parts]
    return EmbedResponse([v for p in parts for v in p.vectors], parts[0].model,
                         None if None in tokens else sum(tokens), parts[0].id)


_SWAP = sys.byteorder != "little"


def to_base64(vector) -> str:
    """A vector as base64 of little-endian float32 (OpenAI's and Cohere's `base64`)."""
    packed = array("f", vector)
    if _SWAP:
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def from_base64(text: str) -> array:
    packed = array("f", base64.b64decode(text))
    if _SWAP:
        packed.byteswap()
    return packed


def floats(vector) -> list[float]:
    return vector if type(vector) is list else list(vector)
