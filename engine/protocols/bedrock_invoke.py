"""Bedrock InvokeModel for Claude (`POST /model/{modelId}/invoke`,
`/model/{modelId}/invoke-with-response-stream`): the seventh dialect.

The body is Anthropic Messages (the Anthropic codec parses and renders it)
with Bedrock's three differences: `anthropic_version` in the body
(`"bedrock-2023-05-31"` in AWS's guide; the anthropic SDK's AnthropicBedrock
sends its own API version date, kept as it is), no `model` (it is in the
path) and no `stream` (the path says it), and the beta flags as a body field
`anthropic_beta` instead of the `anthropic-beta` header (notes both ways,
`bedrock.claude_betas`).  Everything around the body is Bedrock's
(`BedrockDialect`): SigV4 (`busbar.aws.sigv4`), the model and the stream
flag in the path, restJson errors (`x-amzn-ErrorType` + `{"message"}`), and
an eventstream answer whose `chunk` events carry, base64 in their `bytes`
field, the JSON of each Messages stream event; errors mid-stream are
exception frames.

An InvokeModel body can also be an embeddings or rerank body (Titan,
Cohere): `for_body` hands those to `busbar.protocols.embeddings.bedrock`.
The IR extras of this dialect are Anthropic's (`P`): the same fields, the
same thinking signatures, the same cache breakpoints, so an Anthropic client
and a Claude-on-Bedrock member (or the reverse) lose nothing between them.
"""
from __future__ import annotations

import base64
import time
from binascii import b2a_base64

from busbar import ir
from busbar.aws import eventstream as es
from busbar.faults import ClientError
from busbar.protocols import anthropic
from busbar.protocols import common as c
from busbar.protocols import streaming as s
from busbar.protocols.base import Codec, Headers, StreamError, bearer_token, locate_malformed
from busbar.protocols.bedrock import BedrockDialect, FrameDecoder, claude_betas, exception_event, exception_frame, model_path

P = anthropic.P                   # the body's family: extras, signatures and cache marks are Anthropic's
NAME = "bedrock-invoke"
BEDROCK_VERSION = "bedrock-2023-05-31"
STREAM_ACTION = "invoke-with-response-stream"
_BEDROCK_KEYS = ("anthropic_version", "anthropic_beta")


def is_messages_body(obj: dict) -> bool:
    """An Anthropic Messages body as Bedrock takes it (Claude), rather than
    another model family's InvokeModel body (Titan, Cohere, Nova...)."""
    return "anthropic_version" in obj or ("messages" in obj and "max_tokens" in obj and "schemaVersion" not in obj)


class BedrockInvokeDialect(BedrockDialect):
    name = NAME
    request_name = "InvokeModel (Anthropic Messages) body"
    body_shape = {"messages": (list,), "system": (str, list), "max_tokens": (int,), "tools": (list,),
                  "anthropic_version": (str,)}
    family = P
    tool_fields = ("tools",)
    vision_markers = (b'"image"',)

    # ---- inbound ---------------------------------------------------------
    def inbound_key(self, headers: Headers, query: bytes) -> str | None:
        # A Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`: `Authorization: Bearer`)
        # can be a gateway key; SigV4-signed requests go through verify_signed.
        return bearer_token(headers)

    def inbound_stream(self, params: dict, obj: dict) -> bool:
        return params.get("action") == STREAM_ACTION

    def for_body(self, obj: dict):
        """A Messages body is this dialect's; a Titan or Cohere body goes to
        the embeddings/rerank dialects; anything else is refused, naming what
        is served."""
        if is_messages_body(obj):
            return self
        from busbar.protocols.operation import operation_dialect
        try:
            return operation_dialect("bedrock", "invoke").for_body(obj)
        except ClientError:
            raise ClientError(400, "Busbar serves InvokeModel with an Anthropic Messages body (`anthropic_version: "
                                   f"{BEDROCK_VERSION}`, `max_tokens`, `messages`) and Titan or Cohere embedding / "
                                   "rerank bodies; for other chat models call Converse.", "invalid_request") from None

    # ---- outbound --------------------------------------------------------
    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        return model_path(base_path, model, STREAM_ACTION if stream else "invoke")

    # ---- translation -----------------------------------------------------
    def parse_request(self, obj: dict, params: dict | None = None):
        try:
            req = self.codec.parse_request(obj)
        except ClientError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            where = locate_malformed(NAME, obj)
            raise ClientError(400, f"Malformed {self.request_name}: "
                                   + (where or f"unexpected shape ({type(exc).__name__})")) from None
        req.stream = self.inbound_stream(params or {}, obj)
        return req



# ---------------------------------------------------------------------------
# bodies: Anthropic's, with Bedrock's envelope fields


def _parse_request(obj: dict) -> ir.Request:
    beta = obj.get("anthropic_beta")
    version = obj.get("anthropic_version")
    if version is not None or beta is not None:
        obj = {k: v for k, v in obj.items() if k not in _BEDROCK_KEYS}
    req = anthropic._parse_request(obj)
    if beta:
        if not isinstance(beta, list) or not all(isinstance(b, str) for b in beta):
            raise c.bad("anthropic_beta", "must be an array of strings")
        req.extras = c.with_note(req.extras, P, "$beta", beta)
    if version is not None and version != BEDROCK_VERSION:
        if not isinstance(version, str):
            raise c.bad("anthropic_version", "must be a string")
        # the anthropic SDK's AnthropicBedrock sends its API version date here; kept for Bedrock
        req.extras = c.with_note(req.extras, P, "$bedrock_version", version)
    return req


def _render_request(req: ir.Request, model: str, max_tokens_default, ctx: c.RenderCtx) -> dict:
    body = anthropic._render_request(req, model, max_tokens_default, ctx)
    del body["model"]
    body.pop("stream", None)
    out: dict = {"anthropic_version": c.note(req.extras, P, "$bedrock_version") or BEDROCK_VERSION}
    betas = claude_betas(req, ctx)
    if betas:
        out["anthropic_beta"] = betas
    out.update(body)
    return out


_parse_response = anthropic._parse_response
_render_response = anthropic._render_response


# ---------------------------------------------------------------------------
# streaming: eventstream `chunk` frames around Messages events


class StreamDecoder(FrameDecoder):
    """InvokeModelWithResponseStream frames -> IR: each `chunk` event's
    `bytes` (base64) is one Messages stream event's JSON, fed to the
    Anthropic decoder; exception and error frames end the stream with an
    ErrorEvent as Bedrock's ConverseStream decoder reads them."""

    __slots__ = ("_inner",)
    _what = "InvokeModel stream chunk"

    def __init__(self):
        self._frames = es.Decoder()
        self._inner = anthropic.StreamDecoder()
        self._failed = False

    def _message(self, m, out: list) -> None:
        inner = self._inner
        if inner._done:
            return
        h = m.headers
        mt = h.get(":message-type")
        if mt != "event":
            inner._done = True
            out.append(exception_event(mt, h, m.payload))
        elif h.get(":event-type") == "chunk":
            inner._event(None, base64.b64decode(s.loads(m.payload)["bytes"]), out)
        # other event types: none are defined; ignored like unknown SSE events

    def close(self) -> list[ir.Event]:
        self._close_frames()
        out: list = []
        try:
            self._inner._end(out)
        except StreamError:
            self._failed = True
            raise
        return out


_CHUNK_HEADERS = es.header_block(es.event_message("chunk", b"").headers)   # the same on every chunk frame
frame = es.frame
_CHUNK_HEAD = b'{"bytes":"'
_MESSAGE_STOP = b'{"type":"message_stop"}'


@s.handlers
class StreamEncoder(anthropic.StreamEncoder):
    """IR -> InvokeModelWithResponseStream frames: the Anthropic encoder's
    events, each as one `chunk` frame (its data line base64 in `bytes`);
    `message_stop` carries Bedrock's `amazon-bedrock-invocationMetrics`.
    Errors are exception frames, which botocore raises as EventStreamError
    (and the anthropic SDK's Bedrock client as an API error)."""

    content_type = b"application/vnd.amazon.eventstream"
    __slots__ = ("_t0", "_first")

    def __init__(self, model: str):
        super().__init__(model)
        self._t0 = time.monotonic()
        self._first: int | None = None

    def encode(self, event: ir.Event) -> bytes:
        t = type(event)
        if t is ir.ErrorEvent:
            return self._error_event(event)
        return self._chunks(self._on[t](self, event))

    def _chunks(self, sse: bytes) -> bytes:
        """Each `event: ...\ndata: {...}\n\n` the Anthropic encoder wrote, as a chunk frame."""
        out = b""
        at = sse.find(b"data: ")
        while at >= 0:
            end = sse.find(b"\n\n", at)
            data = sse[at + 6:end]
            if data == _MESSAGE_STOP:
                data = self._metrics()
            elif self._first is None:
                self._first = int((time.monotonic() - self._t0) * 1000)
            out += frame(_CHUNK_HEADERS, _CHUNK_HEAD + b2a_base64(data, newline=False) + b'"}')
            at = sse.find(b"data: ", end)
        return out

    def _metrics(self) -> bytes:
        u = self._usage or ir.Usage()
        latency = int((time.monotonic() - self._t0) * 1000)
        return s.dumps({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": u.input_tokens, "outputTokenCount": u.output_tokens,
            "invocationLatency": latency, "firstByteLatency": self._first if self._first is not None else latency}})

    def _error(self, kind: str, message: str) -> bytes:
        return exception_frame(kind, message)


def usage_in(u: dict) -> ir.Usage:
    return anthropic.usage_in(u)


BedrockInvokeDialect.codec = Codec(_parse_request, _render_request, _parse_response, _render_response,
                                   StreamDecoder, StreamEncoder, usage_in)
dialect = BedrockInvokeDialect()
