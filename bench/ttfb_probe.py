"""Time to first content over one keep-alive connection and over a new
connection each time, streamed and buffered, from a blocking-socket client
(the least client-side work between the send and the first byte): the
streamed figure and the buffered one compare like for like, which
`streaming_probe.py` (a new connection per stream) and wrk (keep-alive) do
not (ADR 0014, session 4).  Against bench/fast_upstream.py or a gateway
in front of it:

    python bench/ttfb_probe.py PORT [N]     # -> JSON, medians in ms
"""
from __future__ import annotations

import json
import socket
import statistics
import sys
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


def main() -> None:
    port, n = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200
    out = {}
    for stream in (True, False):
        kept, fresh = [], []
        with connect(port) as sock:
            for _ in range(n):          # interleaved: both see the same moment of the machine
                kept.append(one(sock, stream))
                with connect(port) as new:
                    fresh.append(one(new, stream))
        warm = slice(min(5, n - 1), None)
        out["stream" if stream else "buffered"] = {
            "keepalive_ms": round(statistics.median(kept[warm]) * 1000, 3),
            "new_connection_ms": round(statistics.median(fresh[warm]) * 1000, 3)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
