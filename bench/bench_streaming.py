"""Micro-benchmark of the stream codecs: microseconds per streamed chunk
translated (decode one upstream text-delta event, encode it for the client).

Run: python bench/bench_streaming.py [--runs N] [--chunks N] [--json]

For each pair the upstream stream is a vendor's own rendering (its encoder)
of MessageStart, one text block of N small deltas ("token " sized), usage
and stop; each wire event is fed to the decoder as its own read, as a
socket delivers them, and every decoded event is encoded for the client.
A figure is the median over runs of (time for the whole stream) / N, with
the min..max spread.  Stdlib + the engine only.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from busbar import ir  # noqa: E402
from busbar.aws import eventstream  # noqa: E402
from busbar.protocols import get_dialect  # noqa: E402
from busbar.protocols.sse import SSESplitter  # noqa: E402

PAIRS = [("openai", "anthropic"), ("anthropic", "openai"), ("anthropic", "gemini"), ("bedrock", "openai"),
         ("gemini", "openai"), ("responses", "anthropic"), ("cohere", "responses"), ("openai", "bedrock")]
WORDS = ["Hello", " world", ",", " this", " is", " a", " streamed", " answer", " with", " tokens", "\n", " ünï",
         " \"quoted\""]


def upstream_reads(vendor: str, chunks: int) -> list[bytes]:
    """The vendor's stream, one wire event per read."""
    events = [ir.MessageStart("msg_0123456789", "vendor-model", ir.Usage(120)), ir.BlockStart(0, ir.Text(""))]
    events += [ir.TextDelta(0, WORDS[i % len(WORDS)]) for i in range(chunks)]
    events += [ir.BlockStop(0), ir.UsageEvent(ir.Usage(120, chunks)), ir.MessageStop(ir.StopReason.END_TURN)]
    enc = get_dialect(vendor).stream_encoder("vendor-model")
    data = b"".join(enc.encode(e) for e in events) + enc.finish()
    if vendor == "bedrock":
        reads, rest = [], data
        while rest:
            total = int.from_bytes(rest[:4], "big")
            reads.append(rest[:total])
            rest = rest[total:]
        assert b"".join(reads) == data and len(eventstream.decode_all(data)) == len(reads)
        return reads
    return [e.raw for e in SSESplitter().feed(data)]


def translate(vendor: str, client: str, reads: list[bytes]) -> int:
    dec = get_dialect(vendor).stream_decoder()
    enc = get_dialect(client).stream_encoder("client-model")
    encode = enc.encode
    n = 0
    for chunk in reads:
        for event in dec.feed(chunk):
            n += len(encode(event))
    for event in dec.close():
        n += len(encode(event))
    return n + len(enc.finish())


def bench(vendor: str, client: str, *, chunks: int, runs: int) -> tuple[float, float, float]:
    reads = upstream_reads(vendor, chunks)
    translate(vendor, client, reads)        # warm
    per_chunk = []
    for _ in range(runs):
        start = time.perf_counter()
        translate(vendor, client, reads)
        per_chunk.append((time.perf_counter() - start) / chunks * 1e6)
    return statistics.median(per_chunk), min(per_chunk), max(per_chunk)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--chunks", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    results = {}
    for vendor, client in PAIRS:
        results[f"{vendor}->{client}"] = bench(vendor, client, chunks=args.chunks, runs=args.runs)
    if args.json:
        print(json.dumps({k: {"us_per_chunk": round(v[0], 3), "min": round(v[1], 3), "max": round(v[2], 3)}
                          for k, v in results.items()}))
        return
    print(f"stream translation, us per text-delta chunk (decode + encode), median of {args.runs} runs "
          f"x {args.chunks} chunks, python {sys.version.split()[0]}")
    for name, (med, lo, hi) in results.items():
        print(f"  {name:24s} {med:6.2f} us   ({lo:.2f} .. {hi:.2f})")


if __name__ == "__main__":
    main()
