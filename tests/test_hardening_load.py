"""Issue 12, load shedding over real sockets: a global concurrency limit and
each pool's share of it (503 + Retry-After in the client's protocol, never a
queue), the upstream slot wait as saturation (fail over, unblamed),
`max_client_connections` at accept, a burst of newcomers accepted together,
`header_timeout` for new connections."""
from __future__ import annotations

import socket

import orjson
import pytest
import trio

from busbar.mock import MockVendor
from busbar.server import HttpServer
from harness import gateway_with, sdk

pytestmark = pytest.mark.integration

CHAT = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]}'


def _post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" + extra +
            b"content-length: %d\r\n\r\n" % len(body) + body)


async def _exchange(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send one request on a new connection; the whole answer (head + body)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await stream.send_all(data)
        return await _read_answer(stream, timeout)
    finally:
        await stream.aclose()


async def _read_answer(stream, timeout: float = 20) -> bytes:
    out = b""
    with trio.fail_after(timeout):
        while True:
            head, sep, rest = out.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                               if line.startswith(b"content-length:")), None)
                if length is not None and len(rest) >= length:
                    return out
            data = await stream.receive_some(65536)
            if not data:
                return out
            out += data


async def _read_until_closed(stream, timeout: float = 20) -> bytes:
    out = b""
    with trio.fail_after(timeout):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return out
            if not data:
                return out
            out += data


def _header(answer: bytes, name: bytes) -> bytes | None:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def _record(gw, request_id: str) -> dict:
    await _wait_for(lambda: any(r.id == request_id for r in gw.gateway.recent_records))
    return next(r.as_dict() for r in gw.gateway.recent_records if r.id == request_id)


async def _wait_for(predicate, timeout: float = 10) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# ---- the global limit and each pool's share -------------------------------

LIMITED = {"server": {"max_concurrent_requests": 2, "pool_share": 1},
           "providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"},
                         "b": {"protocol": "anthropic", "base_url": "{b}", "key": "k"}},
           "pools": {"slow": {"members": [{"provider": "a", "model": "m"}]},
                     "claude": {"members": [{"provider": "b", "model": "c"}]}}}


@pytest.mark.slow
async def test_over_the_concurrency_limit_clients_get_503_with_retry_after_in_their_protocol():
    import anthropic
    import openai
    async with gateway_with(LIMITED, a=MockVendor(latency=3), b=MockVendor()) as gw:
        async with trio.open_nursery() as nursery:
            for _ in range(2):       # the two slots, held by slow requests
                nursery.start_soon(_exchange, gw.port, _post(b"/v1/chat/completions", CHAT % b"slow"))
            await _wait_for(lambda: gw.server.active_requests == 2)

            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk(lambda: client.chat.completions.create(
                    model="slow", messages=[{"role": "user", "content": "hi"}]))
            assert caught.value.status_code == 503
            assert caught.value.response.headers["retry-after"] == "1"
            assert "concurrency limit" in caught.value.message

            claude = anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0)
            with pytest.raises(anthropic.APIStatusError) as caught:
                await sdk(lambda: claude.messages.create(model="claude", max_tokens=10,
                                                         messages=[{"role": "user", "content": "hi"}]))
            assert caught.value.status_code == 503
            assert caught.value.response.headers["retry-after"] == "1"
            assert caught.value.body["type"] == "error"          # Anthropic's own error shape
            assert gw.server.shed_requests == 2
        # the slots came back: served again
        answer = await _exchange(gw.port, _post(b"/v1/messages", b'{"model":"claude","max_tokens":5,'
                                                b'"messages":[{"role":"user","content":"hi"}]}'))
        assert answer.startswith(b"HTTP/1.1 200")


SHARED = {"server": {"max_concurrent_requests": 4, "pool_share": 0.5},
          "providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"},
                        "b": {"protocol": "openai", "base_url": "{b}/v1", "key": "k"}},
          "pools": {"flood": {"members": [{"provider": "a", "model": "m"}]},
                    "other": {"members": [{"provider": "b", "model": "m"}]}}}


@pytest.mark.slow
async def test_one_pools_flood_cannot_take_every_slot():
    async with gateway_with(SHARED, a=MockVendor(latency=3), b=MockVendor()) as gw:
        async with trio.open_nursery() as nursery:
            for _ in range(2):       # the flood pool's share: 0.5 x 4
                nursery.start_soon(_exchange, gw.port, _post(b"/v1/chat/completions", CHAT % b"flood"))
            await _wait_for(lambda: gw.app.shares.held.get("flood") == 2)
            refused = await _exchange(gw.port, _post(b"/v1/chat/completions", CHAT % b"flood"))
            assert refused.startswith(b"HTTP/1.1 503") and _header(refused, b"retry-after") == b"1"
            error = orjson.loads(refused.partition(b"\r\n\r\n")[2])["error"]
            assert "share" in error["message"] and error["type"] == "server_error"
            # the other pool still has the rest of the gateway
            served = await _exchange(gw.port, _post(b"/v1/chat/completions", CHAT % b"other"))
            assert served.startswith(b"HTTP/1.1 200")
        assert gw.app.shares.held == {}


# ---- the upstream slot wait -------------------------------------------------

SLOTS = {"server": {"slot_wait": 0.2},
         "providers": {"busy": {"protocol": "openai", "base_url": "{busy}/v1", "key": "k", "max_connections": 1},
                       "spare": {"protocol": "openai", "base_url": "{spare}/v1", "key": "k"}},
         "pools": {"p": {"strategy": "ordered",
                         "members": [{"provider": "busy", "model": "m", "priority": 0},
                                     {"provider": "spare", "model": "m", "priority": 1}]},
                   "only": {"members": [{"provider": "busy", "model": "m"}]}}}


@pytest.mark.slow
async def test_a_full_upstream_slot_is_saturation_the_request_fails_over_unblamed():
    import openai
    async with gateway_with(SLOTS, busy=MockVendor(latency=3), spare=MockVendor()) as gw:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_exchange, gw.port, _post(b"/v1/chat/completions", CHAT % b"only"))
            await _wait_for(lambda: len(gw.vendors["busy"].received) == 1)   # busy's one slot is taken

            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0)
            raw = await sdk(lambda: client.chat.completions.with_raw_response.create(
                model="p", messages=[{"role": "user", "content": "hi"}]))
            assert raw.headers["x-busbar-member"] == "p/spare/m"
            record = await _record(gw, raw.headers["x-busbar-request-id"])
            assert [a["outcome"] for a in record["attempts"]] == ["saturated", "ok"]

            # a pool whose every member is saturated: 503 + Retry-After, not a wait to the deadline
            with pytest.raises(openai.InternalServerError) as caught:
                await sdk(lambda: client.chat.completions.create(
                    model="only", messages=[{"role": "user", "content": "hi"}]))
            assert caught.value.status_code == 503
            assert caught.value.response.headers["retry-after"] == "1"
            assert "busy" in caught.value.message
            # busy, not broken: no breaker failure, the member still routable
            target = gw.gateway.router.targets[("busy", "m")]
            assert target.breaker.state.value == "closed" and target.breaker.consecutive == 0
        assert len(gw.vendors["busy"].received) == 1     # the saturated attempts never reached it


# ---- connections -------------------------------------------------------------

CONNS = {"server": {"max_client_connections": 3, "header_timeout": 5},
         "providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
         "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}}}
HEALTH = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"


async def test_over_max_client_connections_a_newcomer_gets_503_and_is_closed():
    async with gateway_with(CONNS, a=MockVendor()) as gw:
        held = [await trio.open_tcp_stream("127.0.0.1", gw.port) for _ in range(3)]
        await _wait_for(lambda: gw.server.active_connections == 3)
        newcomer = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await newcomer.send_all(_post(b"/v1/messages", b"{}"))
        answer = await _read_until_closed(newcomer, timeout=10)     # answered and closed, not left hanging
        assert answer.startswith(b"HTTP/1.1 503") and _header(answer, b"retry-after") == b"1"
        assert b'"type":"error"' in answer       # the path's protocol (Anthropic's error shape)
        assert gw.server.shed_connections == 1
        for stream in held:
            await stream.aclose()


async def test_over_max_client_connections_idle_keepalives_make_room_oldest_first():
    async with gateway_with(CONNS, a=MockVendor()) as gw:
        idle = []
        for _ in range(3):      # each served once, now waiting for a next request
            stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
            await stream.send_all(HEALTH)
            assert (await _read_answer(stream)).startswith(b"HTTP/1.1 200")
            idle.append(stream)
            await trio.sleep(0.01)
        newcomer = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await newcomer.send_all(HEALTH)
        assert (await _read_answer(newcomer)).startswith(b"HTTP/1.1 200")
        assert await _read_until_closed(idle[0], timeout=10) == b""      # the oldest idle one was closed
        await idle[1].send_all(HEALTH)                                 # the others still serve
        assert (await _read_answer(idle[1])).startswith(b"HTTP/1.1 200")
        assert gw.server.shed_connections == 0
        for stream in idle[1:] + [newcomer]:
            await stream.aclose()


async def test_connections_waiting_in_the_backlog_are_all_taken_at_one_wake_up():
    """A burst of newcomers is accepted together, not one per scheduler
    round: under load a round lasts as long as every busy connection's step,
    and one accept per round left the last of 128 new connections waiting
    seconds for their first byte (ADR 0014, session 7)."""
    async def answer(request, responder):
        await responder.send(200, [(b"content-type", b"text/plain")], b"ok")

    server = HttpServer(answer)
    rounds = 0
    clients = []
    async with trio.open_nursery() as nursery:
        port = (await nursery.start(server.serve, "127.0.0.1", 0))[0][1]
        for _ in range(32):          # all in the kernel's backlog before the server runs again
            clients.append(socket.create_connection(("127.0.0.1", port)))
        with trio.fail_after(5):
            while server.active_connections < 32:
                await trio.sleep(0)      # one scheduler round of a busy server
                rounds += 1
        assert rounds <= 4, f"32 waiting connections took {rounds} scheduler rounds to accept"
        for client in clients:
            client.sendall(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
        with trio.fail_after(5):
            for client in clients:
                client.setblocking(False)
                answer_bytes = b""
                while b"ok" not in answer_bytes:
                    try:
                        answer_bytes += client.recv(4096)
                    except BlockingIOError:
                        await trio.sleep(0.001)
                assert answer_bytes.startswith(b"HTTP/1.1 200")
                client.close()
        nursery.cancel_scope.cancel()


TIMEOUTS = {"server": {"header_timeout": 0.3, "keepalive_timeout": 60},
            "providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
            "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}}}


@pytest.mark.parametrize("sent", [b"", b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n"])
async def test_a_new_connection_that_sends_nothing_or_part_of_a_head_gets_408_after_header_timeout(sent):
    async with gateway_with(TIMEOUTS, a=MockVendor()) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        if sent:
            await stream.send_all(sent)
        answer = await _read_until_closed(stream, timeout=10)      # not keepalive_timeout (60 s)
        assert answer.startswith(b"HTTP/1.1 408") and b"connection: close" in answer
        assert gw.server.active_connections == 0
