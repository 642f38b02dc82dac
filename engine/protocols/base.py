"""What every protocol module provides, and the mechanics they share.

A protocol module is I/O-free (like h11): bytes and parsed headers in, bytes
and decisions out.  The gateway driver calls two halves of it:

* inbound  - Busbar acting as this vendor's *server*: find the client's key,
  the requested model (a pool name), whether it wants a stream, and render
  errors in this vendor's own error shape so the client SDK raises its usual
  exception class.
* outbound - Busbar acting as this vendor's *client*: build the upstream path
  and auth headers, rewrite `model` for same-protocol passthrough, and
  classify a vendor error into a fault class.

Translation to and from the canonical IR (`busbar.ir`) lives in the same
module, next to these wire details.
"""
from __future__ import annotations

import json
import re
from functools import cache
from urllib.parse import quote
from typing import Any, Callable, ClassVar, NamedTuple, Protocol, runtime_checkable

import orjson

from busbar import ir, resources
from busbar.faults import ClientError, Fault, FaultClass, VendorQuota, parse_retry_after
from busbar.protocols.common import RenderCtx
from busbar.routing import Needs


def path_segment(value: str) -> str:
    """`value` as exactly one path segment: percent-quoted whole, and a bare
    `.` or `..` (which quoting leaves alone and a server would resolve as a
    directory step) written as `%2E` escapes."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted

Headers = list[tuple[bytes, bytes]]

# The gateway's record id on every answer it gives (ADR 0029), under this name in
# every protocol, and also under the protocol's own request-id header where it has one.
GATEWAY_REQUEST_ID = b"x-busbar-request-id"
# how much of a vendor's request id an attempt record keeps (a vendor's header, not trusted)
UPSTREAM_REQUEST_ID_CHARS = 128

JSON_CT = (b"content-type", b"application/json")


def header(headers: Headers, name: bytes) -> bytes | None:
    """First value of a (lower-case) header name, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def int_header(headers: Headers, name: bytes) -> int | None:
    """A header's integer value, or None (absent or not an integer)."""
    value = header(headers, name)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def bearer_token(headers: Headers) -> str | None:
    value = header(headers, b"authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"bearer" or not token:
        return None
    return token.strip().decode("latin-1")


def query_param(query: bytes, name: str) -> str | None:
    from urllib.parse import parse_qsl

    for key, value in parse_qsl(query.decode("latin-1")):
        if key == name:
            return value
    return None


# A `"model": "..."` member starting at a found `"model"`.  Inside a JSON
# string a quote is always escaped, so an unescaped `"model"` followed by `:`
# is a key.
_MODEL_MEMBER_AT = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_MODEL_KEY = b'"model"'


def _model_members(body: bytes, limit: int) -> list:
    """Up to `limit` `"model": "..."` members of `body`, in order.  The key
    is found with bytes.find (memchr speed) and only matched there: scanning
    a 100 KB prompt with one regex cost ~1.4 ms, this costs what the find does."""
    found = []
    pos = body.find(_MODEL_KEY)
    while pos >= 0:
        m = _MODEL_MEMBER_AT.match(body, pos) if pos == 0 or body[pos - 1] != 0x5C else None   # not after a \
        if m is None:
            pos = body.find(_MODEL_KEY, pos + 1)
            continue
        found.append(m)
        if len(found) >= limit:
            break
        pos = body.find(_MODEL_KEY, m.end())
    return found


def rewrite_json_model(body: bytes, obj: dict, model: str) -> bytes:
    """Return `body` with its top-level `model` value replaced, other bytes kept.

    Passthrough promises the vendor sees the client's bytes untouched except
    for the model name.  When the key occurs once we splice it in place;
    otherwise (nested "model" keys, no model) we fall back to re-serialising
    the parsed object, which is equivalent JSON.
    """
    # one member and a top-level string model: that member is the top-level one
    matches = _model_members(body, 2) if type(obj.get("model")) is str else ()
    if len(matches) == 1:
        m = matches[0]
        return body[: m.start(1)] + orjson.dumps(model)[1:-1] + body[m.end(1):]
    obj = dict(obj)
    obj["model"] = model
    return orjson.dumps(obj)


# Error kinds used by ClientError, with the HTTP status each is sent with
# unless a protocol's `ErrorTable` says otherwise.
KIND_STATUS = {
    "invalid_request": 400,
    "authentication": 401,
    "permission": 403,
    "not_found": 404,
    "request_too_large": 413,
    "rate_limit": 429,
    "billing": 402,
    "overloaded": 503,
    "api_error": 500,
    "upstream": 502,     # every member failed on its side: a bad gateway
    "timeout": 504,
}

KINDS = tuple(KIND_STATUS)


class ErrorRow(NamedTuple):
    """How one protocol shows one error kind: the HTTP status, its own error
    type name (None where it has none), a secondary code (OpenAI's
    `error.code`), and the name of the in-stream error when that differs
    from `type` (Bedrock's exception frames, Responses' `response.error.code`)."""

    status: int
    type: str | None = None
    code: str | None = None
    event: str | None = None


class ErrorTable:
    """One protocol's error vocabulary, declared once as kind -> ErrorRow and
    compiled both ways: `status` (kind -> status, the Dialect's
    `kind_status`), `row(kind)` for what renderers and stream encoders send,
    and `status_of(*names)` for what stream decoders read (the vendor's
    error names -> the HTTP status they stand for, so the dialect's own
    `classify` reads an in-stream error like the HTTP one).

    The read side is each row's sent name (`event`, else `type`) with its
    status, plus `read`: vendor names we never send, and the one status of a
    name several kinds share.  A table that misses a kind, or leaves a shared
    name's status open, is refused at import."""

    __slots__ = ("protocol", "rows", "status", "read", "declared_read")

    def __init__(self, protocol: str, rows: dict[str, ErrorRow], read: dict[str, int] | None = None):
        missing, unknown = set(KINDS) - set(rows), set(rows) - set(KINDS)
        if missing or unknown:
            raise TypeError(f"{protocol} error table: missing kinds {sorted(missing)}, unknown {sorted(unknown)}")
        self.protocol = protocol
        self.rows = dict(rows)
        self.status = {kind: row.status for kind, row in rows.items()}
        self.declared_read = dict(read or {})
        claimed: dict[str, set[int]] = {}
        for row in rows.values():
            name = row.event or row.type
            if name is not None:
                claimed.setdefault(name, set()).add(row.status)
        open_names = sorted(n for n, statuses in claimed.items() if len(statuses) > 1 and n not in self.declared_read)
        if open_names:
            raise TypeError(f"{protocol} error table: {open_names} are sent for kinds of different statuses; "
                            "say in `read` which status each stands for")
        self.read = {**{n: next(iter(st)) for n, st in claimed.items()}, **self.declared_read}

    def row(self, kind: str, default: str) -> ErrorRow:
        """The row for `kind`; a kind outside the vocabulary is shown as `default`'s."""
        return self.rows.get(kind) or self.rows[default]

    def status_of(self, *names, default: int = 500) -> int:
        """The status the first known name stands for (`default` when none is known)."""
        for name in names:
            if isinstance(name, str) and name in self.read:
                return self.read[name]
        return default


_CONTEXT_PATTERNS = re.compile(
    r"context[_ ]length|maximum context length|prompt is too long|too many tokens|"
    r"input is too long|exceeds the (?:maximum|context)|input token count.*exceeds|"
    r"too long for the model|reduce the length",
    re.IGNORECASE,
)
_BILLING_PATTERNS = re.compile(
    r"insufficient_quota|exceeded your current quota|credit balance is too low|"
    r"billing|payment required|purchase credits|quota exceeded for (?:this )?(?:billing|project)",
    re.IGNORECASE,
)


def kind_from_fault(fault: Fault) -> str:
    """The ClientError kind a fault is shown to the client as."""
    return {
        FaultClass.CLIENT: "invalid_request",
        FaultClass.CONTEXT: "invalid_request",
        FaultClass.RATE: "rate_limit",
        FaultClass.BILLING: "rate_limit",
        FaultClass.AUTH: "upstream",    # our key failed: not the client's fault
        FaultClass.SERVER: "upstream",
    }[fault.cls]


def classify_generic(status: int, headers: Headers, message: str, code: str | None) -> Fault:
    """Shared classification by status + body text; protocol modules call this
    after extracting the vendor's message and error code.

    Order matters: billing before rate (OpenAI's quota error is a 429), and a
    5xx is never read as a context-length error.
    """
    retry_after = parse_retry_after(header(headers, b"retry-after"))
    text = f"{code or ''} {message}"
    if status >= 500 and status not in (529,):
        return Fault(FaultClass.SERVER, status, message, retry_after, code)
    if status == 402 or _BILLING_PATTERNS.search(text):
        return Fault(FaultClass.BILLING, status, message, retry_after, code)
    if status in (429, 529):
        return Fault(FaultClass.RATE, status, message, retry_after, code)
    if status in (401, 403):
        return Fault(FaultClass.AUTH, status, message, retry_after, code)
    if status in (400, 413, 422) and _CONTEXT_PATTERNS.search(text):
        return Fault(FaultClass.CONTEXT, status, message, retry_after, code)
    if 400 <= status < 500:
        # 404 (unknown model on that vendor) and 408/409 are the member's problem,
        # not the client's: everything else 4xx is the caller's request.
        if status in (404, 408, 409):
            return Fault(FaultClass.SERVER, status, message, retry_after, code)
        return Fault(FaultClass.CLIENT, status, message, retry_after, code)
    return Fault(FaultClass.SERVER, status, message or f"unexpected status {status}", retry_after, code)


class StreamError(ValueError):
    """An upstream stream that cannot be decoded: garbage, a malformed frame,
    or a stream that ended mid-event or before its terminal event."""


def load_json_object(body: bytes) -> dict:
    """Parse a request body that must be a JSON object, or raise a ClientError
    the client's protocol will render (bad UTF-8 and bad JSON included)."""
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(400, f"Request body is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ClientError(400, "Request body must be a JSON object.")
    return obj


class Endpoint:
    """A provider's upstream addressing: `path(model, stream)` and
    `auth(key)`; the protocol's defaults unless the provider's config
    adjusts them (see `Dialect.build_endpoint`)."""

    __slots__ = ("dialect", "base_path", "auth_header", "query")

    def __init__(self, dialect: "Dialect", base_path: str, auth_header: bytes | None = None, query: str = ""):
        self.dialect = dialect
        self.base_path = base_path
        self.auth_header = auth_header
        self.query = query          # appended to every path (`api-version=...`)

    def path(self, model: str, stream: bool, dialect=None) -> str:
        """`dialect`: another operation's (embeddings...) on this provider,
        addressed as this provider addresses its calls (`operation_path`)."""
        if dialect is None:
            path = self.dialect.upstream_path(self.base_path, model, stream)
        else:
            path = self.dialect.operation_path(dialect, self.base_path, model, stream)
        if self.query:
            path += ("&" if "?" in path else "?") + self.query
        return path

    def auth(self, key: str | None) -> Headers:
        if self.auth_header is not None:
            return [(self.auth_header, key.encode())] if key else []
        return self.dialect.auth_headers(key)


class Codec(NamedTuple):
    """A protocol module's translation and stream codecs, bound to its Dialect
    class at the end of the module (`XDialect.codec = Codec(...)`)."""

    parse_request: Callable[[dict], Any]                       # wire request -> ir.Request
    render_request: Callable[[Any, str, Any, RenderCtx], dict]  # (req, model, max_tokens_default, ctx)
    parse_response: Callable[[dict], Any]                      # wire response -> ir.Response
    render_response: Callable[[Any, str], dict]                # (resp, model)
    decoder: type                                              # StreamDecoder(): feed/close -> IR events
    encoder: type                                              # StreamEncoder(model, **options)
    usage_in: Callable[[dict], Any] | None = None              # wire usage object -> ir.Usage


_JSON_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", float: "a number", list: "an array",
                    dict: "an object"}


def _json_type_name(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    return _JSON_TYPE_NAMES.get(type(value), "a number")


# how RenderCtx's warnings start, before the quoted field they name
_WARNING_HEADS = frozenset({"dropped ", "dropped hint ", "degraded "})


@runtime_checkable
class DialectContract(Protocol):
    """What the driver (`busbar.exchange`, `busbar.admission`, `busbar.relay`,
    `busbar.providers`) and the simulated vendors need of a protocol; every
    `busbar.protocols.<name>.dialect` provides it (tests/test_dialects.py)."""

    name: str
    forward_headers: tuple[bytes, ...]
    varying_headers: tuple[bytes, ...]
    kind_status: dict[str, int]
    signed_requests: bool
    request_id_header: bytes | None
    codec: Codec

    # inbound: Busbar as this vendor's server
    def inbound_key(self, headers: Headers, query: bytes) -> str | None: ...
    def inbound_model(self, params: dict, obj: dict) -> str | None: ...
    def inbound_stream(self, params: dict, obj: dict) -> bool: ...
    def verify_signed(self, method: str, path: str, query: str, headers: Headers, body: bytes,
                      lookup_secret) -> str: ...
    def needs(self, body: bytes, obj: dict) -> Needs: ...
    def truncates(self, obj: dict) -> bool: ...
    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]: ...
    def fault_to_client_error(self, fault: Fault) -> ClientError: ...
    def stream_encoder_options(self, obj: dict) -> dict: ...
    def header_params(self, headers: Headers) -> dict: ...

    # outbound: Busbar as this vendor's client
    def upstream_path(self, base_path: str, model: str, stream: bool) -> str: ...
    def auth_headers(self, key: str | None) -> Headers: ...
    def build_signer(self, spec: dict, host: str): ...
    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes: ...
    def request_headers(self, req) -> Headers: ...
    def classify(self, status: int, headers: Headers, body: bytes) -> Fault: ...
    def rate_limits(self, headers: Headers) -> VendorQuota | None: ...
    def request_id_headers(self, request_id: bytes) -> Headers: ...
    def upstream_request_id(self, headers: Headers) -> str | None: ...

    # translation and streams
    def parse_request(self, obj: dict, params: dict | None = None): ...
    def client_error(self, err: ClientError, obj: dict) -> ClientError: ...

    def render_request(self, req, model: str, *, max_tokens_default: int | None = None,
                       unsupported: str = "reject") -> tuple[bytes, list[str]]: ...
    def parse_response(self, obj: dict): ...
    def response_usage(self, obj: dict): ...
    def render_response(self, resp, model: str, req=None, sent=None) -> bytes: ...
    def for_body(self, obj: dict): ...
    def peer(self, provider, model: str): ...
    def stream_decoder(self): ...
    def stream_encoder(self, model: str, **options): ...


@cache
def _request_validator(protocol: str):
    from jsonschema import Draft202012Validator
    path = resources.schemas_dir() / protocol / "request.schema.json"
    return Draft202012Validator(json.loads(path.read_text())) if path.is_file() else None


def locate_malformed(protocol: str, obj: dict) -> str | None:
    """Where a client body breaks its protocol's request schema, as
    `messages[0].role: 'role' is a required property` (the error path only)."""
    validator = _request_validator(protocol)
    if validator is None:
        return None
    from jsonschema.exceptions import best_match
    err = best_match(validator.iter_errors(obj))
    if err is None:
        return None
    while err.context:            # anyOf / oneOf: the branch that got furthest says more
        err = max(err.context, key=lambda e: len(e.absolute_path))
    where = ""
    for part in err.absolute_path:
        where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
    return f"{where or '(body)'}: {err.message[:200]}"


class Dialect:
    """Base of the per-protocol wire layer (see `DialectContract`); subclasses
    set the class vars and override what differs.  Instances are stateless
    singletons; each module binds its `codec` at its end."""

    codec: ClassVar[Codec]

    name: ClassVar[str]
    # Client request headers forwarded verbatim on same-protocol passthrough
    # (versions and beta flags the client chose).
    forward_headers: ClassVar[tuple[bytes, ...]] = ()
    # Client request headers that change the answer (beta features): part of
    # the response cache's key (busbar.cache), with the request's IR.
    varying_headers: ClassVar[tuple[bytes, ...]] = ()
    # True when the protocol has no stop sequences and the gateway emulates
    # them (busbar.protocols.stops) for members that speak it.
    stop_emulated: ClassVar[bool] = False
    # False when a client of this protocol cannot send signed reasoning back
    # (no field for a signature): the gateway keeps it for the client's next
    # turn (busbar.reasoning_store).
    carries_signed_reasoning: ClassVar[bool] = True
    # Client-facing error statuses: what status each kind is sent with.
    kind_status: ClassVar[dict[str, int]] = KIND_STATUS
    # Headers of a vendor's error answer that carry part of the error (Bedrock's
    # exception name), kept with its body when it goes to a same-protocol client.
    error_headers_kept: ClassVar[tuple[bytes, ...]] = ()
    # The response header this protocol's vendor names its request id in, which the
    # official SDK shows (`_request_id`, `APIStatusError.request_id`,
    # `ResponseMetadata.RequestId`); None: the SDK reads none (ADR 0029).  The
    # gateway answers with its record id in it; a vendor's own is read from it.
    request_id_header: ClassVar[bytes | None] = None

    def request_id_headers(self, request_id: bytes) -> Headers:
        """The gateway's record id as this protocol's clients read it (`x-busbar-request-id` too)."""
        if self.request_id_header is None:
            return [(GATEWAY_REQUEST_ID, request_id)]
        return [(GATEWAY_REQUEST_ID, request_id), (self.request_id_header, request_id)]

    def upstream_request_id(self, headers: Headers) -> str | None:
        """The vendor's own id of a call, from its answer's headers: kept on the attempt
        record for the operator to quote to the vendor, never shown to the client as ours."""
        if self.request_id_header is None:
            return None
        value = header(headers, self.request_id_header)
        return None if value is None else value[:UPSTREAM_REQUEST_ID_CHARS].decode("latin-1")

    @property
    def family(self) -> str:
        """The protocol whose body this dialect speaks, and so whose IR extras
        and reasoning origins it reads and writes: its own name, except where a
        body is another's (Claude's InvokeModel body is Anthropic's)."""
        return self.name

    def shown_call_id(self, call_id: str) -> str:
        """The tool-call id as this protocol's answers show it to a client."""
        return call_id

    # True when a client of this protocol may send earlier output back by the
    # id the answer showed (Responses `item_reference`): a translated answer's
    # items are kept under the ids the gateway minted (busbar.item_store).
    mints_items: ClassVar[bool] = False
    reference_marker: ClassVar[bytes | None] = None    # in the raw body when it may hold a reference

    def references(self, obj: dict) -> list[tuple[str, str]]:
        """(client path, id) of each reference to an earlier item in the request."""
        return []

    def with_references(self, obj: dict, found: dict[str, bytes]) -> dict:
        """`obj` with each reference whose id is in `found` (id -> the item's JSON)
        replaced by the item; the others stay as they are."""
        return obj

    # True when a request may ask to run detached from its connection (Responses
    # `background: true`, busbar.background, ADR 0026).
    runs_in_background: ClassVar[bool] = False

    # True when a request may continue an earlier answer by its id (Responses
    # `previous_response_id`): the turns the gateway answered are kept
    # (busbar.item_store) and a continuation gets its chain put back (ADR 0024).
    continues: ClassVar[bool] = False

    def previous_of(self, obj: dict) -> str | None:
        """The id of the answer this request continues; None: it continues none."""
        return None

    def input_items(self, obj: dict) -> list:
        """The request's own input as the items a kept turn holds."""
        return []

    def conversation_of(self, obj: dict) -> str | None:
        """The gateway-kept conversation this request takes part in (ADR 0030); None: none."""
        return None

    def with_history(self, obj: dict, history: list) -> dict:
        """`obj` made self-contained: `history` (earlier turns' items) before its own input."""
        return obj

    def stores(self, obj: dict) -> bool:
        """Whether the client lets this answer be kept for a next turn (Responses `store`)."""
        return True

    # The passthrough guard (issue 12): the JSON types of the body fields the
    # gateway itself reads or relies on, checked before anything is routed,
    # so a same-protocol body (forwarded as sent, never parsed) cannot make a
    # vendor answer in a shape the gateway does not expect (`"stream": "yes"`
    # streamed to a gateway waiting for JSON) and blame a healthy member.
    # null counts as absent.  Each protocol lists its own fields.
    body_shape: ClassVar[dict[str, tuple[type, ...]]] = {"model": (str,), "stream": (bool,)}

    def check_body_shape(self, obj: dict) -> None:
        """A 400 in this protocol naming the first field of the wrong JSON type
        (a boolean is not an integer here, as in JSON)."""
        get = obj.get
        for name, types in self.body_shape.items():
            value = get(name)
            if value is not None and type(value) not in types:
                if isinstance(value, types) and type(value) is not bool:
                    continue        # a subclass (never from JSON parsing)
                wanted = " or ".join(_JSON_TYPE_NAMES[t] for t in types)
                raise ClientError(400, f"Invalid {self.request_name}: `{name}` must be {wanted}, not "
                                       f"{_json_type_name(value)}.", "invalid_request", param=name)

    # ---- inbound ---------------------------------------------------------
    def inbound_key(self, headers: Headers, query: bytes) -> str | None:
        return bearer_token(headers)

    def inbound_model(self, params: dict, obj: dict) -> str | None:
        model = obj.get("model")
        return model if isinstance(model, str) else None

    def inbound_stream(self, params: dict, obj: dict) -> bool:
        return obj.get("stream") is True

    def render_error(self, err: ClientError) -> tuple[int, Headers, bytes]:
        raise NotImplementedError

    # A request on a path of this vendor's shape that no route serves: what the
    # 404 says is served (None: the gateway's general list), and its error code.
    no_route_hint: ClassVar[str | None] = None
    no_route_code: ClassVar[str | None] = None

    def error_headers(self, err: ClientError) -> Headers:
        headers = [JSON_CT]
        if err.retry_after is not None:
            headers.append((b"retry-after", str(max(1, int(err.retry_after + 0.999))).encode()))
        return headers

    # Requests signed by the client (SigV4) rather than carrying a key: the
    # gateway verifies them with the secrets of `auth.aws_credentials`.
    signed_requests: ClassVar[bool] = False

    def verify_signed(self, method: str, path: str, query: str, headers: Headers, body: bytes,
                      lookup_secret) -> str:
        """The caller's access key id of a signed request, or a ClientError (403)."""
        raise NotImplementedError

    # What a member must offer for a request, sniffed from the raw body
    # without the IR: the top-level fields that ask for tools or a JSON
    # answer, and the byte markers of image parts.
    tool_fields: ClassVar[tuple[str, ...]] = ("tools",)
    json_fields: ClassVar[tuple[str, ...]] = ()
    json_markers: ClassVar[tuple[bytes, ...]] = ()
    vision_markers: ClassVar[tuple[bytes, ...]] = ()

    def needs(self, body: bytes, obj: dict) -> Needs:
        """What a member must offer to take this request, estimated cheaply
        from the raw body (no IR): about four bytes per token."""
        return Needs(tokens=len(body) // 4,
                     tools=any(obj.get(f) for f in self.tool_fields),
                     vision=any(m in body for m in self.vision_markers),
                     json=any(obj.get(f) for f in self.json_fields) or any(m in body for m in self.json_markers))

    def truncates(self, obj: dict) -> bool:
        """The client lets the gateway drop the conversation's earliest turns to
        fit a member of another protocol (Responses `truncation: "auto"`, ADR 0028)."""
        return False

    def header_params(self, headers: Headers) -> dict:
        """Request headers that are part of what the client asked (Anthropic's
        beta flags), as params for `parse_request`, so a translated request
        keeps them; {} for most protocols."""
        return {}

    def request_headers(self, req) -> Headers:
        """The headers a request translated for this protocol carries (what its
        IR says this protocol says in headers: Anthropic's beta flags)."""
        return []

    def stream_encoder_options(self, obj: dict) -> dict:
        """Options for this protocol's client stream encoder that the client's
        request chose (e.g. whether a usage chunk is wanted)."""
        return {}

    # ---- outbound --------------------------------------------------------
    def upstream_path(self, base_path: str, model: str, stream: bool) -> str:
        raise NotImplementedError

    def operation_path(self, dialect, base_path: str, model: str, stream: bool) -> str:
        """Where another operation's call (`dialect`: embeddings, counting)
        goes on a provider this dialect addresses: by default its own path
        under the same base (Azure deployments put the model first)."""
        return dialect.upstream_path(base_path, model, stream)

    def build_endpoint(self, spec: dict, base_path: str) -> "Endpoint":
        """How one provider's requests are addressed and authenticated,
        built once at config load: this protocol's path and auth header,
        adjusted by the provider's `auth_header` (the key sent bare in a
        header of that name)."""
        header = spec.get("auth_header")
        return Endpoint(self, base_path, header.lower().encode() if header else None)

    def build_signer(self, spec: dict, host: str):
        """A request signer for a provider of this protocol (`spec` is its
        config), built once at config load; None when requests carry keys.
        The signer is called as `signer(path, headers, body) -> Headers`."""
        return None

    def auth_headers(self, key: str | None) -> Headers:
        return [(b"authorization", b"Bearer " + key.encode())] if key else []

    def passthrough_body(self, body: bytes, obj: dict, model: str) -> bytes:
        return rewrite_json_model(body, obj, model)

    def error_message(self, obj) -> tuple[str, str | None]:
        """(message, code) from a parsed vendor error body."""
        return ("", None)

    def rate_limits(self, headers: Headers) -> VendorQuota | None:
        """What this vendor's rate-limit headers say is left on the key that
        made the request (any response); None when it sends none."""
        return None

    def header_code(self, headers: Headers) -> str | None:
        """A vendor error code carried in a header rather than the body."""
        return None

    def error_parts(self, status: int, headers: Headers, body: bytes) -> tuple[object, str, str | None]:
        """(parsed body or None, message, code) of a vendor error: the prelude
        every protocol's `classify` shares."""
        try:
            obj = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            obj = None
        message, code = self.error_message(obj) if obj is not None else ("", None)
        code = self.header_code(headers) or code
        if not message:
            message = body[:300].decode("utf-8", "replace") if body else f"HTTP {status}"
        return obj, message, code

    def classify(self, status: int, headers: Headers, body: bytes) -> Fault:
        _, message, code = self.error_parts(status, headers, body)
        return classify_generic(status, headers, message, code)

    # ---- translation ---------------------------------------------------
    # Each protocol module's `codec` holds its dialect to and from the IR;
    # these wrappers are the shared mechanics around it.
    request_name: ClassVar[str] = "request"      # named in "Malformed ... request" errors

    def parse_request(self, obj: dict, params: dict | None = None):
        """The client's request as IR; a body of the wrong shape is a 400
        that names where (the request schema's first complaint)."""
        try:
            req = self.codec.parse_request(obj)
            ir.check_request(req)
        except ClientError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
            where = locate_malformed(self.name, obj)
            if where is None and isinstance(exc, ir.Malformed):
                where = f"{self.client_field(exc.path, obj)}: must be {exc.wanted}"
            raise ClientError(400, f"Malformed {self.request_name}: "
                                   + (where or f"unexpected shape ({type(exc).__name__})")) from None
        req.stream = self.inbound_stream(params or {}, obj)   # Gemini and Bedrock say it in the path
        return req

    def client_error(self, err: ClientError, obj: dict) -> ClientError:
        """A translation error (a renderer names the IR's path, `messages[1].content[0]...`)
        naming the path in this client's body `obj` instead (busbar.protocols.paths),
        in its `param` and its message; found only now, so a request that translates
        pays nothing for it."""
        if not err.param:
            return err
        path = self.client_field(err.param, obj)
        if path != err.param:
            err.message = err.message.replace(f"'{err.param}'", f"'{path}'")
            err.param = path
        return err

    def client_field(self, ir_path: str, obj: dict, messages: int | None = None) -> str:
        """A renderer's name for a field (the IR's path) as this client's body
        `obj` names it (busbar.protocols.paths), else as it is (a header, a
        field the client's body has no place for); `messages`: the IR's
        message count, when known (see `client_path`)."""
        from busbar.protocols.paths import client_path
        return client_path(self.name, self.codec.parse_request, obj, ir_path, messages) or ir_path

    def client_warnings(self, warnings: list[str], obj: dict, messages: int | None = None) -> list[str]:
        """Translation warnings (`RenderCtx`: "dropped 'F': ...", "dropped hint
        'F': ...", "degraded 'F': ...") naming each field F as `client_error`
        names it: where this client's body has it."""
        out = []
        for w in warnings:
            head, quote, rest = w.partition("'")
            if quote and head in _WARNING_HEADS:
                name, quote, tail = rest.partition("'")
                if quote:
                    w = f"{head}'{self.client_field(name, obj, messages)}'{tail}"
            out.append(w)
        return out

    def render_request(self, req, model: str, *, max_tokens_default: int | None = None,
                       unsupported: str = "reject") -> tuple[bytes, list[str]]:
        """The upstream body for `model`, and the warnings for dropped fields
        (`unsupported="drop"`); with "reject" an inexpressible field is a 400."""
        ctx = RenderCtx(self.family, unsupported, model)     # the body's vendor-only fields are its own
        return orjson.dumps(self.codec.render_request(req, model, max_tokens_default, ctx)), ctx.warnings

    def parse_response(self, obj: dict):
        """A vendor's buffered answer as IR; anything it raises (a value of the wrong
        type included: `ir.check_response`) is the member's garbage to the relay."""
        resp = self.codec.parse_response(obj)
        ir.check_response(resp)
        return resp

    # where a buffered answer keeps its usage object
    usage_field: ClassVar[str] = "usage"

    def response_usage(self, obj: dict):
        """A buffered answer's ir.Usage without the rest of its IR: the codec's
        `usage_in` on the answer's usage object (what `parse_response` uses)."""
        usage_in = getattr(self.codec, "usage_in", None)     # other operations' codecs: the whole parse
        if usage_in is None:
            return self.parse_response(obj).usage
        return usage_in(obj.get(self.usage_field) or {})

    def render_response(self, resp, model: str, req=None, sent=None) -> bytes:
        """`sent`: the request's body as the client sent it, for a protocol whose answer
        object echoes it (Responses)."""
        return orjson.dumps(self.codec.render_response(resp, model))

    def render_response_shown(self, resp, model: str, req=None, sent=None) -> tuple[bytes, dict | None]:
        """`render_response` and the answer it showed under ids it minted (`mints_items`:
        the response id and output items, for busbar.item_store); others show None."""
        return self.render_response(resp, model, req, sent), None

    # ---- operations ------------------------------------------------------
    # Chat is one operation; embeddings, rerank and token counting are others
    # (`busbar.protocols.operation`), whose dialects override these two.
    def for_body(self, obj: dict) -> "Dialect":
        """The dialect that speaks this body (Bedrock's InvokeModel body shape
        depends on the model family); a chat dialect is its own."""
        return self

    def peer(self, provider, model: str):
        """The dialect a member (of `provider`, serving `model`) answers this
        call with; None when its protocol has no endpoint for it."""
        return provider.dialect

    # A member dialect that takes at most this many inputs per call (Amazon
    # Titan embeddings: one); a larger batch goes out as `split(req)` calls,
    # at most `parallel_calls` at a time, answered as `join(answers)`
    # (`Exchange._fan_out`).  None: the whole request is one call (chat).
    inputs_per_call: ClassVar[int | None] = None
    parallel_calls: ClassVar[int] = 1

    # ---- streaming -------------------------------------------------------
    # The codec's decoder and encoder are incremental and I/O-free (see
    # `busbar.protocols.streaming`).
    @property
    def stream_content_type(self) -> bytes:
        """The media type of this protocol's streams (its encoder's `content_type`)."""
        return self.codec.encoder.content_type

    def stream_decoder(self):
        """A new decoder for one upstream stream of this protocol."""
        return self.codec.decoder()

    def stream_encoder(self, model: str, **options):
        """A new encoder for one client stream; `model` is the name the client asked for."""
        return self.codec.encoder(model, **options)

    def fault_to_client_error(self, fault: Fault) -> ClientError:
        kind = kind_from_fault(fault)
        status = self.kind_status[kind]
        return ClientError(status, fault.message or "upstream error", kind,
                           retry_after=fault.retry_after, code=fault.code)
