"""The server's read timeouts over real sockets (ADR 0014, session 4): a
connection's one cancel scope has the first request's `header_timeout`; an
idle keep-alive is closed by the expiry sweep past `keepalive_timeout`; a
request that arrives in pieces must still be whole within `header_timeout`."""
from __future__ import annotations

import pytest
import trio

from busbar.server import HttpServer

pytestmark = pytest.mark.integration

REQUEST = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi"


async def ok(request, responder):
    await responder.send(200, [(b"content-type", b"text/plain")], b"ok:" + request.body)


async def serving(nursery, **options) -> tuple[HttpServer, int]:
    server = HttpServer(ok, **options)
    addrs = await nursery.start(server.serve, "127.0.0.1", 0)
    return server, addrs[0][1]


async def answer(stream) -> bytes:
    """One whole answer (content-length framed), or what came before EOF."""
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"ok:hi") and b"408" not in data.split(b"\r\n", 1)[0]:
        piece = await stream.receive_some(65536)
        if not piece:
            break
        data += piece
    return data


async def served_once(port: int):
    """A connection that carried one request and is now kept alive."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(REQUEST)
    assert (await answer(stream)).endswith(b"ok:hi")
    return stream


async def closed_after(stream, limit: float) -> float | None:
    """Seconds until the server closes the connection (None: still open at `limit`)."""
    t0 = trio.current_time()
    with trio.move_on_after(limit):
        while await stream.receive_some(65536):
            pass
        return trio.current_time() - t0
    return None


async def test_an_idle_keep_alive_is_closed_after_keepalive_timeout_and_not_before():
    async with trio.open_nursery() as nursery:
        server, port = await serving(nursery, keepalive_timeout=0.6, header_timeout=5)
        stream = await served_once(port)
        waited = await closed_after(stream, 5)
        assert waited is not None, "the idle keep-alive was never closed"
        assert waited >= 0.55, f"closed after {waited:.2f}s, before keepalive_timeout"
        assert not server._idle
        nursery.cancel_scope.cancel()


async def test_requests_keep_a_kept_alive_connection_open_past_the_timeout():
    async with trio.open_nursery() as nursery:
        _, port = await serving(nursery, keepalive_timeout=0.6, header_timeout=5)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        for _ in range(8):              # 8 x 0.25 s: well past one keepalive_timeout in all
            await stream.send_all(REQUEST)
            assert (await answer(stream)).endswith(b"ok:hi")
            await trio.sleep(0.25)
        await stream.send_all(REQUEST)
        assert (await answer(stream)).endswith(b"ok:hi")
        nursery.cancel_scope.cancel()


async def test_a_request_in_pieces_on_a_kept_alive_connection_must_be_whole_within_header_timeout():
    async with trio.open_nursery() as nursery:
        _, port = await serving(nursery, keepalive_timeout=30, header_timeout=0.5)
        stream = await served_once(port)
        await stream.send_all(REQUEST[:20])        # the next request's start, then nothing
        data = await answer(stream)
        assert data.startswith(b"HTTP/1.1 408"), data[:80]
        nursery.cancel_scope.cancel()


async def test_a_new_connection_that_sends_nothing_is_closed_after_header_timeout():
    async with trio.open_nursery() as nursery:
        _, port = await serving(nursery, keepalive_timeout=30, header_timeout=0.4)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        waited = await closed_after(stream, 5)
        assert waited is not None and waited >= 0.35
        nursery.cancel_scope.cancel()


async def test_serve_returns_once_the_last_connection_ends_after_stop_accepting():
    async with trio.open_nursery() as nursery:
        server, port = await serving(nursery, keepalive_timeout=0.4, header_timeout=5)
        stream = await served_once(port)
        server.stop_accepting()
        with trio.fail_after(5):      # the idle keep-alive expires, then serve() and the nursery end
            while server.active_connections:
                await trio.sleep(0.05)
