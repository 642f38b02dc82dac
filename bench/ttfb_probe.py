"""Time to first content over one keep-alive connection and over a new
connection each time, streamed and buffered, from a blocking-socket client
(the least client-side work between the send and the first byte): the
streamed figure and the buffered one compare like for like, which
`streaming_probe.py` (a new connection per stream) and wrk (keep-alive) do
not (ADR 0014, session 4).  Against bench/fast_upstream.py or a gateway
in front of it:

    python bench/ttfb_probe.py PORT [N] [--gap-ms 0,10]     # -> JSON, medians in ms

`--gap-ms`: the client sleeps this long before each request, every kind
alike.  A request that follows an idle pause costs the gateway far more than
one that follows another at once (ADR 0014, session 9: 0.34 ms back to back,
0.64 ms after 5 ms, 0.93 ms after 20 ms, the same for a stream and a
buffered answer), and a paced stream's own pauses leave the process as idle
as a gap does: comparing a stream with buffered answers sent back to back
compares a cold process with a hot one.  So each gap is measured for both
kinds; a gap longer than the upstream's chunk pace is the like-for-like
figure.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import time


def request(stream: bool) -> bytes:
    body = json.dumps({"model": "bench", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}).encode()
    return (b"POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(body)) + body


REQUESTS = {True: request(True), False: request(False)}
FIRST = {True: b"w00", False: b"help you today"}    # the first word of each fast_upstream answer


def one(sock: socket.socket, stream: bool) -> float:
    """Seconds from the send to the first content; reads the answer to its end."""
    t0 = time.perf_counter()
    sock.sendall(REQUESTS[stream])
    buf, first = b"", None
    while True:
        data = sock.recv(65536)
        if not data:
            raise RuntimeError("connection closed")
        buf += data
        if first is None and FIRST[stream] in buf:
            first = time.perf_counter() - t0
            if not stream:          # fast_upstream's answer is one small write
                return first
        if stream and buf.endswith(b"0\r\n\r\n"):
            return first


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def probe(port: int, n: int, gap_s: float) -> dict:
    """Medians (ms) for each kind after `gap_s` of idle before every request.
    With a gap, the kinds are interleaved request by request (each sees the
    same moment of the machine, and the gap, not the request before, sets how
    cold the process is); back to back, each kind runs as its own block (what
    precedes a request is another of its kind)."""
    kinds = [(stream, fresh) for stream in (True, False) for fresh in (False, True)]
    times: dict = {kind: [] for kind in kinds}
    with connect(port) as kept_stream, connect(port) as kept_buffered:
        kept = {True: kept_stream, False: kept_buffered}

        def measure(stream: bool, fresh: bool) -> None:
            time.sleep(gap_s)
            if fresh:
                with connect(port) as new:
                    times[stream, fresh].append(one(new, stream))
            else:
                times[stream, fresh].append(one(kept[stream], stream))

        if gap_s > 0:
            for _ in range(n):
                for kind in kinds:
                    measure(*kind)
        else:
            for kind in kinds:
                for _ in range(n):
                    measure(*kind)
    warm = slice(min(5, n - 1), None)
    return {"stream" if stream else "buffered": {
        "keepalive_ms": round(statistics.median(times[stream, False][warm]) * 1000, 3),
        "new_connection_ms": round(statistics.median(times[stream, True][warm]) * 1000, 3)}
        for stream in (True, False)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("n", type=int, nargs="?", default=200)
    parser.add_argument("--gap-ms", default="0", help="idle before each request, one or more (0,10)")
    args = parser.parse_args()
    gaps = [float(g) for g in args.gap_ms.split(",")]
    print(json.dumps({"gap_ms": {f"{g:g}": probe(args.port, args.n, g / 1000) for g in gaps}}))


if __name__ == "__main__":
    main()
