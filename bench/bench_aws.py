"""Micro-benchmarks for engine.aws: SigV4 sign/verify and event stream codec.

Run: python bench/bench_aws.py [--runs N]

Each figure is the median of N timed runs (each run sized to take ~0.1 s)
with the min..max spread across runs.  Stdlib only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from busbar.aws import eventstream, sigv4  # noqa: E402

NOW = datetime(2024, 6, 20, 17, 5, 9, tzinfo=timezone.utc)
CREDENTIALS = sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
HOST = "bedrock-runtime.us-east-1.amazonaws.com"
PATH = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"


def converse_body(target_size: int = 1024) -> bytes:
    """A realistic Converse request body of about `target_size` bytes."""
    request = {
        "system": [{"text": "You are a concise assistant. Answer in one paragraph."}],
        "messages": [
            {"role": "user", "content": [{"text": "Summarise the following notes."}]},
            {"role": "assistant", "content": [{"text": "Sure, please paste them."}]},
            {"role": "user", "content": [{"text": ""}]},
        ],
        "inferenceConfig": {"maxTokens": 512, "temperature": 0.2, "topP": 0.9},
    }
    overhead = len(json.dumps(request, separators=(",", ":")).encode())
    text = "lorem ipsum dolor sit amet " * (target_size // 27 + 1)
    request["messages"][2]["content"][0]["text"] = text[:max(0, target_size - overhead)]
    return json.dumps(request, separators=(",", ":")).encode()


def timed(operation, *, runs: int, target_seconds: float = 0.1) -> tuple[float, float, float]:
    """(median, min, max) seconds per call of `operation()` over `runs` runs."""
    operation()  # warm caches the way a long-running process has them warm
    iterations = 1
    while True:  # calibrate so one run lasts about target_seconds
        start = time.perf_counter()
        for _ in range(iterations):
            operation()
        elapsed = time.perf_counter() - start
        if elapsed >= target_seconds / 4:
            iterations = max(1, int(iterations * target_seconds / elapsed))
            break
        iterations *= 4
    per_call = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(iterations):
            operation()
        per_call.append((time.perf_counter() - start) / iterations)
    return statistics.median(per_call), min(per_call), max(per_call)


def report_us(label: str, stats: tuple[float, float, float]) -> None:
    median, low, high = (value * 1e6 for value in stats)
    print(f"  {label:<52} {median:9.2f} µs   (runs {low:.2f}..{high:.2f})")


def report_throughput(label: str, stats: tuple[float, float, float], nbytes: int, frames: int) -> None:
    median, low, high = stats
    mib = nbytes / (1024 * 1024)
    print(f"  {label:<52} {mib / median:9.1f} MiB/s  (runs {mib / high:.1f}..{mib / low:.1f}), "
          f"{median / frames * 1e6:.2f} µs/frame")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per figure (default 7)")
    runs = parser.parse_args().runs

    body = converse_body()
    headers = [("Host", HOST), ("Content-Type", "application/json"), ("Accept", "application/json")]
    print(f"SigV4 (Bedrock Converse POST, {len(body)} B body, {runs} runs)")

    def sign_once():
        return sigv4.sign("POST", PATH, "", headers, body, credentials=CREDENTIALS,
                          region="us-east-1", now=NOW)

    signed_headers = headers + sign_once()
    secrets = {CREDENTIALS.access_key_id: CREDENTIALS.secret_access_key}

    def verify_once():
        return sigv4.verify("POST", PATH, "", signed_headers, body, lookup_secret=secrets.get,
                            region="us-east-1", now=NOW)

    h11_headers = [(name.lower().encode(), value.encode()) for name, value in signed_headers]

    def verify_h11_once():
        return sigv4.verify("POST", PATH.encode(), b"", h11_headers, body, lookup_secret=secrets.get,
                            region="us-east-1", now=NOW)

    assert verify_once() == verify_h11_once() == CREDENTIALS.access_key_id
    report_us("sign (signing key cached)", timed(sign_once, runs=runs))
    report_us("sign with now=None (reads the clock)", timed(
        lambda: sigv4.sign("POST", PATH, "", headers, body, credentials=CREDENTIALS, region="us-east-1"),
        runs=runs))
    report_us("verify (str headers)", timed(verify_once, runs=runs))
    report_us("verify (h11-style bytes headers)", timed(verify_h11_once, runs=runs))

    def sign_cold():
        sigv4._signing_key.cache_clear()
        sign_once()
    report_us("sign, signing-key cache cold (4 extra HMACs)", timed(sign_cold, runs=runs))

    print(f"\nEvent stream ({runs} runs)")
    typical = eventstream.event_message(
        "contentBlockDelta",
        b'{"contentBlockIndex":0,"delta":{"text":" the quick brown fox jumps"},'
        b'"p":"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123"}')
    typical_frame = eventstream.encode(typical)
    frames_per_batch = 1000
    stream = typical_frame * frames_per_batch
    big = eventstream.event_message("chunk", b"x" * 65536, "application/octet-stream")
    big_frame = eventstream.encode(big)
    big_stream = big_frame * 64

    def encode_typical():
        for _ in range(frames_per_batch):
            eventstream.encode(typical)

    def decode_whole():
        eventstream.Decoder().feed(stream)

    def decode_frame_by_frame():
        decoder = eventstream.Decoder()
        for _ in range(frames_per_batch):
            decoder.feed(typical_frame)

    def decode_4k_chunks():
        decoder = eventstream.Decoder()
        for start in range(0, len(stream), 4096):
            decoder.feed(stream[start:start + 4096])

    def encode_big():
        for _ in range(64):
            eventstream.encode(big)

    def decode_big_16k_chunks():
        decoder = eventstream.Decoder()
        for start in range(0, len(big_stream), 16384):
            decoder.feed(big_stream[start:start + 16384])

    print(f"  typical frame: {len(typical_frame)} B (3 string headers + {len(typical.payload)} B JSON)")
    report_throughput("encode typical frames", timed(encode_typical, runs=runs), len(stream), frames_per_batch)
    report_throughput("decode typical frames, one feed per frame", timed(decode_frame_by_frame, runs=runs),
                      len(stream), frames_per_batch)
    report_throughput("decode typical frames, 4 KiB socket reads", timed(decode_4k_chunks, runs=runs),
                      len(stream), frames_per_batch)
    report_throughput("decode typical frames, one 1000-frame feed", timed(decode_whole, runs=runs),
                      len(stream), frames_per_batch)
    cache_limit = eventstream._HEADER_CACHE_BLOCK_LENGTH
    eventstream._HEADER_CACHE_BLOCK_LENGTH = -1  # every header block parsed afresh
    try:
        report_throughput("decode typical frames, 4 KiB reads, header cache off",
                          timed(decode_4k_chunks, runs=runs), len(stream), frames_per_batch)
    finally:
        eventstream._HEADER_CACHE_BLOCK_LENGTH = cache_limit
    report_throughput("encode 64 KiB frames", timed(encode_big, runs=runs), len(big_stream), 64)
    report_throughput("decode 64 KiB frames, 16 KiB reads", timed(decode_big_16k_chunks, runs=runs),
                      len(big_stream), 64)


if __name__ == "__main__":
    main()
