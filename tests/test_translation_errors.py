"""Errors translate too.

Upstream: each vendor's exact error bodies (from the wire reference) classify
into the right fault class.  Downstream: every fault, rendered in the client's
protocol, makes that client's official SDK raise its usual exception class
(the SDKs are driven against an in-process mock transport, no sockets).
"""
from __future__ import annotations

import httpx
import orjson
import pytest

from busbar.faults import ClientError, Fault, FaultClass
from busbar.protocols import get_dialect
from tests import strategies as S

pytestmark = pytest.mark.pure

RATE, CONTEXT, BILLING, AUTH, CLIENT, SERVER = (FaultClass.RATE, FaultClass.CONTEXT, FaultClass.BILLING,
                                                FaultClass.AUTH, FaultClass.CLIENT, FaultClass.SERVER)


def j(obj) -> bytes:
    return orjson.dumps(obj)


def oa(message, type_, code=None, param=None):
    return j({"error": {"message": message, "type": type_, "param": param, "code": code}})


def an(type_, message):
    return j({"type": "error", "error": {"type": type_, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"})


def gg(code, status, message, details=()):
    return j({"error": {"code": code, "message": message, "status": status, "details": list(details)}})


QUOTA_MINUTE = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
    "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
    "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
    "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"}, "quotaValue": "2"}]}
QUOTA_DAY = {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
    "quotaMetric": "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
    "quotaId": "GenerateContentPaidTierInputTokensPerModelPerDay"}]}
RETRY = {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "33s"}
HELP = {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas",
                                                                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]}
KEY_INVALID = {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
               "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}
GEMINI_QUOTA = ("You exceeded your current quota, please check your plan and billing details. For more information "
                "on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits.")

# (protocol, status, headers, body, expected class)
UPSTREAM = [
    ("openai", 400, [], oa("This model's maximum context length is 4097 tokens. However, your messages resulted in "
                           "4294 tokens. Please reduce the length of the messages.", "invalid_request_error",
                           "context_length_exceeded", "messages"), CONTEXT),
    ("openai", 429, [], oa("You exceeded your current quota, please check your plan and billing details. For more "
                           "information on this error, read the docs: https://platform.openai.com/docs/guides/"
                           "error-codes/api-errors.", "insufficient_quota", "insufficient_quota"), BILLING),
    ("openai", 429, [(b"retry-after", b"19")],
     oa("Rate limit reached for gpt-4o in organization org-abc on tokens per min (TPM): Limit 30000, Used 14567, "
        "Requested 24754. Please try again in 18.642s. Visit https://platform.openai.com/account/rate-limits to "
        "learn more.", "tokens", "rate_limit_exceeded"), RATE),
    ("openai", 401, [], oa("Incorrect API key provided: sk-abc. You can find your API key at "
                           "https://platform.openai.com/account/api-keys.", "invalid_request_error", "invalid_api_key"), AUTH),
    ("openai", 400, [], oa("Invalid 'messages[2].tool_calls[0].id': string too long. Expected a string with maximum "
                           "length 40, but got a string with length 53 instead.", "invalid_request_error",
                           "string_above_max_length", "messages[2].tool_calls[0].id"), CLIENT),
    ("openai", 503, [], oa("The server is overloaded or not ready yet.", "server_error"), SERVER),
    ("responses", 429, [], oa("You exceeded your current quota, please check your plan and billing details.",
                              "insufficient_quota", "insufficient_quota"), BILLING),
    ("responses", 400, [], oa("Your input exceeds the context window of this model. Please adjust your input and try "
                              "again.", "invalid_request_error", "context_length_exceeded", "input"), CONTEXT),
    ("responses", 429, [], oa("Rate limit reached for gpt-5 on requests per min (RPM): Limit 500.", "requests",
                              "rate_limit_exceeded"), RATE),
    ("responses", 401, [], oa("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), AUTH),
    ("anthropic", 529, [], an("overloaded_error", "Overloaded"), RATE),
    ("anthropic", 400, [], an("invalid_request_error", "prompt is too long: 200251 tokens > 200000 maximum"), CONTEXT),
    ("anthropic", 400, [], an("invalid_request_error", "Your credit balance is too low to access the Anthropic API. "
                              "Please go to Plans & Billing to upgrade or purchase credits."), BILLING),
    ("anthropic", 429, [(b"retry-after", b"7")],
     an("rate_limit_error", "This request would exceed the rate limit for your organization of 20,000 input tokens "
        "per minute. For details, refer to: https://docs.claude.com/en/api/rate-limits."), RATE),
    ("anthropic", 401, [], an("authentication_error", "invalid x-api-key"), AUTH),
    ("anthropic", 400, [], an("invalid_request_error", "messages.1.content.0.tool_use.id: String should match pattern "
                              "'^[a-zA-Z0-9_-]+$'"), CLIENT),
    ("anthropic", 500, [], an("api_error", "Internal server error"), SERVER),
    ("gemini", 400, [], gg(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [KEY_INVALID]), AUTH),
    ("gemini", 400, [], gg(400, "INVALID_ARGUMENT", "The input token count (1200293) exceeds the maximum number of "
                           "tokens allowed (1048576)."), CONTEXT),
    ("gemini", 429, [], gg(429, "RESOURCE_EXHAUSTED", GEMINI_QUOTA, [QUOTA_MINUTE, HELP, RETRY]), RATE),
    ("gemini", 429, [], gg(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."), RATE),
    # a spent per-day quota is a rate limit that ends at the daily reset (the key is benched until then)
    ("gemini", 429, [], gg(429, "RESOURCE_EXHAUSTED", GEMINI_QUOTA, [QUOTA_DAY, HELP]), RATE),
    ("gemini", 503, [], gg(503, "UNAVAILABLE", "The model is overloaded. Please try again later."), SERVER),
    ("gemini", 400, [], gg(400, "INVALID_ARGUMENT", "Please ensure that the number of function response parts is "
                           "equal to the number of function call parts of the function call turn."), CLIENT),
    ("bedrock", 429, [(b"x-amzn-errortype", b"ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/")],
     j({"message": "Too many tokens, please wait before trying again."}), RATE),
    ("bedrock", 400, [(b"x-amzn-errortype", b"ValidationException")],
     j({"message": "Input is too long for requested model."}), CONTEXT),
    ("bedrock", 400, [(b"x-amzn-errortype", b"ValidationException")],
     j({"message": "The model returned the following errors: prompt is too long: 200049 tokens > 200000 maximum"}), CONTEXT),
    ("bedrock", 403, [(b"x-amzn-errortype", b"UnrecognizedClientException")],
     j({"message": "The security token included in the request is invalid."}), AUTH),
    ("bedrock", 403, [(b"x-amzn-errortype", b"AccessDeniedException")],
     j({"message": "You don't have access to the model with the specified model ID."}), AUTH),
    ("bedrock", 400, [(b"x-amzn-errortype", b"ValidationException")],
     j({"message": "The maximum tokens you requested exceeds the model limit of 4096. Try again with a maximum "
                   "tokens value that is lower than 4096."}), CLIENT),
    ("bedrock", 503, [], j({"__type": "com.amazon.bedrock#ServiceUnavailableException", "message": "Service unavailable"}),
     SERVER),
    ("bedrock", 424, [(b"x-amzn-errortype", b"ModelErrorException")],
     j({"message": "The model returned an error", "originalStatusCode": 500}), SERVER),
    ("bedrock", 429, [(b"x-amzn-errortype", b"ModelNotReadyException")], j({"message": "Model is not ready"}), RATE),
    ("cohere", 401, [], j({"message": "invalid api token"}), AUTH),
    ("cohere", 429, [], j({"message": "You are using a Trial key, which is limited to 10 API calls / minute."}), RATE),
    ("cohere", 400, [], j({"message": "too many tokens: total number of tokens (prompt and prediction) cannot exceed "
                                      "2048 - received 6354. Try using a shorter prompt or a smaller max_tokens value."}),
     CONTEXT),
    ("cohere", 402, [], j({"message": "Please add a payment method: your account has reached its billing limit."}), BILLING),
    ("cohere", 400, [], j({"message": "invalid request: message must be at least 1 token long"}), CLIENT),
    ("cohere", 503, [], j({"message": "service unavailable"}), SERVER),
]


@pytest.mark.parametrize("proto,status,headers,body,expected", UPSTREAM,
                         ids=[f"{p}-{s}-{e.value}-{i}" for i, (p, s, _, _, e) in enumerate(UPSTREAM)])
def test_vendor_error_classifies(proto, status, headers, body, expected):
    fault = get_dialect(proto).classify(status, headers, body)
    assert fault.cls is expected, (fault, body)
    assert fault.status == status
    assert fault.message and "{" not in fault.message[:1]


def test_retry_after_comes_from_header_or_google_retry_info():
    assert get_dialect("openai").classify(429, [(b"retry-after", b"19")], UPSTREAM[2][3]).retry_after == 19
    gem = get_dialect("gemini").classify(429, [], gg(429, "RESOURCE_EXHAUSTED", GEMINI_QUOTA, [QUOTA_MINUTE, RETRY]))
    assert gem.retry_after == 33


def test_bedrock_error_code_follows_botocore_rules():
    d = get_dialect("bedrock")
    fault = d.classify(429, [(b"x-amzn-errortype", b"ThrottlingException:http://internal.amazon.com/")],
                       j({"message": "slow down"}))
    assert fault.code == "ThrottlingException"
    fault = d.classify(400, [], j({"__type": "com.amazon.coral.validate#ValidationException", "message": "bad"}))
    assert fault.code == "ValidationException" and fault.cls is CLIENT


# ---------------------------------------------------------------------------
# downstream: a fault (or a gateway ClientError) in the client's own shape

FAULTS = {
    "rate": Fault(RATE, 429, "Rate limit reached, try again in 7s", retry_after=7.0),
    "billing": Fault(BILLING, 429, "You exceeded your current quota", code="insufficient_quota"),
    "context": Fault(CONTEXT, 400, "prompt is too long: 200251 tokens > 200000 maximum"),
    "client": Fault(CLIENT, 400, "messages: at least one message is required"),
    "auth": Fault(AUTH, 401, "invalid x-api-key"),
    "server": Fault(SERVER, 503, "The model is overloaded. Please try again later."),
}


def _sdk_exception(proto: str, status: int, headers: list, body: bytes):
    """The exception the vendor's official SDK raises for this HTTP response."""
    hdrs = [(k.decode(), v.decode()) for k, v in headers]

    def handler(request):
        return httpx.Response(status, headers=hdrs, content=body)
    transport = httpx.MockTransport(handler)
    try:
        if proto in ("openai", "responses"):
            import openai
            client = openai.OpenAI(api_key="k", base_url="http://test/v1", max_retries=0,
                                   http_client=httpx.Client(transport=transport))
            if proto == "openai":
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
            else:
                client.responses.create(model="m", input="hi")
        elif proto == "anthropic":
            import anthropic
            import httpx2     # this anthropic release speaks httpx2

            def handler2(request):
                return httpx2.Response(status, headers=hdrs, content=body)
            client = anthropic.Anthropic(api_key="k", base_url="http://test", max_retries=0,
                                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler2)))
            client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
        elif proto == "gemini":
            from google import genai
            from google.genai import types
            client = genai.Client(api_key="k", http_options=types.HttpOptions(
                base_url="http://test", httpx_client=httpx.Client(transport=transport)))
            client.models.generate_content(model="m", contents="hi")
        elif proto == "cohere":
            import cohere
            client = cohere.ClientV2(api_key="k", base_url="http://test", max_retries=0,
                                     httpx_client=httpx.Client(transport=transport))
            client.chat(model="m", messages=[{"role": "user", "content": "hi"}])
        elif proto in ("bedrock", "bedrock-invoke"):
            return _boto_exception(status, hdrs, body, invoke=proto == "bedrock-invoke")
    except Exception as exc:    # noqa: BLE001 - the point is which class
        return exc
    return None


def _boto_exception(status, headers, body, invoke=False):
    import boto3
    from botocore.awsrequest import AWSResponse
    from botocore.config import Config

    class Raw:
        def __init__(self, data):
            self.data = data

        def stream(self, **_):
            yield self.data

    client = boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="AKID",
                          aws_secret_access_key="secret", config=Config(retries={"max_attempts": 1}))

    def send(request, **_):
        return AWSResponse(request.url, status, dict(headers), Raw(body))
    client.meta.events.register("before-send.bedrock-runtime.Converse", send)
    client.meta.events.register("before-send.bedrock-runtime.InvokeModel", send)
    try:
        if invoke:
            client.invoke_model(modelId="anthropic.claude-3-haiku-20240307-v1:0", body=b'{"anthropic_version": '
                                b'"bedrock-2023-05-31", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}')
        else:
            client.converse(modelId="anthropic.claude-3-haiku-20240307-v1:0",
                            messages=[{"role": "user", "content": [{"text": "hi"}]}])
    except Exception as exc:    # noqa: BLE001
        return exc
    return None


def _expected(proto: str, fault_name: str):
    import anthropic
    import cohere
    import openai
    from botocore.exceptions import ClientError as BotoError
    from google.genai import errors as gerr
    table = {
        "openai": {"rate": openai.RateLimitError, "billing": openai.RateLimitError, "context": openai.BadRequestError,
                   "client": openai.BadRequestError, "auth": openai.InternalServerError,
                   "server": openai.InternalServerError},
        "anthropic": {"rate": anthropic.RateLimitError, "billing": anthropic.RateLimitError,
                      "context": anthropic.BadRequestError, "client": anthropic.BadRequestError,
                      "auth": anthropic.InternalServerError, "server": anthropic.InternalServerError},
        "gemini": {"rate": gerr.ClientError, "billing": gerr.ClientError, "context": gerr.ClientError,
                   "client": gerr.ClientError, "auth": gerr.ServerError, "server": gerr.ServerError},
        "cohere": {"rate": cohere.TooManyRequestsError, "billing": cohere.TooManyRequestsError,
                   "context": cohere.BadRequestError, "client": cohere.BadRequestError,
                   "auth": cohere.core.api_error.ApiError, "server": cohere.core.api_error.ApiError},
        "bedrock": {k: BotoError for k in FAULTS},
    }
    table["responses"] = table["openai"]
    table["bedrock-invoke"] = table["bedrock"]
    return table[proto][fault_name]


BOTO_CODES = {"rate": "ThrottlingException", "billing": "ThrottlingException", "context": "ValidationException",
              "client": "ValidationException", "auth": "InternalServerException", "server": "InternalServerException"}


@pytest.mark.slow
@pytest.mark.parametrize("proto", S.PROTOCOLS)
@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_fault_reaches_the_client_sdk_as_its_usual_exception(proto, fault_name):
    d = get_dialect(proto)
    fault = FAULTS[fault_name]
    err = d.fault_to_client_error(fault)
    status, headers, body = d.render_error(err)
    S.assert_valid(proto, "error", orjson.loads(body))
    if fault_name in ("auth", "server"):
        assert status == 502          # our side failed: a bad gateway, never the client's 401
    exc = _sdk_exception(proto, status, headers, body)
    assert isinstance(exc, _expected(proto, fault_name)), (proto, fault_name, type(exc), exc)
    if fault_name == "context":
        assert fault.message in str(exc) or fault.message in str(getattr(exc, "body", ""))
    if proto in ("bedrock", "bedrock-invoke"):
        assert exc.response["Error"]["Code"] == BOTO_CODES[fault_name]
        assert type(exc).__name__ == BOTO_CODES[fault_name]
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == status
    if proto == "gemini":
        assert exc.code == status
    if fault_name == "rate" and proto not in ("bedrock", "bedrock-invoke"):
        assert (b"retry-after", b"7") in headers


@pytest.mark.parametrize("proto", S.PROTOCOLS)
def test_unsupported_field_error_names_the_field(proto):
    """The 400 raised under unsupported="reject" renders with the param."""
    err = ClientError(400, "Field 'top_k' cannot be translated to the openai protocol: not supported.", param="top_k")
    d = get_dialect(proto)
    status, _, body = d.render_error(err)
    obj = orjson.loads(body)
    S.assert_valid(proto, "error", obj)
    assert status == 400 and "top_k" in body.decode()
    if proto in ("openai", "responses"):
        assert obj["error"]["param"] == "top_k"
