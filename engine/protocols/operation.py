"""Calls other than chat through the same driver: embeddings, rerank, token counting.

An `OperationDialect` is one protocol's dialect for one operation on that
vendor's own path (OpenAI's `/v1/embeddings`, Cohere's `/v2/rerank`,
Anthropic's `/v1/messages/count_tokens`, ...).  It offers the driver the
same contract as a chat dialect (`base.DialectContract`), so admission,
routing, keys, the breaker and the settle funnel are the chat ones:

* the vendor's wire conventions (where the key travels, the error shape,
  how an error classifies, request signing, rate-limit headers) are its chat
  dialect's, delegated explicitly below (`wire`);
* what differs is the body (a small IR of its own, `busbar.protocols.embeddings.ir`,
  and a codec per protocol), the upstream path, and which dialect of a
  member's protocol answers the same operation (`peer`);
* a member whose protocol has no endpoint for the operation gets
  `local_answer` instead of an upstream call (token counting: an estimate,
  marked as such; otherwise a clear 400 naming the member's protocol).

The registry (`operation_dialect`) is keyed by (protocol, route operation):
the routes name the client side (`busbar.protocols.routes`), `peer` the
member side.  No I/O here.
"""
from __future__ import annotations

from functools import cache
from typing import Any, Callable, ClassVar, NamedTuple

import orjson

from busbar.faults import ClientError
from busbar.protocols.base import Dialect, Headers
from busbar.protocols.common import RenderCtx
from busbar.routing import Needs

# the header that marks an answer the gateway computed itself instead of the vendor
ESTIMATE_HEADER = (b"x-busbar-estimate", b"true")


class OpCodec(NamedTuple):
    """One operation's body translation for one protocol (all I/O-free)."""

    parse_request: Callable[[dict], Any]                 # wire body -> IR request
    render_request: Callable[[Any, str, RenderCtx], dict]  # (IR request, member model, ctx) -> wire body
    parse_response: Callable[[dict], Any]                # wire body -> IR response
    render_response: Callable[..., dict]                 # (IR response, model, IR request) -> wire body


class OperationDialect(Dialect):
    """Base of the non-chat dialects; subclasses set `protocol`, `operation`,
    `codec` and `upstream_path`."""

    protocol: ClassVar[str]
    operation: ClassVar[str]           # "embed" | "rerank" | "count": what `peer` looks up
    codec: ClassVar[OpCodec]
    stop_emulated: ClassVar[bool] = False

    def __init__(self):
        from busbar.protocols import get_dialect
        self.wire = get_dialect(self.protocol)      # the vendor's wire conventions
        self.name = self.protocol
        self.kind_status = self.wire.kind_status
        self.forward_headers = self.wire.forward_headers
        self.signed_requests = self.wire.signed_requests
        self.error_headers_kept = self.wire.error_headers_kept
        self.request_id_header = self.wire.request_id_header

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.protocol}/{self.operation}>"

    # ---- the vendor's wire conventions: its chat dialect's ----------------
    def inbound_key(self, headers: Headers, query: bytes) -> str | None:
        return self.wire.inbound_key(headers, query)

    def inbound_model(self, params: dict, obj: dict) -> str | None:
        return self.wire.inbound_model(params, obj)

    def verify_signed(self, method, path, query, headers, body, lookup_secret) -> str:
        return self.wire.verify_signed(method, path, query, headers, body, lookup_secret)

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        return self.wire.render_error(err)

    def fault_to_client_error(self, fault):
        return self.wire.fault_to_client_error(fault)

    def classify(self, status: int, headers: Headers, body: bytes):
        return self.wire.classify(status, headers, body)

    def rate_limits(self, headers: Headers):
        return self.wire.rate_limits(headers)

    def auth_headers(self, key: str | None) -> Headers:
        return self.wire.auth_headers(key)

    def build_signer(self, spec: dict, host: str):
        return self.wire.build_signer(spec, host)

    # ---- what differs from chat ------------------------------------------
    def inbound_stream(self, params: dict, obj: dict) -> bool:
        return False

    def needs(self, body: bytes, obj: dict) -> Needs:
        return Needs(tokens=len(body) // 4)

    def peer(self, provider, model: str):
        """The dialect a member of `provider` answers this operation with
        (None: its protocol has no such endpoint)."""
        found = operation_dialect(provider.protocol, self.operation)
        return None if found is None else found.for_model(model)

    def for_model(self, model: str) -> "OperationDialect":
        """The member-side dialect for one upstream model (Bedrock's body
        shape depends on the model family)."""
        return self

    def local_answer(self, req, member_protocol: str):
        """What to answer when a member's protocol has no endpoint for this
        operation: an IR response (an estimate) or a ClientError."""
        raise ClientError(400, f"The pool's member speaks {member_protocol}, which has no "
                               f"{self.operation} endpoint; route this call to a pool of {self.operation} members.",
                          "invalid_request", param="model")

    def local_headers(self) -> Headers:
        return [ESTIMATE_HEADER]

    # ---- translation ---------------------------------------------------
    def parse_request(self, obj: dict, params: dict | None = None):
        try:
            return self.codec.parse_request(obj)
        except ClientError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            raise ClientError(400, f"Malformed {self.request_name}: unexpected shape ({type(exc).__name__}: "
                                   f"{str(exc)[:120]})") from None

    def render_request(self, req, model: str, *, max_tokens_default: int | None = None,
                       unsupported: str = "reject") -> tuple[bytes, list[str]]:
        ctx = RenderCtx(self.protocol, unsupported, model)
        return orjson.dumps(self.codec.render_request(req, model, ctx)), ctx.warnings

    def parse_response(self, obj: dict):
        return self.codec.parse_response(obj)

    def render_response(self, resp, model: str, req=None, sent=None) -> bytes:
        """`req` is the client's parsed request: what it asked the answer to
        look like (Cohere's embedding types, OpenAI's base64)."""
        return orjson.dumps(self.codec.render_response(resp, model, req))


def bad(where: str, why: str) -> ClientError:
    return ClientError(400, f"{where}: {why}", "invalid_request", param=where.split("[")[0].split(".")[0])


@cache
def _registry() -> dict[tuple[str, str], OperationDialect]:
    from busbar.protocols import counting, embeddings
    return {**embeddings.DIALECTS, **counting.DIALECTS}


def operation_dialect(protocol: str, operation: str) -> OperationDialect | None:
    """The dialect of `protocol` for a route operation (`embed`, `rerank`,
    `count`, and the client-only `embed_one` / `invoke`), None if it has none."""
    return _registry().get((protocol, operation))
