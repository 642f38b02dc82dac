"""The connection's reader and its lazy client watch (engine/server.py
`_Reader`, ADR 0014 session 6): the connection task reads its own socket; a
request handled longer than WATCH_AFTER wakes the watcher, which reads on
its behalf, so a client that leaves cancels the request and what it sent
meanwhile (a pipelined request) is kept for the connection, bounded."""
from __future__ import annotations

import ssl

import pytest
import trio
import trio.testing
import trustme

from busbar import server as server_module
from busbar.mock import MockVendor
from busbar.server import WATCH_AFTER, HttpServer, LongRequests, _Reader
from harness import gateway_with, last_record


def _reader(stream, limit: int = 1 << 20) -> _Reader:
    return _Reader(stream, limit, LongRequests())


async def _with_watcher(reader: _Reader, body):
    with trio.fail_after(60):       # virtual time (autojump): a missed cancel fails instead of hanging
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader.run_watcher)
            nursery.start_soon(reader.long.run)       # the server's sweep
            await body()
            nursery.cancel_scope.cancel()


@pytest.mark.pure
async def test_a_request_shorter_than_the_watch_delay_wakes_nobody(autojump_clock):
    client, ours = trio.testing.memory_stream_pair()
    reader = _reader(ours)

    async def body():
        with trio.CancelScope() as scope:
            reader.watch(scope)
            await client.send_all(b"next request")
            await trio.sleep(WATCH_AFTER)        # at most one sweep passes: it is not watched yet
            reader.unwatch()
        assert not reader.buffer and not scope.cancel_called     # nobody read for it
        await trio.sleep(WATCH_AFTER * 4)                           # the timer was lifted: still nobody
        assert not reader.buffer
        assert await reader.read() == b"next request"                # the connection reads it itself

    await _with_watcher(reader, body)


@pytest.mark.pure
async def test_a_long_request_is_watched_its_client_leaving_cancels_it(autojump_clock):
    client, ours = trio.testing.memory_stream_pair()
    reader = _reader(ours)

    async def body():
        with trio.CancelScope() as scope:
            reader.watch(scope)
            await trio.sleep(WATCH_AFTER * 2)
            await client.send_all(b"pipelined")
            await trio.sleep(0.01)
            assert bytes(reader.buffer) == b"pipelined"           # read on the request's behalf
            await client.aclose()
            await trio.sleep_forever()                            # the handler, waiting on its upstream
        assert scope.cancelled_caught and reader.eof
        reader.unwatch()
        assert await reader.read() == b"pipelined"                # what came before the close is kept
        assert await reader.read() == b""

    await _with_watcher(reader, body)


@pytest.mark.pure
async def test_after_a_watched_request_the_connection_reads_again_and_the_watch_rearms(autojump_clock):
    client, ours = trio.testing.memory_stream_pair()
    reader = _reader(ours)

    async def body():
        for turn in range(3):
            with trio.CancelScope() as scope:
                reader.watch(scope)
                await trio.sleep(WATCH_AFTER * 3)                 # the watcher is now reading
                reader.unwatch()
            assert not scope.cancel_called
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.send_all, b"request %d" % turn)
                # straight after unwatch: the watcher gives the socket back
                # before the connection reads it (else BusyResourceError)
                assert await reader.read() == b"request %d" % turn
        with trio.CancelScope() as scope:
            reader.watch(scope)
            await client.aclose()
            await trio.sleep_forever()
        assert scope.cancelled_caught                             # the fourth watch still works

    await _with_watcher(reader, body)


@pytest.mark.pure
async def test_read_ahead_is_bounded_and_the_rest_waits_in_the_stream(autojump_clock):
    client, ours = trio.testing.memory_stream_pair()
    limit = 1000
    reader = _reader(ours, limit)
    sent = bytes(range(256)) * (server_module.READ_SIZE // 64)    # four reads' worth, far past the limit

    async def body():
        async def send():
            await client.send_all(sent)
        with trio.CancelScope() as scope:
            reader.watch(scope)
            async with trio.open_nursery() as senders:
                senders.start_soon(send)
                await trio.sleep(WATCH_AFTER * 4)
                held = len(reader.buffer)
                assert limit <= held < limit + server_module.READ_SIZE
                assert held < len(sent)
                reader.unwatch()
                got = b""
                while len(got) < len(sent):
                    got += await reader.read()
        assert got == sent                                        # in order, nothing lost or doubled

    await _with_watcher(reader, body)


@pytest.mark.pure
async def test_an_unwatch_racing_the_timer_leaves_the_socket_to_the_connection(autojump_clock):
    """The sweep wakes the watcher, but the request ends before the watcher
    runs: the watcher must not start reading beside the connection task."""
    client, ours = trio.testing.memory_stream_pair()
    reader = _reader(ours)

    async def body():
        with trio.CancelScope() as scope:
            reader.watch(scope)
            reader.long.sweep()
            reader.long.sweep()             # a whole sweep later: the watcher is woken, not yet run
            reader.unwatch()
        async with trio.open_nursery() as nursery:
            async def late():
                await trio.sleep(0.01)
                await client.send_all(b"x")
            nursery.start_soon(late)
            assert await reader.read() == b"x"      # would raise BusyResourceError were both reading
        assert not scope.cancel_called

    await _with_watcher(reader, body)


CONFIG = {"providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
          "pools": {"smart": {"members": [{"provider": "a", "model": "m"}]}}}
BODY = b'{"model":"smart","messages":[{"role":"user","content":"x"}]}'
REQUEST = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
           b"content-length: %d\r\n\r\n" % len(BODY) + BODY)


async def _answers(stream, count: int) -> list[bytes]:
    """`count` content-length framed answers off one stream."""
    data, answers = b"", []
    while len(answers) < count:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            head = data[:end].lower()
            length = int(head.split(b"content-length: ", 1)[1].split(b"\r\n", 1)[0])
            if len(data) >= end + 4 + length:
                answers.append(data[:end + 4 + length])
                data = data[end + 4 + length:]
                continue
        piece = await stream.receive_some(65536)
        assert piece, f"the connection closed after {len(answers)} of {count} answers"
        data += piece
    return answers


@pytest.mark.integration
@pytest.mark.parametrize("latency", [0, WATCH_AFTER * 4])
async def test_pipelined_requests_are_answered_in_order_on_one_connection(latency):
    """A quick first request leaves the second in the socket; a slow one has
    the watcher read it while the first is handled (both are answered)."""
    vendor = MockVendor(latency=latency)
    async with gateway_with(CONFIG, a=vendor) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        with trio.fail_after(10):
            await stream.send_all(REQUEST * 3)
            answers = await _answers(stream, 3)
        assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
        assert len(vendor.received) == 3
        await stream.aclose()


@pytest.mark.integration
async def test_a_pipelined_request_sent_mid_answer_is_served_next():
    vendor = MockVendor(latency=WATCH_AFTER * 4)
    async with gateway_with(CONFIG, a=vendor) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        with trio.fail_after(10):
            await stream.send_all(REQUEST)
            while not vendor.received:
                await trio.sleep(0.005)
            await trio.sleep(WATCH_AFTER * 1.5)         # the watcher is reading by now
            await stream.send_all(REQUEST)
            answers = await _answers(stream, 2)
        assert [a[:12] for a in answers] == [b"HTTP/1.1 200"] * 2
        assert len(vendor.received) == 2


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    where = tmp_path_factory.mktemp("tls-watch")
    chain, key = where / "chain.pem", where / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return str(chain), str(key), client


@pytest.mark.integration
async def test_a_client_leaving_a_long_request_over_tls_cancels_its_upstream_call(tls_files):
    """The watcher reads through TLS (test_gateway_bad_input has the plain case)."""
    chain, key, client_context = tls_files
    vendor = MockVendor(latency=10)
    async with gateway_with(dict(CONFIG, server={"tls": {"cert": chain, "key": key}}), a=vendor) as gw:
        stream = trio.SSLStream(await trio.open_tcp_stream("127.0.0.1", gw.port), client_context,
                                server_hostname="127.0.0.1")
        await stream.send_all(REQUEST)
        with trio.fail_after(5):
            while not vendor.received:
                await trio.sleep(0.01)
        await stream.aclose()
        with trio.fail_after(2):           # far sooner than the vendor's 10 s
            while gw.gateway.in_flight:
                await trio.sleep(0.01)
        record = await last_record(gw)
        assert record["state"] == "failed"
        assert record["attempts"][0]["outcome"] == "cancelled"


@pytest.mark.integration
async def test_a_raw_server_handler_outlasting_the_watch_sees_its_client_leave():
    """The server alone: a handler that never ends is cancelled once its client closes."""
    ended = trio.Event()

    async def forever(request, responder):
        try:
            await trio.sleep_forever()
        finally:
            ended.set()

    server = HttpServer(forever)
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(server.serve, "127.0.0.1", 0))[0][1]
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        await trio.sleep(WATCH_AFTER * 2)
        assert not ended.is_set()
        await stream.aclose()
        with trio.fail_after(2):
            await ended.wait()
        nursery.cancel_scope.cancel()
