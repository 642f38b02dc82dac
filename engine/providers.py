"""Providers as the hot path needs them, built once at config load.

`build_provider` is what both `busbar validate` (through `parse_config`) and
the running gateway call, so validation builds exactly what will run: error
rules compiled, the protocol's request signer (SigV4 for Bedrock) made by the
protocol's own `Dialect.build_signer`.  Nothing here names a vendor.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from busbar.faults import FaultClass
from busbar.http11 import UnsafeRequest, header_block
from busbar.protocols import get_dialect
from busbar.protocols.base import Endpoint, Headers
from busbar.tls import TlsFileError, client_context
from busbar.upstream import DIRECT, Origin, Proxy, Transport


class ProviderError(ValueError):
    """A provider that cannot be built; `path` is the YAML path (`providers.x.errors[0].match`)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(slots=True)
class Provider:
    name: str
    protocol: str
    dialect: object
    origin: Origin
    extra_headers: Headers
    error_rules: list[tuple[re.Pattern, int | None, FaultClass]]
    signer: object = None                # callable(path, headers, body) -> Headers, or None
    max_connections: int | None = None   # concurrent upstream connections to this provider
    endpoint: Endpoint = None            # upstream path and auth header (protocol defaults + provider config)
    transport: Transport = DIRECT        # TLS trust (ca_bundle): part of the upstream pool's key
    # the request headers every call carries (content type, accept, extra_headers), rendered and
    # checked once per provider: [buffered, streamed]; None when a signer must see them as pairs
    fixed_heads: tuple | None = None

    def __post_init__(self):
        if self.signer is None:
            try:
                self.fixed_heads = tuple(
                    header_block([(b"content-type", b"application/json"), (b"accept", accept)] + list(self.extra_headers))
                    for accept in (b"application/json", b"text/event-stream"))
            except UnsafeRequest:
                self.fixed_heads = None      # refused per request, as before


def build_transport(name: str, spec: dict, defaults: dict | None = None, host: str = "") -> Transport:
    """The provider's `ca_bundle`, else the top-level `upstream.ca_bundle`,
    else the system store (the bundle is loaded now, so a bad file is a
    config error naming where it was set); its `proxy`, else
    `upstream.proxy` unless `host` is in `upstream.no_proxy` (`proxy: none`
    connects directly)."""
    defaults = defaults or {}
    if spec.get("ca_bundle"):
        ca_bundle, where = spec["ca_bundle"], f"providers.{name}.ca_bundle"
    else:
        ca_bundle, where = defaults.get("ca_bundle"), "upstream.ca_bundle"
    context = None
    if ca_bundle:
        try:
            context = client_context(ca_bundle, where)
        except TlsFileError as exc:
            raise ProviderError(exc.path, exc.message) from None
    if spec.get("proxy"):
        url, where = spec["proxy"], f"providers.{name}.proxy"
    elif defaults.get("proxy") and not bypasses_proxy(host, defaults.get("no_proxy")):
        url, where = defaults["proxy"], "upstream.proxy"
    else:
        url = None
    proxy = None
    if url and url != "none":
        try:
            proxy = Proxy.from_url(url)
        except ValueError as exc:
            raise ProviderError(where, str(exc)) from None
    if ca_bundle is None and proxy is None:
        return DIRECT
    return Transport(ca_bundle, context, proxy)


def bypasses_proxy(host: str, no_proxy) -> bool:
    """`host` matches `upstream.no_proxy` (a list or a comma-separated string,
    as NO_PROXY is): `*`, the host itself, or a domain suffix (`corp.example`
    and `.corp.example` both match `api.corp.example`)."""
    if not no_proxy:
        return False
    entries = no_proxy.split(",") if isinstance(no_proxy, str) else no_proxy
    host = host.lower().strip("[]")
    for entry in entries:
        entry = entry.strip().lower()
        if entry == "*":
            return True
        suffix = entry.lstrip("*").lstrip(".").strip("[]")
        if suffix and (host == suffix or host.endswith("." + suffix)):
            return True
    return False


def build_provider(name: str, spec: dict, defaults: dict | None = None) -> Provider:
    """`defaults` is the config's top-level `upstream:` section."""
    rules = []
    for i, rule in enumerate(spec.get("errors", ())):
        try:
            pattern = re.compile(rule["match"])
        except re.error as exc:
            raise ProviderError(f"providers.{name}.errors[{i}].match", f"invalid regular expression: {exc}") from None
        rules.append((pattern, rule.get("status"), FaultClass(rule["class"])))
    headers = [(k.lower().encode(), v.encode()) for k, v in spec.get("headers", {}).items()]
    dialect = get_dialect(spec["protocol"])
    origin = Origin.from_url(spec["base_url"])
    signer = dialect.build_signer(spec, origin.host_header.decode())
    endpoint = dialect.build_endpoint(spec, origin.base_path)
    transport = build_transport(name, spec, defaults, origin.host)
    return Provider(name, spec["protocol"], dialect, origin, headers, rules, signer, spec.get("max_connections"),
                    endpoint, transport)
