"""busbar.sockio: socket I/O that skips trio's scheduler round when the
kernel can serve a call at once, and otherwise behaves as trio's own."""
from __future__ import annotations

import h11
import pytest
import trio
import trio.testing

from busbar import sockio
from busbar.server import HttpServer

pytestmark = pytest.mark.integration


async def _pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    await listener.aclose()
    return client, server


async def test_ready_bytes_and_a_send_the_kernel_takes_cost_no_scheduler_round():
    a, b = await _pair()
    await a.send_all(b"ping")
    await trio.sleep(0.05)                      # the bytes are waiting on b
    ran = []

    async def mark():
        ran.append(True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(mark)                 # runs at the next scheduler round, if there is one
        assert await sockio.receive_some(b, 100) == b"ping"
        await sockio.send_all(b, b"pong")
        assert ran == []                         # no other task ran: neither call yielded
    assert await a.receive_some(100) == b"pong"
    await a.aclose()
    await b.aclose()


async def test_a_receive_with_nothing_waiting_blocks_until_bytes_come_and_can_be_cancelled():
    a, b = await _pair()
    with trio.move_on_after(0.1) as scope:
        await sockio.receive_some(b, 100)
    assert scope.cancelled_caught
    async with trio.open_nursery() as nursery:
        got = []

        async def read():
            got.append(await sockio.receive_some(b, 100))
        nursery.start_soon(read)
        await trio.sleep(0.05)
        await a.send_all(b"late")
    assert got == [b"late"]
    await a.aclose()
    assert await sockio.receive_some(b, 100) == b""     # EOF
    await b.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await sockio.receive_some(b, 100)
    with pytest.raises(trio.ClosedResourceError):
        await sockio.send_all(b, b"x")


async def test_a_send_larger_than_the_socket_buffer_is_finished_by_trio_and_arrives_whole():
    a, b = await _pair()
    data = bytes(range(256)) * 40_000            # ~10 MB: the first send cannot take it all
    received = bytearray()

    async def drain():
        while len(received) < len(data):
            received.extend(await a.receive_some(1 << 16))
            await trio.sleep(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await sockio.send_all(b, data)
    assert bytes(received) == data
    await a.aclose()
    with pytest.raises(trio.BrokenResourceError):
        for _ in range(100):                     # the peer is gone: a send fails (after the kernel noticed)
            await sockio.send_all(b, b"x" * 65536)
            await trio.sleep(0.01)
    await b.aclose()


async def test_a_streamed_response_with_held_content_is_valid_chunked_http():
    async def handler(request, responder):
        await responder.start(200, [(b"content-type", b"text/event-stream")], b"data: first\n\n")
        await responder.write(b"data: second\n\n")
        await responder.end()

    server = HttpServer(handler)
    async with trio.open_nursery() as nursery:
        (host, port), = await nursery.start(server.serve, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream(host, port)
        conn = h11.Connection(h11.CLIENT)
        await stream.send_all(conn.send(h11.Request(method="GET", target="/", headers=[("host", "x")])))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        body = b""
        with trio.fail_after(10):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                elif isinstance(event, h11.Response):
                    assert event.status_code == 200
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
        assert body == b"data: first\n\ndata: second\n\n"
        await stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_relay_read_of_waiting_bytes_yields_and_meets_its_cancellation():
    """receive_some_yielding, a stream relay's read: bytes already waiting are
    returned after a scheduler round (a relay whose upstream is always ahead
    must not starve the other tasks), and a cancelled scope is met at that
    read even though the read never had to wait."""
    a, b = await _pair()
    others = 0
    seen = []

    async def other():
        nonlocal others
        while True:
            others += 1
            await trio.sleep(0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(other)
        for _ in range(20):                      # each read finds its bytes waiting
            await a.send_all(b"ping")
            await trio.sleep(0.002)
            before = others
            assert await sockio.receive_some_yielding(b, 100) == b"ping"
            seen.append(others - before)
        nursery.cancel_scope.cancel()
    # the other task ran during the reads; with receive_some (no round) it never would
    assert sum(seen) >= 5, seen
    await a.send_all(b"more")
    await trio.sleep(0.05)
    with trio.CancelScope() as scope:
        scope.cancel()
        await sockio.receive_some_yielding(b, 100)
    assert scope.cancelled_caught
    with trio.fail_after(5):
        assert await sockio.receive_some_yielding(b, 100) == b"more"    # a cancelled read took nothing


async def test_a_relay_read_waits_for_bytes_and_ends_at_eof_or_a_close():
    a, b = await _pair()
    got = []
    async with trio.open_nursery() as nursery:
        async def read():
            got.append(await sockio.receive_some_yielding(b, 100))
        nursery.start_soon(read)
        await trio.sleep(0.05)
        assert got == []                         # nothing waiting: it waits
        await a.send_all(b"late")
    assert got == [b"late"]
    await a.aclose()
    assert await sockio.receive_some_yielding(b, 100) == b""     # EOF
    async with trio.open_nursery() as nursery:   # a close while a read waits (the read bound's sweeper)
        c, d = await _pair()
        failed = []

        async def wait_read():
            with pytest.raises(trio.ClosedResourceError):
                await sockio.receive_some_yielding(d, 100)
            failed.append(True)
        nursery.start_soon(wait_read)
        await trio.sleep(0.05)
        d.socket.close()
    assert failed == [True]
    await c.aclose()
    await b.aclose()
