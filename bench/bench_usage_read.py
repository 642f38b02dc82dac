"""What a same-protocol buffered passthrough pays to read an answer's usage
(metrics on): the whole IR (`parse_response(obj).usage`, before ADR 0019)
against the codec's `usage_in` on the usage object alone (`response_usage`).
Pure, no I/O; the answer is already JSON-decoded by the relay's check.

    python bench/bench_usage_read.py      # µs per answer, median (min..max) of 7 runs, per protocol
"""
import statistics
import time

import orjson

from busbar import ir
from busbar.protocols import PROTOCOLS, get_dialect

N = 20000
RUNS = 7


def answer() -> ir.Response:
    """A typical short answer: two sentences and a tool call, with full usage."""
    text = ir.Text("The weather in Paris is mild today. I will check the forecast for tomorrow as well.")
    call = ir.ToolCall("call_1", "get_weather", {"city": "Paris", "unit": "celsius"})
    return ir.Response("resp_1", "m", [text, call], ir.StopReason.TOOL_USE, None,
                       ir.Usage(1200, 85, cached_tokens=1024, reasoning_tokens=0))


def per_answer(fn, obj) -> float:
    t0 = time.perf_counter()
    for _ in range(N):
        fn(obj)
    return (time.perf_counter() - t0) / N * 1e6


def main():
    print(f"µs per answer, median (min..max) over {RUNS} x {N}")
    for proto in PROTOCOLS:
        d = get_dialect(proto)
        obj = orjson.loads(d.render_response(answer(), "m"))
        assert d.response_usage(obj) == d.parse_response(obj).usage
        full = [per_answer(lambda o: d.parse_response(o).usage, obj) for _ in range(RUNS)]
        alone = [per_answer(d.response_usage, obj) for _ in range(RUNS)]
        print(f"  {proto:<10} parse_response: {statistics.median(full):5.2f} ({min(full):.2f}..{max(full):.2f})"
              f"   usage_in: {statistics.median(alone):5.2f} ({min(alone):.2f}..{max(alone):.2f})")


if __name__ == "__main__":
    main()
