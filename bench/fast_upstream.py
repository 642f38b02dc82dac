"""A minimal, fast upstream for benchmarks: one epoll loop on raw sockets.

It answers every keep-alive HTTP/1.1 POST with a fixed OpenAI chat
completion, or, when the body asks for `"stream": true`, a fixed SSE stream
(chunked, `--chunks` content chunks `--chunk-ms` apart, then `[DONE]`).  The
bytes are built once; a request costs one `recv` and one `send` (plus the
epoll round), so this serves several times the gateway's rate and leaves
the gateway's own cost visible, which the simulated vendor (`busbar mock`,
a trio + h11 app) hides (issue 20).

    python bench/fast_upstream.py --port 8001 [--chunks 16 --chunk-ms 5]
"""
from __future__ import annotations

import argparse
import heapq
import json
import select
import socket
import time

COMPLETION = json.dumps({
    "id": "chatcmpl-fast", "object": "chat.completion", "created": 1700000000, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18}}, separators=(",", ":")).encode()
BUFFERED = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
            % len(COMPLETION)) + COMPLETION
STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def sse(obj) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()) + b"\n\n"


def stream_parts(chunks: int) -> list[bytes]:
    """The stream as the writes that go out: head, role chunk and the first
    content chunk (w00) at once, so time to first content is the server's
    own; then one write per further word (w01, ...); finish + [DONE] last."""
    base = {"id": "chatcmpl-fast", "object": "chat.completion.chunk", "created": 1700000000, "model": "m"}
    role = sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
    parts = [STREAM_HEAD + chunk(role)]
    for i in range(chunks):
        word = f"w{i:02d}" if i == 0 else f" w{i:02d}"
        parts.append(chunk(sse({**base, "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})))
    parts[0:2] = [parts[0] + parts[1]]
    finish = sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    parts[-1] += chunk(finish + sse(b"[DONE]")) + b"0\r\n\r\n"
    return parts


def serve(port: int, chunks: int, chunk_ms: float) -> None:
    parts = stream_parts(chunks)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)
    listener.setblocking(False)
    ep = select.epoll()
    ep.register(listener.fileno(), select.EPOLLIN)
    conns: dict[int, socket.socket] = {}
    bufs: dict[int, bytes] = {}
    timers: list = []           # (due, seq, socket, next part index) for paced streams
    seq = 0
    gap = chunk_ms / 1000

    def close(fd: int) -> None:
        ep.unregister(fd)
        conns.pop(fd).close()
        bufs.pop(fd, None)

    def send(sock: socket.socket, data: bytes) -> None:
        fd = sock.fileno()
        if conns.get(fd) is not sock:     # closed meanwhile (a paced stream's client left)
            return
        try:
            sock.setblocking(True)     # responses are small: a blocking send never waits long
            sock.sendall(data)
            sock.setblocking(False)
        except OSError:
            close(fd)

    while True:
        timeout = max(0.0, timers[0][0] - time.monotonic()) if timers else -1
        for fd, _ in ep.poll(timeout):
            if fd == listener.fileno():
                try:
                    while True:
                        sock, _ = listener.accept()
                        sock.setblocking(False)
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        conns[sock.fileno()] = sock
                        ep.register(sock.fileno(), select.EPOLLIN)
                except BlockingIOError:
                    pass
                continue
            try:
                data = conns[fd].recv(65536)
            except (BlockingIOError, KeyError):
                continue
            except OSError:
                data = b""
            if not data:
                close(fd)
                continue
            buf = bufs.get(fd, b"") + data
            out = []
            while True:               # every complete request in the buffer (pipelining too)
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                i = head.find(b"content-length:")
                length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None]) if i >= 0 else 0
                if len(buf) < end + 4 + length:
                    break
                body, buf = buf[end + 4:end + 4 + length], buf[end + 4 + length:]
                if b'"stream":true' in body.replace(b" ", b""):
                    if gap <= 0:
                        out.append(b"".join(parts))
                    else:
                        out.append(parts[0])
                        seq += 1
                        heapq.heappush(timers, (time.monotonic() + gap, seq, conns[fd], 1))
                else:
                    out.append(BUFFERED)
            bufs[fd] = buf
            if out:
                send(conns[fd], b"".join(out))
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, sock, index = heapq.heappop(timers)
            send(sock, parts[index])
            if index + 1 < len(parts):
                seq += 1
                heapq.heappush(timers, (now + gap, seq, sock, index + 1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--chunks", type=int, default=16)
    parser.add_argument("--chunk-ms", type=float, default=5.0, help="gap between streamed chunks (0: one write)")
    args = parser.parse_args()
    try:
        serve(args.port, args.chunks, args.chunk_ms)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
