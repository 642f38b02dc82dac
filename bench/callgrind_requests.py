"""Instructions per request, which machine load cannot change (issue 20, ADR 0014).

The gateway (this tree, or `--baseline REV` laid out by bench_fast) runs under
`valgrind --tool=callgrind` in front of bench/fast_upstream.py.  After a
warm-up the counters are zeroed (`callgrind_control -z`), N identical
keep-alive buffered same-protocol requests go through over loopback, and
the dump's total instruction count divided by N is the figure.  Counts
include the interpreter's and kernel-boundary (libc) work in the gateway
process; the client and the upstream are other processes.

`--stream`: N sequential streamed same-protocol requests (OpenAI chat, SSE)
on one keep-alive connection, each chunked answer read to its end; the
upstream paces its chunks (`--chunk-ms`, one upstream write per word) so
each reaches the gateway as its own read, as a real stream's do.  Run at
two chunk counts (`--chunks 4,36`), the difference gives the instructions
per relayed chunk, and the per-stream figure at the lower count the fixed
cost of a stream (head, decoder, commit).

    python bench/callgrind_requests.py                    # this tree
    python bench/callgrind_requests.py --baseline main    # ... and main, same script
    python bench/callgrind_requests.py --variant http_parser=h11   # ... and this tree with a server option
    python bench/callgrind_requests.py --body-kb 100      # a 100 KB prompt instead of the small request
    python bench/callgrind_requests.py --stream -n 60 --baseline main   # streamed: per stream, per chunk
"""
from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast import baseline_tree, gateway_config, start_upstream  # noqa: E402
from bench_gateway import BODY, PY, free_port, wait_port  # noqa: E402

def chat_request(body: str = BODY) -> bytes:
    return ("POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"authorization: Bearer bench\r\ncontent-length: {len(body.encode())}\r\n\r\n{body}").encode()


def large_body(kb: int) -> str:
    """A chat request of about `kb` KB: one long user turn, `model` last (as
    the openai SDK orders it), the prompt size agents send."""
    return json.dumps({"messages": [{"role": "user", "content": "word " * (kb * 1024 // 5)}], "model": "bench"})


REQUEST = chat_request()
STREAM_REQUEST = chat_request(json.dumps({**json.loads(BODY), "stream": True}))


def requests(port: int, n: int, request: bytes = REQUEST) -> None:
    """n sequential keep-alive requests; each answer read whole (content-length)."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = b""
        for _ in range(n):
            s.sendall(request)
            while True:
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    m = re.search(rb"content-length: *(\d+)", buf[:end], re.I)
                    total = end + 4 + int(m.group(1))
                    if len(buf) >= total:
                        assert buf.startswith(b"HTTP/1.1 200"), buf[:200]
                        buf = buf[total:]
                        break
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("gateway closed the connection")
                buf += chunk


def streams(port: int, n: int, request: bytes = STREAM_REQUEST) -> None:
    """n sequential keep-alive streamed requests; each chunked answer read to
    its last chunk and trailer section."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()

        def need(size: int) -> None:
            while len(buf) < size:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("gateway closed the connection")
                buf.extend(chunk)

        def line() -> bytes:
            while (end := buf.find(b"\r\n")) < 0:
                need(len(buf) + 1)
            out = bytes(buf[:end])
            del buf[:end + 2]
            return out

        for _ in range(n):
            s.sendall(request)
            while (end := buf.find(b"\r\n\r\n")) < 0:
                need(len(buf) + 1)
            head = bytes(buf[:end])
            del buf[:end + 4]
            assert head.startswith(b"HTTP/1.1 200") and b"chunked" in head.lower(), head[:300]
            while (size := int(line().split(b";")[0], 16)):
                need(size + 2)
                del buf[:size + 2]
            while line():           # trailers, up to the blank line
                pass


def instructions(pythonpath: Path | None, upstream_port: int, config: Path, n: int, out: Path,
                 request: bytes = REQUEST, drive=requests, field: str = "totals", command=None) -> int:
    """Instructions for `n` requests through the gateway (or through
    `command(port)`, another server's argv: bench/trio_floor.py)."""
    port = free_port()
    env = dict(os.environ, PYTHONHASHSEED="0")
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    argv = command(port) if command is not None else [
        PY, "-m", "busbar.cli", "serve", "--config", str(config), "--port", str(port)]
    proc = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}.%p", *argv],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(f"{out}.log", "wb"))
    try:
        wait_port(port, timeout=900)      # valgrind starts slowly on a loaded machine
        try:
            drive(port, 50, request)            # warm-up: imports, pools, caches
        except (RuntimeError, OSError) as exc:
            raise RuntimeError(f"{exc}; the gateway's log: {out}.log") from exc
        subprocess.run(["callgrind_control", "-z", str(proc.pid)], check=True, capture_output=True)
        drive(port, n, request)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(60)
    dumps = sorted(Path(out.parent).glob(out.name + f".{proc.pid}.*"))
    totals = [int(m.group(1)) for d in dumps
              if (m := re.search(rf"^{field}: (\d+)", d.read_text(errors="replace"), re.M))]
    return totals[0] if totals else 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--baseline", action="append", default=[],
                        help="a git revision measured the same way (before/after; repeatable)")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="also measure this tree with server.KEY: VALUE (repeatable)")
    parser.add_argument("--body-kb", type=int, default=0,
                        help="send a chat request of about this many KB instead of the small one")
    parser.add_argument("--stream", action="store_true",
                        help="streamed requests (per stream and per chunk) instead of buffered ones")
    parser.add_argument("--chunks", default="4,36",
                        help="--stream: the upstream's content chunks per stream, one or two counts (4,36)")
    parser.add_argument("--chunk-ms", type=float, default=5.0,
                        help="--stream: the upstream's gap between chunks (each reaches the gateway alone)")
    parser.add_argument("--revisions-only", action="store_true",
                        help="--stream: measure only the --baseline revisions, not this tree")
    args = parser.parse_args()
    if args.stream:
        return stream_main(args)
    request = chat_request(large_body(args.body_kb)) if args.body_kb else REQUEST
    tmp = Path(tempfile.mkdtemp(prefix="callgrind-"))
    upstream_port = free_port()
    upstream = start_upstream(upstream_port)
    try:
        wait_port(upstream_port)
        config = gateway_config(tmp, upstream_port)
        runs = {"this tree": (None, config)}
        for variant in args.variant:
            key, _, value = variant.partition("=")
            path = tmp / f"variant-{key}.yaml"
            path.write_text(config.read_text() + f"server: {{{key}: {value}}}\n")
            runs[f"this tree, server.{key}: {value}"] = (None, path)
        for rev in args.baseline:
            runs[rev] = (baseline_tree(rev, tmp), config)
        result = {}
        for label, (path, run_config) in runs.items():
            total = instructions(path, upstream_port, run_config, args.n,
                                 tmp / re.sub(r"[^A-Za-z0-9]+", "_", label), request)
            result[label] = {"instructions_per_request": round(total / args.n), "requests": args.n}
    finally:
        upstream.terminate()
    print(json.dumps(result, indent=2))
    return 0


def stream_main(args) -> int:
    """Per streamed request at each chunk count; with two counts, per chunk
    (the difference over the extra chunks).  Read from the dump's `summary:`
    (what callgrind_annotate shows): its `totals:` line carries a constant
    ~18 M instructions more whatever N (the buffered mode's figures keep
    `totals:` so they compare with the ones already recorded)."""
    counts = [int(c) for c in args.chunks.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="callgrind-stream-"))
    trees = {} if args.revisions_only else {"this tree": None}
    trees.update({rev: baseline_tree(rev, tmp) for rev in args.baseline})
    result: dict = {label: {} for label in trees}
    for chunks in counts:
        upstream_port = free_port()
        upstream = start_upstream(upstream_port, chunks, args.chunk_ms)
        try:
            wait_port(upstream_port)
            config = gateway_config(tmp, upstream_port)
            for label, path in trees.items():
                total = instructions(path, upstream_port, config, args.n,
                                     tmp / (re.sub(r"[^A-Za-z0-9]+", "_", label) + f"_{chunks}"),
                                     STREAM_REQUEST, drive=streams, field="summary")
                result[label][f"instructions_per_stream_{chunks}_chunks"] = round(total / args.n)
        finally:
            upstream.terminate()
            upstream.wait(10)
    if len(counts) == 2:
        low, high = sorted(counts)
        for row in result.values():
            row["instructions_per_chunk"] = round((row[f"instructions_per_stream_{high}_chunks"]
                                                   - row[f"instructions_per_stream_{low}_chunks"]) / (high - low))
    for row in result.values():
        row["streams"] = args.n
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
