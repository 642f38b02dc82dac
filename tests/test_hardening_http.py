"""Issue 12, low items: HTTP/1.1 correctness of the client-facing server,
over raw sockets (HEAD, CL+TE, Expect, HTTP/1.0, absolute-form, 413 drain,
non-UTF-8 admin key, an HTTP/2 prior-knowledge preface)."""
from __future__ import annotations

import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with

pytestmark = pytest.mark.integration

CONFIG = {"server": {"max_body_bytes": 4096},
          "providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
          "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}},
          "admin": {"enabled": True, "key": "admin-key-1", "usage_db": "off"}}
CHAT = b'{"model":"p","messages":[{"role":"user","content":"hi"}]}'


async def _read_all(stream, timeout=20) -> bytes:
    """Everything until the server closes."""
    out = b""
    with trio.move_on_after(timeout):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                break
            out += data
    return out


async def _read_until(stream, marker: bytes, timeout=20) -> bytes:
    out = b""
    with trio.fail_after(timeout):
        while marker not in out:
            data = await stream.receive_some(65536)
            assert data, f"closed before {marker!r}: {out!r}"
            out += data
    return out


async def _connect(gw):
    return await trio.open_tcp_stream("127.0.0.1", gw.port)


async def test_head_has_no_body_and_the_connection_stays_in_sync():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        await stream.send_all(b"HEAD /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        data = await _read_until(stream, b'{"status":"ok"}')
        first, _, rest = data.partition(b"\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 200") and b"content-length: 15" in first.lower()
        assert rest.startswith(b"HTTP/1.1 200")          # no HEAD body before the second answer
        await stream.aclose()


async def test_content_length_with_transfer_encoding_closes_the_connection():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        body = b"5\r\nhello\r\n0\r\n\r\n"
        smuggled = b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n"
        await stream.send_all(b"POST /healthz HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n"
                              b"transfer-encoding: chunked\r\n\r\n" % len(body) + body + smuggled)
        data = await _read_all(stream)
        assert data.count(b"HTTP/1.1 ") == 1 and b"connection: close" in data.lower()


async def test_expect_100_continue_is_answered_before_the_body():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(CHAT))
        assert (await _read_until(stream, b"\r\n\r\n")).startswith(b"HTTP/1.1 100 Continue")
        await stream.send_all(CHAT)
        assert b"HTTP/1.1 200" in await _read_until(stream, b"}]")
        await stream.aclose()


async def test_http10_client_gets_an_unchunked_stream_ended_by_close():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        body = CHAT[:-1] + b',"stream":true}'
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.0\r\ncontent-type: application/json\r\n"
                              b"content-length: %d\r\n\r\n" % len(body) + body)
        data = await _read_all(stream)
        head, _, payload = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
        assert payload.startswith(b"data: ") and payload.rstrip().endswith(b"data: [DONE]")


async def test_absolute_form_target_is_routed_by_its_path():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        await stream.send_all(b"POST http://gateway.test/v1/chat/completions HTTP/1.1\r\nhost: gateway.test\r\n"
                              b"content-type: application/json\r\nconnection: close\r\n"
                              b"content-length: %d\r\n\r\n" % len(CHAT) + CHAT)
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 200")


async def test_non_utf8_admin_key_is_refused_not_crashed():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        for query in (b"key=%ff%fe", b"key=\xff\xfe", b"key=admin-key-1%80"):
            stream = await _connect(gw)
            await stream.send_all(b"GET /admin/api/state?" + query + b" HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = await _read_all(stream)
            assert answer.startswith((b"HTTP/1.1 401", b"HTTP/1.1 400")), (query, answer[:200])
        stream = await _connect(gw)
        await stream.send_all(b"GET /admin/api/state?key=admin-key-1 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 200")


async def test_a_naive_sender_of_a_too_large_body_reads_the_413():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        body = b"x" * 300_000
        # the whole body is written before reading (as naive clients do)
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"content-length: %d\r\n\r\n" % len(body) + body)
        data = await _read_all(stream)
        assert data.startswith(b"HTTP/1.1 413")


async def test_http2_prior_knowledge_gets_goaway_http_1_1_required():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = await _read_all(stream)
    frames = []
    while len(data) >= 9:
        length, kind = int.from_bytes(data[:3], "big"), data[3]
        frames.append((kind, data[9:9 + length]))
        data = data[9 + length:]
    assert [kind for kind, _ in frames] == [0x4, 0x7]          # SETTINGS, GOAWAY
    goaway = frames[1][1]
    assert int.from_bytes(goaway[4:8], "big") == 0xD and b"HTTP/1.1" in goaway[8:]


async def test_a_request_whose_first_segment_is_a_lone_p_is_http1_not_http2():
    # "P" is a prefix of the h2 preface and of POST: a client writing byte by byte is served
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await _connect(gw)
        await stream.send_all(b"P")
        await trio.sleep(0.05)
        await stream.send_all(b"OST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(CHAT) + CHAT)
        assert (await _read_all(stream)).startswith(b"HTTP/1.1 200")
