"""Any client protocol in, any vendor protocol out, over real sockets: the
official SDK of each protocol against a simulated vendor of each protocol."""
from __future__ import annotations

import pytest

from clients import CLIENTS
from engine.mock import MockVendor
from harness import gateway_with, last_record, sdk

PROTOCOLS = ["openai", "anthropic", "responses", "gemini", "cohere", "bedrock"]


def config_for(vendor_protocol: str) -> dict:
    base = "{a}/v1" if vendor_protocol in ("openai", "responses") else "{a}"
    provider = {"protocol": vendor_protocol, "base_url": base}
    if vendor_protocol == "bedrock":
        provider.update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
    else:
        provider["key"] = "vendor-key"
    return {"providers": {"up": provider},
            "pools": {"smart": {"members": [{"provider": "up", "model": "upstream-model", "max_tokens": 512}]}}}


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
    if vendor != "bedrock":
        assert seen["key"] == "vendor-key"


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
