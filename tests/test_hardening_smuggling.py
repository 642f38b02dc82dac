"""Issue 12, item 1: a client-chosen `model` can never add a path segment,
a query, a header or a second request to what goes upstream, so no client
can reach another client's answer."""
from __future__ import annotations

import h11
import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from busbar.http11 import UnsafeRequest, serialize_request
from busbar.mock import MockVendor
from busbar.protocols import get_dialect
from busbar.protocols.routes import match_route
from harness import gateway_with

DIALECTS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere")


def _one_request(target: bytes) -> h11.Request:
    """Parse what the serializer writes with h11: exactly one request, whose
    target is what we asked for, and nothing left over."""
    wire = serialize_request(b"POST", target, b"vendor.test", [(b"content-type", b"application/json")], b"{}")
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(wire)
    head = conn.next_event()
    assert isinstance(head, h11.Request) and head.target == target
    assert isinstance(conn.next_event(), h11.Data)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert conn.trailing_data == (b"", False)
    return head


@pytest.mark.pure
@settings(max_examples=300, deadline=None)
@given(protocol=st.sampled_from(DIALECTS), model=st.text(min_size=1, max_size=80), stream=st.booleans(),
       base=st.sampled_from(["", "/v1", "/proxy/"]))
@example(protocol="bedrock", model=".", stream=False, base="")      # dot segments: quoting leaves them alone
@example(protocol="bedrock", model="..", stream=True, base="/v1")
@example(protocol="gemini", model="..", stream=False, base="")
def test_any_model_stays_inside_its_path_segment(protocol, model, stream, base):
    dialect = get_dialect(protocol)
    path = dialect.upstream_path(base, model, stream)
    target = path.encode()
    _one_request(target)                          # never more than one request, never a header
    path_only, _, query = path.partition("?")
    assert "#" not in path
    assert query in ("", "alt=sse")               # only the dialect's own query
    assert "/../" not in path_only + "/" and "/./" not in path_only + "/"
    if protocol in ("gemini", "bedrock"):
        # the vendor (our mock uses the vendors' own routes) reads back exactly the model sent
        route = match_route(path_only[len(base.rstrip("/")):].encode())
        assert route is not None and route[0] == protocol
        expected = model[7:] if protocol == "gemini" and model.startswith("models/") else model
        assert route[1]["model"] == expected


@pytest.mark.pure
@pytest.mark.parametrize("target", [b"/a b", b"/a\r\nx: y", b"/a\nb", b"/a\x00", b"/a\tb", b"http://x/", b""])
def test_serializer_refuses_unsafe_targets(target):
    with pytest.raises(UnsafeRequest):
        serialize_request(b"POST", target, b"h", [], b"")


@pytest.mark.pure
@pytest.mark.parametrize("header", [(b"x", b"a\r\nevil: 1"), (b"x", b"a\nb"), (b"x", b"a\x00"), (b"x y", b"v"),
                                    (b"x\r\n", b"v"), (b"", b"v")])
def test_serializer_refuses_unsafe_headers(header):
    with pytest.raises(UnsafeRequest):
        serialize_request(b"POST", b"/", b"h", [header], b"")


CONFIG = {
    "server": {"direct_routes": True},
    "providers": {"g": {"protocol": "gemini", "base_url": "{a}", "key": "gk", "max_connections": 1}},
    "pools": {"gem": {"members": [{"provider": "g", "model": "gemini-pro"}]}},
}

# A model that, unquoted, ends the request line, finishes a request and
# smuggles a second one whose answer ("POISONED") would sit on the pooled
# connection and be read as the next client's response.
_SMUGGLED_BODY = b'{"contents":[{"role":"user","parts":[{"text":"POISONED"}]}]}'
ATTACK = ("x:generateContent HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"
          "POST /v1beta/models/x:generateContent HTTP/1.1\r\nhost: a\r\ncontent-type: application/json\r\n"
          f"content-length: {len(_SMUGGLED_BODY)}\r\n\r\n{_SMUGGLED_BODY.decode()}"
          "POST /v1beta/models/../../x?y=1#")


@pytest.mark.integration
async def test_crafted_model_cannot_poison_the_next_clients_answer():
    vendor = MockVendor()
    async with gateway_with(CONFIG, a=vendor) as gw:
        async with httpx.AsyncClient(timeout=30) as client:
            attack = await client.post(gw.url + "/v1/chat/completions", json={
                "model": "g/" + ATTACK, "messages": [{"role": "user", "content": "attacker"}]})
            # the attacker's request is one request with one (odd) model name
            assert attack.status_code == 200, attack.text
            # echoed in x-busbar-pool / x-busbar-member, it adds no header to the answer either
            assert "host" not in attack.headers and attack.headers.get("x-busbar-pool", "").startswith("g/x:")
            for _ in range(3):
                victim = await client.post(gw.url + "/v1/chat/completions", json={
                    "model": "gem", "messages": [{"role": "user", "content": "victim's own question"}]})
                assert victim.status_code == 200
                text = victim.json()["choices"][0]["message"]["content"]
                assert "POISONED" not in text and "victim's own question" in text
    # the vendor saw exactly the four requests sent, the attack's model literally
    assert [r["model"] for r in vendor.received] == [ATTACK, "gemini-pro", "gemini-pro", "gemini-pro"]
    assert all(r["path"].startswith("/v1beta/models/") for r in vendor.received)
    assert "\r" not in vendor.received[0]["path"] and " " not in vendor.received[0]["path"]


@pytest.mark.pure
@settings(max_examples=200, deadline=None)
@given(model=st.text(min_size=1, max_size=60))
@example(model=".")
@example(model="..")
@example(model="a/../b?x#y")
def test_operation_paths_keep_the_model_in_one_segment(model):
    """Embeddings, rerank and token counting build their vendor paths with the
    chat dialects' builders, so a model cannot step out of its segment there either."""
    from busbar.protocols.counting import GeminiCount
    from busbar.protocols.embeddings.bedrock import TitanEmbed
    from busbar.protocols.embeddings.gemini import GeminiEmbedBatch
    for dialect, prefix in ((GeminiCount(), "/v1beta/models/"), (GeminiEmbedBatch(), "/v1beta/models/"),
                            (TitanEmbed(), "/model/")):
        path = dialect.upstream_path("/base", model, False)
        _one_request(path.encode())
        segment = path[len("/base" + prefix):]
        assert "/" not in segment.rsplit("/", 1)[0] if prefix == "/model/" else "/" not in segment
        assert "?" not in path and "#" not in path
        assert segment.split("/")[0].split(":")[0] not in (".", "..")
