"""Egress proxy for upstream calls (issue 12, ADR 0009): a provider's
`proxy: http://[user:password@]host:port` (or the default `upstream.proxy`,
with `upstream.no_proxy`) reaches an https vendor through a CONNECT tunnel
and an http one with absolute-form requests; a proxy that refuses or is down
is the member's transport fault (failover), named on the attempt without its
credentials.  The proxy is a tiny CONNECT proxy run by the test."""
from __future__ import annotations

import base64
import ssl

import openai
import pytest
import trio
import trustme

from busbar.mock import MockVendor
from harness import free_port, gateway_with, last_record, sdk

PASSWORD = "proxy-pw-7c1e99"
AUTH = b"Basic " + base64.b64encode(f"egress:{PASSWORD}".encode())


class TinyProxy:
    """CONNECT (then a blind relay) and absolute-form forwarding (the first
    request line names the origin; the simulated vendors accept absolute
    form, so the bytes go through unchanged).  `seen`: (method, target,
    proxy-authorization) of each connection's first request."""

    def __init__(self, auth: bytes | None = None):
        self.auth = auth
        self.seen: list[tuple[bytes, bytes, bytes | None]] = []
        self.port = 0

    async def serve(self, task_status=trio.TASK_STATUS_IGNORED):
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        task_status.started(self.port)
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, client: trio.SocketStream):
        async with client:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = await client.receive_some(65536)
                if not data:
                    return
                buf += data
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
            self.seen.append((method, target, headers.get(b"proxy-authorization")))
            if self.auth is not None and headers.get(b"proxy-authorization") != self.auth:
                await client.send_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                      b"proxy-authenticate: Basic realm=\"egress\"\r\ncontent-length: 0\r\n"
                                      b"connection: close\r\n\r\n")
                return
            if method == b"CONNECT":
                host, _, port = target.rpartition(b":")
                upstream = await trio.open_tcp_stream(host.decode(), int(port))
                await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                first = rest
            else:
                authority = target.split(b"/", 3)[2]
                host, _, port = authority.rpartition(b":")
                upstream = await trio.open_tcp_stream(host.decode(), int(port or 80))
                first = buf
            async with upstream:
                if first:
                    await upstream.send_all(first)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_pipe, client, upstream, nursery.cancel_scope)
                    nursery.start_soon(_pipe, upstream, client, nursery.cancel_scope)


async def _pipe(source, sink, scope):
    try:
        while True:
            data = await source.receive_some(65536)
            if not data:
                break
            await sink.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    scope.cancel()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return server, str(path)


def _ask(url, stream=False):
    client = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)
    if stream:
        return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="p", messages=[{"role": "user", "content": "hi"}], stream=True) if c.choices)
    return client.chat.completions.create(model="p", messages=[{"role": "user", "content": "hi"}]).choices[0].message.content


def _attempts(record):
    return [(a["member"].split("/", 1)[1], a["outcome"]) for a in record["attempts"]]


@pytest.mark.sdk
async def test_an_https_vendor_through_a_connect_proxy(tls):
    server_ctx, ca_file = tls
    proxy = TinyProxy(auth=AUTH)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        config = {"providers": {"v": {"protocol": "openai", "base_url": "{v}/v1", "key": "vendor-key",
                                      "ca_bundle": ca_file, "proxy": f"http://egress:{PASSWORD}@127.0.0.1:{port}"}},
                  "pools": {"p": {"members": [{"provider": "v", "model": "m"}]}}}
        vendor = MockVendor(reply="through the tunnel", tls=server_ctx)
        async with gateway_with(config, v=vendor) as gw:
            assert await sdk(lambda: _ask(gw.url)) == "through the tunnel"
            assert await sdk(lambda: _ask(gw.url, stream=True)) == "through the tunnel"
            records = str(gw.gateway.recent)
        nursery.cancel_scope.cancel()
    # one tunnel to the vendor's host and port, with the proxy's credentials; TLS end to end
    assert proxy.seen[0] == (b"CONNECT", f"127.0.0.1:{vendor.port}".encode(), AUTH)
    assert all(method == b"CONNECT" for method, _, _ in proxy.seen)
    assert len(vendor.received) == 2
    assert "proxy-authorization" not in vendor.received[0]["headers"]     # the vendor never sees them
    assert PASSWORD not in records


@pytest.mark.sdk
async def test_an_http_vendor_through_the_default_proxy_in_absolute_form():
    proxy = TinyProxy(auth=AUTH)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        config = {"upstream": {"proxy": f"http://egress:{PASSWORD}@127.0.0.1:{port}"},
                  "providers": {"v": {"protocol": "openai", "base_url": "{v}/v1", "key": "vendor-key"}},
                  "pools": {"p": {"members": [{"provider": "v", "model": "m"}]}}}
        vendor = MockVendor(reply="forwarded")
        async with gateway_with(config, v=vendor) as gw:
            assert await sdk(lambda: _ask(gw.url)) == "forwarded"
            assert await sdk(lambda: _ask(gw.url, stream=True)) == "forwarded"
        nursery.cancel_scope.cancel()
    assert proxy.seen[0] == (b"POST", f"http://127.0.0.1:{vendor.port}/v1/chat/completions".encode(), AUTH)
    assert len(vendor.received) == 2


@pytest.mark.sdk
async def test_a_refusing_or_dead_proxy_is_the_members_fault_and_no_proxy_bypasses_it(tls):
    server_ctx, ca_file = tls
    proxy = TinyProxy(auth=AUTH)
    dead = free_port()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        config = {
            "upstream": {"proxy": f"http://egress:wrong-{PASSWORD}@127.0.0.1:{port}", "ca_bundle": ca_file},
            "providers": {
                "refused": {"protocol": "openai", "base_url": "{v}/v1", "key": "vendor-key"},
                "dead": {"protocol": "openai", "base_url": "{v}/v1", "key": "vendor-key",
                         "proxy": f"http://127.0.0.1:{dead}"},
                "direct": {"protocol": "openai", "base_url": "{v}/v1", "key": "vendor-key", "proxy": "none"}},
            "pools": {"p": {"strategy": "ordered", "members": [
                {"provider": "refused", "model": "m", "priority": 0},
                {"provider": "dead", "model": "m", "priority": 1},
                {"provider": "direct", "model": "m", "priority": 2}]}}}
        vendor = MockVendor(reply="direct after all", tls=server_ctx)
        async with gateway_with(config, v=vendor) as gw:
            assert await sdk(lambda: _ask(gw.url)) == "direct after all"
            record = await last_record(gw)
        nursery.cancel_scope.cancel()
    assert _attempts(record) == [("refused/m", "server"), ("dead/m", "server"), ("direct/m", "ok")]
    refused, down = record["attempts"][0]["message"], record["attempts"][1]["message"]
    assert f"the proxy 127.0.0.1:{port} refused CONNECT to 127.0.0.1:{vendor.port}: 407" in refused, refused
    assert f"cannot connect to the proxy 127.0.0.1:{dead}" in down, down
    assert PASSWORD not in str(record)
    assert len(vendor.received) == 1


@pytest.mark.sdk
async def test_no_proxy_hosts_connect_directly():
    config = {"upstream": {"proxy": f"http://127.0.0.1:{free_port()}", "no_proxy": "localhost, .example.com,127.0.0.1"},
              "providers": {"v": {"protocol": "openai", "base_url": "{v}/v1", "key": "vendor-key"}},
              "pools": {"p": {"members": [{"provider": "v", "model": "m"}]}}}
    async with gateway_with(config, v=MockVendor(reply="no proxy needed")) as gw:
        assert await sdk(lambda: _ask(gw.url)) == "no proxy needed"
        assert gw.gateway.providers["v"].transport.proxy is None


@pytest.mark.pure
def test_no_proxy_matching_and_proxy_url_errors():
    from busbar.config import ConfigError, parse_config
    from busbar.providers import bypasses_proxy
    assert bypasses_proxy("api.corp.example", "corp.example") and bypasses_proxy("api.corp.example", ".corp.example")
    assert bypasses_proxy("api.corp.example", ["*.corp.example"]) and bypasses_proxy("anything", "*")
    assert not bypasses_proxy("evilcorp.example", "corp.example") and not bypasses_proxy("api.openai.com", "")
    assert bypasses_proxy("::1", "[::1]")
    for url, says in (("http://proxy.corp", "needs a host and a port"),):
        config = {"providers": {"a": {"protocol": "openai", "base_url": "https://vendor.test/v1", "key": "k",
                                      "proxy": url}},
                  "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}}}
        with pytest.raises(ConfigError) as error:
            parse_config(config, "test-config")
        assert error.value.where == "test-config: providers.a.proxy" and says in error.value.message
    config["providers"]["a"]["proxy"] = "socks5://proxy.corp:1080"
    with pytest.raises(ConfigError) as error:
        parse_config(config, "test-config")
    assert error.value.where == "test-config: providers.a.proxy"


@pytest.mark.integration
async def test_self_hosted_telemetry_is_scraped_with_the_providers_trust_and_proxy(tls):
    """The background scrape of a self-hosted backend (vLLM's /metrics and
    model listing) goes the way the provider's requests go: its ca_bundle
    verifies the backend's certificate, its proxy carries the calls."""
    server_ctx, ca_file = tls
    proxy = TinyProxy(auth=AUTH)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(proxy.serve)
        spec = {"kind": "vllm", "interval": 0.1, "timeout": 2.0}
        config = {"providers": {"gpu": {"catalog": "vllm", "base_url": "{v}/v1", "telemetry": spec,
                                        "ca_bundle": ca_file,
                                        "proxy": f"http://egress:{PASSWORD}@127.0.0.1:{port}"}},
                  "pools": {"local": {"strategy": "least_loaded", "members": [{"provider": "gpu", "model": "llama"}]}}}
        backend = MockVendor(reply="hi", tls=server_ctx,
                             backend={"kind": "vllm", "models": ["llama"], "running": 3, "waiting": 7})
        async with gateway_with(config, v=backend) as gw:
            target = gw.gateway.router.targets[("gpu", "llama")]
            with trio.fail_after(15):
                while target.load is None:
                    await trio.sleep(0.05)
            assert target.load.waiting == 7 and not target.unready
        nursery.cancel_scope.cancel()
    assert proxy.seen and all(seen == (b"CONNECT", f"127.0.0.1:{backend.port}".encode(), AUTH) for seen in proxy.seen)
