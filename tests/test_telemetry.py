"""OpenTelemetry traces end to end: the gateway exports over OTLP/HTTP (the
official SDK and exporter) to a real receiver in the test, which decodes the
protobuf with opentelemetry-proto.  A failover request gives one request span
with two attempt spans; the client's traceparent is the parent, and each
attempt's traceparent reaches its upstream."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import trio

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed (pip install -e '.[test]')")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from busbar import telemetry  # noqa: E402
from busbar.mock import MockVendor  # noqa: E402
from harness import gateway_with  # noqa: E402

pytestmark = pytest.mark.integration

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


class Receiver:
    """A minimal OTLP/HTTP collector: POST /v1/traces, protobuf body."""

    def __init__(self):
        self.spans: list = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with outer.lock:
                    outer.paths.append(self.path)
                    for resource_spans in request.resource_spans:
                        service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                        for scope in resource_spans.scope_spans:
                            for span in scope.spans:
                                outer.spans.append((service, span))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


async def receive(gw, receiver: Receiver, count: int) -> None:
    """Flush the exporter until the receiver has `count` spans (the request
    span ends just after the response went out, so it may need a second flush)."""
    with trio.move_on_after(30):
        while len(receiver.spans) < count:
            await trio.to_thread.run_sync(gw.gateway.telemetry.flush)
            await trio.sleep(0.05)
    assert len(receiver.spans) >= count, (receiver.paths, [s.name for _, s in receiver.spans])


def attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = v.string_value if v.HasField("string_value") else v.int_value if v.HasField("int_value") \
            else v.double_value if v.HasField("double_value") else v.bool_value
    return out


@pytest.fixture(autouse=True)
def _clean(monkeypatch):
    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "busbar-test")
    yield
    telemetry.shutdown_all()


def config(receiver_url: str) -> dict:
    return {
        "telemetry": {"otlp_endpoint": receiver_url},
        "providers": {"first": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-first-secret"},
                      "second": {"protocol": "anthropic", "base_url": "{b}", "key": "sk-second-secret"}},
        "pools": {"smart": {"strategy": "ordered",
                            "members": [{"provider": "first", "model": "gpt-x", "priority": 1},
                                        {"provider": "second", "model": "claude-y", "priority": 2}]}},
    }


async def test_failover_trace_has_a_request_span_and_two_attempt_spans():
    a, b = MockVendor(), MockVendor()
    a.always = {"status": 500}
    with Receiver() as receiver:
        async with gateway_with(config(receiver.url), a=a, b=b) as gw:
            assert gw.gateway.telemetry is not None
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(gw.url + "/v1/chat/completions", headers={
                    "traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"},
                    json={"model": "smart", "messages": [{"role": "user", "content": "trace me"}]})
            assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "trace me"
            await receive(gw, receiver, 3)
        sent_a = [h["headers"].get("traceparent") for h in a.received]
        sent_b = [h["headers"].get("traceparent") for h in b.received]
    assert receiver.paths[0] == "/v1/traces"
    spans = [span for _, span in receiver.spans]
    assert {service.get("service.name") for service, _ in receiver.spans} == {"busbar-test"}
    request = next(s for s in spans if s.kind == s.SPAN_KIND_SERVER)
    attempts = sorted((s for s in spans if s.kind == s.SPAN_KIND_CLIENT), key=lambda s: s.start_time_unix_nano)
    assert len(spans) == 3 and len(attempts) == 2
    # the client's trace continues: its span is the request span's parent
    assert request.trace_id.hex() == CLIENT_TRACE and request.parent_span_id.hex() == CLIENT_SPAN
    assert all(s.trace_id == request.trace_id and s.parent_span_id == request.span_id for s in attempts)
    req = attrs(request)
    assert req["busbar.pool"] == "smart" and req["gen_ai.request.model"] == "smart"
    assert req["busbar.client_protocol"] == "openai" and req["busbar.member"] == "smart/second/claude-y"
    assert req["http.response.status_code"] == 200 and req["busbar.attempts"] == 2
    assert req["gen_ai.usage.input_tokens"] > 0 and req["gen_ai.usage.output_tokens"] > 0
    assert req["busbar.ttfb_ms"] > 0 and "error.type" not in req
    first, second = map(attrs, attempts)
    assert first["gen_ai.system"] == "openai" and first["gen_ai.request.model"] == "gpt-x"
    assert first["busbar.outcome"] == "server" and first["error.type"] == "server"
    assert first["http.response.status_code"] == 500 and first["busbar.failover_reason"].startswith("server")
    assert attempts[0].status.code == attempts[0].status.STATUS_CODE_ERROR
    assert second["gen_ai.system"] == "anthropic" and second["gen_ai.request.model"] == "claude-y"
    assert second["busbar.outcome"] == "ok" and second["gen_ai.usage.output_tokens"] > 0
    # each attempt names the vendor's own id of its call (ADR 0029)
    assert first["busbar.upstream_request_id"] == a.received[0]["request_id"]
    assert second["busbar.upstream_request_id"] == b.received[0]["request_id"]
    # W3C propagation: each upstream got its own attempt span as parent, in the client's trace
    assert sent_a == [f"00-{CLIENT_TRACE}-{attempts[0].span_id.hex()}-01"]
    assert sent_b == [f"00-{CLIENT_TRACE}-{attempts[1].span_id.hex()}-01"]
    # no secret in any exported attribute
    dump = repr([attrs(s) for s in spans])
    assert "sk-first-secret" not in dump and "sk-second-secret" not in dump


async def test_a_request_without_traceparent_starts_a_trace_and_env_config_works(monkeypatch):
    with Receiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url)
        cfg = config("")
        del cfg["telemetry"]
        async with gateway_with(cfg, a=MockVendor(), b=MockVendor()) as gw:
            assert gw.gateway.telemetry is not None
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(gw.url + "/v1/messages", headers={"anthropic-version": "2023-06-01"},
                                      json={"model": "smart", "max_tokens": 20,
                                            "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200
            await receive(gw, receiver, 2)
    request = next(s for _, s in receiver.spans if s.kind == s.SPAN_KIND_SERVER)
    assert request.parent_span_id == b"" and attrs(request)["busbar.client_protocol"] == "anthropic"


async def test_off_by_default_nothing_per_request():
    async with gateway_with(config("x") | {"telemetry": {}}, a=MockVendor(), b=MockVendor()) as gw:
        assert gw.gateway.telemetry is None
        async with httpx.AsyncClient(timeout=30) as client:
            await client.post(gw.url + "/v1/chat/completions",
                              json={"model": "smart", "messages": [{"role": "user", "content": "hi"}]})
        assert all("traceparent" not in h["headers"] for h in gw.vendors["a"].received)


async def test_a_streamed_answer_is_traced_too():
    with Receiver() as receiver:
        async with gateway_with(config(receiver.url), a=MockVendor(), b=MockVendor()) as gw:
            async with httpx.AsyncClient(timeout=30) as client:
                async with client.stream("POST", gw.url + "/v1/chat/completions", json={
                        "model": "smart", "stream": True,
                        "messages": [{"role": "user", "content": "stream me"}]}) as r:
                    body = b"".join([chunk async for chunk in r.aiter_bytes()])
            assert r.status_code == 200 and b"[DONE]" in body
            await receive(gw, receiver, 2)
    request = next(s for _, s in receiver.spans if s.kind == s.SPAN_KIND_SERVER)
    attempt = next(s for _, s in receiver.spans if s.kind == s.SPAN_KIND_CLIENT)
    assert attrs(request)["http.response.status_code"] == 200 and attrs(request)["busbar.ttfb_ms"] > 0
    assert attrs(attempt)["busbar.outcome"] == "ok" and attempt.parent_span_id == request.span_id
