"""OpenTelemetry traces, following the GenAI semantic conventions.

    telemetry:                          # in the gateway config; off unless an endpoint is given
      otlp_endpoint: http://collector:4318    # OTLP/HTTP base URL (spans go to /v1/traces)

or the standard environment variables (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`, ...), read by the
official SDK itself.  Needs the `otel` extra (`pip install 'busbar[otel]'`).

One SERVER span per client request (pool, client protocol, final member,
status, fault class, tokens in/out, TTFB) with one CLIENT child span per
upstream attempt (`gen_ai.system`, `gen_ai.request.model`, `gen_ai.usage.*`,
outcome, failover reason).  A client's W3C `traceparent` becomes the request
span's parent; each attempt sends its own `traceparent` upstream.  Spans are
exported by the SDK's BatchSpanProcessor from its own thread: the request
path only creates and ends spans.

The interface is four calls (`start_request`, `start_attempt`,
`end_attempt`, `end_request`); the driver holds `None` instead of a
`Telemetry` when tracing is off, so off costs one `is None` test.
"""
from __future__ import annotations

import logging
import os

log = logging.getLogger("busbar.telemetry")

# gen_ai.system / gen_ai.provider.name per wire protocol (GenAI semantic conventions' well-known values)
GENAI_SYSTEM = {"openai": "openai", "responses": "openai", "anthropic": "anthropic", "gemini": "gcp.gemini",
                "bedrock": "aws.bedrock", "cohere": "cohere", "bedrock-invoke": "aws.bedrock"}
TRACES_PATH = "/v1/traces"


def wanted(config_section: dict | None) -> str | None:
    """The OTLP traces endpoint when tracing is on ("" means: the SDK reads
    the OTEL_* variables), None when off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    endpoint = (config_section or {}).get("otlp_endpoint")
    if endpoint:
        return endpoint.rstrip("/") + TRACES_PATH
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        if os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
            return None
        return ""
    return None


_shared: dict[str, "Telemetry"] = {}


def from_config(config_section: dict | None) -> "Telemetry | None":
    """The process's Telemetry for this endpoint (one exporter shared across
    config reloads), or None when tracing is off."""
    endpoint = wanted(config_section)
    if endpoint is None:
        return None
    telemetry = _shared.get(endpoint)
    if telemetry is None:
        telemetry = _shared[endpoint] = Telemetry(endpoint or None)
    return telemetry


def shutdown_all() -> None:
    """Flush and stop every exporter (blocking: run it in a thread)."""
    while _shared:
        _, telemetry = _shared.popitem()
        telemetry.shutdown()


class Telemetry:
    def __init__(self, endpoint: str | None = None, *, exporter=None):
        try:
            from opentelemetry import trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise RuntimeError("tracing is configured (telemetry.otlp_endpoint or OTEL_EXPORTER_OTLP_*) but the "
                               "OpenTelemetry SDK is not installed: pip install 'busbar[otel]'") from exc
        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            exporter = OTLPSpanExporter(endpoint=endpoint)
        from busbar import __version__
        resource = Resource.create({"service.name": "busbar", "service.version": __version__}
                                   if not os.environ.get("OTEL_SERVICE_NAME") else {"service.version": __version__})
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(BatchSpanProcessor(exporter))
        self.tracer = self.provider.get_tracer("busbar", __version__)
        self._trace = trace
        self._server = trace.SpanKind.SERVER
        self._client = trace.SpanKind.CLIENT
        self._error = trace.Status(trace.StatusCode.ERROR)
        self._propagator = TraceContextTextMapPropagator()
        self._remote = lambda trace_id, span_id, flags: trace.set_span_in_context(trace.NonRecordingSpan(
            trace.SpanContext(trace_id, span_id, is_remote=True, trace_flags=trace.TraceFlags(flags))))

    # ---- the four calls ------------------------------------------------------
    def start_request(self, headers, client_protocol: str):
        """A SERVER span for one client request, child of the client's
        `traceparent` when it sent one."""
        parent = None
        for name, value in headers:
            if name == b"traceparent":
                parent = self._parent(value)
                break
        return self.tracer.start_span(f"chat {client_protocol}", context=parent, kind=self._server,
                                      attributes={"gen_ai.operation.name": "chat",
                                                  "busbar.client_protocol": client_protocol})

    def _parent(self, value: bytes):
        """A W3C traceparent `00-<32 hex>-<16 hex>-<2 hex>` as a parent
        context (the common form parsed directly, about 10x cheaper than the
        SDK propagator; anything else goes through the propagator)."""
        if len(value) == 55 and value[:3] == b"00-" and value[35:36] == b"-" and value[52:53] == b"-":
            try:
                trace_id, span_id, flags = int(value[3:35], 16), int(value[36:52], 16), int(value[53:55], 16)
            except ValueError:
                return None
            return self._remote(trace_id, span_id, flags) if trace_id and span_id else None
        return self._propagator.extract({"traceparent": value.decode("latin-1")})

    def start_attempt(self, request_span, member_id: str, protocol: str, model: str):
        """A CLIENT span for one upstream attempt; returns (span, traceparent
        header value to send upstream)."""
        system = GENAI_SYSTEM.get(protocol, protocol)
        span = self.tracer.start_span(f"chat {model}", context=self._trace.set_span_in_context(request_span),
                                      kind=self._client,
                                      attributes={"gen_ai.operation.name": "chat", "gen_ai.system": system,
                                                  "gen_ai.provider.name": system, "gen_ai.request.model": model,
                                                  "busbar.member": member_id, "busbar.upstream_protocol": protocol})
        ctx = span.get_span_context()
        return span, b"00-%032x-%016x-%02x" % (ctx.trace_id, ctx.span_id, int(ctx.trace_flags))

    def end_attempt(self, span, attempt, usage=None, retried: bool = False) -> None:
        """`attempt`: the AttemptRecord; `usage`: the answer's ir.Usage when
        this attempt answered."""
        attrs = {"busbar.outcome": attempt.outcome, "busbar.key_id": attempt.key or ""}
        if attempt.upstream_request_id:      # the vendor's own id of the call (ADR 0029)
            attrs["busbar.upstream_request_id"] = attempt.upstream_request_id
        if attempt.status:
            attrs["http.response.status_code"] = attempt.status
        if attempt.outcome == "ok":
            if usage is not None:
                attrs["gen_ai.usage.input_tokens"] = usage.input_tokens or 0
                attrs["gen_ai.usage.output_tokens"] = usage.output_tokens or 0
        else:
            attrs["error.type"] = attempt.outcome
            if retried:
                attrs["busbar.failover_reason"] = f"{attempt.outcome}: {attempt.message or ''}"[:200]
            span.set_status(self._error)
        span.set_attributes(attrs)
        span.end()

    def end_request(self, span, record) -> None:
        """Close the request span with what the record says."""
        attrs = {"http.response.status_code": record.status or 0, "busbar.request_id": record.id,
                 "busbar.attempts": len(record.attempts)}
        if record.pool:
            attrs["busbar.pool"] = record.pool
            attrs["gen_ai.request.model"] = record.pool
            span.update_name(f"chat {record.pool}")
        if record.attempts:
            last = record.attempts[-1]
            attrs["busbar.member"] = last.member
            if last.outcome != "ok":
                attrs["busbar.fault"] = attrs["error.type"] = last.outcome
        if record.usage is not None:
            attrs["gen_ai.usage.input_tokens"] = record.usage.input_tokens or 0
            attrs["gen_ai.usage.output_tokens"] = record.usage.output_tokens or 0
        if record.ttfb_ms is not None:
            attrs["busbar.ttfb_ms"] = round(record.ttfb_ms, 3)
        if not record.status or record.status >= 400:
            attrs.setdefault("error.type", str(record.status or "cancelled"))
            span.set_status(self._error)
        span.set_attributes(attrs)
        span.end()

    # ---- lifetime --------------------------------------------------------------
    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        self.provider.shutdown()
