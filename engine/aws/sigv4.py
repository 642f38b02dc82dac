"""AWS Signature Version 4 (AWS4-HMAC-SHA256): signing and verification.

I/O-free and stdlib-only.  Two entry points share one canonicalisation:

- `sign(...)` computes the headers an outbound request to AWS (Bedrock) needs.
  Its output is byte-for-byte what botocore's `SigV4Auth` produces for the
  same request and instant (the tests use botocore as the oracle).
- `verify(...)` checks an inbound request signed by an AWS SDK and returns
  the access key id, or raises `SignatureError` carrying the error code AWS
  itself would answer with, so client SDKs raise their usual exceptions.

A request is described the way it travels on the wire: `path` is the raw
request path exactly as sent (still percent-encoded, e.g. Bedrock's
``/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse``), `query` the
raw query string without the ``?``, `headers` a sequence of (name, value)
pairs or a mapping; names and values may be `str` or `bytes` (h11 gives
bytes; those are decoded as latin-1, the inverse of what http.client does
when it sends a `str` header).
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from typing import Callable, Mapping, NamedTuple, Sequence, Union
from urllib.parse import quote, unquote_to_bytes

__all__ = [
    "ALGORITHM",
    "Credentials",
    "SignatureError",
    "UNSIGNED_HEADERS",
    "SigningSteps",
    "explain",
    "sign",
    "verify",
]

ALGORITHM = "AWS4-HMAC-SHA256"
_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# Headers that proxies and HTTP stacks add, drop or rewrite in transit, or
# that tracing middleware injects after signing.  Signing them would break
# the signature downstream, so (like botocore) we never sign them.
UNSIGNED_HEADERS = frozenset({
    "baggage", "connection", "expect", "keep-alive", "proxy-authenticate",
    "proxy-authorization", "te", "traceparent", "tracestate", "trailer",
    "transfer-encoding", "upgrade", "user-agent", "x-amzn-trace-id",
})

# Headers `sign` produces itself; any copies in the caller's headers are the
# leftovers of an earlier attempt (a retry) and are replaced, not signed.
_SIGNER_OWNED_HEADERS = frozenset({"authorization", "x-amz-date", "x-amz-security-token"})
_NOT_SIGNED_BY_SIGN = UNSIGNED_HEADERS | _SIGNER_OWNED_HEADERS

HeaderItems = Union[Sequence[tuple[Union[str, bytes], Union[str, bytes]]],
                    Mapping[Union[str, bytes], Union[str, bytes]]]


# ---------------------------------------------------------------------------
# Credentials and errors


@dataclass(frozen=True, slots=True)
class Credentials:
    """An AWS access key pair, optionally with an STS session token.

    The repr never shows the secret key or the session token.
    """

    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:
        token = ", session_token=<redacted>" if self.session_token else ""
        return (f"Credentials(access_key_id={self.access_key_id!r}, "
                f"secret_access_key=<redacted>{token})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials | None:
        """Read AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN.

        Returns None unless both the key id and the secret are set and non-empty.
        """
        env = os.environ if environ is None else environ
        access_key_id = env.get("AWS_ACCESS_KEY_ID")
        secret_access_key = env.get("AWS_SECRET_ACCESS_KEY")
        if not access_key_id or not secret_access_key:
            return None
        return cls(access_key_id, secret_access_key, env.get("AWS_SESSION_TOKEN") or None)


# HTTP status AWS answers with for each authentication error code.
_STATUS_BY_CODE = {
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 400,
    "InvalidSignatureException": 403,
    "UnrecognizedClientException": 403,
}

_SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you "
    "provided. Check your AWS Secret Access Key and signing method. Consult "
    "the service documentation for details."
)


class SignatureError(Exception):
    """An inbound request failed SigV4 verification.

    `code` is the AWS error name a client SDK expects (one of
    MissingAuthenticationTokenException, IncompleteSignatureException,
    InvalidSignatureException, UnrecognizedClientException), `status` the
    HTTP status AWS uses for it, `message` a text safe to return to the
    client (it never contains a secret).
    """

    def __init__(self, code: str, message: str):
        if code not in _STATUS_BY_CODE:
            raise ValueError(f"unknown SigV4 error code {code!r}; "
                             f"expected one of {sorted(_STATUS_BY_CODE)}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = _STATUS_BY_CODE[code]


# ---------------------------------------------------------------------------
# Canonicalisation (shared by sign and verify)


def _group_headers(headers: HeaderItems, skip: frozenset[str] = frozenset()) -> dict[str, list[str]]:
    """Lower-cased name -> values in arrival order (repeats are kept), minus `skip`."""
    grouped: dict[str, list[str]] = {}
    for name, value in (headers.items() if hasattr(headers, "items") else headers):
        if name.__class__ is bytes:
            name = name.decode("latin-1")
        name = name.lower()
        if name in skip:
            continue
        if value.__class__ is bytes:
            value = value.decode("latin-1")
        values = grouped.get(name)
        if values is None:
            grouped[name] = [value]
        else:
            values.append(value)
    return grouped


def _remove_dot_segments(path: str) -> str:
    # RFC 3986 5.2.4, plus AWS's rule that empty segments (`//`) collapse.
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    leading = "/" if path.startswith("/") else ""
    trailing = "/" if path.endswith("/") and segments else ""
    return leading + "/".join(segments) + trailing


@functools.lru_cache(maxsize=512)
def _canonical_uri(path: str) -> str:
    # For every service except S3, SigV4 URI-encodes the path *as sent*, so an
    # already percent-encoded path is encoded a second time.  Bedrock sends a
    # model id's ':' and '/' as %3A / %2F (it is a URI label), hence the
    # canonical path of `/model/x-v1%3A0/converse` is `/model/x-v1%253A0/converse`.
    # botocore does exactly this (quote(normalize(path), safe='/~')) and real
    # Bedrock accepts it; tests pin it against botocore and vector F.
    # surrogateescape keeps undecodable raw bytes exact through quote().
    if not path:
        return "/"
    return quote(_remove_dot_segments(path), safe="/~", errors="surrogateescape")


@functools.lru_cache(maxsize=512)
def _canonical_query(query: str) -> str:
    # Pairs sorted by encoded name, then encoded value.  Each component is
    # decoded and re-encoded (RFC 3986, unreserved chars only), which leaves
    # the canonical encoding every AWS SDK sends untouched and repairs
    # harmless variants (`%7e`, `~` vs `%7E`, lower-case hex).  '+' is a
    # literal plus here, not a space (it is not form encoding).
    if not query:
        return ""
    pairs = []
    for pair in query.encode("utf-8", "surrogateescape").split(b"&"):
        name, _, value = pair.partition(b"=")
        pairs.append((quote(unquote_to_bytes(name), safe="-_.~"),
                      quote(unquote_to_bytes(value), safe="-_.~")))
    pairs.sort()
    return "&".join(f"{name}={value}" for name, value in pairs)


def _canonical_request(method: str, path: str, query: str, signed: Sequence[tuple[str, list[str]]],
                       signed_names: str, payload_hash: str) -> str:
    # Header values are "Trimall"ed: stripped, inner whitespace runs collapsed
    # to one space (str.split's notion of whitespace, as botocore); repeated
    # headers are joined with ','.
    canonical_headers = "".join([
        f"{name}:{' '.join(values[0].split())}\n" if len(values) == 1
        else f"{name}:{','.join(' '.join(value.split()) for value in values)}\n"
        for name, values in signed
    ])
    return (f"{method.upper()}\n{_canonical_uri(path)}\n{_canonical_query(query)}\n"
            f"{canonical_headers}\n{signed_names}\n{payload_hash}")


def _string_to_sign(timestamp: str, scope: str, canonical: str) -> str:
    digest = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{timestamp}\n{scope}\n{digest}"


@functools.lru_cache(maxsize=64)
def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    # Four chained HMACs; the result only changes once a day per
    # (key, region, service), so caching it takes them off the hot path.
    key = hmac.digest(f"AWS4{secret}".encode("utf-8"), date.encode("utf-8"), "sha256")
    key = hmac.digest(key, region.encode("utf-8"), "sha256")
    key = hmac.digest(key, service.encode("utf-8"), "sha256")
    return hmac.digest(key, b"aws4_request", "sha256")


def _signature(secret: str, timestamp: str, region: str, service: str,
               string_to_sign: str) -> str:
    key = _signing_key(secret, timestamp[:8], region, service)
    return hmac.new(key, string_to_sign.encode("utf-8"), "sha256").hexdigest()


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    if now.tzinfo is None:  # naive datetimes are taken to be UTC already
        return now.replace(tzinfo=timezone.utc)
    return now.astimezone(timezone.utc)


_last_timestamp: tuple[int, str] = (0, "19700101T000000Z")


def _amz_timestamp(now: datetime | None) -> str:
    """X-Amz-Date text for `now` (default: the clock), whole seconds, UTC."""
    global _last_timestamp
    if now is None:
        seconds = int(time.time())
    else:
        if now.tzinfo is None:  # naive datetimes are taken to be UTC already
            now = now.replace(tzinfo=timezone.utc)
        seconds = math.floor(now.timestamp())
    # Consecutive requests mostly share a second; formatting is the slow part.
    cached_seconds, text = _last_timestamp
    if seconds != cached_seconds:
        text = time.strftime(_TIMESTAMP_FORMAT, time.gmtime(seconds))
        _last_timestamp = (seconds, text)  # one tuple store: safe across threads
    return text


def _parse_amz_timestamp(text: str) -> datetime | None:
    """The instant of an ISO 8601 basic `YYYYMMDD'T'HHMMSS'Z'`, or None if malformed."""
    digits = text[:8] + text[9:15]
    if len(text) != 16 or text[8] != "T" or text[15] != "Z" or not (digits.isascii() and digits.isdigit()):
        return None
    try:
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[9:11]),
                        int(text[11:13]), int(text[13:15]), tzinfo=timezone.utc)
    except ValueError:  # e.g. month 13
        return None


def _split_target(path: str | bytes, query: str | bytes | None) -> tuple[str, str]:
    if isinstance(path, bytes):
        path = path.decode("utf-8", "surrogateescape")
    if isinstance(query, bytes):
        query = query.decode("utf-8", "surrogateescape")
    if query is None:  # allow a whole request target `path?query`
        path, _, query = path.partition("?")
    return path, query


# ---------------------------------------------------------------------------
# Signing


def _payload_hash(grouped: dict[str, list[str]], body: bytes) -> str:
    # A caller-supplied x-amz-content-sha256 (e.g. UNSIGNED-PAYLOAD) is what
    # gets signed, as botocore does; otherwise the body's own digest.
    declared = grouped.get("x-amz-content-sha256")
    if declared:
        return declared[0]
    return hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256


class SigningSteps(NamedTuple):
    """The intermediate strings of one signature, for debugging and vectors."""

    canonical_request: str
    string_to_sign: str
    headers: list[tuple[str, str]]  # what `sign` returns


def sign(method: str, path: str | bytes, query: str | bytes | None, headers: HeaderItems,
         body: bytes = b"", *, credentials: Credentials, region: str,
         service: str = "bedrock", now: datetime | None = None,
         host: str | None = None) -> list[tuple[str, str]]:
    """Sign a request; return the headers to add to it.

    Returns ``[("X-Amz-Date", ...), ("X-Amz-Security-Token", ...)?,
    ("Authorization", ...)]``, exactly what botocore's SigV4Auth adds for a
    non-S3 service such as Bedrock (no x-amz-content-sha256).  The caller
    must send these and drop any older copies of the same headers: copies
    present in `headers` are treated as stale and are not signed.

    - `path` is the raw wire path (percent-encoded as sent); `query` the raw
      query string, or None to split it off `path`.
    - The Host header is taken from `headers`, or from `host` if absent there
      (give it as the client will send it: lower-case, port only if not the
      default).  Every other header present is signed, except the transit
      headers in `UNSIGNED_HEADERS`, so add Content-Type etc. before signing.
    - `service` is the signing name: "bedrock" for bedrock-runtime.
    - `now` defaults to the current time; naive datetimes are taken as UTC.

    Unlike botocore, a caller's `Date` header is signed as-is rather than
    rewritten; X-Amz-Date is always added and AWS prefers it.
    Raises ValueError if there is no Host.
    """
    return explain(method, path, query, headers, body, credentials=credentials, region=region,
                   service=service, now=now, host=host).headers


def explain(method: str, path: str | bytes, query: str | bytes | None, headers: HeaderItems,
            body: bytes = b"", *, credentials: Credentials, region: str,
            service: str = "bedrock", now: datetime | None = None,
            host: str | None = None) -> SigningSteps:
    """`sign`, also returning the canonical request and string to sign.

    Compare these with what AWS reports in a signature-mismatch error.
    """
    path, query = _split_target(path, query)
    timestamp = _amz_timestamp(now)
    added = [("X-Amz-Date", timestamp)]
    if credentials.session_token:
        added.append(("X-Amz-Security-Token", credentials.session_token))

    grouped = _group_headers(headers, _NOT_SIGNED_BY_SIGN)
    for name, value in added:
        grouped[name.lower()] = [value]
    if "host" not in grouped:
        if host is None:
            raise ValueError("SigV4 signs the Host header: pass it in headers or as host=")
        grouped["host"] = [host]
    signed = sorted(grouped.items())
    signed_names = ";".join([name for name, _ in signed])

    scope = f"{timestamp[:8]}/{region}/{service}/aws4_request"
    canonical = _canonical_request(method, path, query, signed, signed_names, _payload_hash(grouped, body))
    string_to_sign = _string_to_sign(timestamp, scope, canonical)
    signature = _signature(credentials.secret_access_key, timestamp, region, service, string_to_sign)
    added.append(("Authorization",
                  f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
                  f"SignedHeaders={signed_names}, Signature={signature}"))
    return SigningSteps(canonical, string_to_sign, added)


# ---------------------------------------------------------------------------
# Verification


@dataclass(frozen=True, slots=True)
class _ParsedAuthorization:
    access_key_id: str
    date: str
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str


def _parse_authorization(value: str) -> _ParsedAuthorization:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        # Not echoed: another scheme's credential (a Bearer key) is a secret.
        raise SignatureError(
            "IncompleteSignatureException",
            f"Unsupported authorization type: only {ALGORITHM} header authentication is accepted.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, field_value = part.strip().partition("=")
        if sep:
            fields[key] = field_value.strip()
    missing = [f"Authorization header requires '{key}' parameter."
               for key in ("Credential", "Signature", "SignedHeaders") if not fields.get(key)]
    if missing:
        raise SignatureError("IncompleteSignatureException",
                             " ".join(missing) + f" Authorization={value}")

    credential = fields["Credential"]
    scope = credential.split("/")
    if len(scope) != 5 or scope[4] != "aws4_request" or not all(scope):
        raise SignatureError(
            "IncompleteSignatureException",
            "Credential must have exactly 5 slash-delimited elements, e.g. "
            f"keyid/date/region/service/aws4_request, got '{credential}'")
    return _ParsedAuthorization(
        access_key_id=scope[0], date=scope[1], region=scope[2], service=scope[3],
        signed_headers=tuple(fields["SignedHeaders"].split(";")),
        signature=fields["Signature"],
    )


def _only(grouped: dict[str, list[str]], name: str) -> str | None:
    values = grouped.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise SignatureError("IncompleteSignatureException",
                             f"The request has {len(values)} '{name}' headers; exactly one is allowed.")
    return values[0]


def _request_timestamp(grouped: dict[str, list[str]]) -> tuple[str, datetime]:
    # SigV4 takes the instant from X-Amz-Date, or failing that from Date
    # (RFC 1123); either way the ISO basic form is what was signed.
    amz_date = _only(grouped, "x-amz-date")
    if amz_date is not None:
        amz_date = amz_date.strip()  # HTTP ignores surrounding whitespace
        instant = _parse_amz_timestamp(amz_date)
        if instant is None:
            raise SignatureError(
                "IncompleteSignatureException",
                f"Date must be in ISO-8601 'basic format'. Got '{amz_date}'.")
        return amz_date, instant
    http_date = _only(grouped, "date")
    if http_date is not None:
        try:
            instant = _utc(parsedate_to_datetime(http_date))
        except (TypeError, ValueError):
            raise SignatureError("IncompleteSignatureException",
                                 f"Date header is not an RFC 1123 date: '{http_date}'.") from None
        return instant.strftime(_TIMESTAMP_FORMAT), instant
    raise SignatureError("IncompleteSignatureException",
                         "Authorization header requires existence of either a "
                         "'X-Amz-Date' or a 'Date' header.")


def _check_skew(timestamp: str, instant: datetime, now: datetime, max_skew_seconds: float) -> None:
    skew = timedelta(seconds=max_skew_seconds)
    if now - skew <= instant <= now + skew:
        return
    # Worded as AWS words it, e.g. "(20240101T120501Z - 5 min.)".
    minutes = f"{max_skew_seconds / 60:g} min."
    now_text = now.strftime(_TIMESTAMP_FORMAT)
    if instant < now:
        raise SignatureError(
            "InvalidSignatureException",
            f"Signature expired: {timestamp} is now earlier than "
            f"{(now - skew).strftime(_TIMESTAMP_FORMAT)} ({now_text} - {minutes})")
    raise SignatureError(
        "InvalidSignatureException",
        f"Signature not yet current: {timestamp} is still later than "
        f"{(now + skew).strftime(_TIMESTAMP_FORMAT)} ({now_text} + {minutes})")


def verify(method: str, path: str | bytes, query: str | bytes | None, headers: HeaderItems,
           body: bytes, *, lookup_secret: Callable[[str], str | None],
           region: str | None = None, service: str | None = "bedrock",
           now: datetime | None = None, max_skew_seconds: float = 300) -> str:
    """Verify a SigV4 `Authorization` header; return the caller's access key id.

    Raises `SignatureError` (never returns falsy) when:
    - there is no Authorization header: MissingAuthenticationTokenException;
    - it is not AWS4-HMAC-SHA256, lacks Credential/SignedHeaders/Signature,
      has a malformed credential scope or date, or no X-Amz-Date/Date:
      IncompleteSignatureException;
    - the request time is more than `max_skew_seconds` away from `now`, the
      scope's date/region/service is wrong (`region=None` or `service=None`
      accepts any), Host is not signed, a signed header is absent, the body
      does not match a declared x-amz-content-sha256, or the signature
      differs: InvalidSignatureException;
    - `lookup_secret(access_key_id)` returns None: UnrecognizedClientException.

    The signature is recomputed over the signed headers only, with the
    scope's region and service, and compared in constant time.  Only header
    authentication is supported (not presigned query-string URLs), and the
    payload is always hashed: UNSIGNED-PAYLOAD is rejected as a mismatch.
    """
    path, query = _split_target(path, query)
    grouped = _group_headers(headers)
    authorization = _only(grouped, "authorization")
    if authorization is None:
        raise SignatureError("MissingAuthenticationTokenException", "Missing Authentication Token")
    auth = _parse_authorization(authorization)

    timestamp, instant = _request_timestamp(grouped)
    if auth.date != timestamp[:8]:
        raise SignatureError(
            "InvalidSignatureException",
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version "
            f"of date from HTTP: '{auth.date}' != '{timestamp[:8]}', from '{timestamp}'.")
    _check_skew(timestamp, instant, _utc(now), max_skew_seconds)
    if region is not None and auth.region != region:
        raise SignatureError("InvalidSignatureException",
                             f"Credential should be scoped to a valid region, not '{auth.region}'.")
    if service is not None and auth.service != service:
        raise SignatureError("InvalidSignatureException",
                             f"Credential should be scoped to correct service: '{service}'.")
    if "host" not in auth.signed_headers:
        raise SignatureError("InvalidSignatureException",
                             "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.")

    signed = []
    for name in auth.signed_headers:
        values = grouped.get(name)
        if values is None:
            raise SignatureError("InvalidSignatureException",
                                 f"Signed header '{name}' is not present in the request.")
        signed.append((name, values))

    secret = lookup_secret(auth.access_key_id)
    if secret is None:
        raise SignatureError("UnrecognizedClientException",
                             "The security token included in the request is invalid.")

    # Hash the body we actually received; a declared digest that disagrees
    # would let a replayer swap the body under a valid signature.
    payload_hash = hashlib.sha256(body).hexdigest() if body else _EMPTY_SHA256
    declared = grouped.get("x-amz-content-sha256")
    if declared and declared[0] != payload_hash:
        raise SignatureError("InvalidSignatureException",
                             "The provided 'x-amz-content-sha256' header does not match "
                             "what was computed.")

    scope = f"{auth.date}/{auth.region}/{auth.service}/aws4_request"
    canonical = _canonical_request(method, path, query, signed, ";".join(auth.signed_headers), payload_hash)
    expected = _signature(secret, timestamp, auth.region, auth.service,
                          _string_to_sign(timestamp, scope, canonical))
    if not hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("utf-8", "replace")):
        raise SignatureError("InvalidSignatureException", _SIGNATURE_MISMATCH)
    return auth.access_key_id
