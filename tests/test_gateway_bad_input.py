"""Bad input gets a clear error in the caller's own protocol and never
crashes the gateway or penalises a backend."""
from __future__ import annotations

import httpx
import openai
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with, last_record, sdk

CONFIG = {
    "server": {"max_body_bytes": 4096, "header_timeout": 0.5},
    "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk"},
                  "ant": {"protocol": "anthropic", "base_url": "{a}", "key": "ak"}},
    "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt"}]},
              "claude": {"members": [{"provider": "ant", "model": "c"}]}},
}


async def post(url, path, content, content_type="application/json"):
    async with httpx.AsyncClient() as client:
        return await client.post(url + path, content=content, headers={"content-type": content_type})


@pytest.mark.integration
@pytest.mark.parametrize("path,shape", [("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic")])
@pytest.mark.parametrize("body,status,ctype", [
    (b"{not json", 400, "application/json"),
    (b"\xff\xfe\x00bad utf8", 400, "application/json"),
    (b"[1, 2, 3]", 400, "application/json"),
    (b'{"messages": []}', 400, "application/json"),                  # no model
    (b'{"model": "smart"}', 415, "text/plain"),
    (b'{"model": "' + b"x" * 5000 + b'"}', 413, "application/json"),
])
async def test_bad_requests_answered_in_callers_shape(path, shape, body, status, ctype):
    vendor = MockVendor()
    async with gateway_with(CONFIG, a=vendor) as gw:
        response = await post(gw.url, path, body, ctype)
        assert response.status_code == status
        error = response.json()
        if shape == "openai":
            assert isinstance(error["error"]["message"], str) and error["error"]["type"]
        else:
            assert error["type"] == "error" and error["error"]["type"]
        # the gateway is still healthy, and no backend saw the bad request
        ok = await post(gw.url, "/v1/chat/completions",
                        b'{"model":"smart","messages":[{"role":"user","content":"x"}]}')
        assert ok.status_code == 200
    assert len(vendor.received) == 1


@pytest.mark.sdk
async def test_sdk_sees_bad_request_error_for_oversized_body():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.APIStatusError) as exc:
            await sdk(lambda: client.chat.completions.create(
                model="smart", messages=[{"role": "user", "content": "y" * 10000}]))
        assert exc.value.status_code == 413


@pytest.mark.integration
async def test_unknown_path_is_404_json():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        response = await post(gw.url, "/v1/nothing", b"{}")
        assert response.status_code == 404
        assert "No route" in response.json()["error"]["message"]


@pytest.mark.integration
async def test_slow_client_gets_408_and_server_survives():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{")
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(4096):
                data += chunk
        assert data.startswith(b"HTTP/1.1 408")
        ok = await post(gw.url, "/v1/chat/completions", b'{"model":"smart","messages":[{"role":"user","content":"x"}]}')
        assert ok.status_code == 200


@pytest.mark.integration
async def test_garbage_http_gets_400():
    async with gateway_with(CONFIG, a=MockVendor()) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await stream.send_all(b"HELLO THERE\r\n\r\n")
        with trio.fail_after(5):
            data = await stream.receive_some(4096)
        assert data.startswith(b"HTTP/1.1 400")


@pytest.mark.integration
async def test_client_disconnect_cancels_upstream_call():
    vendor = MockVendor(latency=10)
    async with gateway_with(CONFIG, a=vendor) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        body = b'{"model":"smart","messages":[{"role":"user","content":"x"}]}'
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        with trio.fail_after(5):
            while not vendor.received:
                await trio.sleep(0.01)
        await stream.aclose()
        with trio.fail_after(2):           # far sooner than the vendor's 10 s
            while gw.gateway.in_flight:
                await trio.sleep(0.01)
        record = (await last_record(gw))
        assert record["state"] == "failed"
        assert record["attempts"][0]["outcome"] == "cancelled"


@pytest.mark.integration
async def test_an_internal_bug_is_a_500_in_the_callers_protocol_and_the_gateway_keeps_serving(monkeypatch):
    from busbar.protocols.anthropic import AnthropicDialect

    def broken(self, req, model, **kw):
        raise RuntimeError("simulated bug in a renderer")

    config = {"providers": {"ant": {"protocol": "anthropic", "base_url": "{a}", "key": "k"}},
              "pools": {"claude": {"members": [{"provider": "ant", "model": "c"}]}}}
    async with gateway_with(config, a=MockVendor()) as gw:
        monkeypatch.setattr(AnthropicDialect, "render_request", broken)
        response = await post(gw.url, "/v1/chat/completions",
                              b'{"model":"claude","messages":[{"role":"user","content":"x"}]}')
        assert response.status_code == 500
        assert "Internal gateway error" in response.json()["error"]["message"]
        monkeypatch.undo()
        ok = await post(gw.url, "/v1/chat/completions", b'{"model":"claude","messages":[{"role":"user","content":"x"}]}')
        assert ok.status_code == 200


@pytest.mark.integration
async def test_client_leaving_mid_stream_cancels_the_upstream_stream_without_blame():
    vendor = MockVendor(reply=" ".join(f"w{i}" for i in range(100)), chunk_delay=0.05)
    async with gateway_with(CONFIG, a=vendor) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        body = b'{"model":"smart","stream":true,"messages":[{"role":"user","content":"x"}]}'
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        with trio.fail_after(5):
            data = b""
            while b"w1" not in data:          # some content arrived
                data += await stream.receive_some(4096)
        await stream.aclose()
        with trio.fail_after(2):              # long before the vendor's 5 s stream would end
            while gw.gateway.in_flight:
                await trio.sleep(0.01)
        record = await last_record(gw)
        member = gw.gateway.router.snapshot(trio.current_time())["pools"]["smart"]["members"][0]
    assert record["state"] == "failed" and "disconnected" in record["error"]
    assert member["breaker"]["state"] == "closed" and member["in_flight"] == 0


TRANSLATED = {
    "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk"},
                  "ant": {"protocol": "anthropic", "base_url": "{a}", "key": "ak"}},
    "pools": {"to-claude": {"members": [{"provider": "ant", "model": "c"}]},
              "to-gpt": {"members": [{"provider": "oai", "model": "g"}]}},
}
HI_OPENAI = {"messages": [{"role": "user", "content": "hi"}]}

# (client path, body, the field its 400 names, a good body on the same path): the
# field fuzzer's findings against `busbar demo`, each a 500 before the IR's
# invariants were checked at the parse (tests/test_hostile_fields.py has the property)
WRONG_TYPES = [
    ("/v1/chat/completions", {"model": "to-claude", **HI_OPENAI, "temperature": "x"}, "temperature"),
    ("/v1/chat/completions", {"model": "to-claude", **HI_OPENAI, "response_format": {"type": 7}},
     "response_format"),
    ("/v1/messages", {"model": "to-gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                      "tool_choice": {"type": 7}}, "tool_choice"),
    ("/v1/responses", {"model": "to-claude", "input": "hi", "reasoning": {"effort": {}}}, "reasoning.effort"),
    ("/v1/responses", {"model": "to-claude", "input": [{"role": "user", "content": [
        {"type": "input_text", "text": [None]}]}]}, "input[0].content[0].text"),
    ("/v1beta/models/to-gpt:generateContent", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                                               "generationConfig": {"temperature": []}}, "temperature"),
    ("/model/to-gpt/converse", {"messages": [{"role": "user", "content": [[1]]}]}, "messages[0].content[0]"),
    ("/v2/chat", {"model": "to-gpt", **HI_OPENAI, "temperature": {"a": 1}}, "temperature"),
]


def _error_message(path: str, body: dict) -> str:
    if path.startswith("/v1/messages"):
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
        return body["error"]["message"]
    if path.startswith("/v1beta"):
        assert body["error"]["code"] == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
        return body["error"]["message"]
    if path.startswith(("/model/", "/v2/")):
        return body["message"]
    assert body["error"]["type"] == "invalid_request_error"
    return body["error"]["message"]


@pytest.mark.integration
@pytest.mark.parametrize("path,body,field", WRONG_TYPES, ids=[f"{p.split('/')[-1]}-{f}" for p, _, f in WRONG_TYPES])
async def test_a_field_of_the_wrong_type_is_a_400_in_the_callers_protocol_and_blames_no_member(path, body, field):
    vendor = MockVendor()
    async with gateway_with(TRANSLATED, a=vendor) as gw:
        async with httpx.AsyncClient() as client:
            response = await client.post(gw.url + path, json=body)
            assert response.status_code == 400, response.text
            assert field in _error_message(path, response.json())
            assert not vendor.received                      # refused before any member was called
            ok = await client.post(gw.url + "/v1/chat/completions", json={"model": "to-claude", **HI_OPENAI})
            assert ok.status_code == 200
            ok = await client.post(gw.url + "/v1/chat/completions", json={"model": "to-gpt", **HI_OPENAI})
            assert ok.status_code == 200


@pytest.mark.integration
async def test_a_passthrough_body_of_the_wrong_shape_is_the_vendors_400_and_blames_no_member():
    """Same protocol, forwarded as sent: the (simulated) vendor judges it and answers its
    400, as a real one does; the gateway relays it as the client's fault and the member
    stays healthy (the mock used to drop the connection, which failed the member over)."""
    vendor = MockVendor()
    async with gateway_with(CONFIG, a=vendor) as gw:
        async with httpx.AsyncClient() as client:
            bad = {"model": "claude", "max_tokens": 5,
                   "messages": [{"role": "user", "content": [{"type": "text", "text": [1]}]}]}
            response = await client.post(gw.url + "/v1/messages", json=bad)
            assert response.status_code == 400, response.text
            assert response.json()["type"] == "error"
            assert len(vendor.received) == 1                 # tried once: a client error is not retried
            record = await last_record(gw)
            member = gw.gateway.router.snapshot(trio.current_time())["pools"]["claude"]["members"][0]
            ok = await client.post(gw.url + "/v1/messages", json={**bad, "messages": [
                {"role": "user", "content": "hi"}]})
            assert ok.status_code == 200
    assert [x["outcome"] for x in record["attempts"]] == ["client"]
    assert member["breaker"]["state"] == "closed" and member["breaker"]["consecutive_failures"] == 0
