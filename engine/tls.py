"""TLS contexts, made in one place: the server's (`server.tls`) and the
upstream client's (the system trust store, or a provider's `ca_bundle`).

Both are built while the config is validated, so a missing or unreadable
file is a config error naming its YAML path (`busbar validate` reports it,
`busbar serve` refuses to start) instead of a failure on the first request.
Relative paths are read from the working directory, as the rest of the
config's files are.
"""
from __future__ import annotations

import os
import ssl
from functools import lru_cache


class TlsFileError(ValueError):
    """A certificate, key or CA bundle that cannot be used; `path` is the
    YAML path (`server.tls.key`, `providers.x.ca_bundle`)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _check_file(path: str, where: str, what: str) -> None:
    if not os.path.exists(path):
        raise TlsFileError(where, f"{what} file {path!r} does not exist")
    if not os.path.isfile(path):
        raise TlsFileError(where, f"{what} {path!r} is not a file")
    if not os.access(path, os.R_OK):
        raise TlsFileError(where, f"{what} file {path!r} is not readable by this process")


def server_context(tls: dict, where: str = "server.tls") -> ssl.SSLContext:
    """`server.tls: {cert, key}` as a server context: TLS 1.2+, ALPN
    http/1.1 (an HTTP/2-first client falls back to HTTP/1.1).  `cert` is a
    PEM chain (leaf first), `key` its PEM private key."""
    cert, key = tls["cert"], tls["key"]
    _check_file(cert, f"{where}.cert", "certificate")
    _check_file(key, f"{where}.key", "private key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or exc.strerror or str(exc)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            raise TlsFileError(f"{where}.key", f"the private key {key!r} does not belong to the certificate "
                               f"{cert!r}") from None
        raise TlsFileError(where, f"cannot load the certificate {cert!r} and key {key!r} (PEM expected): "
                           f"{reason}") from None
    except OSError as exc:
        raise TlsFileError(where, f"cannot load the certificate {cert!r} and key {key!r}: "
                           f"{exc.strerror or exc}") from None
    return ctx


def client_context(ca_bundle: str | None = None, where: str = "ca_bundle") -> ssl.SSLContext:
    """The upstream client's context: hostname checked, TLS 1.2+; trusting
    the system store, or only the PEM CAs in `ca_bundle` (as curl's
    `--cacert` and httpx's `verify=` do).  The system one is made once per
    process (loading the store costs milliseconds: not per connection); a
    bundle is read each time the config is (validation reads the file as it
    is now)."""
    if ca_bundle is None:
        return _system_context()
    _check_file(ca_bundle, where, "CA bundle")
    try:
        return _new_client_context(ca_bundle)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise TlsFileError(where, f"cannot load the CA bundle {ca_bundle!r} (PEM certificates expected): "
                           f"{reason}") from None


@lru_cache(maxsize=1)
def _system_context() -> ssl.SSLContext:
    return _new_client_context(None)


def _new_client_context(ca_bundle: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_bundle)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def describe_handshake_error(exc: BaseException) -> str:
    """What went wrong in a failed handshake, in a line (the SSL error under
    trio's BrokenResourceError): `certificate verify failed: ...`."""
    cause = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(exc) or type(exc).__name__
