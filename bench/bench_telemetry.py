"""What tracing costs on the request path (issue 13, goal <= 20 us/request).

Times exactly the calls the driver makes for one request when tracing is on:
`start_request` (with a client traceparent), one `start_attempt` (and the
traceparent it sends upstream), `end_attempt`, `end_request`, with the
official SDK's BatchSpanProcessor and OTLP/HTTP exporter sending to a local
receiver in a thread (export runs off the request path, but shares the CPU).
Off, the driver's cost is one `is None` test per request and per attempt.

    python bench/bench_telemetry.py [--requests 20000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from busbar.ir import Usage  # noqa: E402
from busbar.records import AttemptRecord, RequestRecord  # noqa: E402
from busbar.telemetry import Telemetry  # noqa: E402
from test_telemetry import Receiver  # noqa: E402

HEADERS = [(b"content-type", b"application/json"),
           (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")]


def one_request(tel: Telemetry) -> None:
    record = RequestRecord("bench-1", "openai")
    record.pool = "smart"
    span = tel.start_request(HEADERS, "openai")
    rec = AttemptRecord("smart/a/gpt-4o", "a#0:1234")
    attempt, _traceparent = tel.start_attempt(span, rec.member, "openai", "gpt-4o")
    rec.outcome, rec.status = "ok", 200
    record.attempts.append(rec)
    record.usage = Usage(input_tokens=12, output_tokens=30)
    record.status, record.ttfb_ms = 200, 1.5
    tel.end_attempt(attempt, rec, record.usage)
    tel.end_request(span, record)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"request path only (exporter discards): {measure(Telemetry(exporter=Discard()), args)}")
    with Receiver() as receiver:
        tel = Telemetry(receiver.url + "/v1/traces")
        print(f"with OTLP/HTTP export to a receiver in this process (export + protobuf decode share the GIL): "
              f"{measure(tel, args)}; {len(receiver.spans)} spans received")


class Discard:
    """A SpanExporter that drops what it gets: what remains is the request path's cost."""

    def export(self, spans):
        from opentelemetry.sdk.trace.export import SpanExportResult
        return SpanExportResult.SUCCESS

    def shutdown(self):
        pass

    def force_flush(self, timeout_millis=30000):
        return True


def measure(tel: Telemetry, args) -> str:
    if True:
        for _ in range(2000):
            one_request(tel)
        per_request = []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            for _ in range(args.requests):
                one_request(tel)
            per_request.append((time.perf_counter() - t0) / args.requests * 1e6)
            tel.flush(30_000)
        tel.shutdown()
    median = statistics.median(per_request)
    return (f"median {median:.1f} us/request (one request span + one attempt span; rounds "
            f"{', '.join(f'{x:.1f}' for x in per_request)})")


if __name__ == "__main__":
    main()
