"""Admission: what the `received` step checks before a request is routed.

The envelope (method, content type, a JSON object, a `model`) and the
client's credentials (whenever the top-level `auth` lists any, except for
pools that opt out with `auth: false`): a gateway key sent the way the client's SDK sends its
vendor key, or a signed request for protocols whose clients sign
(`Dialect.signed_requests`).  No vendor is named here; the dialect knows where
its key and model live.

Insertion point: tenancy (who the caller is, their limits and budgets) goes
in `admit`, after the credentials are known and before routing starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from busbar.faults import ClientError
from busbar.protocols.base import header, load_json_object
from busbar.records import RequestRecord
from busbar.routing import fingerprint
from busbar.server import HttpRequest

if TYPE_CHECKING:
    from busbar.gateway import Gateway


@dataclass(frozen=True, slots=True)
class Admitted:
    obj: dict
    model: str
    stream: bool
    secret: str | None = None      # the client key, for tenancy limits only (never logged)
    key_id: str | None = None      # the client key a verified signature stands for (auth.aws_credentials[].key_id)


def admit(gw: "Gateway", request: HttpRequest, dialect, params: dict, record: RequestRecord) -> Admitted:
    """The request's envelope and credentials checked, or a ClientError the
    client's protocol renders."""
    if request.method != b"POST":
        raise ClientError(405, f"Method {request.method.decode()} not allowed; use POST.", "invalid_request")
    content_type = header(request.headers, b"content-type")
    if content_type is not None and b"json" not in content_type.lower():
        raise ClientError(415, f"Content-Type must be application/json, got {content_type.decode('latin-1')!r}.",
                          "invalid_request")
    obj = load_json_object(request.body)
    dialect.check_body_shape(obj)       # the passthrough guard: fields the gateway relies on, by JSON type
    model = dialect.inbound_model(params, obj)
    # the top-level `auth` decides; a pool may opt out (`auth: false`)
    key = None
    if model not in gw.open_pools:
        key = authenticate(gw, request, dialect)
        if key is not None:
            record.client_key_id = fingerprint(key)
    if not model:
        raise ClientError(400, "Missing `model`: name a Busbar pool (or provider/model).", "invalid_request",
                          param="model")
    stream = dialect.inbound_stream(params, obj)
    record.pool = model
    record.stream = stream
    signed = dialect.signed_requests and gw.signed_clients
    if signed:      # `key` is the verified access key id: limits apply when it maps to a client key
        return Admitted(obj, model, stream, None, gw.aws_key_id(key) if key is not None else None)
    return Admitted(obj, model, stream, key)


def authenticate(gw: "Gateway", request: HttpRequest, dialect) -> str | None:
    """The client's credential (key, or access key id of a signed request),
    None when the gateway has no client keys."""
    if dialect.signed_requests and gw.signed_clients:
        return dialect.verify_signed(request.method.decode(), request.path.decode("latin-1"),
                                     request.query.decode("latin-1"), request.headers, request.body,
                                     gw.aws_secret)
    if gw.tenancy is None or not gw.tenancy.required:
        return None
    key = dialect.inbound_key(request.headers, request.query)
    # 401 in the client's protocol for missing / unknown / expired; skipped when the server's head check already accepted it (Gateway.check_head)
    if not request.authenticated:
        gw.tenancy.authenticate(key)
    return key
