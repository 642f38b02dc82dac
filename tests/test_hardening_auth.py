"""Issue 12: authentication before the body (an unauthenticated client's
body is never read: 401 right after its head), on GET /v1/models too; the
admin API refuses a non-loopback listener without a key; an upstream that
stops reading our request body is bounded and fails over."""
from __future__ import annotations

import subprocess
import sys

import orjson
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with, sdk

KEYED = {"providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-up"}},
         "pools": {"p": {"members": [{"provider": "a", "model": "m"}]},
                   "open": {"auth": False, "members": [{"provider": "a", "model": "m"}]}},
         "auth": {"keys": ["client-key-1"]}}
KEYED_CLOSED = {**KEYED, "pools": {"p": KEYED["pools"]["p"]}}


async def _read_until_closed(stream, timeout: float = 10) -> bytes:
    out = b""
    with trio.fail_after(timeout):      # a guard against a hang, not a timing assertion
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return out
            if not data:
                return out
            out += data


@pytest.mark.integration
@pytest.mark.parametrize("auth", [b"", b"authorization: Bearer wrong-key\r\n"])
async def test_an_unauthenticated_huge_body_is_never_read_401_right_after_the_head(auth):
    async with gateway_with(KEYED_CLOSED, a=MockVendor()) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        # a 6 MB body announced, none of it sent: the answer cannot wait for it
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: text/plain\r\n" + auth +
                              b"content-length: 6000000\r\n\r\n")
        answer = await _read_until_closed(stream)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:300]     # not 415 for the content type: auth first
        assert orjson.loads(body)["error"]["type"] == "invalid_request_error" or "error" in orjson.loads(body)
        assert b"connection: close" in head
        assert gw.vendors["a"].received == []


@pytest.mark.integration
async def test_expect_100_continue_without_a_key_gets_401_not_continue():
    async with gateway_with(KEYED_CLOSED, a=MockVendor()) as gw:
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await stream.send_all(b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"expect: 100-continue\r\ncontent-length: 2000000\r\n\r\n")
        answer = await _read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 401") and b"100 Continue" not in answer
        assert b'"type":"error"' in answer         # the path's protocol: Anthropic's error shape


@pytest.mark.integration
async def test_with_a_valid_key_the_body_is_read_and_judged_and_open_pools_stay_open():
    async with gateway_with(KEYED, a=MockVendor()) as gw:
        async def post(body: bytes, key: bytes = b"") -> bytes:
            stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
            await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                  b"connection: close\r\n" + key + b"content-length: %d\r\n\r\n" % len(body) + body)
            return await _read_until_closed(stream)
        key = b"authorization: Bearer client-key-1\r\n"
        assert (await post(b"{not json", key)).startswith(b"HTTP/1.1 400")
        chat = b'{"model":"%s","messages":[{"role":"user","content":"hi"}]}'
        assert (await post(chat % b"p", key)).startswith(b"HTTP/1.1 200")
        # a pool with `auth: false` is only known from the body: still served without a key
        assert (await post(chat % b"open")).startswith(b"HTTP/1.1 200")
        assert (await post(chat % b"p")).startswith(b"HTTP/1.1 401")


@pytest.mark.sdk
async def test_get_v1_models_needs_a_key():
    import anthropic
    import openai
    async with gateway_with(KEYED_CLOSED, a=MockVendor()) as gw:
        with pytest.raises(openai.AuthenticationError):
            await sdk(lambda: openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0).models.list())
        with pytest.raises(anthropic.AuthenticationError):
            await sdk(lambda: anthropic.Anthropic(base_url=gw.url, api_key="wrong", max_retries=0).models.list())
        listed = await sdk(lambda: openai.OpenAI(base_url=gw.url + "/v1", api_key="client-key-1").models.list())
        assert [m.id for m in listed.data] == ["p"]
        listed = await sdk(lambda: anthropic.Anthropic(base_url=gw.url, api_key="client-key-1").models.list())
        assert [m.id for m in listed.data] == ["p"]


ADMIN_OPEN = """
providers:
  a: {protocol: openai, base_url: "http://127.0.0.1:9/v1", key: k}
pools:
  p: {members: [{provider: a, model: m}]}
admin: {enabled: true, listen: "%s", usage_db: "off"}
"""


@pytest.mark.integration
@pytest.mark.parametrize("listen, host", [("0.0.0.0:0", "127.0.0.1"), ("public", "0.0.0.0")])
def test_admin_without_a_key_refuses_a_non_loopback_listener(tmp_path, listen, host):
    path = tmp_path / "busbar.yaml"
    path.write_text(ADMIN_OPEN % listen)
    done = subprocess.run([sys.executable, "-m", "busbar.cli", "serve", "--config", str(path), "--host", host,
                           "--port", "0"], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert f"{path}: admin.key: admin is enabled on" in done.stderr
    assert "not a loopback address" in done.stderr and "set admin.key" in done.stderr


@pytest.mark.integration
async def test_admin_without_a_key_on_loopback_starts_with_a_warning(caplog):
    config = {"providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
              "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}},
              "admin": {"enabled": True, "usage_db": "off"}}      # listen: public on 127.0.0.1 (the harness)
    with caplog.at_level("WARNING", logger="busbar"):
        async with gateway_with(config, a=MockVendor()) as gw:
            stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
            await stream.send_all(b"GET /admin/api/state HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert (await _read_until_closed(stream)).startswith(b"HTTP/1.1 200")
    assert any("has no admin.key" in r.getMessage() for r in caplog.records)


async def _deaf_vendor(task_status=trio.TASK_STATUS_IGNORED):
    """Accepts connections and never reads from them (nor answers)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    held = []

    async def hold(stream):
        held.append(stream)
        await trio.sleep_forever()

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(hold, listeners)


@pytest.mark.integration
async def test_an_upstream_that_stops_reading_our_body_is_bounded_and_fails_over():
    async with trio.open_nursery() as nursery:
        deaf = await nursery.start(_deaf_vendor)
        config = {"server": {"max_body_bytes": 16 * 1024 * 1024},
                  "providers": {"deaf": {"protocol": "openai", "base_url": f"http://127.0.0.1:{deaf}/v1", "key": "k"},
                                "ok": {"protocol": "openai", "base_url": "{ok}/v1", "key": "k"}},
                  "pools": {"p": {"strategy": "ordered", "members": [{"provider": "deaf", "model": "m", "priority": 0},
                                                                     {"provider": "ok", "model": "m", "priority": 1}]}},
                  "pipelines": {"default": {"timeouts": {"first_byte": 0.5}, "deadline": 300}}}
        async with gateway_with(config, ok=MockVendor(reply="fine")) as gw:
            # larger than every socket buffer between us and the deaf vendor
            body = orjson.dumps({"model": "p", "messages": [{"role": "user", "content": "x" * 12_000_000}]})
            stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
            await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                  b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(body) + body)
            answer = await _read_until_closed(stream, timeout=60)
            assert answer.startswith(b"HTTP/1.1 200") and b"fine" in answer
            record = gw.gateway.recent[-1]
            assert [a["outcome"] for a in record["attempts"]] == ["server", "ok"]
            assert "stopped reading the request" in record["attempts"][0]["message"]
        nursery.cancel_scope.cancel()
