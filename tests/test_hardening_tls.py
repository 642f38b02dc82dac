"""Issue 12, TLS: the gateway serves HTTPS (`server.tls`) to the official
SDKs; plain HTTP on the TLS port gets a clean 400 and a close; a handshake
that never completes is closed at `header_timeout`; bad certificate or key
files are config errors naming their YAML path.  Certificates come from a
throwaway CA (`trustme`)."""
from __future__ import annotations

import copy
import signal
import ssl
import subprocess
import sys

import httpx
import pytest
import trio
import trustme

from busbar.mock import MockVendor
from harness import free_port, gateway_with, last_record, sdk, wait_port

OPENAI = {"providers": {"a": {"protocol": "openai", "base_url": "{a}/v1", "key": "vendor-key"}},
          "pools": {"smart": {"members": [{"provider": "a", "model": "m"}]}}}


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca, tmp_path_factory):
    """The gateway's certificate (127.0.0.1 and localhost) and key as PEM files."""
    where = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    chain, key = where / "chain.pem", where / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    key.write_bytes(cert.private_key_pem.bytes())
    return str(chain), str(key)


def _tls_config(cert_files, **server) -> dict:
    chain, key = cert_files
    return {**copy.deepcopy(OPENAI), "server": {"tls": {"cert": chain, "key": key}, **server}}


def _trusting(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.mark.sdk
async def test_openai_and_anthropic_sdks_over_https(ca, cert_files):
    import anthropic
    import openai
    config = _tls_config(cert_files)
    config["providers"]["b"] = {"protocol": "anthropic", "base_url": "{b}", "key": "vendor-key"}
    config["pools"]["claude"] = {"members": [{"provider": "b", "model": "c"}]}
    async with gateway_with(config, a=MockVendor(reply="over tls"), b=MockVendor(reply="claude over tls")) as gw:
        url = f"https://127.0.0.1:{gw.port}"
        # each SDK's own httpx client, trusting the throwaway CA
        oai = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0,
                            http_client=openai.DefaultHttpxClient(verify=_trusting(ca)))
        chat = await sdk(lambda: oai.chat.completions.create(model="smart",
                                                             messages=[{"role": "user", "content": "hi"}]))
        assert chat.choices[0].message.content == "over tls"
        chunks = await sdk(lambda: list(oai.chat.completions.create(
            model="smart", messages=[{"role": "user", "content": "hi"}], stream=True)))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "over tls"
        ant = anthropic.Anthropic(base_url=url, api_key="k", max_retries=0,
                                  http_client=anthropic.DefaultHttpxClient(verify=_trusting(ca)))
        message = await sdk(lambda: ant.messages.create(model="claude", max_tokens=64,
                                                        messages=[{"role": "user", "content": "hi"}]))
        assert message.content[0].text == "claude over tls"

        def streamed():
            with ant.messages.stream(model="claude", max_tokens=64,
                                     messages=[{"role": "user", "content": "hi"}]) as s:
                return "".join(s.text_stream)
        assert await sdk(streamed) == "claude over tls"
        assert len(gw.vendors["a"].received) == 2 and len(gw.vendors["b"].received) == 2

        # a client that does not trust the CA is refused by its own TLS check (never served in plain)
        untrusting = openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0,
                                   http_client=openai.DefaultHttpxClient(verify=ssl.create_default_context()))
        with pytest.raises(openai.APIConnectionError):
            await sdk(lambda: untrusting.chat.completions.create(model="smart",
                                                                 messages=[{"role": "user", "content": "hi"}]))


async def _read_until_closed(stream, limit: float = 20) -> bytes:
    out = b""
    with trio.fail_after(limit):      # a hang guard, not a timing assertion
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return out
            if not data:
                return out
            out += data


@pytest.mark.integration
async def test_plain_http_to_the_tls_port_gets_a_400_and_a_close(cert_files):
    async with gateway_with(_tls_config(cert_files), a=MockVendor()) as gw:
        body = b'{"model":"smart","messages":[{"role":"user","content":"hi"}]}'
        stream = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await stream.send_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                              b"content-length: %d\r\n\r\n" % len(body) + body)
        answer = await _read_until_closed(stream)
        await stream.aclose()
        assert answer.startswith(b"HTTP/1.1 400 ")
        assert b"connection: close" in answer.lower()
        assert b"use https://" in answer
        assert not gw.vendors["a"].received
        # httpx speaking http:// to it reads the same answer
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{gw.port}/healthz")
        assert response.status_code == 400 and "https" in response.json()["error"]["message"]
        # and the port still serves TLS afterwards
        async with httpx.AsyncClient(verify=False) as client:
            assert (await client.get(f"https://127.0.0.1:{gw.port}/healthz")).status_code == 200


@pytest.mark.integration
async def test_a_handshake_that_never_completes_is_closed_at_header_timeout(cert_files):
    async with gateway_with(_tls_config(cert_files, header_timeout=0.5), a=MockVendor()) as gw:
        before = gw.server.active_connections
        silent = await trio.open_tcp_stream("127.0.0.1", gw.port)             # connects, never says hello
        partial = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await partial.send_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # half a ClientHello, then nothing
        garbage = await trio.open_tcp_stream("127.0.0.1", gw.port)
        await garbage.send_all(b"\x00" * 64)                                   # not TLS at all
        for stream in (silent, partial, garbage):
            assert await _read_until_closed(stream) == b""                     # closed by the gateway, no bytes
            await stream.aclose()
        with trio.fail_after(10):
            while gw.server.active_connections > before:
                await trio.sleep(0.01)
        async with httpx.AsyncClient(verify=False) as client:
            assert (await client.get(f"https://127.0.0.1:{gw.port}/healthz")).status_code == 200


def _write_config(tmp_path, chain: str, key: str) -> str:
    path = tmp_path / "busbar.yaml"
    path.write_text(f"""
server:
  tls: {{cert: "{chain}", key: "{key}"}}
providers:
  a: {{protocol: openai, base_url: "http://127.0.0.1:9/v1", key: vendor-key}}
pools:
  smart: {{members: [{{provider: a, model: m}}]}}
admin: {{listen: "127.0.0.1:0"}}
""")
    return str(path)


@pytest.mark.integration
@pytest.mark.parametrize("case", ["missing cert", "missing key", "not a certificate", "key of another cert"])
def test_bad_cert_or_key_is_a_config_error_naming_the_yaml_path(ca, cert_files, tmp_path, case):
    chain, key = cert_files
    other = ca.issue_cert("elsewhere.test")
    if case == "missing cert":
        chain, where = str(tmp_path / "nope.pem"), "server.tls.cert"
    elif case == "missing key":
        key, where = str(tmp_path / "nope-key.pem"), "server.tls.key"
    elif case == "not a certificate":
        (tmp_path / "junk.pem").write_text("not a pem\n")
        chain, where = str(tmp_path / "junk.pem"), "server.tls"
    else:
        (tmp_path / "other-key.pem").write_bytes(other.private_key_pem.bytes())
        key, where = str(tmp_path / "other-key.pem"), "server.tls.key"
    path = _write_config(tmp_path, chain, key)
    validate = subprocess.run([sys.executable, "-m", "busbar.cli", "validate", "--config", path],
                              capture_output=True, text=True, timeout=60)
    assert validate.returncode == 1
    assert f"{path}:3: {where}:" in validate.stderr, validate.stderr
    serve = subprocess.run([sys.executable, "-m", "busbar.cli", "serve", "--config", path, "--port",
                            str(free_port())], capture_output=True, text=True, timeout=60)
    assert serve.returncode == 2
    assert f"{where}:" in serve.stderr and "Traceback" not in serve.stderr, serve.stderr


@pytest.mark.sdk
def test_busbar_serve_over_https(ca, cert_files, tmp_path):
    """A real `busbar serve` process with server.tls: its banner says https,
    the OpenAI SDK trusting the CA is served, SIGTERM drains and exits 0."""
    import openai
    vendor_port = free_port()
    vendor = subprocess.Popen([sys.executable, "-c", VENDOR, str(vendor_port)])
    chain, key = cert_files
    path = tmp_path / "busbar.yaml"
    path.write_text(f"""
server:
  tls: {{cert: "{chain}", key: "{key}"}}
providers:
  a: {{protocol: openai, base_url: "http://127.0.0.1:{vendor_port}/v1", key: vendor-key}}
pools:
  smart: {{members: [{{provider: a, model: m}}]}}
admin: {{listen: "127.0.0.1:0"}}
""")
    port = free_port()
    serve = subprocess.Popen([sys.executable, "-m", "busbar.cli", "serve", "--config", str(path), "--port", str(port)],
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_port(vendor_port)
        assert serve.stderr.readline().strip() == f"busbar: serving {path} on https://127.0.0.1:{port}"
        wait_port(port)
        with openai.DefaultHttpxClient(verify=_trusting(ca)) as http:
            client = openai.OpenAI(base_url=f"https://localhost:{port}/v1", api_key="k", max_retries=0,
                                   http_client=http)
            chat = client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hello tls"}])
            assert chat.choices[0].message.content == "hello tls"
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(30) == 0
    finally:
        for process in (serve, vendor):
            if process.poll() is None:
                process.kill()
                process.wait()


VENDOR = """
import sys, trio
from busbar.mock import MockVendor
trio.run(MockVendor().serve, "127.0.0.1", int(sys.argv[1]))
"""


# ---- upstream TLS: a vendor served over https with a throwaway CA --------------------

@pytest.fixture(scope="module")
def vendor_tls(ca) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def ca_file(ca, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _attempts(record) -> list[tuple[str, str]]:
    return [(a["member"].split("/", 1)[1], a["outcome"]) for a in record["attempts"]]   # pool/provider/model


@pytest.mark.sdk
async def test_upstream_tls_needs_the_ca_bundle_and_fails_over_without_it(vendor_tls, ca_file):
    """Two providers on the same https vendor: `untrusted` (the system store,
    which does not know the test CA) and `trusted` (`ca_bundle`).  The
    untrusted member's handshake fails as its transport fault, the request
    fails over; the trusted one is served over TLS (its own connection pool:
    the trust is part of the pool's key)."""
    import openai
    config = {
        "providers": {
            "untrusted": {"protocol": "openai", "base_url": "{secure}/v1", "key": "vendor-key"},
            "trusted": {"protocol": "openai", "base_url": "{secure}/v1", "key": "vendor-key", "ca_bundle": ca_file},
            "plain": {"protocol": "openai", "base_url": "{plain}/v1", "key": "vendor-key"},
        },
        "pools": {
            "failover": {"strategy": "ordered", "members": [{"provider": "untrusted", "model": "m", "priority": 0},
                                                            {"provider": "plain", "model": "m", "priority": 1}]},
            "lonely": {"members": [{"provider": "untrusted", "model": "m"}]},
            "verified": {"members": [{"provider": "trusted", "model": "m"}]},
        },
    }
    secure, plain = MockVendor(reply="from the tls vendor", tls=vendor_tls), MockVendor(reply="from the plain vendor")
    async with gateway_with(config, secure=secure, plain=plain) as gw:
        assert gw.vendors["secure"].url.startswith("https://")
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        def ask(pool, **kw):
            return client.chat.completions.create(model=pool, messages=[{"role": "user", "content": "hi"}], **kw)

        answer = await sdk(lambda: ask("failover"))
        assert answer.choices[0].message.content == "from the plain vendor"
        record = await last_record(gw)
        assert _attempts(record) == [("untrusted/m", "server"), ("plain/m", "ok")]
        message = record["attempts"][0]["message"]
        assert "TLS handshake with 127.0.0.1" in message and "certificate verify failed" in message, message
        assert "ca_bundle" in message

        chunks = await sdk(lambda: list(ask("failover", stream=True)))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from the plain vendor"
        assert _attempts(await last_record(gw)) == [("untrusted/m", "server"), ("plain/m", "ok")]

        # no member left: a clear error in the client's protocol, never a 500
        with pytest.raises(openai.APIStatusError) as failed:
            await sdk(lambda: ask("lonely"))
        assert failed.value.status_code in (502, 503)
        assert not secure.received          # no request ever reached the vendor untrusted

        answer = await sdk(lambda: ask("verified"))
        assert answer.choices[0].message.content == "from the tls vendor"
        chunks = await sdk(lambda: list(ask("verified", stream=True)))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "from the tls vendor"
        assert len(secure.received) == 2
        assert _attempts(await last_record(gw)) == [("trusted/m", "ok")]


@pytest.mark.sdk
async def test_upstream_ca_bundle_default_applies_to_every_provider(vendor_tls, ca_file):
    import anthropic
    config = {"upstream": {"ca_bundle": ca_file},
              "providers": {"a": {"protocol": "anthropic", "base_url": "{secure}", "key": "vendor-key"}},
              "pools": {"claude": {"members": [{"provider": "a", "model": "c"}]}}}
    async with gateway_with(config, secure=MockVendor(reply="trusted by default", tls=vendor_tls)) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
        message = await sdk(lambda: client.messages.create(model="claude", max_tokens=64,
                                                           messages=[{"role": "user", "content": "hi"}]))
        assert message.content[0].text == "trusted by default"


@pytest.mark.pure
@pytest.mark.parametrize("where", ["providers.a.ca_bundle", "upstream.ca_bundle"])
def test_a_bad_ca_bundle_is_a_config_error_naming_where_it_was_set(tmp_path, where):
    from busbar.config import ConfigError, parse_config
    junk = tmp_path / "junk.pem"
    junk.write_text("no certificates here\n")
    for path, says in ((str(tmp_path / "missing.pem"), "does not exist"), (str(junk), "cannot load the CA bundle")):
        config = {"providers": {"a": {"protocol": "openai", "base_url": "https://vendor.test/v1", "key": "k"}},
                  "pools": {"p": {"members": [{"provider": "a", "model": "m"}]}}}
        if where == "upstream.ca_bundle":
            config["upstream"] = {"ca_bundle": path}
            config["providers"]["b"] = {"protocol": "openai", "base_url": "https://other.test/v1", "key": "k"}
        else:
            config["providers"]["a"]["ca_bundle"] = path
        with pytest.raises(ConfigError) as error:
            parse_config(config, "test-config")
        assert error.value.problems == [(f"test-config: {where}", error.value.message)]   # once, not per provider
        assert says in error.value.message


@pytest.mark.sdk
async def test_a_titan_batch_split_into_calls_uses_the_providers_ca_bundle(vendor_tls, ca_file):
    """Each of a Titan batch's calls (one per text) reaches the member through
    the provider's own transport, its CA bundle included, as a single call does."""
    import openai
    config = {"providers": {"aws": {"protocol": "bedrock", "base_url": "{secure}", "region": "us-east-1",
                                    "access_key_id": "AKIDUPSTREAM", "secret_access_key": "upstream-secret",
                                    "ca_bundle": ca_file}},
              "pools": {"emb": {"members": [{"provider": "aws", "model": "amazon.titan-embed-text-v2:0",
                                             "dimensions": 8}]}}}
    secure = MockVendor(tls=vendor_tls)
    async with gateway_with(config, secure=secure) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        answer = await sdk(lambda: client.embeddings.create(model="emb", input=["one", "two", "three"],
                                                            dimensions=8, encoding_format="float"))
    assert [d.index for d in answer.data] == [0, 1, 2]
    assert len(secure.received) == 3
