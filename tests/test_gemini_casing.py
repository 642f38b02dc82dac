"""Gemini reads proto3 JSON: every field may be spelled lowerCamelCase or
snake_case, at any depth.  The parser normalises once (busbar.protocols.casing),
so a re-cased request means exactly the same IR."""
from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbar.faults import ClientError
from busbar.protocols import get_dialect
from busbar.protocols.casing import camel
from tests import strategies as S

pytestmark = pytest.mark.pure
GEMINI = get_dialect("gemini")
PARAMS = {"model": "m", "action": "generateContent"}

# The test's own oracle of where keys are data, written from the Gemini API
# reference rather than from the schema the code compiles: google.protobuf.Struct
# fields (their keys are the caller's) and maps.
STRUCT_FIELDS = {"args", "parametersJsonSchema", "responseJsonSchema", "example", "default", "labels"}
SCHEMA_FIELDS = {"parameters", "responseSchema"}     # OpenAPI Schema messages: `properties` is a map


def snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), name)


@st.composite
def recased(draw, value, in_schema=False, parent=None):
    """`value` with a random subset of its field names snake_cased."""
    if isinstance(value, list):
        return [draw(recased(v, in_schema)) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if in_schema and parent == "properties":        # keys are property names: data
            out[key] = draw(recased(v, True))
            continue
        name = snake(key) if draw(st.booleans()) else key
        if key in STRUCT_FIELDS or (key == "response" and not in_schema):
            out[name] = v
        elif key in SCHEMA_FIELDS:
            out[name] = draw(recased(v, True))
        elif in_schema and key == "properties":
            out[name] = {pk: draw(recased(pv, True)) for pk, pv in v.items()}
        else:
            out[name] = draw(recased(v, in_schema))
    return out


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_recased_request_means_the_same(data):
    obj, params = data.draw(S.wire_request("gemini"))
    again = data.draw(recased(obj))
    assert GEMINI.parse_request(again, params) == GEMINI.parse_request(obj, params)


def test_what_google_genai_python_sends():
    """The body google-genai 3.6 really sends (captured from the SDK)."""
    obj = {
        "contents": [{"role": "user", "parts": [
            {"text": "hi"},
            {"inlineData": {"data": "iVBORw==", "mime_type": "image/png"}},
            {"fileData": {"file_uri": "gs://b/y.png", "mime_type": "image/png"}}]}],
        "tools": [{"functionDeclarations": [{"name": "get_w", "description": "d", "parameters_json_schema": {
            "type": "object", "properties": {"city_name": {"type": "string"}}}}]}],
        "generationConfig": {"thinkingConfig": {"include_thoughts": True, "thinking_budget": 100}}}
    req = GEMINI.parse_request(obj, PARAMS)
    image, file = req.messages[0].content[1:]
    assert (image.data, image.media_type) == ("iVBORw==", "image/png")
    assert (file.url, file.media_type) == ("gs://b/y.png", "image/png")
    assert req.tools[0].parameters == {"type": "object", "properties": {"city_name": {"type": "string"}}}
    assert req.reasoning.budget_tokens == 100
    body, warnings = get_dialect("anthropic").render_request(req, "claude")
    assert b'"city_name"' in body and b'"media_type":"image/png"' in body
    # rendered back to Gemini: canonical camelCase only
    gem, _ = GEMINI.render_request(req, "gemini-x")
    assert b"_" not in re.sub(rb'"(city_name|gemini-x|[^"]*\.png|[a-z]+_[a-z]+)"', b"", gem).replace(b"get_w", b"")
    assert b'"includeThoughts":true' in gem


def test_struct_keys_are_never_recased():
    obj = {"contents": [{"role": "model", "parts": [{"function_call": {"name": "f", "args": {"user_id": 1}}}]},
                        {"role": "user", "parts": [{"function_response": {"name": "f",
                                                                          "response": {"result_code": 2}}}]}],
           "tools": [{"function_declarations": [{"name": "f", "parameters": {
               "type": "OBJECT", "properties": {"user_id": {"type": "INTEGER", "max_items": 3}},
               "property_ordering": ["user_id"]}}]}]}
    req = GEMINI.parse_request(obj, PARAMS)
    assert req.messages[0].content[0].arguments == {"user_id": 1}
    assert req.messages[1].content[0].content[0].value == {"result_code": 2}
    assert req.tools[0].parameters["properties"] == {"user_id": {"type": "integer", "maxItems": 3}}
    assert req.tools[0].parameters["propertyOrdering"] == ["user_id"]


def test_both_spellings_of_one_field_is_a_400():
    obj = {"contents": [{"parts": [{"text": "x"}]}], "generationConfig": {"maxOutputTokens": 5,
                                                                          "max_output_tokens": 6}}
    with pytest.raises(ClientError) as exc:
        GEMINI.parse_request(obj, PARAMS)
    assert exc.value.status == 400 and exc.value.param == "generationConfig.maxOutputTokens"


def test_camel_is_idempotent():
    assert camel("parameters_json_schema") == "parametersJsonSchema" == camel("parametersJsonSchema")
    assert camel("file_uri") == "fileUri"
