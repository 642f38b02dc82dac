"""Any client protocol in, any vendor protocol out, over real sockets: the
official SDK of each protocol against a simulated vendor of each protocol."""
from __future__ import annotations

import pytest

from clients import CLIENTS
from busbar.mock import MockVendor
from harness import gateway_with, last_record, sdk

PROTOCOLS = ["openai", "anthropic", "responses", "gemini", "cohere", "bedrock", "bedrock-invoke"]
SIGNED = ("bedrock", "bedrock-invoke")      # the gateway signs these members' requests (SigV4)


def config_for(vendor_protocol: str) -> dict:
    base = "{a}/v1" if vendor_protocol in ("openai", "responses") else "{a}"
    provider = {"protocol": vendor_protocol, "base_url": base}
    if vendor_protocol in SIGNED:
        provider.update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
    else:
        provider["key"] = "vendor-key"
    return {"providers": {"up": provider},
            "pools": {"smart": {"members": [{"provider": "up", "model": "upstream-model", "max_tokens": 512}]}}}


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", PROTOCOLS)
@pytest.mark.parametrize("client", PROTOCOLS)
async def test_buffered_any_to_any(client, vendor):
    mock = MockVendor(reply="The quick brown fox jumps over the lazy dog.",
                      aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config_for(vendor), a=mock) as gw:
        text = await sdk(lambda: CLIENTS[client](gw.url, "smart", "hello there"))
        record = await last_record(gw)
    assert text == "The quick brown fox jumps over the lazy dog."
    assert record["state"] == "done"
    seen = mock.received[-1]
    assert seen["protocol"] == vendor
    assert seen["model"] == "upstream-model"
    if vendor not in SIGNED:
        assert seen["key"] == "vendor-key"


@pytest.mark.sdk
async def test_bedrock_client_signature_is_verified():
    import botocore.exceptions
    config = {**config_for("openai"), "auth": {"aws_credentials": [
        {"access_key_id": "AKIDGATEWAY", "secret_access_key": "gateway-secret"}]}}
    mock = MockVendor(reply="signed ok")
    async with gateway_with(config, a=mock) as gw:
        text = await sdk(lambda: CLIENTS["bedrock"](gw.url, "smart", "hi"))
        assert text == "signed ok"
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            await sdk(lambda: CLIENTS["bedrock"](gw.url, "smart", "hi", secret_access_key="wrong"))
        assert exc.value.response["Error"]["Code"] == "InvalidSignatureException"
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            await sdk(lambda: CLIENTS["bedrock"](gw.url, "smart", "hi", access_key_id="AKIDUNKNOWN"))
        assert exc.value.response["Error"]["Code"] == "UnrecognizedClientException"
    assert len(mock.received) == 1


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", PROTOCOLS)
@pytest.mark.parametrize("client", PROTOCOLS)
async def test_streamed_any_to_any(client, vendor):
    mock = MockVendor(reply="The quick brown fox jumps over the lazy dog.",
                      aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config_for(vendor), a=mock) as gw:
        text = await sdk(lambda: CLIENTS[client](gw.url, "smart", "hello there", stream=True))
        record = await last_record(gw)
    assert text == "The quick brown fox jumps over the lazy dog."
    assert record["state"] == "done", record
    assert mock.received[-1]["stream"] is True


def failover_config(first: str, second: str) -> dict:
    providers = {}
    for name, protocol in (("first", first), ("second", second)):
        url = "{a}" if name == "first" else "{b}"
        base = url + "/v1" if protocol in ("openai", "responses") else url
        providers[name] = {"protocol": protocol, "base_url": base}
        if protocol in SIGNED:
            providers[name].update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
        else:
            providers[name]["key"] = "k"
    return {"providers": providers, "pools": {"smart": {"strategy": "ordered", "members": [
        {"provider": "first", "model": "m1", "priority": 0}, {"provider": "second", "model": "m2", "priority": 1}]}}}


@pytest.mark.sdk
@pytest.mark.parametrize("client,first,second", [
    ("openai", "anthropic", "gemini"), ("anthropic", "openai", "bedrock"), ("gemini", "cohere", "openai"),
    ("bedrock", "responses", "anthropic"), ("cohere", "bedrock", "openai"), ("responses", "cohere", "gemini"),
    ("bedrock-invoke", "bedrock-invoke", "anthropic"), ("anthropic", "bedrock-invoke", "bedrock"),
])
async def test_stream_failover_before_first_byte_across_protocols(client, first, second):
    a = MockVendor(aws_credentials={"AKIDVENDOR": "vendor-secret"})
    b = MockVendor(reply="answer from the second member", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    a.fail_next({"reset": "during", "after": 1})    # the first frame (no content yet), then the socket dies
    async with gateway_with(failover_config(first, second), a=a, b=b) as gw:
        text = await sdk(lambda: CLIENTS[client](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert text == "answer from the second member"
    assert [s["state"] for s in record["path"]][-3:] == ["dispatched", "streaming", "done"]
    assert "failing_over" in [s["state"] for s in record["path"]]


@pytest.mark.sdk
@pytest.mark.parametrize("client,vendor", [("openai", "gemini"), ("anthropic", "cohere"), ("gemini", "anthropic"),
                                           ("bedrock", "openai"), ("cohere", "bedrock"), ("responses", "anthropic"),
                                           ("bedrock-invoke", "openai"), ("bedrock-invoke", "bedrock-invoke")])
async def test_stream_failure_after_content_raises_in_every_sdk(client, vendor):
    a = MockVendor(reply="a b c d e f g h i j", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    a.fail_next({"reset": "during", "after": 5})
    async with gateway_with(config_for(vendor), a=a) as gw:
        with pytest.raises(Exception) as exc:
            await sdk(lambda: CLIENTS[client](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert record["state"] == "failed"
    assert "AssertionError" not in type(exc.value).__name__


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", PROTOCOLS)
@pytest.mark.parametrize("error", ["rate", "overloaded"])
async def test_error_event_before_content_fails_over_for_every_vendor(vendor, error):
    """A 200 stream whose first event is the vendor's own error (Anthropic
    `event: error`, Bedrock throttlingException frame, ...) is classified and
    failed over like the HTTP error it stands for."""
    a = MockVendor(aws_credentials={"AKIDVENDOR": "vendor-secret"})
    b = MockVendor(reply="second member", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    a.fail_next({"error_event": error})
    async with gateway_with(failover_config(vendor, "openai"), a=a, b=b) as gw:
        text = await sdk(lambda: CLIENTS["openai"](gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert text == "second member"
    assert record["attempts"][0]["outcome"] in ("rate", "server"), record["attempts"]


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["reject", "drop"])
async def test_inexpressible_field_is_rejected_or_dropped_with_a_warning(policy):
    import httpx
    config = config_for("anthropic")
    config["pools"]["smart"]["unsupported"] = policy
    mock = MockVendor(reply="ok")
    body = {"model": "smart", "messages": [{"role": "user", "content": "x"}], "logit_bias": {"50256": -100}}
    async with gateway_with(config, a=mock) as gw:
        async with httpx.AsyncClient() as http:
            response = await http.post(gw.url + "/v1/chat/completions", json=body)
    if policy == "reject":
        assert response.status_code == 400
        assert "logit_bias" in response.json()["error"]["message"]
        assert mock.received == []
    else:
        assert response.status_code == 200
        assert "logit_bias" in response.headers["x-busbar-warning"]
        assert "logit_bias" not in mock.received[-1]["body"]
