"""What inbound TLS (`server.tls`) costs the gateway (issue 12, ADR 0009).

    python bench/bench_tls.py [--repeats 7] [--handshakes 200] [--requests 300]

1. The server's CPU per full handshake, without sockets: a client and a
   server `ssl.SSLObject` over memory BIOs, bytes pumped between them; only
   the server side's calls are timed (the client's shown beside it).  Per
   key type (ECDSA P-256, trustme's default, and RSA 2048).  TLS 1.3, no
   session resumption (every new connection pays this).
2. Over loopback sockets, one trio process (client and server share it, so
   absolute numbers include the client): a `GET` answered by the real
   `HttpServer` on a new connection each time, plain vs TLS, and on one
   keep-alive connection, plain vs TLS (the per-request record cost).
3. The egress proxy's per-request cost for a plain-http upstream: the
   absolute-form rewrite of a serialised request (`ConnectionPool._absolute_form`);
   https upstreams pay only the CONNECT once per new connection.

Medians of the repeats, with the spread (max - min).  Certificates come from
trustme (the test extra).
"""
from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import trio  # noqa: E402
import trustme  # noqa: E402

from busbar.server import HttpServer  # noqa: E402


def contexts(key_type):
    ca = trustme.CA(key_type=key_type)
    cert = ca.issue_cert("127.0.0.1", "localhost", key_type=key_type)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.set_alpn_protocols(["http/1.1"])
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["http/1.1"])
    return server, client


def handshake_us(server_ctx, client_ctx, count: int) -> tuple[float, float]:
    """(server µs, client µs) per handshake, averaged over `count`."""
    server_time = client_time = 0.0
    for _ in range(count):
        c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        client_done = server_done = False
        while not (client_done and server_done):
            if not client_done:
                t0 = time.perf_counter()
                try:
                    client.do_handshake()
                    client_done = True
                except ssl.SSLWantReadError:
                    pass
                client_time += time.perf_counter() - t0
            s_in.write(c_out.read())
            if not server_done:
                t0 = time.perf_counter()
                try:
                    server.do_handshake()
                    server_done = True
                except ssl.SSLWantReadError:
                    pass
                server_time += time.perf_counter() - t0
            c_in.write(s_out.read())
        # the client reads the server's session tickets (TLS 1.3): part of the exchange
        try:
            client.read(1)
        except ssl.SSLWantReadError:
            pass
    return server_time / count * 1e6, client_time / count * 1e6


async def _answer(request, responder):
    await responder.send(200, [(b"content-type", b"text/plain")], b"ok")


REQUEST = b"GET /x HTTP/1.1\r\nhost: b\r\n\r\n"


async def _one(stream) -> None:
    await stream.send_all(REQUEST)
    data = b""
    while not data.endswith(b"ok"):
        piece = await stream.receive_some(65536)
        if not piece:
            raise RuntimeError("closed")
        data += piece


async def sockets(server_ctx, client_ctx, requests: int, repeats: int) -> dict[str, tuple[float, float]]:
    results: dict[str, list[float]] = {}
    async with trio.open_nursery() as nursery:
        plain = HttpServer(_answer)
        tls = HttpServer(_answer, tls=server_ctx)
        plain_port = (await nursery.start(plain.serve, "127.0.0.1", 0))[0][1]
        tls_port = (await nursery.start(tls.serve, "127.0.0.1", 0))[0][1]

        async def connect(port, secure):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            if secure:
                stream = trio.SSLStream(stream, client_ctx, server_hostname="127.0.0.1", https_compatible=True)
            return stream

        for _ in range(repeats):
            for name, port, secure in (("new connection, plain", plain_port, False),
                                       ("new connection, TLS", tls_port, True)):
                t0 = time.perf_counter()
                for _ in range(requests):
                    stream = await connect(port, secure)
                    await _one(stream)
                    await stream.aclose()
                results.setdefault(name, []).append((time.perf_counter() - t0) / requests * 1e6)
            for name, port, secure in (("keep-alive, plain", plain_port, False), ("keep-alive, TLS", tls_port, True)):
                stream = await connect(port, secure)
                await _one(stream)
                t0 = time.perf_counter()
                for _ in range(requests):
                    await _one(stream)
                results.setdefault(name, []).append((time.perf_counter() - t0) / requests * 1e6)
                await stream.aclose()
        nursery.cancel_scope.cancel()
    return {name: (statistics.median(v), max(v) - min(v)) for name, v in results.items()}


def absolute_form_us(calls: int, repeats: int) -> tuple[float, float]:
    from busbar.http11 import serialize_request
    from busbar.upstream import ConnectionPool, Origin, Proxy, Transport
    pool = ConnectionPool(Origin.from_url("http://vendor.internal:8000/v1"),
                          transport=Transport(proxy=Proxy.from_url("http://u:p@proxy:3128")))
    data = serialize_request(b"POST", b"/v1/chat/completions", b"vendor.internal:8000",
                             [(b"authorization", b"Bearer sk-x"), (b"content-type", b"application/json")], b"{}" * 200)
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            pool._absolute_form(b"POST", data)
        runs.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(runs), max(runs) - min(runs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--handshakes", type=int, default=200)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    print(f"OpenSSL: {ssl.OPENSSL_VERSION}")
    print("| handshake (memory BIOs) | server µs | spread | client µs |")
    print("|---|---|---|---|")
    for label, key_type in (("ECDSA P-256", trustme.KeyType.ECDSA), ("RSA 2048", trustme.KeyType.RSA)):
        server_ctx, client_ctx = contexts(key_type)
        runs = [handshake_us(server_ctx, client_ctx, args.handshakes) for _ in range(args.repeats)]
        servers = [r[0] for r in runs]
        print(f"| {label} | {statistics.median(servers):.0f} | {max(servers) - min(servers):.0f} "
              f"| {statistics.median(r[1] for r in runs):.0f} |")
    server_ctx, client_ctx = contexts(trustme.KeyType.ECDSA)
    figures = trio.run(sockets, server_ctx, client_ctx, args.requests, args.repeats)
    print("\n| loopback, one process, ECDSA | µs/request | spread |")
    print("|---|---|---|")
    for name, (median, spread) in figures.items():
        print(f"| {name} | {median:.0f} | {spread:.0f} |")
    median, spread = absolute_form_us(100_000, args.repeats)
    print(f"\negress proxy, absolute-form rewrite (plain-http upstream): {median:.2f} µs/request (spread {spread:.2f})")


if __name__ == "__main__":
    main()
