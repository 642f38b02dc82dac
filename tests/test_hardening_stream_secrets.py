"""Issue 12: a vendor stream that echoes the key never shows it to the
client (before content and mid-stream, same- and cross-protocol), and a
stream that never carries content is bounded and fails over."""
from __future__ import annotations

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from busbar.server import HttpServer
from harness import gateway_with

pytestmark = pytest.mark.integration

KEY = "sk-vendor-secret-0123456789"
CONTENT = b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"hello"},"finish_reason":null}]}\n\n'
ERROR = ('data: {"error":{"message":"Incorrect API key provided: ' + KEY + '","type":"invalid_request_error",'
         '"code":"invalid_api_key"}}\n\n').encode()


def _upstream(script):
    async def handle(request, responder):
        await responder.start(200, [(b"content-type", b"text/event-stream")])
        for piece in script:
            if piece is None:
                while True:
                    await responder.write(b": " + b"p" * 16384 + b"\n\n")
                    await trio.sleep(0.001)
            await responder.write(piece)
        await responder.end()
    return handle


async def _serve_upstream(nursery, script) -> str:
    server = HttpServer(_upstream(script))
    addrs = await nursery.start(server.serve, "127.0.0.1", 0)
    return f"http://127.0.0.1:{addrs[0][1]}/v1"


def _config(url, extra_members=()):
    return {"providers": {"up": {"protocol": "openai", "base_url": url, "key": KEY},
                          "good": {"protocol": "openai", "base_url": "{good}/v1", "key": "k-good"}},
            "pools": {"p": {"strategy": "ordered", "members": [{"provider": "up", "model": "m", "priority": 0},
                                                                *extra_members]}}}


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("when", ["mid-stream", "before content"])
async def test_streamed_error_echoing_the_key_is_redacted(client, when):
    script = [CONTENT, ERROR] if when == "mid-stream" else [ERROR]
    async with trio.open_nursery() as nursery:
        url = await _serve_upstream(nursery, script)
        async with gateway_with(_config(url), good=MockVendor()) as gw:
            async with httpx.AsyncClient(timeout=60) as http:
                if client == "openai":
                    r = await http.post(gw.url + "/v1/chat/completions", json={
                        "model": "p", "stream": True, "messages": [{"role": "user", "content": "x"}]})
                else:
                    r = await http.post(gw.url + "/v1/messages", json={
                        "model": "p", "stream": True, "max_tokens": 10,
                        "messages": [{"role": "user", "content": "x"}]})
                admin_view = [record.as_dict() for record in gw.gateway.recent_records]
        nursery.cancel_scope.cancel()
    assert KEY not in r.text
    assert "Incorrect API key" in r.text or r.status_code >= 400
    assert KEY not in str(admin_view)


async def test_a_stream_without_content_is_bounded_and_fails_over():
    async with trio.open_nursery() as nursery:
        url = await _serve_upstream(nursery, [None])      # 16 KiB comments forever
        config = _config(url, [{"provider": "good", "model": "g", "priority": 1}])
        async with gateway_with(config, good=MockVendor(reply="from the healthy member")) as gw:
            async with httpx.AsyncClient(timeout=60) as http:
                r = await http.post(gw.url + "/v1/chat/completions", json={
                    "model": "p", "stream": True, "messages": [{"role": "user", "content": "x"}]})
            record = gw.gateway.recent_records[-1]
        nursery.cancel_scope.cancel()
    assert r.status_code == 200 and "healthy" in r.text
    assert record.attempts[0].outcome == "server" and "before any content" in record.attempts[0].message
