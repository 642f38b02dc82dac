"""The upstream HTTP/1.1 framing agrees with h11 on random responses split
at random points, and rejects garbage."""
from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings, strategies as st

from busbar.http11 import BodyDecoder, ProtocolError, parse_head, serialize_request

pytestmark = pytest.mark.pure

header_names = st.sampled_from([b"content-type", b"x-request-id", b"retry-after", b"cache-control", b"x-a"])
header_values = st.binary(min_size=0, max_size=20).map(lambda b: bytes(c for c in b if 0x21 <= c <= 0x7e))


@st.composite
def responses(draw):
    status = draw(st.sampled_from([200, 201, 400, 401, 404, 429, 500, 503, 529]))
    headers = draw(st.lists(st.tuples(header_names, header_values), max_size=4))
    body = draw(st.binary(max_size=300))
    chunked = draw(st.booleans())
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
    conn.next_event(), conn.next_event()
    framing = [(b"transfer-encoding", b"chunked")] if chunked else [(b"content-length", str(len(body)).encode())]
    wire = conn.send(h11.Response(status_code=status, headers=headers + framing))
    if chunked:
        pieces = draw(st.lists(st.integers(1, 50), max_size=8))
        pos = 0
        for size in pieces:
            if body[pos:pos + size]:
                wire += conn.send(h11.Data(data=body[pos:pos + size]))
            pos += size
        if body[pos:]:
            wire += conn.send(h11.Data(data=body[pos:]))
    elif body:
        wire += conn.send(h11.Data(data=body))
    wire += conn.send(h11.EndOfMessage())
    return status, [(k.lower(), v) for k, v in headers], body, wire


@settings(max_examples=300, deadline=None)
@given(responses(), st.data())
def test_parser_agrees_with_h11_under_any_split(response, data):
    status, headers, body, wire = response
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    pieces = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]
    buf = b""
    head = decoder = None
    out = b""
    for piece in pieces:
        if decoder is None:
            buf += piece
            parsed = parse_head(buf)
            if parsed is None:
                continue
            head, used = parsed
            decoder = BodyDecoder(head)
            out += b"".join(decoder.feed(buf[used:]))
        else:
            out += b"".join(decoder.feed(piece))
    assert head.status == status
    assert [h for h in head.headers if h[0] not in (b"content-length", b"transfer-encoding")] == headers
    assert decoder.done and out == body and decoder.leftover == b""


@pytest.mark.parametrize("wire", [
    b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    b"HTTX/1.1 200 OK\r\n\r\n",
    b"HTTP/1.1 20 OK\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 12x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
])
def test_garbage_heads_rejected(wire):
    with pytest.raises(ProtocolError):
        parse_head(wire)


def test_bad_chunk_and_truncation():
    head, used = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    with pytest.raises(ProtocolError):
        BodyDecoder(head).feed(b"zz\r\n")
    decoder = BodyDecoder(parse_head(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")[0])
    decoder.feed(b"12345")
    with pytest.raises(ProtocolError):
        decoder.eof()


def test_close_framing_and_keep_alive():
    head, _ = parse_head(b"HTTP/1.0 200 OK\r\n\r\n")
    assert head.framing == "close" and not head.keep_alive
    head, _ = parse_head(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
    assert not head.keep_alive and head.framing == "length"


def test_serialized_request_is_valid_http():
    wire = serialize_request(b"POST", b"/v1/chat/completions", b"api.x:8080", [(b"content-type", b"application/json")],
                             b'{"a":1}')
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    request = conn.next_event()
    assert request.target == b"/v1/chat/completions" and (b"host", b"api.x:8080") in request.headers
    assert conn.next_event().data == b'{"a":1}'
    with pytest.raises(ValueError):
        serialize_request(b"POST", b"/", b"h", [(b"x", b"a\r\nevil: 1")], b"")


class _Collect:
    """A stand-in for the client socket: what the Responder writes."""

    def __init__(self):
        self.data = b""
        self.sends = 0

    async def send_all(self, data):
        self.data += data
        self.sends += 1


def _h11_client_reads(wire: bytes):
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="POST", target="/", headers=[("host", "x"), ("content-length", "0")]))
    client.send(h11.EndOfMessage())
    client.receive_data(wire)
    response, body = None, b""
    while True:
        event = client.next_event()
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return response, body, client
        else:
            raise AssertionError(f"h11 wanted more than the whole response: {event!r}")


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([200, 201, 400, 401, 404, 413, 429, 500, 502, 503, 529]),
       st.lists(st.tuples(header_names, header_values), max_size=4),
       st.one_of(st.binary(max_size=300).map(lambda b: ("send", b)),
                 st.lists(st.tuples(st.binary(max_size=60), st.booleans()), max_size=6).map(
                     lambda parts: ("stream", parts))),
       st.booleans())
def test_response_serialiser_agrees_with_h11(status, headers, body, close):
    """What `Responder` writes (buffered or chunked, keep-alive or close;
    a stream's pieces written or held for the next write or the end)
    parses in h11 to the same status, headers and body (ADR 0006), and a
    held piece costs no send of its own."""
    import trio
    from busbar.server import Responder

    out = _Collect()
    responder = Responder(out, close=close)
    responder.extra_headers = [(b"x-busbar-request-id", b"abc-1")]
    kind, payload = body

    async def write():
        if kind == "send":
            await responder.send(status, list(headers), payload)
        else:
            await responder.start(status, list(headers))
            for part, held in payload:
                if held:
                    responder.hold(part)
                else:
                    await responder.write(part)
            await responder.end()
    trio.run(write)
    response, got, client = _h11_client_reads(out.data)
    assert response.status_code == status
    expected_body = payload if kind == "send" else b"".join(part for part, _ in payload)
    assert got == expected_body
    if kind == "stream":     # the head, each non-empty written piece, the end
        assert out.sends == 2 + sum(1 for part, held in payload if part and not held)
    framing = {b"content-length", b"transfer-encoding", b"server", b"connection"}
    assert [(k, v) for k, v in response.headers if k not in framing] == \
        [(k, v) for k, v in headers] + [(b"x-busbar-request-id", b"abc-1")]
    if close:
        assert (b"connection", b"close") in response.headers
    else:
        assert client.their_state is h11.DONE
        client.start_next_cycle()     # keep-alive: the connection is reusable


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(header_names, header_values), max_size=5), st.integers(0, 5))
def test_a_header_block_is_the_same_bytes_as_its_pairs(headers, at):
    """A provider's fixed headers rendered once (`header_block`) and spliced
    into a request write the same request as the pairs checked per call."""
    from busbar.http11 import header_block
    at = min(at, len(headers))
    spliced = headers[:at] + [header_block(headers[at:])]
    assert serialize_request(b"POST", b"/v1/x", b"h", spliced, b"{}") == \
        serialize_request(b"POST", b"/v1/x", b"h", headers, b"{}")


def test_a_provider_with_an_unsafe_extra_header_still_refuses_it_per_request():
    from busbar.http11 import UnsafeRequest, header_block
    with pytest.raises(UnsafeRequest):
        header_block([(b"x-ok", b"1"), (b"x-bad", b"a\r\nevil: 1")])
    from busbar.providers import Provider
    bad = Provider("p", "openai", None, None,
                   [(b"x-bad", b"a\r\nevil: 1")], [])
    assert bad.fixed_heads is None
    good = Provider("p", "openai", None, None, [(b"x-extra", b"1")], [])
    assert good.fixed_heads[0] == b"content-type: application/json\r\naccept: application/json\r\nx-extra: 1\r\n"
    assert good.fixed_heads[1].startswith(b"content-type: application/json\r\naccept: text/event-stream\r\n")
    assert Provider("p", "bedrock", None, None, [], [], signer=object()).fixed_heads is None   # SigV4 signs pairs
