"""Issue 12: configured secret-like values (a provider's `headers:` values, a
key with limits, a password in a URL) go to the gateway's one redactor, so a
vendor that echoes them in an error (buffered, or a stream's error event
before or after content; same- and cross-protocol) shows them to nobody:
not the client, the info/debug logs, the admin API's records and events, nor
/metrics."""
from __future__ import annotations

import logging

import anthropic
import httpx
import openai
import orjson
import pytest
import trio

from busbar.server import HttpServer
from harness import gateway_with, sdk

pytestmark = pytest.mark.sdk

HEADER_SECRET = "org-tok-4f7a91c2e8d3"       # a provider `headers:` value
KEY = "sk-limited-key-5b8e2d0c9a71"          # a key given as {key:, limits:}
URL_PASSWORD = "pw-in-url-93d1e7"            # userinfo of the base_url
ADMIN_KEY = "admin-key-0123456789"
SECRETS = (HEADER_SECRET, KEY, URL_PASSWORD)
CONTENT = (b'data: {"id":"c1","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,'
           b'"delta":{"role":"assistant","content":"hello"},"finish_reason":null}]}\n\n')


def _echo_upstream(mode: str, seen: list):
    """A vendor that repeats every credential it was sent inside its error."""
    async def handle(request, responder):
        headers = dict(request.headers)
        seen.append(headers)
        echoed = (f"bad org token {headers.get(b'x-org-token', b'').decode()} for key "
                  f"{headers.get(b'authorization', b'').decode()} (basic {headers.get(b'x-basic', b'').decode()})"
                  f" {URL_PASSWORD}")
        error = orjson.dumps({"error": {"message": echoed, "type": "invalid_request_error", "code": "bad_org"}})
        if mode == "buffered":
            return await responder.send(401, [(b"content-type", b"application/json")], error)
        await responder.start(200, [(b"content-type", b"text/event-stream")])
        if mode == "mid-stream":
            await responder.write(CONTENT)
        await responder.write(b"data: " + error + b"\n\n")
        await responder.end()
    return handle


def _config(url: str) -> dict:
    host = url.removeprefix("http://")
    return {"providers": {"up": {"protocol": "openai", "base_url": f"http://user:{URL_PASSWORD}@{host}/v1",
                                 "keys": [{"key": KEY, "limits": {"rpm": 1000}}],
                                 "headers": {"X-Org-Token": HEADER_SECRET}}},
            "pools": {"p": {"members": [{"provider": "up", "model": "m"}]}},
            "admin": {"enabled": True, "key": ADMIN_KEY, "listen": "public"}}


def _call(client: str, url: str, stream: bool) -> str:
    """What the client saw: its SDK's error (message and body) or its text."""
    try:
        if client == "openai":
            c = openai.OpenAI(base_url=url + "/v1", api_key="client", max_retries=0)
            if stream:
                return "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
                    model="p", messages=[{"role": "user", "content": "x"}], stream=True) if ch.choices)
            return c.chat.completions.create(model="p", messages=[{"role": "user", "content": "x"}]).model_dump_json()
        c = anthropic.Anthropic(base_url=url, api_key="client", max_retries=0)
        if stream:
            with c.messages.stream(model="p", max_tokens=16, messages=[{"role": "user", "content": "x"}]) as s:
                return "".join(s.text_stream)
        return c.messages.create(model="p", max_tokens=16, messages=[{"role": "user", "content": "x"}]).model_dump_json()
    except (openai.APIError, anthropic.APIError) as exc:
        return f"{exc} {getattr(exc, 'body', '')}"


@pytest.mark.parametrize("client", ["openai", "anthropic"])
@pytest.mark.parametrize("mode", ["buffered", "before content", "mid-stream"])
async def test_echoed_header_values_and_keys_reach_no_one(client, mode, caplog):
    seen: list = []
    async with trio.open_nursery() as nursery:
        server = HttpServer(_echo_upstream(mode, seen))
        port = (await nursery.start(server.serve, "127.0.0.1", 0))[0][1]
        async with gateway_with(_config(f"http://127.0.0.1:{port}")) as gw:
            with caplog.at_level(logging.DEBUG):
                said = await sdk(lambda: _call(client, gw.url, mode != "buffered"))
                with trio.fail_after(5):
                    while not gw.gateway.recent_records:
                        await trio.sleep(0.01)
            async with httpx.AsyncClient(headers={"authorization": f"Bearer {ADMIN_KEY}"}) as http:
                listed = (await http.get(gw.url + "/admin/api/requests")).text
                request_id = gw.gateway.recent_records[-1].id
                detail = (await http.get(f"{gw.url}/admin/api/requests/{request_id}")).text
                state = (await http.get(gw.url + "/admin/api/state")).text
                metrics = (await http.get(gw.url + "/metrics")).text
            records = str(gw.gateway.recent)
        nursery.cancel_scope.cancel()
    # the vendor really was sent them, and really echoed them
    assert seen and seen[0][b"x-org-token"] == HEADER_SECRET.encode() and KEY in seen[0][b"authorization"].decode()
    if mode == "mid-stream":
        assert "hello" in said or "[redacted]" in said or "error" in said.lower()
    else:
        assert "bad org token" in said or "[redacted]" in said or "error" in said.lower()
    surfaces = {"client": said, "logs": caplog.text, "records": records, "admin requests": listed,
                "admin request detail": detail, "admin state": state, "metrics": metrics}
    assert "bad org token" in records + caplog.text      # the echo did arrive, and was scrubbed where it landed
    for surface, text in surfaces.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret} reached {surface}"
