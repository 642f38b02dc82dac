"""Bedrock InvokeModel with an Anthropic Messages body (issue 19: Claude Code's
Bedrock mode, the anthropic SDK's AnthropicBedrock, boto3 invoke_model): the
seventh dialect, `bedrock-invoke`, inbound and outbound.

Oracles: botocore (its eventstream parser and bedrock-runtime service model),
the anthropic SDK's own Bedrock stream decoder and client, the JSON Schemas."""
from __future__ import annotations

import hashlib
import json

import orjson
import pytest

from busbar import ir
from busbar.aws import eventstream as es
from busbar.faults import ClientError
from busbar.mock import MockVendor
from busbar.protocols import get_dialect
from busbar.protocols.embeddings import bedrock as embed_bedrock
from clients import CLIENTS, anthropic_bedrock
from harness import gateway_with, last_record, sdk
from test_translation_e2e import config_for
import strategies as S

INV, AN, BR = get_dialect("bedrock-invoke"), get_dialect("anthropic"), get_dialect("bedrock")
EPH = {"type": "ephemeral"}
# what Claude Code sends in Bedrock mode, in its shape (system blocks with cache marks,
# betas in the body, tools, thinking, metadata)
CLAUDE_CODE_BODY = {
    "anthropic_version": "bedrock-2023-05-31",
    "anthropic_beta": ["claude-code-20250219", "interleaved-thinking-2025-05-14"],
    "max_tokens": 32000,
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": EPH}],
    "messages": [{"role": "user", "content": [{"type": "text", "text": "list the files", "cache_control": EPH}]}],
    "tools": [{"name": "Bash", "description": "Run a command",
               "input_schema": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}],
    "thinking": {"type": "enabled", "budget_tokens": 4096},
    "metadata": {"user_id": "user_abc"},
    "temperature": 1,
}


def _signed(vendor: str) -> dict:
    config = config_for(vendor)
    if vendor == "bedrock-invoke":
        config["pools"]["smart"]["members"][0]["model"] = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
    return config


# ---------------------------------------------------------------------------
# the codec (pure)


@pytest.mark.pure
def test_a_claude_code_body_round_trips_and_is_the_anthropic_body_without_the_envelope():
    req = INV.parse_request(CLAUDE_CODE_BODY, {"model": "smart", "action": "invoke"})
    body, warnings = INV.render_request(req, "ignored-model")
    assert warnings == []
    assert orjson.loads(body) == CLAUDE_CODE_BODY
    assert next(iter(orjson.loads(body))) == "anthropic_version"
    S.assert_valid("bedrock-invoke", "request", orjson.loads(body))
    # to Claude on Anthropic: the same body, with `model`, without Bedrock's envelope fields
    direct, warnings = AN.render_request(req, "claude-sonnet-4-5")
    direct = orjson.loads(direct)
    assert warnings == []
    assert direct["model"] == "claude-sonnet-4-5"
    assert "anthropic_version" not in direct and "anthropic_beta" not in direct
    assert {k: v for k, v in direct.items() if k != "model"} == {
        k: v for k, v in CLAUDE_CODE_BODY.items() if k not in ("anthropic_version", "anthropic_beta")}


@pytest.mark.pure
def test_an_anthropic_body_renders_for_invoke_without_model_or_stream():
    obj = {"model": "smart", "max_tokens": 10, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    req = AN.parse_request(obj, {})
    out = orjson.loads(INV.render_request(req, "anthropic.claude-x")[0])
    assert out == {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 10,
                   "messages": [{"role": "user", "content": "hi"}]}
    S.assert_valid("bedrock-invoke", "request", out)


@pytest.mark.pure
def test_cache_breakpoints_and_signed_thinking_cross_to_converse_and_back():
    """Invoke -> Converse (Claude on Bedrock's other API): cachePoint markers, and
    the thinking signature goes as it is (Claude signs it, whichever API)."""
    body = dict(CLAUDE_CODE_BODY, messages=CLAUDE_CODE_BODY["messages"] + [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "EqQBsig"},
                                          {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {"command": "ls"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "a.txt"}]}])
    req = INV.parse_request(body, {"action": "invoke"})
    conv = orjson.loads(BR.render_request(req, "us.anthropic.claude-sonnet-4-5-20250929-v1:0")[0])
    assert conv["system"] == [{"text": "You are Claude Code."}, {"cachePoint": {"type": "default"}}]
    assert conv["messages"][1]["content"][0] == {"reasoningContent": {"reasoningText": {"text": "hm",
                                                                                        "signature": "EqQBsig"}}}
    back = orjson.loads(INV.render_request(BR.parse_request(conv, {"action": "converse"}), "m")[0])
    assert back["system"] == CLAUDE_CODE_BODY["system"]
    assert back["messages"][1]["content"][0]["signature"] == "EqQBsig"


@pytest.mark.pure
def test_the_anthropic_sdks_own_version_is_kept_for_bedrock():
    """AnthropicBedrock sends its API version date as anthropic_version (not AWS's
    bedrock-2023-05-31): an invoke member gets it back as the client sent it."""
    from anthropic._constants import ANTHROPIC_API_VERSION
    body = {"anthropic_version": ANTHROPIC_API_VERSION, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}
    req = INV.parse_request(body, {"action": "invoke"})
    assert orjson.loads(INV.render_request(req, "m")[0])["anthropic_version"] == ANTHROPIC_API_VERSION
    assert "anthropic_version" not in orjson.loads(AN.render_request(req, "m")[0])
    S.assert_valid("bedrock-invoke", "request", body)


@pytest.mark.pure
def test_the_body_picks_the_dialect():
    assert INV.for_body(CLAUDE_CODE_BODY) is INV
    assert INV.for_body({"max_tokens": 5, "messages": []}) is INV
    assert INV.for_body({"inputText": "x"}) is embed_bedrock.TITAN
    assert INV.for_body({"texts": ["x"], "input_type": "search_query"}) is embed_bedrock.COHERE_EMBED
    assert INV.for_body({"query": "q", "documents": ["d"]}) is embed_bedrock.COHERE_RERANK
    for other in ({"schemaVersion": "messages-v1", "messages": [], "max_tokens": 5}, {"prompt": "x"}, {"messages": []}):
        with pytest.raises(ClientError) as exc:
            INV.for_body(other)
        assert exc.value.status == 400 and "anthropic_version" in exc.value.message and "Converse" in exc.value.message


@pytest.mark.pure
def test_a_malformed_body_names_where():
    with pytest.raises(ClientError) as exc:
        INV.parse_request({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": [{"content": "x"}]})
    assert exc.value.message.endswith("messages[0]: 'role' is a required property"), exc.value.message
    with pytest.raises(ClientError, match="anthropic_beta"):
        INV.parse_request({"anthropic_version": "bedrock-2023-05-31", "anthropic_beta": "x", "max_tokens": 5,
                           "messages": [{"role": "user", "content": "x"}]})


def _oracle_events(data: bytes) -> list:
    """The anthropic SDK's own Bedrock stream decoder (botocore underneath) over `data`."""
    from anthropic.lib.bedrock._stream_decoder import AWSEventStreamDecoder
    return list(AWSEventStreamDecoder().iter_bytes(iter([data])))


@pytest.mark.pure
def test_stream_frames_are_what_the_anthropic_sdk_and_botocore_read():
    events = [ir.MessageStart("msg_1", "m", ir.Usage(12)), ir.BlockStart(0, ir.Text("")), ir.TextDelta(0, "Hel"),
              ir.TextDelta(0, "lo"), ir.BlockStop(0), ir.UsageEvent(ir.Usage(12, 3)), ir.MessageStop(ir.StopReason.END_TURN)]
    enc = INV.stream_encoder("claude")
    data = b"".join(enc.encode(e) for e in events) + enc.finish()
    frames = es.decode_all(data)
    assert {(m.headers[":message-type"], m.headers[":event-type"]) for m in frames} == {("event", "chunk")}
    sse = _oracle_events(data)
    assert [e.event for e in sse] == ["message_start", "content_block_start", "content_block_delta",
                                      "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert [json.loads(e.data)["type"] for e in sse] == [e.event for e in sse]
    stop = json.loads(sse[-1].data)
    assert stop["amazon-bedrock-invocationMetrics"]["inputTokenCount"] == 12
    assert stop["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 3
    # and it decodes back to the same events
    from stream_support import decode
    back = decode("bedrock-invoke", data)
    assert [type(e) for e in back] == [type(e) for e in events]
    assert "".join(e.text for e in back if type(e) is ir.TextDelta) == "Hello"


@pytest.mark.pure
def test_a_stream_error_is_an_exception_frame_both_sdks_raise_on():
    enc = INV.stream_encoder("claude")
    data = enc.encode(ir.MessageStart("msg_1", "m")) + enc.error("rate_limit", "slow down")
    last = es.decode_all(data)[-1]
    assert last.headers[":message-type"] == "exception"
    assert last.headers[":exception-type"] == "throttlingException"
    err = _oracle_events(data)[-1]
    assert err.event == "error" and json.loads(err.data)["error"] == {"type": "throttlingException",
                                                                      "message": "slow down"}
    from stream_support import decode
    got = decode("bedrock-invoke", data)[-1]
    assert type(got) is ir.ErrorEvent and got.status == 429 and got.fault.cls.value == "rate"


@pytest.mark.pure
def test_routes():
    from busbar.protocols.routes import guess_protocol, match_route
    assert match_route(b"/model/smart/invoke") == ("bedrock-invoke", {"model": "smart", "action": "invoke"})
    assert match_route(b"/model/us.anthropic.claude%3A0/invoke-with-response-stream") == (
        "bedrock-invoke", {"model": "us.anthropic.claude:0", "action": "invoke-with-response-stream"})
    assert match_route(b"/model/smart/converse") == ("bedrock", {"model": "smart", "action": "converse"})
    for path in (b"/model/smart/invoke-async", b"/guardrail/g1/version/1/apply", b"/async-invoke",
                 b"/inference-profiles/x/y", b"/model/smart", b"/custom-models", b"/model-invocation-jobs",
                 b"/provisioned-model-throughputs", b"/guardrails"):
        assert guess_protocol(path) == "bedrock", path
    assert guess_protocol(b"/models") == guess_protocol(b"/nope") == "openai"
    assert INV.inbound_model({"model": "arn:aws:bedrock:us-east-1:1:application-inference-profile/smart"}, {}) == "smart"
    assert INV.upstream_path("/", "anthropic.claude-x:0", True) == "/model/anthropic.claude-x%3A0/invoke-with-response-stream"
    assert INV.upstream_path("", "a", False) == "/model/a/invoke"


# ---------------------------------------------------------------------------
# over sockets: boto3 and AnthropicBedrock against every kind of member


VENDORS = ["openai", "gemini", "anthropic", "bedrock", "bedrock-invoke", "responses", "cohere"]


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("vendor", VENDORS)
async def test_anthropic_bedrock_client_against_every_member(vendor, stream):
    mock = MockVendor(reply="The quick brown fox.", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_signed(vendor), a=mock) as gw:
        text = await sdk(lambda: anthropic_bedrock(gw.url, "smart", "hello there", stream))
        record = await last_record(gw)
    assert text == "The quick brown fox."
    assert record["state"] == "done" and record["client_protocol"] == "bedrock-invoke"
    assert mock.received[-1]["protocol"] == vendor and mock.received[-1]["stream"] is stream


@pytest.mark.sdk
async def test_same_dialect_passthrough_is_byte_for_byte_and_signed_again():
    """A bedrock-invoke client and a Claude-on-Bedrock invoke member: the body the
    vendor gets is the client's bytes (the model only in the path), re-signed with
    the provider's credentials (the mock verifies them); the answer is the vendor's bytes."""
    import boto3
    mock = MockVendor(reply="passed through", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    raw = (b'{ "anthropic_version":"bedrock-2023-05-31" , "anthropic_beta": ["context-1m-2025-08-07"],'
           b'"max_tokens": 64, "messages": [{"role":"user","content":"hi \\u00e9"}], "top_k": 3}')
    async with gateway_with(_signed("bedrock-invoke"), a=mock) as gw:
        client = boto3.client("bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1",
                              aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")
        answer = await sdk(lambda: client.invoke_model(modelId="smart", body=raw)["body"].read())
        seen = mock.received[-1]
        chunks = await sdk(lambda: list(client.invoke_model_with_response_stream(modelId="smart", body=raw)["body"]))
        seen_stream = mock.received[-1]
    assert seen["raw"].encode() == raw and seen_stream["raw"].encode() == raw
    assert seen["path"] == "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke"
    assert seen_stream["path"].endswith("/invoke-with-response-stream")
    assert "Credential=AKIDVENDOR/" in seen["headers"]["authorization"]
    assert hashlib.sha256(answer).hexdigest() == seen["answer_sha256"]
    assert json.loads(answer)["content"][0]["text"] == "passed through"
    texts = [json.loads(c["chunk"]["bytes"]) for c in chunks]
    assert "".join(t["delta"]["text"] for t in texts if t["type"] == "content_block_delta") == "passed through"


@pytest.mark.sdk
async def test_passthrough_stream_bytes_are_the_vendors():
    import httpx
    mock = MockVendor(reply="one two three", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    body = orjson.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                         "messages": [{"role": "user", "content": "x"}]})
    async with gateway_with(_signed("bedrock-invoke"), a=mock) as gw:
        async with httpx.AsyncClient() as http:
            response = await http.post(gw.url + "/model/smart/invoke-with-response-stream", content=body,
                                       headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.amazon.eventstream"
    assert hashlib.sha256(response.content).hexdigest() == mock.received[-1]["answer_sha256"]


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", ["openai", "anthropic", "bedrock-invoke"])
async def test_a_tool_round_trip_with_anthropic_bedrock(vendor):
    import anthropic
    mock = MockVendor(use_tools=True, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    tool = {"name": "get_weather", "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    async with gateway_with(_signed(vendor), a=mock) as gw:
        client = anthropic.AnthropicBedrock(base_url=gw.url, aws_region="us-east-1", aws_access_key="AKIDGATEWAY",
                                            aws_secret_key="gateway-secret", max_retries=0)
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        first = await sdk(lambda: client.messages.create(model="smart", max_tokens=256, tools=[tool], messages=messages))
        call = next(b for b in first.content if b.type == "tool_use")
        assert call.input == {"city": "Paris"} and first.stop_reason == "tool_use"
        messages += [{"role": "assistant", "content": first.content},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]

        def streamed():
            with client.messages.stream(model="smart", max_tokens=256, tools=[tool], messages=messages) as s:
                return s.get_final_message()
        second = await sdk(streamed)
    assert second.content[-1].text == "tool said: sunny"


@pytest.mark.sdk
@pytest.mark.parametrize("client,vendor", [("bedrock-invoke", "openai"), ("bedrock-invoke", "bedrock-invoke"),
                                           ("bedrock", "bedrock")])
async def test_vendor_errors_reach_boto3_in_bedrocks_shape(client, vendor):
    """Translated, or the vendor's own error passed through with its x-amzn-ErrorType
    (botocore names the exception from that header, not from the body)."""
    import botocore.exceptions
    mock = MockVendor(aws_credentials={"AKIDVENDOR": "vendor-secret"})
    mock.fail_next({"error": "invalid"})
    async with gateway_with(_signed(vendor), a=mock) as gw:
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            await sdk(lambda: CLIENTS[client](gw.url, "smart", "x"))
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            await sdk(lambda: CLIENTS[client](gw.url, "no-such-pool", "x"))
    assert exc.value.response["Error"]["Code"] == "ValidationException"
    assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "no-such-pool" in missing.value.response["Error"]["Message"]


@pytest.mark.sdk
@pytest.mark.parametrize("vendor", ["openai", "bedrock-invoke"])
async def test_a_stream_broken_after_content_raises_in_boto3_and_anthropic_bedrock(vendor):
    """An in-stream vendor error after content: an exception frame, which boto3
    raises as EventStreamError and AnthropicBedrock as an API error."""
    import anthropic
    import botocore.exceptions
    mock = MockVendor(reply="a b c d e f", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    mock.fail_next({"error_event": "overloaded", "after": 3}, {"error_event": "overloaded", "after": 3})
    async with gateway_with(_signed(vendor), a=mock) as gw:
        with pytest.raises(botocore.exceptions.EventStreamError) as boto_exc:
            await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, "smart", "x", stream=True))
        with pytest.raises(anthropic.APIError):
            await sdk(lambda: anthropic_bedrock(gw.url, "smart", "x", stream=True))
        record = await last_record(gw)
    assert record["state"] == "failed"
    assert boto_exc.value.response["Error"]["Code"].endswith("Exception")


@pytest.mark.sdk
async def test_embeddings_on_invoke_still_answer_from_a_titan_member():
    import boto3
    config = {"providers": {"aws": {"protocol": "bedrock", "base_url": "{a}", "region": "us-east-1",
                                    "access_key_id": "AKIDVENDOR", "secret_access_key": "vendor-secret"}},
              "pools": {"emb": {"members": [{"provider": "aws", "model": "amazon.titan-embed-text-v2:0"}]}}}
    mock = MockVendor(aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(config, a=mock) as gw:
        client = boto3.client("bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1",
                              aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")
        out = await sdk(lambda: json.loads(client.invoke_model(modelId="emb", body=json.dumps(
            {"inputText": "hello world"}))["body"].read()))
    assert len(out["embedding"]) == 1024 and out["inputTextTokenCount"] > 0


@pytest.mark.sdk
async def test_signed_invoke_is_verified_and_a_bedrock_api_key_can_be_a_gateway_key():
    import anthropic
    import botocore.exceptions
    config = {**config_for("anthropic"), "auth": {
        "keys": [{"id": "team", "key": "gw-key-1"}],
        "aws_credentials": [{"access_key_id": "AKIDGATEWAY", "secret_access_key": "gateway-secret", "key_id": "team"}]}}
    mock = MockVendor(reply="ok")
    async with gateway_with(config, a=mock) as gw:
        assert await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, "smart", "x")) == "ok"
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, "smart", "x", secret_access_key="wrong"))
        assert exc.value.response["Error"]["Code"] == "InvalidSignatureException"
    config["auth"].pop("aws_credentials")
    async with gateway_with(config, a=mock) as gw:
        client = anthropic.AnthropicBedrock(base_url=gw.url, aws_region="us-east-1", api_key="gw-key-1", max_retries=0)
        message = await sdk(lambda: client.messages.create(model="smart", max_tokens=16,
                                                           messages=[{"role": "user", "content": "x"}]))
        assert message.content[0].text == "ok"
        bad = anthropic.AnthropicBedrock(base_url=gw.url, aws_region="us-east-1", api_key="nope", max_retries=0)
        with pytest.raises(anthropic.APIStatusError) as refused:
            await sdk(lambda: bad.messages.create(model="smart", max_tokens=16,
                                                  messages=[{"role": "user", "content": "x"}]))
    assert refused.value.status_code in (401, 403)
    assert refused.value.response.headers["x-amzn-errortype"].endswith("Exception")


@pytest.mark.sdk
async def test_anthropic_beta_in_the_body_reaches_an_invoke_member():
    """Betas ride in the body on InvokeModel: passed through as they are, and kept
    when the IR is rendered for an invoke member again (a resumed stream, a hedge)."""
    mock = MockVendor(reply="ok", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_signed("bedrock-invoke"), a=mock) as gw:
        await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, "smart", "x", anthropic_beta=["context-1m-2025-08-07"]))
    assert mock.received[-1]["body"]["anthropic_beta"] == ["context-1m-2025-08-07"]
    req = INV.parse_request(mock.received[-1]["body"], {"action": "invoke"})
    assert orjson.loads(INV.render_request(req, "m")[0])["anthropic_beta"] == ["context-1m-2025-08-07"]


# ---------------------------------------------------------------------------
# Bedrock's control plane: the pools as inference profiles and foundation models


LISTED = {"providers": {"up": {"protocol": "anthropic", "base_url": "{a}", "key": "k"},
                        "oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
          "pools": {"smart": {"members": [{"provider": "up", "model": "claude-sonnet-4-5"},
                                          {"provider": "oai", "model": "gpt-4o"}]},
                    "cheap": {"members": [{"provider": "oai", "model": "gpt-4o-mini"}]}}}


def _control(url: str, **kw):
    import boto3
    return boto3.client("bedrock", endpoint_url=url, region_name=kw.pop("region", "eu-west-3"),
                        aws_access_key_id="AKIDGATEWAY", aws_secret_access_key=kw.pop("secret", "gateway-secret"))


@pytest.mark.sdk
async def test_boto3_lists_the_pools_as_inference_profiles_and_foundation_models():
    async with gateway_with(LISTED, a=MockVendor(reply="ok")) as gw:
        client = _control(gw.url)
        profiles = await sdk(lambda: client.list_inference_profiles()["inferenceProfileSummaries"])
        system = await sdk(lambda: client.list_inference_profiles(typeEquals="SYSTEM_DEFINED")["inferenceProfileSummaries"])
        application = await sdk(lambda: client.list_inference_profiles(typeEquals="APPLICATION"))
        pages = await sdk(lambda: [p["inferenceProfileSummaries"][0]["inferenceProfileId"] for p in
                                   client.get_paginator("list_inference_profiles").paginate(
                                       PaginationConfig={"PageSize": 1})])
        one = await sdk(lambda: client.get_inference_profile(inferenceProfileIdentifier="smart"))
        models = await sdk(lambda: client.list_foundation_models()["modelSummaries"])
        anthropic_only = await sdk(lambda: client.list_foundation_models(byProvider="Anthropic")["modelSummaries"])
        detail = await sdk(lambda: client.get_foundation_model(modelIdentifier="cheap")["modelDetails"])
        import botocore.exceptions
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            await sdk(lambda: client.get_inference_profile(inferenceProfileIdentifier="nope"))
        # the listed ARN is a model id InvokeModel takes
        arn = profiles[0]["inferenceProfileArn"]
        text = await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, arn, "x"))
    assert [p["inferenceProfileId"] for p in profiles] == ["smart", "cheap"] == pages
    assert system == profiles and application["inferenceProfileSummaries"] == []
    smart = profiles[0]
    assert smart["status"] == "ACTIVE" and smart["type"] == "SYSTEM_DEFINED"
    assert arn == "arn:aws:bedrock:eu-west-3:000000000000:inference-profile/smart"
    assert [m["modelArn"] for m in smart["models"]] == ["arn:aws:bedrock:eu-west-3::foundation-model/claude-sonnet-4-5",
                                                        "arn:aws:bedrock:eu-west-3::foundation-model/gpt-4o"]
    assert one["inferenceProfileId"] == "smart" and one["models"] == smart["models"]
    assert [m["modelId"] for m in models] == ["smart", "cheap"] and anthropic_only == []
    assert detail["modelId"] == "cheap" and detail["responseStreamingSupported"] is True
    assert missing.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert "smart, cheap" in missing.value.response["Error"]["Message"]
    assert text == "ok"


@pytest.mark.sdk
async def test_listing_checks_the_signature_when_the_gateway_verifies_sigv4():
    import botocore.exceptions
    config = {**LISTED, "auth": {"aws_credentials": [{"access_key_id": "AKIDGATEWAY",
                                                      "secret_access_key": "gateway-secret"}]}}
    async with gateway_with(config, a=MockVendor()) as gw:
        listed = await sdk(lambda: _control(gw.url).list_inference_profiles()["inferenceProfileSummaries"])
        with pytest.raises(botocore.exceptions.ClientError) as refused:
            await sdk(lambda: _control(gw.url, secret="wrong").list_inference_profiles())
    assert len(listed) == 2
    assert refused.value.response["Error"]["Code"] == "InvalidSignatureException"


@pytest.mark.sdk
async def test_operations_not_served_answer_in_bedrocks_shape_naming_what_is():
    import boto3
    import botocore.exceptions
    async with gateway_with(LISTED, a=MockVendor()) as gw:
        runtime = boto3.client("bedrock-runtime", endpoint_url=gw.url, region_name="us-east-1",
                               aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret")
        calls = [
            lambda: runtime.apply_guardrail(guardrailIdentifier="g1", guardrailVersion="1", source="INPUT",
                                            content=[{"text": {"text": "x"}}]),
            lambda: runtime.start_async_invoke(modelId="smart", modelInput={}, outputDataConfig={
                "s3OutputDataConfig": {"s3Uri": "s3://b/k"}}),
            lambda: runtime.list_async_invokes(),
            lambda: _control(gw.url).list_guardrails(),
            lambda: _control(gw.url).list_custom_models(),
        ]
        errors = []
        for call in calls:
            with pytest.raises(botocore.exceptions.ClientError) as exc:
                await sdk(call)
            errors.append(exc.value.response)
    for response in errors:
        assert response["ResponseMetadata"]["HTTPStatusCode"] == 404
        assert response["Error"]["Code"] == "UnknownOperationException"
        assert "/invoke-with-response-stream" in response["Error"]["Message"]
        assert "guardrails" in response["Error"]["Message"]


# ---------------------------------------------------------------------------
# beta flags: Anthropic's header, InvokeModel's body field, Converse's additionalModelRequestFields


@pytest.mark.pure
def test_beta_flags_cross_between_the_header_and_the_body_fields():
    header = AN.header_params([(b"anthropic-beta", b"interleaved-thinking-2025-05-14, oauth-2025-04-20"),
                               (b"anthropic-beta", b"context-1m-2025-08-07")])
    assert header == {"beta": ["interleaved-thinking-2025-05-14", "oauth-2025-04-20", "context-1m-2025-08-07"]}
    req = AN.parse_request({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, header)
    body, warnings = INV.render_request(req, "anthropic.claude-x", unsupported="reject")
    assert orjson.loads(body)["anthropic_beta"] == ["interleaved-thinking-2025-05-14", "context-1m-2025-08-07"]
    assert warnings == ["dropped hint 'anthropic-beta': the beta 'oauth-2025-04-20' is not one Claude on Bedrock serves"]
    conv = orjson.loads(BR.render_request(req, "us.anthropic.claude-sonnet-4-5-20250929-v1:0")[0])
    assert conv["additionalModelRequestFields"]["anthropic_beta"] == ["interleaved-thinking-2025-05-14",
                                                                      "context-1m-2025-08-07"]
    assert "additionalModelRequestFields" not in orjson.loads(BR.render_request(req, "amazon.nova-pro-v1:0")[0])
    assert AN.request_headers(req) == [(b"anthropic-beta", b"interleaved-thinking-2025-05-14,oauth-2025-04-20,"
                                                           b"context-1m-2025-08-07")]
    # a Bedrock client's own flags: to the Anthropic API as its header, back to Bedrock as they are
    inv = INV.parse_request(dict(CLAUDE_CODE_BODY), {"action": "invoke"})
    assert AN.request_headers(inv) == [(b"anthropic-beta", b"claude-code-20250219,interleaved-thinking-2025-05-14")]
    assert orjson.loads(INV.render_request(inv, "m")[0])["anthropic_beta"] == CLAUDE_CODE_BODY["anthropic_beta"]
    converse = BR.parse_request({"messages": [{"role": "user", "content": [{"text": "x"}]}],
                                 "additionalModelRequestFields": {"anthropic_beta": ["context-1m-2025-08-07"]}},
                                {"action": "converse"})
    assert AN.request_headers(converse) == [(b"anthropic-beta", b"context-1m-2025-08-07")]
    assert orjson.loads(INV.render_request(converse, "m")[0])["anthropic_beta"] == ["context-1m-2025-08-07"]
    assert INV.request_headers(inv) == [] and get_dialect("openai").request_headers(inv) == []


@pytest.mark.sdk
async def test_an_anthropic_clients_betas_reach_claude_on_bedrock_and_back():
    """The anthropic SDK's `betas=` (its header) to a Claude-on-Bedrock invoke member:
    the flags Bedrock serves in the body, the others named in x-busbar-warning; an
    AnthropicBedrock client's flags (the body field) to Claude on Anthropic as its header."""
    import anthropic
    mock = MockVendor(reply="ok", aws_credentials={"AKIDVENDOR": "vendor-secret"})
    async with gateway_with(_signed("bedrock-invoke"), a=mock) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
        raw = await sdk(lambda: client.beta.messages.with_raw_response.create(
            model="smart", max_tokens=16, messages=[{"role": "user", "content": "x"}],
            betas=["context-1m-2025-08-07", "files-api-2025-04-14"]))
    assert mock.received[-1]["body"]["anthropic_beta"] == ["context-1m-2025-08-07"]
    assert "files-api-2025-04-14" in raw.headers["x-busbar-warning"]
    mock = MockVendor(reply="ok")
    async with gateway_with(config_for("anthropic"), a=mock) as gw:
        bedrock_client = anthropic.AnthropicBedrock(base_url=gw.url, aws_region="us-east-1", max_retries=0,
                                                    aws_access_key="AKIDGATEWAY", aws_secret_key="gateway-secret")
        await sdk(lambda: bedrock_client.beta.messages.create(model="smart", max_tokens=16, betas=["context-1m-2025-08-07"],
                                                               messages=[{"role": "user", "content": "x"}]))
    seen = mock.received[-1]
    assert seen["headers"]["anthropic-beta"] == "context-1m-2025-08-07"
    assert "anthropic_beta" not in seen["body"] and "anthropic_version" not in seen["body"]


@pytest.mark.integration
async def test_the_simulated_bedrock_refuses_an_invoke_body_with_model_or_stream_as_bedrock_does():
    """So a gateway that leaked Anthropic's envelope into InvokeModel would fail here."""
    import httpx
    mock = MockVendor()
    async with trio_vendor(mock) as url:
        async with httpx.AsyncClient() as http:
            bad = await http.post(url + "/model/anthropic.claude-x/invoke", json={
                "model": "m", "stream": True, "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
            good = await http.post(url + "/model/anthropic.claude-x/invoke", json={
                "anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert bad.status_code == 400 and bad.headers["x-amzn-errortype"] == "ValidationException"
    assert "extraneous key [model]" in bad.json()["message"] and "[anthropic_version] not found" in bad.json()["message"]
    assert good.status_code == 200 and good.json()["type"] == "message"


from contextlib import asynccontextmanager  # noqa: E402


@asynccontextmanager
async def trio_vendor(mock):
    import trio
    async with trio.open_nursery() as nursery:
        await nursery.start(mock.serve, "127.0.0.1", 0)
        try:
            yield mock.url
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.sdk
async def test_a_cached_pool_answers_invoke_clients_from_the_cache_buffered_and_streamed():
    config = {"providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "k"}},
              "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}],
                                  "cache": {"mode": "exact", "ttl": 3600, "max_entries": 100}}}}
    mock = MockVendor(reply="cached words here")
    async with gateway_with(config, a=mock) as gw:
        first = await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, "smart", "same question"))
        again = await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, "smart", "same question"))
        hit = await last_record(gw)
        streamed = await sdk(lambda: CLIENTS["bedrock-invoke"](gw.url, "smart", "same question", stream=True))
        replayed = await last_record(gw)
        via_sdk = await sdk(lambda: anthropic_bedrock(gw.url, "smart", "same question", True))
    assert first == again == streamed == via_sdk == "cached words here"
    assert hit["cache"] == "hit" and replayed["cache"] == "hit"
    assert len(mock.received) == 1


# ---------------------------------------------------------------------------
# Claude Code itself in Bedrock mode (issue 19): `claude -p` with CLAUDE_CODE_USE_BEDROCK and
# the gateway as its Bedrock endpoint, against a pool of each vendor protocol


from pathlib import Path  # noqa: E402

CLAUDE_BIN = Path(__file__).parent / "js" / "node_modules" / "@anthropic-ai" / "claude-code" / "bin" / "claude.exe"


@pytest.mark.sdk
@pytest.mark.slow
@pytest.mark.skipif(not CLAUDE_BIN.is_file(), reason="Claude Code not installed (npm ci in tests/js; .ci/run does)")
@pytest.mark.parametrize("vendor", VENDORS)
async def test_claude_code_in_bedrock_mode_through_a_pool_of_every_protocol(vendor, tmp_path):
    """Its telemetry and non-essential traffic off by its documented variables, a
    temporary HOME, dangerous tools disallowed; SigV4-signed with a gateway pair."""
    import trio
    reply = "Hello from the simulated vendor."
    mock = MockVendor(reply=reply, aws_credentials={"AKIDVENDOR": "vendor-secret"})
    config = {**_signed(vendor), "auth": {"aws_credentials": [{"access_key_id": "AKIDGATEWAY",
                                                               "secret_access_key": "gateway-secret"}]}}
    async with gateway_with(config, a=mock) as gw:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "CLAUDE_CODE_USE_BEDROCK": "1",
               "ANTHROPIC_BEDROCK_BASE_URL": gw.url, "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "AKIDGATEWAY", "AWS_SECRET_ACCESS_KEY": "gateway-secret",
               "ANTHROPIC_MODEL": "smart", "ANTHROPIC_SMALL_FAST_MODEL": "smart",
               "ANTHROPIC_DEFAULT_HAIKU_MODEL": "smart", "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1",
               "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1"}
        with trio.fail_after(180):
            done = await trio.run_process(
                [str(CLAUDE_BIN), "-p", "say hello", "--output-format", "stream-json", "--verbose",
                 "--disallowedTools", "Bash,Edit,Write,NotebookEdit,WebFetch,WebSearch"],
                env=env, cwd=str(tmp_path), capture_stdout=True, capture_stderr=True, check=False)
        records = [r for r in gw.gateway.recent if r["pool"] == "smart"]
    lines = [json.loads(line) for line in done.stdout.decode().splitlines() if line.startswith("{")]
    result = next((e for e in lines if e.get("type") == "result"), None)
    assert done.returncode == 0 and result is not None, done.stderr.decode()[-2000:]
    assert result["is_error"] is False and result["result"] == reply, result
    assert records and all(r["state"] == "done" and r["client_protocol"] == "bedrock-invoke" for r in records)
    assert {r["protocol"] for r in mock.received} == {vendor}
    assert all(r["stream"] for r in mock.received)       # Claude Code streams (invoke-with-response-stream)
