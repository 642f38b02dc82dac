"""What the passthrough guard (`Dialect.check_body_shape`, issue 12, ADR
0009) costs per request: the JSON types of the body fields the gateway
relies on, checked on the parsed body, per protocol.  Median µs per call over
the repeats, with the spread (max - min).  No sockets.

    python bench/bench_guard.py [--repeats 7] [--calls 200000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from busbar.protocols import get_dialect  # noqa: E402

USER = [{"role": "user", "content": "hello"}]
BODIES = {
    "openai": {"model": "smart", "stream": True, "messages": USER, "stream_options": {"include_usage": True}},
    "anthropic": {"model": "claude", "max_tokens": 256, "messages": USER, "stream": True},
    "responses": {"model": "smart", "input": "hello", "stream": True},
    "gemini": {"contents": [{"role": "user", "parts": [{"text": "hello"}]}], "generationConfig": {}},
    "cohere": {"model": "command", "messages": USER, "stream": True},
    "bedrock": {"messages": [{"role": "user", "content": [{"text": "hello"}]}], "inferenceConfig": {}},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    print("| protocol | µs/request | spread |")
    print("|---|---|---|")
    for name, body in BODIES.items():
        check = get_dialect(name).check_body_shape
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            for _ in range(args.calls):
                check(body)
            runs.append((time.perf_counter() - t0) / args.calls * 1e6)
        print(f"| {name} | {statistics.median(runs):.2f} | {max(runs) - min(runs):.2f} |")


if __name__ == "__main__":
    main()
