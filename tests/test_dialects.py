"""Every protocol module provides the Dialect contract the driver relies on."""
from __future__ import annotations

import importlib

import pytest

from busbar.faults import ClientError
from busbar.protocols import PROTOCOLS, get_dialect, module_name
from busbar.protocols.base import DialectContract

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_dialect_meets_the_contract_with_its_own_codec(protocol):
    dialect = get_dialect(protocol)
    assert isinstance(dialect, DialectContract)
    module = importlib.import_module(module_name(protocol))
    codec = dialect.codec
    assert codec.decoder is module.StreamDecoder and codec.encoder is module.StreamEncoder
    assert codec.parse_request is module._parse_request and codec.render_response is module._render_response
    assert dialect.stream_content_type == module.StreamEncoder.content_type


def test_the_driver_modules_name_no_vendor():
    """What the driver needs of a protocol comes from its Dialect."""
    import busbar
    from pathlib import Path
    root = Path(busbar.__file__).parent
    for name in ("gateway", "admission", "exchange", "relay", "outcome", "providers", "records"):
        text = (root / f"{name}.py").read_text()
        for vendor in PROTOCOLS:
            assert f'"{vendor}"' not in text, (name, vendor)


@pytest.mark.parametrize("protocol, body, where", [
    ("openai", {"model": "x", "messages": [{"content": "hi"}]}, "messages[0]: 'role' is a required property"),
    ("anthropic", {"model": "x", "max_tokens": 5, "messages": [{"content": "hi"}]},
     "messages[0]: 'role' is a required property"),
    ("bedrock", {"messages": [{"role": "user"}]}, "messages[0]: 'content' is a required property"),
    ("cohere", {"model": "x", "messages": [{"content": "x"}]}, "messages[0]: 'role' is a required property"),
    ("responses", {"model": "x", "input": [{"type": "message", "role": "user", "content": [{"type": "input_text"}]}]},
     "input[0].content[0]: 'text' is a required property"),
])
def test_a_malformed_body_names_where_not_a_python_repr(protocol, body, where):
    with pytest.raises(ClientError) as exc:
        get_dialect(protocol).parse_request(body, {})
    assert exc.value.status == 400
    assert exc.value.message.endswith(where), exc.value.message
    assert "Error(" not in exc.value.message


# where each official SDK reads its request id (their sources: openai-python/-node
# `x-request-id`, anthropic `request-id`, botocore `x-amzn-requestid`; google-genai
# and cohere read none), ADR 0029
SDK_REQUEST_ID = {"openai": b"x-request-id", "responses": b"x-request-id", "anthropic": b"request-id",
                  "bedrock": b"x-amzn-requestid", "bedrock-invoke": b"x-amzn-requestid", "gemini": None,
                  "cohere": None}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_answers_carry_the_gateway_id_where_the_sdk_reads_it(protocol):
    dialect = get_dialect(protocol)
    assert dialect.request_id_header == SDK_REQUEST_ID[protocol]
    headers = dialect.request_id_headers(b"bb-1f")
    assert (b"x-busbar-request-id", b"bb-1f") in headers
    assert headers == [(b"x-busbar-request-id", b"bb-1f")] + (
        [(dialect.request_id_header, b"bb-1f")] if dialect.request_id_header else [])
    # a same-protocol error keeps some of the vendor's headers: never its request id
    assert dialect.request_id_header not in dialect.error_headers_kept
    vendor = [(b"content-type", b"application/json"), (dialect.request_id_header or b"x-request-id", b"req_v1")]
    assert dialect.upstream_request_id(vendor) == ("req_v1" if dialect.request_id_header else None)


def test_a_vendor_request_id_is_kept_bounded():
    dialect = get_dialect("openai")
    assert dialect.upstream_request_id([(b"x-request-id", b"r" * 5000)]) == "r" * 128
    assert dialect.upstream_request_id([(b"content-type", b"application/json")]) is None
