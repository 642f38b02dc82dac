"""The server answers the same with either request parser (ADR 0023): the
hostile corpus of tests/test_http_in.py, sent over real sockets (whole, and
in pieces) to one gateway per `server.http_parser`, gets byte-identical
answers (inputs under 16 KiB): the same responses in the same order (status lines and header
names; whole bodies for successes: an error's message may quote the bytes
h11 had when it refused, which depends on how TCP cut them), then the close."""
from __future__ import annotations

import re

import pytest
import trio

# a worktree whose venv predates the dependency: `pip install -e .` brings it
pytest.importorskip("httptools", reason="httptools (a dependency since ADR 0023) is not installed")

from busbar.mock import MockVendor  # noqa: E402
from harness import gateway_with  # noqa: E402
from test_http_in import CORPUS  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the probe after each input: answered if the input left the connection usable
PROBE = b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


def config(parser: str) -> dict:
    return {"server": {"http_parser": parser, "max_body_bytes": 4096, "header_timeout": 2},
            "providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
            "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}}}


async def exchange(port: int, pieces: list[bytes]) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    out = b""
    try:
        for piece in pieces:
            await stream.send_all(piece)
        await stream.send_all(PROBE)
        with trio.move_on_after(30):
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    break
                out += data
    except trio.BrokenResourceError:
        pass        # the server closed while we were still sending (e.g. after a 413)
    finally:
        await stream.aclose()
    return summary(out)


def summary(wire: bytes) -> list:
    """The responses on a connection: status line, header names (values of
    the framing and connection ones) and, for a 2xx, the body."""
    out = []
    while wire:
        head, sep, wire = wire.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = [line.split(b":", 1) for line in lines[1:]]
        names = [n.lower() if n.lower() not in (b"connection", b"transfer-encoding") else n.lower() + b":" + v
                 for n, v in headers]
        length = next((int(v) for n, v in headers if n.lower() == b"content-length"), len(wire))
        body, wire = wire[:length], wire[length:]
        if lines[0][9:10] == b"2":
            # a model list says when its gateway started: two gateways, two seconds apart maybe
            body = re.sub(rb'"created":\d+', b'"created":0', body)
        else:
            body = None
        out.append((lines[0], names, body))
        if not sep:
            break
    return out


async def test_either_parser_gives_the_same_answers():
    vendor = MockVendor()
    async with gateway_with(config("httptools"), a=vendor) as fast, gateway_with(config("h11"), a=vendor) as ref:
        assert type(fast.server.parser()).__name__ == "FastParser"
        assert type(ref.server.parser()).__name__ == "H11Parser"
        served = 0
        for name, data in sorted(CORPUS.items()):
            if len(data) > 16384:
                continue    # past 64 KiB h11's answer depends on how TCP cut the head (the pure test fixes the cuts)
            for pieces in ([data], [data[:len(data) // 2], data[len(data) // 2:]]):
                pieces = [p for p in pieces if p]
                async with trio.open_nursery() as nursery:
                    answers = {}

                    async def run(label, port):
                        answers[label] = await exchange(port, pieces)
                    nursery.start_soon(run, "fast", fast.port)
                    nursery.start_soon(run, "h11", ref.port)
                assert answers["fast"] == answers["h11"], (name, answers)
                served += sum(1 for _, _, body in answers["h11"] if body == b'{"status":"ok"}')
        assert served > 20      # the probe got through after many inputs: the comparison covers keep-alive too
