"""SigV4: published vectors, botocore as an oracle, and verify() round trips."""
from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone
from unittest import mock
from urllib.parse import quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbar.aws import sigv4
from busbar.aws.sigv4 import Credentials, SignatureError, explain, sign, verify

# AWS test-suite constants (botocore tests/unit/auth/test_sigv4.py).
AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SUITE_TIME = datetime(2015, 8, 30, 12, 36, tzinfo=timezone.utc)
SUITE_CREDENTIALS = Credentials(AKID, SECRET)
EMPTY_HASH = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
SESSION_TOKEN = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"
BEDROCK_HOST = "bedrock-runtime.us-east-1.amazonaws.com"


# ---------------------------------------------------------------------------
# Vectors from protocols.md section 8


def _suite_sts(canonical_hash: str, service: str = "service") -> str:
    return f"AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/{service}/aws4_request\n{canonical_hash}"


VECTORS = {
    "A get-vanilla": dict(
        method="GET", path="/", query="", headers=[("Host", "example.amazonaws.com")], body=b"",
        creq="GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
             f"host;x-amz-date\n{EMPTY_HASH}",
        sts_hash="bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
        signed_headers="host;x-amz-date",
        signature="5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
    ),
    "B post-x-www-form-urlencoded": dict(
        method="POST", path="/", query="",
        headers=[("Content-Type", "application/x-www-form-urlencoded"), ("Host", "example.amazonaws.com")],
        body=b"Param1=value1",
        creq="POST\n/\n\ncontent-type:application/x-www-form-urlencoded\nhost:example.amazonaws.com\n"
             "x-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\n"
             "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
        sts_hash="42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
        signed_headers="content-type;host;x-amz-date",
        signature="ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
    ),
    "C post-vanilla": dict(
        method="POST", path="/", query="", headers=[("Host", "example.amazonaws.com")], body=b"",
        creq="POST\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
             f"host;x-amz-date\n{EMPTY_HASH}",
        sts_hash="553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87",
        signed_headers="host;x-amz-date",
        signature="5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
    ),
    "D get-vanilla-with-session-token": dict(
        method="GET", path="/", query="", headers=[("Host", "example.amazonaws.com")], body=b"",
        token=SESSION_TOKEN,
        creq="GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n"
             f"x-amz-security-token:{SESSION_TOKEN}\n\nhost;x-amz-date;x-amz-security-token\n{EMPTY_HASH}",
        sts_hash="067b36aa60031588cea4a4cde1f21215227a047690c72247f1d70b32fbbfad2b",
        signed_headers="host;x-amz-date;x-amz-security-token",
        signature="07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8",
    ),
    "E get-vanilla-query-order-key-case": dict(
        method="GET", path="/", query="Param2=value2&Param1=value1",
        headers=[("Host", "example.amazonaws.com")], body=b"",
        creq="GET\n/\nParam1=value1&Param2=value2\nhost:example.amazonaws.com\n"
             f"x-amz-date:20150830T123600Z\n\nhost;x-amz-date\n{EMPTY_HASH}",
        sts_hash="816cd5b414d056048ba4f7c5386d6e0533120fb1fcfa93762cf0fc39e2cf19e0",
        signed_headers="host;x-amz-date",
        signature="b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
    ),
    "F bedrock converse": dict(
        method="POST", path="/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse", query="",
        headers=[("Content-Type", "application/json"), ("Host", BEDROCK_HOST)],
        body=b'{"messages":[{"role":"user","content":[{"text":"Hi"}]}],"inferenceConfig":{"maxTokens":16}}',
        service="bedrock",
        creq="POST\n/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse\n\n"
             f"content-type:application/json\nhost:{BEDROCK_HOST}\nx-amz-date:20150830T123600Z\n\n"
             "content-type;host;x-amz-date\n9086f5ed72696dae888c64846e3db151bb80e2483eba722648ee71231780c823",
        sts_hash="5991aa16ee1637a567dbc324cc2840d52ea0e182e99ba58b6bc4242f623aaeee",
        signed_headers="content-type;host;x-amz-date",
        signature="f0a82430406dd8b1407bce7b86db8d447147061443d97333ba08fc99395be000",
    ),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_published_vector(name):
    vector = VECTORS[name]
    service = vector.get("service", "service")
    credentials = Credentials(AKID, SECRET, vector.get("token"))
    steps = explain(vector["method"], vector["path"], vector["query"], vector["headers"], vector["body"],
                    credentials=credentials, region="us-east-1", service=service, now=SUITE_TIME)

    assert steps.canonical_request == vector["creq"]
    assert hashlib.sha256(steps.canonical_request.encode()).hexdigest() == vector["sts_hash"]
    assert steps.string_to_sign == _suite_sts(vector["sts_hash"], service)
    expected_headers = [("X-Amz-Date", "20150830T123600Z")]
    if "token" in vector:
        expected_headers.append(("X-Amz-Security-Token", vector["token"]))
    expected_headers.append((
        "Authorization",
        f"AWS4-HMAC-SHA256 Credential={AKID}/20150830/us-east-1/{service}/aws4_request, "
        f"SignedHeaders={vector['signed_headers']}, Signature={vector['signature']}"))
    assert steps.headers == expected_headers
    assert sign(vector["method"], vector["path"], vector["query"], vector["headers"], vector["body"],
                credentials=credentials, region="us-east-1", service=service,
                now=SUITE_TIME) == expected_headers


def test_signing_key_matches_reference():
    key = sigv4._signing_key(SECRET, "20150830", "us-east-1", "service")
    assert key.hex() == "938127b5336810ddb6a5d6af445fcac9e371f9ed418ed386b022aed82901be75"


def test_host_may_be_passed_separately_and_is_required():
    with_header = sign("GET", "/", "", [("Host", "example.amazonaws.com")], credentials=SUITE_CREDENTIALS,
                       region="us-east-1", service="service", now=SUITE_TIME)
    separate = sign("GET", "/", "", [], credentials=SUITE_CREDENTIALS, region="us-east-1",
                    service="service", now=SUITE_TIME, host="example.amazonaws.com")
    assert with_header == separate
    with pytest.raises(ValueError, match="Host"):
        sign("GET", "/", "", {}, credentials=SUITE_CREDENTIALS, region="us-east-1", now=SUITE_TIME)


def test_stale_signer_headers_are_replaced_not_signed():
    fresh = sign("GET", "/", "", [("Host", "h")], credentials=SUITE_CREDENTIALS, region="us-east-1",
                 now=SUITE_TIME)
    retry = sign("GET", "/", "", [("Host", "h"), ("Authorization", "old"), ("X-Amz-Date", "20000101T000000Z"),
                                  ("x-amz-security-token", "old")],
                 credentials=SUITE_CREDENTIALS, region="us-east-1", now=SUITE_TIME)
    assert retry == fresh


def test_query_and_path_forms():
    def creq(path, query):
        return explain("GET", path, query, [("Host", "h")], credentials=SUITE_CREDENTIALS,
                       region="r", now=SUITE_TIME).canonical_request.split("\n")[1:3]

    # The target may carry its query; non-canonical escapes are normalised.
    assert creq("/a?b=%7e&a=x y", None) == ["/a", "a=x%20y&b=~"]
    assert creq(b"/a/./b/../c//d/", b"z&a=1&a=0") == ["/a/c/d/", "a=0&a=1&z="]
    assert creq("", "") == ["/", ""]
    # An encoded model id is encoded again; a raw one is encoded once.
    assert creq("/model/x-v1%3A0/converse", "")[0] == "/model/x-v1%253A0/converse"
    assert creq("/model/x-v1:0/converse", "")[0] == "/model/x-v1%3A0/converse"
    assert creq("/model/é", "")[0] == "/model/%C3%A9"


def test_credentials_repr_and_env():
    credentials = Credentials("AKIAXXXX", "very-secret", "session-secret")
    assert "very-secret" not in repr(credentials)
    assert "session-secret" not in repr(credentials)
    assert "AKIAXXXX" in repr(credentials)
    assert "very-secret" not in str(credentials)

    env = {"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK", "AWS_SESSION_TOKEN": "TK"}
    assert Credentials.from_env(env) == Credentials("AK", "SK", "TK")
    assert Credentials.from_env({"AWS_ACCESS_KEY_ID": "AK", "AWS_SECRET_ACCESS_KEY": "SK"}) == Credentials("AK", "SK")
    assert Credentials.from_env({"AWS_ACCESS_KEY_ID": "AK"}) is None
    assert Credentials.from_env({}) is None
    with mock.patch.dict("os.environ", env, clear=True):
        assert Credentials.from_env() == Credentials("AK", "SK", "TK")


# ---------------------------------------------------------------------------
# botocore as the oracle

botocore_auth = pytest.importorskip("botocore.auth")
from botocore.awsrequest import AWSRequest  # noqa: E402
from botocore.credentials import Credentials as BotoCredentials  # noqa: E402

pytestmark = pytest.mark.pure

ORACLE_TIME = datetime(2024, 6, 20, 17, 5, 9)  # naive UTC, as botocore's clock returns

# Names the random headers must avoid: the signer's own, Host, the payload
# hash override, Date (botocore rewrites it) and the never-signed ones.
_RESERVED_HEADER_NAMES = sigv4.UNSIGNED_HEADERS | {
    "host", "authorization", "x-amz-date", "x-amz-security-token", "x-amz-content-sha256", "date",
}

_token_chars = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
header_names = st.text(_token_chars, min_size=1, max_size=16).filter(
    lambda name: name.lower() not in _RESERVED_HEADER_NAMES)
# Any text without control chars (tabs kept) or surrogates; includes unicode
# whitespace so Trimall is exercised the way str.split() sees it.
header_values = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from("\t  "),
                        max_size=24)
model_ids = st.from_regex(r"(arn:aws:bedrock:us-east-1:123456789012:inference-profile/)?"
                          r"[a-z]{2,9}\.[a-z0-9-]{1,24}-v[0-9]:[0-9]", fullmatch=True)
raw_segment_chars = st.characters(whitelist_categories=("Lu", "Ll", "Lo", "Nd")) | st.sampled_from(
    list(":-._~@!$&'()*+,;=%"))
path_segments = st.one_of(
    model_ids.map(lambda model: quote(model, safe="-_.~")),          # as botocore serialises a label
    model_ids.filter(lambda model: "/" not in model),                 # raw ':'
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=10).map(lambda s: quote(s, safe="-_.~")),
    st.text(raw_segment_chars, max_size=10),                          # raw unicode and sub-delims
    st.sampled_from(["", ".", "..", "model", "converse", "converse-stream"]),
)
paths = st.lists(path_segments, max_size=6).map(lambda segments: "/" + "/".join(segments))
query_texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=8)
queries = st.lists(
    st.tuples(query_texts, query_texts, st.booleans()), max_size=4,
).map(lambda pairs: "&".join(
    quote(key, safe="-_.~") + ("=" + quote(value, safe="-_.~") if with_value else "")
    for key, value, with_value in pairs))


@st.composite
def requests(draw):
    return dict(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "post"])),
        host=draw(st.sampled_from([BEDROCK_HOST, "localhost:8080", "example.amazonaws.com"])),
        host_in_headers=draw(st.booleans()),
        path=draw(paths),
        query=draw(queries),
        headers=draw(st.lists(st.tuples(header_names, header_values), max_size=5)),
        body=draw(st.binary(max_size=1500)),
        token=draw(st.none() | st.text(_token_chars, min_size=1, max_size=40)),
        region=draw(st.sampled_from(["us-east-1", "eu-west-3", "ap-southeast-2"])),
        service=draw(st.sampled_from(["bedrock", "execute-api", "service"])),
    )


def _botocore_sign(request) -> AWSRequest:
    url = f"https://{request['host']}{request['path']}"
    if request["query"]:
        url += "?" + request["query"]
    boto_request = AWSRequest(method=request["method"], url=url, data=request["body"])
    if request["host_in_headers"]:
        boto_request.headers["Host"] = request["host"]
    for name, value in request["headers"]:
        boto_request.headers[name] = value  # appends: repeated names are kept
    auth = botocore_auth.SigV4Auth(BotoCredentials(AKID, SECRET, request["token"]),
                                   request["service"], request["region"])
    with mock.patch.object(botocore_auth, "get_current_datetime", return_value=ORACLE_TIME):
        auth.add_auth(boto_request)
    return boto_request


def _our_headers(request):
    headers = list(request["headers"])
    if request["host_in_headers"]:
        headers.insert(0, ("Host", request["host"]))
    return headers


def _our_sign(request):
    return sign(request["method"], request["path"], request["query"], _our_headers(request), request["body"],
                credentials=Credentials(AKID, SECRET, request["token"]), region=request["region"],
                service=request["service"], now=ORACLE_TIME,
                host=None if request["host_in_headers"] else request["host"])


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_sign_matches_botocore(request):
    boto_request = _botocore_sign(request)
    ours = dict(_our_sign(request))
    assert ours["Authorization"] == boto_request.headers["Authorization"]
    assert ours["X-Amz-Date"] == boto_request.headers["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == boto_request.headers.get("X-Amz-Security-Token")
    assert set(ours) == {"Authorization", "X-Amz-Date"} | ({"X-Amz-Security-Token"} if request["token"] else set())


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests())
def test_verify_accepts_botocore_signed_requests(request):
    boto_request = _botocore_sign(request)
    split = urlsplit(boto_request.url)
    headers = list(boto_request.headers.items())
    if not request["host_in_headers"]:
        headers.append(("Host", request["host"]))  # what the HTTP client adds
    assert verify(request["method"], split.path, split.query, headers, request["body"],
                  lookup_secret={AKID: SECRET}.get, region=request["region"], service=request["service"],
                  now=ORACLE_TIME + timedelta(seconds=42)) == AKID


def test_repeated_headers_and_whitespace_match_botocore():
    request = dict(method="POST", host=BEDROCK_HOST, host_in_headers=False,
                   path="/model/a.b-v1%3A0/converse-stream", query="z=1&a=2&a=1",
                   headers=[("X-Dup", " a  b "), ("x-dup", "c"), ("X-Other", "\tq\u3000r\xa0 "), ("X-Dup", "")],
                   body=b"{}", token="t", region="us-west-2", service="bedrock")
    assert dict(_our_sign(request))["Authorization"] == _botocore_sign(request).headers["Authorization"]
    steps = explain(request["method"], request["path"], request["query"], _our_headers(request), request["body"],
                    credentials=Credentials(AKID, SECRET, "t"), region="us-west-2", now=ORACLE_TIME,
                    host=BEDROCK_HOST)
    assert "\nx-dup:a b,c,\nx-other:q r\n" in steps.canonical_request


def test_payload_hash_override_matches_botocore():
    request = dict(method="PUT", host="h.example", host_in_headers=True, path="/x", query="",
                   headers=[("X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")], body=b"data", token=None,
                   region="us-east-1", service="bedrock")
    assert dict(_our_sign(request))["Authorization"] == _botocore_sign(request).headers["Authorization"]


def test_real_bedrock_runtime_client_request():
    """A request from boto3's own bedrock-runtime client: signable and verifiable by us."""
    boto3 = pytest.importorskip("boto3")
    captured = {}

    class Captured(Exception):
        pass

    def capture(request, **_):
        captured["request"] = request
        raise Captured

    session = boto3.session.Session(aws_access_key_id=AKID, aws_secret_access_key=SECRET,
                                    aws_session_token="tok/en+=", region_name="us-east-1")
    client = session.client("bedrock-runtime")
    client.meta.events.register("before-send", capture)
    model = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-5-sonnet-20240620-v1:0"
    with mock.patch.object(botocore_auth, "get_current_datetime", return_value=ORACLE_TIME), \
            pytest.raises(Captured):
        client.converse(modelId=model, messages=[{"role": "user", "content": [{"text": "héllo"}]}])
    request = captured["request"]
    split = urlsplit(request.url)
    # The model id's ':' and '/' travel percent-encoded (it is a URI label).
    assert split.path == "/model/" + quote(model, safe="") + "/converse"
    headers = list(request.headers.items()) + [("Host", split.netloc)]

    assert verify(request.method, split.path, split.query, headers, request.body,
                  lookup_secret={AKID: SECRET}.get, region="us-east-1", now=ORACLE_TIME) == AKID

    # Re-sign from what we would have had (signed headers only) and compare.
    content_type = request.headers["Content-Type"]
    ours = dict(sign(request.method, split.path, split.query, [("Content-Type", content_type)], request.body,
                     credentials=Credentials(AKID, SECRET, "tok/en+="), region="us-east-1",
                     now=ORACLE_TIME, host=split.netloc))
    assert ours["Authorization"] == request.headers["Authorization"].decode()
    assert ours["X-Amz-Security-Token"] == "tok/en+="


# ---------------------------------------------------------------------------
# verify(): round trips and every way to fail

NOW = datetime(2024, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
SECRETS = {"AKIDVERIFY": "s3cret/key+value", "AKIDOTHER": "other-secret"}
CONVERSE_PATH = "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
CONVERSE_BODY = b'{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}'


def _signed_request(*, credentials=Credentials("AKIDVERIFY", SECRETS["AKIDVERIFY"]), now=NOW,
                    path=CONVERSE_PATH, query="", body=CONVERSE_BODY, region="us-east-1", service="bedrock"):
    headers = [("Host", BEDROCK_HOST), ("Content-Type", "application/json"), ("Accept", "application/json")]
    headers += sign("POST", path, query, headers, body, credentials=credentials, region=region,
                    service=service, now=now)
    return dict(method="POST", path=path, query=query, headers=headers, body=body)


def _verify(request, **overrides):
    options = dict(lookup_secret=SECRETS.get, region="us-east-1", now=NOW)
    options.update(overrides)
    return verify(request["method"], request["path"], request["query"], request["headers"], request["body"],
                  **options)


def _replace_header(request, name, value):
    headers = [(n, v) for n, v in request["headers"] if n.lower() != name.lower()]
    if value is not None:
        headers.append((name, value))
    return {**request, "headers": headers}


def _expect(code, request, match=None, **overrides):
    with pytest.raises(SignatureError) as info:
        _verify(request, **overrides)
    assert info.value.code == code, info.value
    if match:
        assert match in info.value.message
    return info.value


def test_round_trip():
    request = _signed_request()
    assert _verify(request) == "AKIDVERIFY"
    # Header order, name case and whitespace runs do not matter; bytes (h11) work.
    reordered = {**request, "headers": [(n.upper().encode(), v.encode() + b"  ")
                                        for n, v in reversed(request["headers"])]}
    assert _verify(reordered) == "AKIDVERIFY"
    # Headers that were not signed may be added in transit.
    extra = {**request, "headers": request["headers"] + [("User-Agent", "x"), ("Content-Length", "57")]}
    assert _verify(extra) == "AKIDVERIFY"
    # Any region / service accepted when not pinned; whole target in path.
    assert _verify({**request, "path": request["path"] + "?", "query": None}, region=None, service=None)


def test_round_trip_with_session_token_query_and_empty_body():
    credentials = Credentials("AKIDVERIFY", SECRETS["AKIDVERIFY"], "session/token==")
    request = _signed_request(credentials=credentials, query="b=2&a=%2F", body=b"")
    assert ("X-Amz-Security-Token", "session/token==") in request["headers"]
    assert _verify(request) == "AKIDVERIFY"
    assert _verify({**request, "query": "a=%2F&b=2"}) == "AKIDVERIFY"  # order is canonicalised
    _expect("InvalidSignatureException", _replace_header(request, "X-Amz-Security-Token", "forged"))


@pytest.mark.parametrize("mutation", [
    "body", "header", "path", "query", "method", "signature", "drop-token-scope",
])
def test_any_mutation_fails(mutation):
    request = _signed_request()
    if mutation == "body":
        mutated = {**request, "body": request["body"] + b" "}
    elif mutation == "header":
        mutated = _replace_header(request, "Content-Type", "application/jsonx")
    elif mutation == "path":
        mutated = {**request, "path": request["path"].replace("%3A0", "%3A1")}
    elif mutation == "query":
        mutated = {**request, "query": "a=1"}
    elif mutation == "method":
        mutated = {**request, "method": "PUT"}
    elif mutation == "signature":
        auth = dict(request["headers"])["Authorization"]
        flipped = auth[:-1] + ("0" if auth[-1] != "0" else "1")
        mutated = _replace_header(request, "Authorization", flipped)
    else:  # the same signature claimed for another key's secret
        auth = dict(request["headers"])["Authorization"].replace("AKIDVERIFY", "AKIDOTHER")
        mutated = _replace_header(request, "Authorization", auth)
    error = _expect("InvalidSignatureException", mutated)
    assert error.message.startswith("The request signature we calculated does not match")
    assert error.status == 403


def test_wrong_secret_and_unknown_key():
    request = _signed_request()
    _expect("InvalidSignatureException", request, lookup_secret={"AKIDVERIFY": "wrong"}.get)
    error = _expect("UnrecognizedClientException", request, lookup_secret={}.get)
    assert error.message == "The security token included in the request is invalid."
    assert error.status == 403


def test_skew_window():
    request = _signed_request()
    assert _verify(request, now=NOW + timedelta(seconds=300)) == "AKIDVERIFY"
    assert _verify(request, now=NOW - timedelta(seconds=300)) == "AKIDVERIFY"
    error = _expect("InvalidSignatureException", request, now=NOW + timedelta(seconds=301))
    assert error.message == ("Signature expired: 20240101T120000Z is now earlier than "
                             "20240101T120001Z (20240101T120501Z - 5 min.)")
    error = _expect("InvalidSignatureException", request, now=NOW - timedelta(minutes=10))
    assert error.message.startswith("Signature not yet current: 20240101T120000Z is still later than")
    assert _verify(request, now=NOW + timedelta(hours=1), max_skew_seconds=3600) == "AKIDVERIFY"


def test_scope_checks():
    _expect("InvalidSignatureException", _signed_request(region="eu-west-1"), match="region")
    _expect("InvalidSignatureException", _signed_request(service="s3"), match="service")
    assert _verify(_signed_request(region="eu-west-1"), region=None) == "AKIDVERIFY"
    # Scope date must be the request's date.
    request = _signed_request()
    auth = dict(request["headers"])["Authorization"].replace("/20240101/", "/20240102/")
    _expect("InvalidSignatureException", _replace_header(request, "Authorization", auth),
            match="Date in Credential scope does not match")


def test_missing_and_garbled_authorization():
    request = _signed_request()
    error = _expect("MissingAuthenticationTokenException", _replace_header(request, "Authorization", None))
    assert error.message == "Missing Authentication Token"
    _expect("IncompleteSignatureException", _replace_header(request, "Authorization", "Bearer abc"),
            match="Unsupported authorization type")
    error = _expect("IncompleteSignatureException",
                    _replace_header(request, "Authorization", "AWS4-HMAC-SHA256 Credential=AKIDVERIFY/x"))
    assert "requires 'Signature' parameter" in error.message
    assert "requires 'SignedHeaders' parameter" in error.message
    assert error.status == 400
    _expect("IncompleteSignatureException", _replace_header(
        request, "Authorization",
        "AWS4-HMAC-SHA256 Credential=AKIDVERIFY/20240101/us-east-1/bedrock, SignedHeaders=host, Signature=00"),
        match="5 slash-delimited")
    twice = {**request, "headers": request["headers"] + [("authorization", "again")]}
    _expect("IncompleteSignatureException", twice)


def test_date_handling():
    request = _signed_request()
    _expect("IncompleteSignatureException", _replace_header(request, "X-Amz-Date", None),
            match="'X-Amz-Date' or a 'Date'")
    _expect("IncompleteSignatureException", _replace_header(request, "X-Amz-Date", "2024-01-01T12:00:00Z"),
            match="ISO-8601")
    # A Date header (RFC 1123) may stand in for X-Amz-Date, as in botocore.
    headers = [("Host", BEDROCK_HOST), ("Date", "Mon, 01 Jan 2024 12:00:00 GMT")]
    steps = explain("GET", "/", "", headers, credentials=Credentials("AKIDVERIFY", SECRETS["AKIDVERIFY"]),
                    region="us-east-1", now=NOW)
    # Sign over Date only (the AWS spec's other form), then verify it.
    creq = steps.canonical_request.replace("x-amz-date:20240101T120000Z\n", "").replace(
        "date;host;x-amz-date", "date;host")
    scope = "20240101/us-east-1/bedrock/aws4_request"
    sts = sigv4._string_to_sign("20240101T120000Z", scope, creq)
    signature = sigv4._signature(SECRETS["AKIDVERIFY"], "20240101T120000Z", "us-east-1", "bedrock", sts)
    headers.append(("Authorization", f"AWS4-HMAC-SHA256 Credential=AKIDVERIFY/{scope}, "
                                     f"SignedHeaders=date;host, Signature={signature}"))
    assert verify("GET", "/", "", headers, b"", lookup_secret=SECRETS.get, now=NOW) == "AKIDVERIFY"


def test_signed_headers_rules():
    request = _signed_request()
    _expect("InvalidSignatureException", _replace_header(request, "Content-Type", None),
            match="'content-type' is not present")
    auth = dict(request["headers"])["Authorization"].replace("content-type;host;", "content-type;")
    _expect("InvalidSignatureException", _replace_header(request, "Authorization", auth),
            match="'Host' or ':authority' must be a 'SignedHeader'")


def test_declared_payload_hash_must_match_body():
    headers = [("Host", BEDROCK_HOST), ("X-Amz-Content-SHA256", hashlib.sha256(b"original").hexdigest())]
    credentials = Credentials("AKIDVERIFY", SECRETS["AKIDVERIFY"])
    headers += sign("POST", "/", "", headers, b"original", credentials=credentials, region="us-east-1", now=NOW)
    assert verify("POST", "/", "", headers, b"original", lookup_secret=SECRETS.get, now=NOW) == "AKIDVERIFY"
    with pytest.raises(SignatureError, match="x-amz-content-sha256"):
        verify("POST", "/", "", headers, b"swapped", lookup_secret=SECRETS.get, now=NOW)


def test_signature_error_rejects_unknown_codes():
    with pytest.raises(ValueError, match="unknown SigV4 error code"):
        SignatureError("AccessDenied", "x")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.sampled_from(["body", "path", "query", "method", "header", "secret"]))
def test_round_trip_property(request, mutation):
    """sign then verify accepts; a single mutation anywhere is rejected."""
    headers = _our_headers(request)
    if not request["host_in_headers"]:
        headers.append(("Host", request["host"]))
    headers += _our_sign(request)
    secrets = {AKID: SECRET}
    args = [request["method"], request["path"], request["query"], headers, request["body"]]
    options = dict(lookup_secret=secrets.get, region=request["region"], service=request["service"],
                   now=ORACLE_TIME)
    assert verify(*args, **options) == AKID

    if mutation == "body":
        args[4] = request["body"] + b"!"
    elif mutation == "path":
        args[1] = request["path"] + "x"
    elif mutation == "query":
        args[2] = request["query"] + ("&" if request["query"] else "") + "zz=1"
    elif mutation == "method":
        args[0] = "PATCH"
    elif mutation == "header":
        name, value = headers[0]
        args[3] = [(name, value + "x")] + headers[1:]
    else:
        options["lookup_secret"] = {AKID: SECRET + "x"}.get
    with pytest.raises(SignatureError) as info:
        verify(*args, **options)
    assert info.value.code == "InvalidSignatureException"


def test_other_schemes_are_not_echoed():
    request = _replace_header(_signed_request(), "Authorization", "Bearer sk-very-secret-api-key")
    error = _expect("IncompleteSignatureException", request)
    assert "sk-very-secret" not in str(error)
    error = _expect("IncompleteSignatureException", _replace_header(request, "Authorization", "sk-secret"))
    assert "sk-secret" not in str(error)


def test_undecodable_target_bytes_fail_cleanly():
    request = _signed_request(query="a=1")
    _expect("InvalidSignatureException", {**request, "path": b"/model/\xff\xfe", "query": b"a=\xff&b"})
