"""The floor under a request's cost on trio (issue 20, ADR 0014).

Stripped-down proxies in front of bench/fast_upstream.py, measured the way
bench/callgrind_requests.py measures the gateway (instructions per buffered
request over one keep-alive connection, which load cannot change):

- `bare`: one task per connection forwards each request (framed by
  content-length, nothing parsed or checked) over one kept upstream
  connection and the answer back, with the gateway's non-blocking-first
  socket calls (`busbar.sockio`: no scheduler round where the kernel answers
  at once).  No timeouts, no disconnect watch: what trio costs for two
  loopback hops and nothing else.
- `watch`: `bare` reading through the gateway's own `_Reader`, whose watch
  notices a departed client (the connection task reads its own socket; a
  request still handled a whole sweep later wakes the watcher), cancelling the
  connection's one scope as the gateway does.
- `structure`: `watch` plus a cancel scope for the request's deadline and
  one for the upstream's first-byte timeout; `one-deadline`: with one scope
  bounding both; `scopes`: the two scopes without the watch.

The gap between `structure` and the gateway is what the gateway's own logic
costs (parse, auth, routing, records, metrics); `structure` itself is the
least a trio process pays.  (Until session 6 the gateway's reader was a task
that took every read and handed it over: ~110 K instructions a request
more than the watch; ADR 0014 keeps those figures.)

    python bench/trio_floor.py                  # callgrind: every mode, and the gateway
    python bench/trio_floor.py serve --mode bare --port 8100 --upstream 8001
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))

_LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


async def read_message(receive, buf: bytes) -> tuple[bytes | None, bytes]:
    """One content-length framed message from `buf` + what `receive` gives."""
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            m = _LENGTH.search(buf, 0, end)
            total = end + 4 + (int(m.group(1)) if m else 0)
            if len(buf) >= total:
                return buf[:total], buf[total:]
        data = await receive()
        if not data:
            return None, b""
        buf += data


async def bare(client: trio.SocketStream, upstream_port: int) -> None:
    from busbar import sockio
    upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
    from_client = from_upstream = b""
    while True:
        request, from_client = await read_message(lambda: sockio.receive_some(client, 65536), from_client)
        if request is None:
            return
        await sockio.send_all(upstream, request)
        answer, from_upstream = await read_message(lambda: sockio.receive_some(upstream, 65536), from_upstream)
        await sockio.send_all(client, answer)


async def forward(client: trio.SocketStream, upstream_port: int, watch: bool = True, scopes: int = 2) -> None:
    """`bare`, reading through the gateway's `_Reader` and its watch (or
    not), with `scopes` deadline scopes per request (1: the request's,
    bounding its first byte too; 2: the request's and the first byte's)."""
    from busbar import sockio
    from busbar.server import LongRequests, _Reader
    upstream = await trio.open_tcp_stream("127.0.0.1", upstream_port)
    reader = _Reader(client, 1 << 20, LongRequests())     # the server has one; here one per connection

    async def exchange(request: bytes, from_upstream: bytes):
        await sockio.send_all(upstream, request)
        return await read_message(lambda: sockio.receive_some(upstream, 65536), from_upstream)

    async with trio.open_nursery() as nursery:
        if watch:
            nursery.start_soon(reader.run_watcher)
            nursery.start_soon(reader.long.run)
            receive = reader.read
        else:
            def receive():
                return sockio.receive_some(client, 65536)
        with trio.CancelScope() as connection:       # the watch cancels it when the client leaves
            from_client = from_upstream = b""
            while True:
                request, from_client = await read_message(receive, from_client)
                if request is None:
                    break
                if watch:
                    reader.watch(connection)
                if scopes == 0:
                    answer, from_upstream = await exchange(request, from_upstream)
                else:
                    with trio.CancelScope(deadline=trio.current_time() + 600):            # the request's deadline
                        if scopes == 2:
                            with trio.CancelScope(deadline=trio.current_time() + 60):     # the first byte's
                                answer, from_upstream = await exchange(request, from_upstream)
                        else:
                            answer, from_upstream = await exchange(request, from_upstream)
                if watch:
                    reader.unwatch()
                await sockio.send_all(client, answer)
        nursery.cancel_scope.cancel()


MODES = {"bare": bare,
         "watch": lambda c, u: forward(c, u, scopes=0),                  # bare + the gateway's watch
         "structure": forward,                                           # the watch + both deadline scopes
         "one-deadline": lambda c, u: forward(c, u, scopes=1),           # the watch + one deadline scope
         "scopes": lambda c, u: forward(c, u, watch=False)}              # bare + the two scopes


async def serve(mode: str, port: int, upstream_port: int) -> None:
    handler = MODES[mode]

    async def connection(stream: trio.SocketStream) -> None:
        try:
            await handler(stream, upstream_port)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    await trio.serve_tcp(connection, port, host="127.0.0.1")


def measure(n: int) -> dict:
    from bench_fast import gateway_config, start_upstream
    from bench_gateway import PY, free_port, wait_port
    from callgrind_requests import instructions
    tmp = Path(tempfile.mkdtemp(prefix="trio-floor-"))
    upstream_port = free_port()
    upstream = start_upstream(upstream_port)
    result = {}
    try:
        wait_port(upstream_port)
        config = gateway_config(tmp, upstream_port)
        for mode in MODES:
            def command(port: int, mode=mode) -> list[str]:
                return [PY, str(Path(__file__).resolve()), "serve", "--mode", mode, "--port", str(port),
                        "--upstream", str(upstream_port)]
            result[mode] = round(instructions(None, upstream_port, config, n, tmp / mode, command=command) / n)
        result["gateway"] = round(instructions(None, upstream_port, config, n, tmp / "gateway") / n)
    finally:
        upstream.terminate()
    return {label: {"instructions_per_request": count, "of_gateway": round(count / result["gateway"], 3)}
            for label, count in result.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    run = sub.add_parser("serve")
    run.add_argument("--mode", choices=tuple(MODES), required=True)
    run.add_argument("--port", type=int, required=True)
    run.add_argument("--upstream", type=int, required=True)
    parser.add_argument("-n", type=int, default=300)
    args = parser.parse_args()
    if args.command == "serve":
        trio.run(serve, args.mode, args.port, args.upstream)
        return 0
    print(json.dumps(measure(args.n), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
