"""A client's field of the wrong JSON type is the client's 400, never a crash
further in: a valid request of each protocol with one value replaced by a
hostile one either fails its parse with a `ClientError`, or parses into IR that
routing's feature check (`expressible.required`) and every protocol's renderer
take without an unexpected exception (a renderer may refuse with a
`ClientError`).  Before the IR's invariants were checked at the parse
(`ir.check_request`, `common.read_sampling`), `"temperature": "x"`,
`"tool_choice": {"type": 7}`, `"reasoning": {"effort": {}}`, a text part's
`"text": [1]` and a Bedrock content block that is a list each reached a
comparison or a dict lookup and answered 500 (found by a field fuzzer against
`busbar demo`); tests/test_gateway_bad_input.py drives those over sockets."""
from __future__ import annotations

import copy
import json

import orjson

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from busbar import ir
from busbar.faults import ClientError
from busbar.protocols import expressible, get_dialect
from tests import strategies as S

pytestmark = pytest.mark.pure

TARGETS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere")

# values of every JSON type, the ones that broke things first
HOSTILE = st.one_of(
    st.sampled_from([None, True, False, -1, 0, 2 ** 70, 1e308, -0.5, "", "x", "\u0000", [], {}, [None], [[[]]],
                     {"a": 1}, {"type": 7}, [{"type": "text"}], {"text": [1]}]),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                 | st.text(max_size=5),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                 max_leaves=6),
)


def _paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, path + (i,))


def _replace(obj, path, value):
    obj = copy.deepcopy(obj)
    cur = obj
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return obj


@st.composite
def mutated(draw, proto: str):
    obj, params = draw(S.wire_request(proto))
    paths = [p for p in _paths(obj) if p]
    path = draw(st.sampled_from(paths))
    return _replace(obj, path, draw(HOSTILE)), params, path


def _survives(proto: str, obj: dict, params: dict) -> None:
    try:            # what the gateway's own JSON parse makes of it (a 2**70 is a float there)
        obj = orjson.loads(json.dumps(obj))
    except (orjson.JSONDecodeError, UnicodeEncodeError):
        return      # not JSON the gateway accepts: its 400 comes before any parse
    dialect = get_dialect(proto)
    try:
        dialect.check_body_shape(obj)        # the gateway's guard before anything (a passthrough too)
        req = dialect.parse_request(obj, params)
    except ClientError as err:
        assert err.status == 400
        return
    assert type(req) is ir.Request
    for policy in ("reject", "degrade", "drop"):
        features = expressible.required(req, policy)
        for target in TARGETS:
            expressible.refusal(features, target)
    for target in TARGETS:
        for unsupported in ("reject", "drop"):
            try:
                get_dialect(target).render_request(req, "m", max_tokens_default=64, unsupported=unsupported)
            except ClientError:
                pass


@pytest.mark.parametrize("proto", ["openai", "responses", "anthropic", "gemini", "bedrock", "cohere"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_hostile_field_is_a_400_or_translates(proto, data):
    obj, params, path = data.draw(mutated(proto))
    _survives(proto, obj, params)


# the fuzzer's findings, each of which was a 500 (a TypeError past the parse)
FOUND = [
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "x"}, "temperature"),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                   "temperature": []}, "temperature"),
    ("gemini", {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                "generationConfig": {"temperature": {}}}, "temperature"),
    ("cohere", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": "x"}, "temperature"),
    ("openai", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": 7}}, "response_format"),
    ("cohere", {"model": "m", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": None}}, "response_format"),
    ("responses", {"model": "m", "input": "hi", "text": {"format": {"type": []}}}, "text"),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                   "tool_choice": {"type": 7}}, "tool_choice"),
    ("responses", {"model": "m", "input": "hi", "reasoning": {"effort": {}}}, "reasoning.effort"),
    ("responses", {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": [None]}]}]},
     "input[0].content[0].text"),
    ("bedrock", {"messages": [{"role": "user", "content": [[1]]}]}, "messages[0].content[0]"),
    ("anthropic", {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}],
                   "metadata": [[None, None]]}, "metadata"),
    ("bedrock", {"messages": [{"role": "user", "content": [{"text": [None]}]}]}, "messages[0].content[0].text"),
]


@pytest.mark.parametrize("proto,obj,where", FOUND, ids=[f"{p}-{w}" for p, _, w in FOUND])
def test_the_fuzzers_findings_are_400s_naming_the_field(proto, obj, where):
    params = {"model": "m", "action": {"gemini": "generateContent", "bedrock": "converse"}.get(proto)}
    with pytest.raises(ClientError) as exc:
        get_dialect(proto).parse_request(obj, params)
    assert exc.value.status == 400
    assert where in exc.value.message, exc.value.message
