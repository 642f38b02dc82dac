"""The upstream connection pool: keep-alive reuse, and idle connections the
vendor closed never turn into failures blamed on the vendor."""
from __future__ import annotations

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from busbar.server import HttpServer
from harness import gateway_with

pytestmark = pytest.mark.integration


class ShortKeepAliveVendor(MockVendor):
    """A vendor that closes idle keep-alive connections after 0.3 s, as load
    balancers in front of real vendors do."""

    def server(self):
        return HttpServer(self.handle, keepalive_timeout=0.3)


CONFIG = {"providers": {"p": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
          "pools": {"smart": {"members": [{"provider": "p", "model": "m"}]}}}
BODY = {"model": "smart", "messages": [{"role": "user", "content": "x"}]}


async def test_connections_closed_by_the_vendor_while_idle_are_not_failures():
    vendor = ShortKeepAliveVendor(reply="hi", record=False)
    async with gateway_with(CONFIG, a=vendor) as gw:
        async with httpx.AsyncClient(base_url=gw.url, limits=httpx.Limits(max_connections=64)) as http:
            codes = []

            async def one():
                codes.append((await http.post("/v1/chat/completions", json=BODY)).status_code)

            async with trio.open_nursery() as nursery:     # a burst opens many upstream connections
                for _ in range(40):
                    nursery.start_soon(one)
            pool = next(iter(gw.gateway.upstream._pools.values()))
            assert len(pool._idle) > 1
            await trio.sleep(0.6)                            # the vendor closes them all
            codes.clear()
            for _ in range(30):
                await one()
        assert codes == [200] * 30
        member = gw.gateway.router.snapshot(trio.current_time())["pools"]["smart"]["members"][0]
        assert member["breaker"]["state"] == "closed"


async def test_keep_alive_connections_are_reused():
    vendor = MockVendor(reply="hi", record=False)
    async with gateway_with(CONFIG, a=vendor) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            for _ in range(20):
                assert (await http.post("/v1/chat/completions", json=BODY)).status_code == 200
        pool = next(iter(gw.gateway.upstream._pools.values()))
        assert pool._open == 1 and len(pool._idle) == 1


async def test_provider_max_connections_bounds_upstream_connections():
    config = {"providers": {"p": {"protocol": "openai", "base_url": "{a}/v1", "key": "k", "max_connections": 2}},
              "pools": {"smart": {"members": [{"provider": "p", "model": "m"}]}}}
    vendor = MockVendor(reply="hi", latency=0.1)
    async with gateway_with(config, a=vendor) as gw:
        codes = []
        async with httpx.AsyncClient(base_url=gw.url) as http:
            async def one():
                codes.append((await http.post("/v1/chat/completions", json=BODY)).status_code)
            async with trio.open_nursery() as nursery:
                for _ in range(6):
                    nursery.start_soon(one)
        pool = next(iter(gw.gateway.upstream._pools.values()))
    assert codes == [200] * 6           # queued for a slot, not refused
    assert pool.max_connections == 2 and pool._open <= 2


async def test_a_streamed_body_comes_read_by_read():
    """`aiter_reads` gives the chunks of a chunked body one network read at a
    time (a relay moves its read deadline and writes to the client once per
    read, and still decides chunk by chunk); `aiter_bytes` the chunks."""
    from busbar.upstream import ConnectionPool, Origin
    go_on = trio.Event()

    async def vendor(stream):
        while await stream.receive_some(65536):         # each request (keep-alive)
            await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                                  b"3\r\none\r\n3\r\ntwo\r\n")
            await go_on.wait()
            await stream.send_all(b"5\r\nthree\r\n0\r\n\r\n")

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, vendor, 0)
        port = listeners[0].socket.getsockname()[1]
        pool = ConnectionPool(Origin.from_url(f"http://127.0.0.1:{port}"))
        await nursery.start(pool.bounds.run)
        response = await pool.request(b"POST", b"/", [], b"{}")
        reads = []
        async for pieces in response.aiter_reads():
            reads.append(pieces)
            go_on.set()
        await response.aclose()
        go_on = trio.Event()
        response = await pool.request(b"POST", b"/", [], b"{}")
        pieces = []
        async for piece in response.aiter_bytes():
            pieces.append(piece)
            go_on.set()
        await response.aclose()
        await pool.aclose()
        nursery.cancel_scope.cancel()
    assert reads == [[b"one", b"two"], [b"three"]]
    assert pieces == [b"one", b"two", b"three"]


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_a_head_that_never_comes_times_out_at_its_bound_and_is_not_retried(tls):
    """The head wait's timeout closes the connection under the waiting
    receive (`_Connection.expire`, no cancel scope): the call fails as a
    timeout, not as a stale keep-alive resent on a fresh connection, and
    leaves no slot, connection or bound behind."""
    import ssl

    import trustme

    from busbar.upstream import ConnectionPool, Origin, UpstreamError
    received = []

    async def vendor(stream):
        while await stream.receive_some(65536):
            received.append(trio.current_time())
            if len(received) == 1:
                await stream.send_all(OK)       # the first request only; the second never gets a head
            else:
                await trio.sleep_forever()

    ca = trustme.CA()
    async with trio.open_nursery() as nursery:
        if tls:
            server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ca.issue_cert("localhost").configure_cert(server_context)
            listeners = await nursery.start(trio.serve_ssl_over_tcp, vendor, 0, server_context)
            client_context = ssl.create_default_context()
            ca.configure_trust(client_context)
        else:
            listeners = await nursery.start(trio.serve_tcp, vendor, 0)
            client_context = None
        port = listeners[0].transport_listener.socket.getsockname()[1] if tls else \
            listeners[0].socket.getsockname()[1]
        pool = ConnectionPool(Origin.from_url(f"{'https' if tls else 'http'}://localhost:{port}"),
                              max_connections=4, ssl_context=client_context)
        await nursery.start(pool.bounds.run)
        response = await pool.request(b"POST", b"/", [], b"{}", response_timeout=5)
        assert await response.read() == b"{}"
        await response.aclose()                          # kept alive: the next call reuses it
        started = trio.current_time()
        with pytest.raises(UpstreamError) as failed, trio.fail_after(5):     # fail_after: never hang the suite
            await pool.request(b"POST", b"/", [], b"{}", response_timeout=0.3)
        waited = trio.current_time() - started
        assert failed.value.timeout and "did not answer in time" in str(failed.value)
        assert 0.3 <= waited < 1.5
        assert len(received) == 2                        # not resent as if the keep-alive had gone stale
        assert not pool.bounds._open and pool._open == 0 and pool._slots.value == 4
        nursery.cancel_scope.cancel()


async def test_a_pool_whose_sweeper_is_not_running_refuses_to_call():
    """Without the sweeper a head wait would have no timeout at all."""
    from busbar.upstream import ConnectionPool, Origin

    async def vendor(stream):
        await stream.receive_some(65536)
        await stream.send_all(OK)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(trio.serve_tcp, vendor, 0)
        pool = ConnectionPool(Origin.from_url(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"))
        with pytest.raises(RuntimeError, match="not running"):
            await pool.request(b"POST", b"/", [], b"{}")
        assert pool._open == 0 and not pool.bounds._open
        nursery.cancel_scope.cancel()
