"""Each official SDK shows the gateway's record id as its request id (ADR 0029):
`_request_id` / `APIStatusError.request_id` (openai, anthropic), botocore's
`ResponseMetadata.RequestId`, on successes, the gateway's own errors, upstream
errors, streams and passthrough; the id finds the request in the admin API, and
the vendor's own id is on the attempt record, never shown to the client as ours."""
from __future__ import annotations

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with, sdk

pytestmark = pytest.mark.sdk

ADMIN = {"authorization": "Bearer admin-secret"}
SIGNED = ("bedrock",)
# (client, member) pairs: one translated and one passthrough per client SDK
PAIRS = [("openai", "anthropic"), ("openai", "openai"), ("anthropic", "openai"), ("anthropic", "anthropic"),
         ("bedrock", "openai"), ("bedrock", "bedrock"), ("responses", "anthropic"), ("responses", "responses")]
# the header each client's SDK reads its request id from, and the one the member's vendor answers with
SDK_HEADER = {"openai": "x-request-id", "responses": "x-request-id", "anthropic": "request-id", "bedrock": "x-amzn-requestid"}


def config(member: str, **extra) -> dict:
    provider = {"protocol": member, "base_url": "{a}/v1" if member in ("openai", "responses") else "{a}"}
    if member in SIGNED:
        provider.update(region="us-east-1", access_key_id="AKIDVENDOR", secret_access_key="vendor-secret")
    else:
        provider["key"] = "vendor-key"
    return {"providers": {"up": provider},
            "pools": {"smart": {"members": [{"provider": "up", "model": "upstream-model", "max_tokens": 256}]}},
            "admin": {"enabled": True, "key": "admin-secret"}, **extra}


def vendor(**kw) -> MockVendor:
    return MockVendor(reply="Hello there.", aws_credentials={"AKIDVENDOR": "vendor-secret"}, **kw)


async def admin_record(gw, request_id: str) -> dict:
    """The request as an operator finds it: the admin API, by the id the client logged."""
    async with httpx.AsyncClient() as client:
        with trio.fail_after(5):
            while True:
                answer = await client.get(f"{gw.url}/admin/api/requests/{request_id}", headers=ADMIN)
                assert answer.status_code == 200, f"{request_id!r} not in the gateway's records: {answer.text}"
                if not answer.json()["in_flight"]:
                    return answer.json()["record"]
                await trio.sleep(0.01)


# ---- each SDK's call, returning (the SDK's request id, the answer's headers) ----
def openai_call(url: str, model: str, stream: bool, api_key: str = "client-key"):
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    if stream:
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
        assert text == "Hello there."
        return raw.request_id, raw.headers
    raw = client.chat.completions.with_raw_response.create(model=model, messages=messages)
    completion = raw.parse()        # what `client.chat.completions.create` returns
    assert completion.choices[0].message.content == "Hello there."
    return completion._request_id, raw.headers


def responses_call(url: str, model: str, stream: bool, api_key: str = "client-key"):
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0)
    raw = client.responses.with_raw_response.create(model=model, input="hi", stream=stream)
    if stream:
        text = "".join(e.delta for e in raw.parse() if e.type == "response.output_text.delta")
        request_id = raw.request_id
    else:
        response = raw.parse()
        text, request_id = response.output_text, response._request_id
    assert text == "Hello there."
    return request_id, raw.headers


def anthropic_call(url: str, model: str, stream: bool, api_key: str = "client-key"):
    import anthropic
    client = anthropic.Anthropic(base_url=url, api_key=api_key, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    if stream:
        with client.messages.stream(model=model, max_tokens=64, messages=messages) as s:
            assert "".join(s.text_stream) == "Hello there."
            return s.request_id, s.response.headers
    raw = client.messages.with_raw_response.create(model=model, max_tokens=64, messages=messages)
    message = raw.parse()
    assert message.content[0].text == "Hello there."
    return message._request_id, raw.headers


def bedrock_call(url: str, model: str, stream: bool, api_key: str = "unused"):
    import boto3
    from botocore.config import Config
    client = boto3.client("bedrock-runtime", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="AKIDGATEWAY", aws_secret_access_key="gateway-secret",
                          config=Config(retries={"total_max_attempts": 1}))
    messages = [{"role": "user", "content": [{"text": "hi"}]}]
    if stream:
        result = client.converse_stream(modelId=model, messages=messages)
        text = "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in result["stream"]
                       if "contentBlockDelta" in e)
    else:
        result = client.converse(modelId=model, messages=messages)
        text = result["output"]["message"]["content"][0]["text"]
    assert text == "Hello there."
    return result["ResponseMetadata"]["RequestId"], result["ResponseMetadata"]["HTTPHeaders"]


CALLS = {"openai": openai_call, "responses": responses_call, "anthropic": anthropic_call, "bedrock": bedrock_call}


def error_of(client: str, exc: BaseException) -> tuple[str | None, int, object]:
    """(the SDK's request id, status, headers) of an SDK's error."""
    if client == "bedrock":
        meta = exc.response["ResponseMetadata"]
        return meta.get("RequestId"), meta["HTTPStatusCode"], meta["HTTPHeaders"]
    return exc.request_id, exc.status_code, exc.response.headers


def header_values(headers, name: str) -> list[str]:
    if isinstance(headers, httpx.Headers):
        return headers.get_list(name)
    return [v for k, v in headers.items() if k.lower() == name]      # botocore's (one value per name)


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
@pytest.mark.parametrize("client,member", PAIRS)
async def test_the_sdk_request_id_is_the_gateway_record_id(client, member, stream):
    mock = vendor()
    async with gateway_with(config(member), a=mock) as gw:
        request_id, headers = await sdk(lambda: CALLS[client](gw.url, "smart", stream))
        record = await admin_record(gw, request_id)
        assert record["status"] == 200 and record["pool"] == "smart" and record["stream"] is stream
        assert record["client_protocol"] == client
        if headers is not None:        # one request id on the answer: ours, never also the vendor's
            assert header_values(headers, SDK_HEADER[client]) == [request_id]
            assert header_values(headers, "x-busbar-request-id") == [request_id]
        # the vendor's own id of the call is kept for the operator, and was not shown as ours
        vendor_id = mock.received[-1]["request_id"]
        assert vendor_id and vendor_id != request_id
        assert record["attempts"][-1]["upstream_request_id"] == vendor_id


@pytest.mark.parametrize("client,member", PAIRS)
async def test_errors_carry_the_record_id(client, member):
    """The gateway's own 404 (no such pool), a vendor's 400 (passed through untouched
    on the same protocol) and the gateway's 502 after a vendor's 5xx."""
    mock = vendor(queue=[{"status": 400, "message": "bad thing"}, {"status": 500}])
    async with gateway_with(config(member), a=mock) as gw:
        seen = []
        for model in ("no-such-pool", "smart", "smart"):
            with pytest.raises(Exception) as info:
                await sdk(lambda: CALLS[client](gw.url, model, False))
            request_id, status, headers = error_of(client, info.value)
            record = await admin_record(gw, request_id)
            assert record["status"] == status
            assert header_values(headers, SDK_HEADER[client]) == [request_id]
            seen.append((status, record))
    (missing, _), (invalid, rejected), (failed, broken) = seen
    assert missing == 404 and invalid == 400 and failed >= 500
    assert rejected["attempts"][0]["upstream_request_id"] == mock.received[0]["request_id"]
    assert broken["attempts"][0]["upstream_request_id"] == mock.received[1]["request_id"]


@pytest.mark.parametrize("client", ["openai", "anthropic"])
async def test_refused_keys_and_limits_carry_the_record_id(client):
    """A key refused from the request's head (401) and a key over its rpm (429)."""
    auth = {"keys": [{"id": "team-a", "key": "client-key-a", "limits": {"rpm": 1}}]}
    async with gateway_with(config("openai", auth=auth), a=vendor()) as gw:
        await sdk(lambda: CALLS[client](gw.url, "smart", False, api_key="client-key-a"))
        for key, want in (("wrong-key", 401), ("client-key-a", 429)):
            with pytest.raises(Exception) as info:
                await sdk(lambda: CALLS[client](gw.url, "smart", False, api_key=key))
            request_id, status, headers = error_of(client, info.value)
            assert status == want
            record = await admin_record(gw, request_id)
            assert record["status"] == want
            assert header_values(headers, SDK_HEADER[client]) == [request_id]


async def test_no_route_404_is_recorded_under_its_id():
    import openai
    async with gateway_with(config("openai"), a=vendor()) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1/nothing-here", api_key="k", max_retries=0)
        with pytest.raises(openai.NotFoundError) as info:
            await sdk(lambda: client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "hi"}]))
        record = await admin_record(gw, info.value.request_id)
    assert record["status"] == 404 and "No route" in record["error"]


@pytest.mark.parametrize("client", ["gemini", "cohere"])
async def test_sdks_without_a_request_id_header_see_x_busbar_request_id(client):
    """google-genai and cohere read no request-id header: their raw headers carry ours."""
    async with gateway_with(config("openai"), a=vendor()) as gw:
        if client == "gemini":
            from google import genai
            from google.genai import types
            sdk_client = genai.Client(api_key="k", http_options=types.HttpOptions(base_url=gw.url))
            answer = await sdk(lambda: sdk_client.models.generate_content(model="smart", contents="hi"))
            headers = answer.sdk_http_response.headers
        else:
            import cohere
            sdk_client = cohere.ClientV2(api_key="k", base_url=gw.url)
            raw = await sdk(lambda: sdk_client.with_raw_response.chat(
                model="smart", messages=[{"role": "user", "content": "hi"}]))
            headers = raw.headers
        request_id = {k.lower(): v for k, v in headers.items()}["x-busbar-request-id"]
        assert (await admin_record(gw, request_id))["client_protocol"] == client


@pytest.mark.slow
async def test_js_sdks_show_the_record_id():
    """openai-node and anthropic-sdk-typescript: `_request_id`, a stream's `withResponse()`
    `request_id` and an error's `requestID` each find their request in the records."""
    import json
    import shutil
    from pathlib import Path
    js = Path(__file__).parent / "js"
    if shutil.which("node") is None or not (js / "node_modules").is_dir():
        pytest.skip("node or the JS SDKs (tests/js, npm ci) are not installed")
    async with gateway_with(config("openai"), a=vendor()) as gw:
        with trio.fail_after(120):
            done = await trio.run_process(["node", str(js / "request_ids.mjs"), gw.url, "smart"],
                                          capture_stdout=True, capture_stderr=True, check=False)
        row = json.loads(done.stdout.decode().strip().splitlines()[-1])
        assert row["ok"], row.get("error") or done.stderr.decode()[-2000:]
        for case, request_id in row["ids"].items():
            record = await admin_record(gw, request_id)
            assert record["status"] == (404 if case.endswith("error") else 200), case
            assert record["client_protocol"] == case.split("_")[0] and record["stream"] is case.endswith("stream")


@pytest.mark.parametrize("stream", [False, True], ids=["buffered", "stream"])
async def test_a_background_response_shows_the_id_of_its_run(stream):
    """Responses `background: true` (ADR 0026): the id is the record of the run that answers."""
    import openai
    async with gateway_with(config("anthropic"), a=vendor()) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        def call():
            raw = client.responses.with_raw_response.create(model="smart", input="hi", background=True, stream=stream)
            if stream:
                list(raw.parse())
            return raw.request_id, raw.headers
        request_id, headers = await sdk(call)
        assert headers.get_list("x-request-id") == [request_id]
        record = await admin_record(gw, request_id)
    assert record["status"] == 200 and record["pool"] == "smart" and record["attempts"][0]["outcome"] == "ok"
