"""The passthrough guard (issue 12, ADR 0009): the body fields the gateway
relies on are checked by JSON type before anything is routed, so a
same-protocol body (forwarded as sent) cannot make a lenient vendor answer in
a shape the gateway does not expect and blame a healthy member.  Official
SDKs never send these bodies (their types forbid it), so raw HTTP plays the
misbehaving client."""
from __future__ import annotations

import httpx
import orjson
import pytest
import trio

from busbar.server import HttpServer
from harness import gateway_with

pytestmark = pytest.mark.integration

CHUNK = (b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
         b'"delta":{"content":"streamed"},"finish_reason":null}]}\n\ndata: [DONE]\n\n')
ANSWER = orjson.dumps({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": "buffered"},
                                    "finish_reason": "stop"}]})


def _lenient(seen: list):
    """A vendor that streams whenever `stream` is truthy, as a lenient one does."""
    async def handle(request, responder):
        body = orjson.loads(request.body)
        seen.append(body)
        if body.get("stream"):
            await responder.start(200, [(b"content-type", b"text/event-stream")])
            await responder.write(CHUNK)
            return await responder.end()
        await responder.send(200, [(b"content-type", b"application/json")], ANSWER)
    return handle


USER = [{"role": "user", "content": "hi"}]
# (path, body, the field named, how the protocol's error says which)
CASES = [
    ("/v1/chat/completions", {"model": "p", "stream": "yes", "messages": USER}, "stream"),
    ("/v1/chat/completions", {"model": "p", "messages": {"role": "user", "content": "hi"}}, "messages"),
    ("/v1/chat/completions", {"model": ["p"], "messages": USER}, "model"),
    ("/v1/messages", {"model": "p", "max_tokens": "16", "messages": USER}, "max_tokens"),
    ("/v1/messages", {"model": "p", "max_tokens": 16, "stream": 1, "messages": USER}, "stream"),
    ("/v1/responses", {"model": "p", "input": 42}, "input"),
    ("/v2/chat", {"model": "p", "stream": "true", "messages": USER}, "stream"),
    ("/v1beta/models/p:generateContent", {"contents": {"role": "user", "parts": [{"text": "hi"}]}}, "contents"),
    ("/model/p/converse", {"messages": {"role": "user"}}, "messages"),
]


@pytest.mark.parametrize("path,body,field", CASES, ids=[f"{c[0]}:{c[2]}" for c in CASES])
async def test_a_field_of_the_wrong_type_is_a_400_before_any_member(path, body, field):
    seen: list = []
    async with trio.open_nursery() as nursery:
        server = HttpServer(_lenient(seen))
        port = (await nursery.start(server.serve, "127.0.0.1", 0))[0][1]
        config = {"providers": {"up": {"protocol": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "key": "k"}},
                  "pools": {"p": {"members": [{"provider": "up", "model": "m"}]}}}
        async with gateway_with(config) as gw:
            async with httpx.AsyncClient() as http:
                r = await http.post(gw.url + path, content=orjson.dumps(body),
                                    headers={"content-type": "application/json"})
            record = gw.gateway.recent[-1]
            breaker = {f"{p}/{m}": t.breaker.state for (p, m), t in gw.gateway.router.targets.items()}
        nursery.cancel_scope.cancel()
    assert r.status_code == 400, r.text
    assert f"`{field}` must be" in r.text, r.text
    assert not seen and record["attempts"] == []          # no member asked, none blamed
    assert set(breaker.values()) == {"closed"}


async def test_right_types_and_nulls_pass():
    seen: list = []
    async with trio.open_nursery() as nursery:
        server = HttpServer(_lenient(seen))
        port = (await nursery.start(server.serve, "127.0.0.1", 0))[0][1]
        config = {"providers": {"up": {"protocol": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "key": "k"}},
                  "pools": {"p": {"members": [{"provider": "up", "model": "m"}]}}}
        async with gateway_with(config) as gw:
            async with httpx.AsyncClient() as http:
                streamed = await http.post(gw.url + "/v1/chat/completions",
                                           json={"model": "p", "stream": True, "messages": USER})
                nulls = await http.post(gw.url + "/v1/chat/completions",
                                        json={"model": "p", "stream": None, "tools": None, "messages": USER})
        nursery.cancel_scope.cancel()
    assert streamed.status_code == 200 and "streamed" in streamed.text
    assert nulls.status_code == 200 and orjson.loads(nulls.content)["choices"][0]["message"]["content"] == "buffered"
    assert len(seen) == 2
