"""One error table per protocol (kind -> status, error type), declared once
and compiled both ways: checked against each protocol's documented error
vocabulary (/work/shared/reference/protocols.md, "Errors"), against what the
renderers and stream encoders actually send, and read back through the same
table by the protocol's own stream decoder.  The codec's `usage_in` (what
passthrough reads instead of the whole IR) agrees with `parse_response`."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import HealthCheck, given, settings

from busbar.faults import ClientError
from busbar.protocols import anthropic, bedrock, cohere, gemini, get_dialect, openai, responses
from busbar.protocols.base import KINDS, ErrorRow, ErrorTable
from tests import strategies as S

pytestmark = pytest.mark.pure

TABLES = {"openai": openai.ERRORS, "responses": responses.ERRORS, "anthropic": anthropic.ERRORS,
          "gemini": gemini.ERRORS, "bedrock": bedrock.ERRORS, "cohere": cohere.ERRORS}

# The documented vocabularies, as the reference states them (name -> HTTP status; None: no status given).
ANTHROPIC_TYPES = {"invalid_request_error": 400, "authentication_error": 401, "permission_error": 403,
                   "not_found_error": 404, "request_too_large": 413, "rate_limit_error": 429, "api_error": 500,
                   "overloaded_error": 529, "timeout_error": None, "billing_error": None}
OPENAI_NAMES = {"invalid_request_error": 400, "context_length_exceeded": 400, "insufficient_quota": 429,
                "rate_limit_exceeded": 429, "tokens": 429, "invalid_api_key": 401, "server_error": None}
RESPONSES_CODES = {"server_error", "rate_limit_exceeded", "invalid_prompt", "data_residency_mismatch", "bio_policy",
                   "vector_store_timeout", "insufficient_quota"}
BEDROCK_EXCEPTIONS = {"ValidationException": 400, "ServiceQuotaExceededException": 400,
                      "AccessDeniedException": 403, "ResourceNotFoundException": 404,
                      "ModelTimeoutException": 408, "ModelErrorException": 424, "ModelStreamErrorException": 424,
                      "ThrottlingException": 429, "ModelNotReadyException": 429, "InternalServerException": 500,
                      "ServiceUnavailableException": 503, "UnrecognizedClientException": 403}
BEDROCK_STREAM_EXCEPTIONS = {"internalServerException", "modelStreamErrorException", "validationException",
                             "throttlingException", "serviceUnavailableException"}
COHERE_STATUSES = {400, 401, 402, 403, 404, 422, 429, 498, 499, 500, 501, 503, 504}
GOOGLE_STATUSES = {400: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED", 503: "UNAVAILABLE"}
# Codes and statuses Busbar sends that no vendor document names: its own,
# each chosen so a client's SDK raises the closest error class.
BUSBAR_OPENAI_CODES = {"permission_denied", "model_not_found", "request_too_large", "overloaded",
                       "upstream_error", "timeout"}
BAD_GATEWAY = 502       # `upstream`: every member failed on its side


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


@pytest.mark.parametrize("proto", TABLES)
def test_each_dialect_takes_its_statuses_from_its_one_table(proto):
    table = TABLES[proto]
    assert set(table.rows) == set(KINDS)
    assert get_dialect(proto).kind_status is table.status
    assert table.status["upstream"] == BAD_GATEWAY


def test_anthropic_table_against_the_documented_error_types():
    for kind, row in anthropic.ERRORS.rows.items():
        assert row.type in ANTHROPIC_TYPES, kind
        documented = ANTHROPIC_TYPES[row.type]
        assert documented is None or row.status == documented or kind == "upstream", (kind, row)
    for name, status in ANTHROPIC_TYPES.items():
        if status is not None:
            assert anthropic.ERRORS.status_of(name) == status, name


def test_openai_and_responses_tables_against_the_documented_types_and_codes():
    for table in (openai.ERRORS, responses.ERRORS):
        for kind, row in table.rows.items():
            assert row.type in OPENAI_NAMES or row.type == "requests", (kind, row)   # requests: TPM's sibling, RPM
            assert row.code is None or row.code in OPENAI_NAMES or row.code in BUSBAR_OPENAI_CODES, (kind, row)
    for name, status in OPENAI_NAMES.items():
        if status is not None:
            assert openai.ERRORS.status_of(name) == status, name
    assert openai.ERRORS.status_of("server_error") == 500
    assert responses.ERRORS.rows == {k: r._replace(event=responses.ERRORS.rows[k].event)
                                     for k, r in openai.ERRORS.rows.items()}       # HTTP errors as Chat's
    assert {row.event for row in responses.ERRORS.rows.values()} <= RESPONSES_CODES
    assert set(responses.ERRORS.read) >= RESPONSES_CODES


def test_bedrock_table_against_the_documented_exceptions():
    for kind, row in bedrock.ERRORS.rows.items():
        assert row.type in BEDROCK_EXCEPTIONS, (kind, row)
        assert row.event in BEDROCK_STREAM_EXCEPTIONS, (kind, row)
        if kind not in ("upstream",):
            assert row.status == BEDROCK_EXCEPTIONS[row.type], (kind, row)
    for name, status in BEDROCK_EXCEPTIONS.items():
        read = bedrock.ERRORS.status_of(_lower_first(name))
        if status == 424:     # a model's own failure: read as a 500, since a 4xx would blame the caller
            assert read == 500, name
        elif name != "UnrecognizedClientException":     # not a stream frame
            assert read == status, name


def test_gemini_and_cohere_tables_against_the_documented_statuses():
    for kind, row in gemini.ERRORS.rows.items():
        assert row.type == gemini._GOOGLE_STATUS[row.status] or kind == "upstream", (kind, row)
    for status, name in GOOGLE_STATUSES.items():
        assert any(r.status == status and r.type == name for r in gemini.ERRORS.rows.values())
    for kind, row in cohere.ERRORS.rows.items():
        assert row.status in COHERE_STATUSES or row.status == BAD_GATEWAY, (kind, row)
        assert row.type is None


@pytest.mark.parametrize("proto", TABLES)
@pytest.mark.parametrize("kind", KINDS)
def test_rendered_errors_say_what_the_table_says(proto, kind):
    dialect, row = get_dialect(proto), TABLES[proto].rows[kind]
    status, headers, body = dialect.render_error(ClientError(row.status, "boom", kind))
    assert status == row.status
    obj = orjson.loads(body)
    sent = {"openai": lambda: (obj["error"]["type"], obj["error"]["code"]),
            "responses": lambda: (obj["error"]["type"], obj["error"]["code"]),
            "anthropic": lambda: (obj["error"]["type"], None),
            "gemini": lambda: (obj["error"]["status"], None),
            "bedrock": lambda: (dict(headers)[b"x-amzn-errortype"].decode(), None),
            "cohere": lambda: (None, None)}[proto]()
    assert sent == (row.type, row.code)


@pytest.mark.parametrize("proto", TABLES)
@pytest.mark.parametrize("kind", KINDS)
def test_a_stream_error_reads_back_through_the_same_table(proto, kind):
    """What the encoder ends a stream with, the protocol's decoder reads as
    the status the table gives the name it sent (and classifies from it)."""
    dialect, table = get_dialect(proto), TABLES[proto]
    row = table.rows[kind]
    wire = dialect.stream_encoder("m").error(kind, "boom")
    decoder = dialect.stream_decoder()
    events = decoder.feed(wire)
    error = next(e for e in events if type(e).__name__ == "ErrorEvent")
    names = (row.code, row.type) if proto == "openai" else (row.event or row.type,)   # code, else type
    expected = {"gemini": row.status, "cohere": 500}.get(proto, table.status_of(*names))
    assert error.status == expected
    assert error.fault == dialect.classify(expected, [], error.raw)


def test_a_table_refuses_a_missing_kind_and_an_unresolved_shared_name():
    rows = {kind: ErrorRow(500, "err") for kind in KINDS}
    with pytest.raises(TypeError, match="missing kinds \\['timeout'\\]"):
        ErrorTable("x", {k: r for k, r in rows.items() if k != "timeout"})
    rows["invalid_request"] = ErrorRow(400, "err")
    with pytest.raises(TypeError, match="'err'.*say in `read`"):
        ErrorTable("x", rows)
    assert ErrorTable("x", rows, read={"err": 500}).status_of("nope", "err") == 500


@pytest.mark.slow
@pytest.mark.parametrize("proto", S.PROTOCOLS)
def test_usage_in_reads_what_parse_response_reads(proto):
    d = get_dialect(proto)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(S.wire_response(proto))
    def law(obj):
        assert d.response_usage(obj) == d.parse_response(obj).usage
    law()


def test_other_operations_read_usage_through_their_own_parse():
    """Embedding dialects have no chat `usage_in`: passthrough usage is their whole parse, as before."""
    from busbar.protocols.embeddings.openai import OpenAIEmbed
    embed = OpenAIEmbed()
    obj = {"object": "list", "model": "e", "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
           "usage": {"prompt_tokens": 7, "total_tokens": 7}}
    assert embed.response_usage(obj) == embed.parse_response(obj).usage
    assert embed.response_usage(obj).input_tokens == 7
