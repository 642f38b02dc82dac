"""Fault classes: whose fault an upstream failure is, and what it costs.

Every upstream outcome that is not a success is classified into exactly one
class; the routing layer maps each class to a consequence (declared in the
pipeline YAML).  Protocol modules produce `Fault`s from vendor error bodies;
nothing here does I/O.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass


class FaultClass(str, enum.Enum):
    CLIENT = "client"      # the caller's request is bad: return it, blame nobody
    CONTEXT = "context"    # too long for this member: retry on a larger one
    RATE = "rate"          # 429 / overloaded / throttling: cool the key+model
    BILLING = "billing"    # quota or credit exhausted: disable the key for long
    AUTH = "auth"          # key rejected: disable the key, loudly
    SERVER = "server"      # 5xx, reset, timeout, stall, garbage: breaker


@dataclass(frozen=True, slots=True)
class Fault:
    """One classified upstream failure.

    `status` is the HTTP status the vendor sent (0 for network-level faults),
    `message` is a human readable reason safe to show the client (never a key),
    `retry_after` is seconds, when the vendor said so.
    """

    cls: FaultClass
    status: int = 0
    message: str = ""
    retry_after: float | None = None
    code: str | None = None  # vendor error type/code, e.g. "insufficient_quota"
    # a rate limit whose window the vendor named: "minute" (cool for the
    # retry delay) or "day" (bench until the provider's daily quota reset)
    quota_window: str | None = None


@dataclass(frozen=True, slots=True)
class VendorQuota:
    """What a vendor's rate-limit headers say is left on the key that sent a
    request (any response, success or error).  Counts are absolute; resets
    are seconds from the response.  None: the vendor did not say."""

    requests_remaining: int | None = None
    requests_reset: float | None = None
    tokens_remaining: int | None = None
    tokens_reset: float | None = None
    requests_limit: int | None = None
    tokens_limit: int | None = None


class ClientError(Exception):
    """A request the gateway itself refuses (before or instead of any upstream).

    Rendered by the client's protocol module in that vendor's own error shape,
    so the client SDK raises its usual exception class.
    `kind` is one of: invalid_request, authentication, permission, not_found,
    request_too_large, rate_limit, overloaded, api_error, timeout.
    """

    def __init__(self, status: int, message: str, kind: str = "invalid_request",
                 *, retry_after: float | None = None, param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after
        self.param = param
        self.code = code


def parse_retry_after(value: str | bytes | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds form; dates are rare
    from LLM vendors and treated as absent)."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
