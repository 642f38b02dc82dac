"""Passthrough's one edit to the client's bytes: the top-level `model` value.

The splice finds `"model"` with bytes.find and matches only there (ADR 0014,
session 4); the oracle is the single regex scan it replaced, and the JSON
itself: the result parses to the client's object with only `model` changed.
"""
import re

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busbar.protocols.base import rewrite_json_model

pytestmark = pytest.mark.pure

# the implementation before: one regex over the whole body
_SCAN = re.compile(rb'(?<!\\)"model"\s*:\s*"((?:[^"\\]|\\.)*)"')


def scan_rewrite(body: bytes, obj: dict, model: str) -> bytes:
    matches = list(_SCAN.finditer(body))
    if len(matches) == 1:
        m = matches[0]
        return body[: m.start(1)] + orjson.dumps(model)[1:-1] + body[m.end(1):]
    return orjson.dumps({**obj, "model": model})


tricky_text = st.lists(st.sampled_from(['"', "\\", "model", ":", " ", "a", "é", "\n", '"model"', "{", "}"]),
                       max_size=12).map("".join)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["model", "content", "role", 'a"model', "x"]) | tricky_text, inner, max_size=4),
    max_leaves=12)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["messages", "model", "stream", "metadata", "input"]), json_values,
                       max_size=5),
       st.sampled_from(["m", "gpt-4o", 'we"ird\\model', "é"]),
       st.sampled_from([orjson.dumps, lambda o: orjson.dumps(o, option=orjson.OPT_INDENT_2)]))
def test_the_splice_agrees_with_the_scan_and_changes_only_the_model(obj, model, dumps):
    body = dumps(obj)
    out = rewrite_json_model(body, obj, model)
    if isinstance(obj.get("model"), str):      # the bodies routing accepts: the scan was right there
        assert out == scan_rewrite(body, obj, model)
    assert orjson.loads(out) == {**obj, "model": model}


def test_a_large_prompt_keeps_its_bytes_but_the_model():
    body = b'{"messages": [{"role": "user", "content": "' + b'word \\"model\\": \\"no\\" ' * 5000 + b'"}],\n "model" : "pool"}'
    obj = orjson.loads(body)
    out = rewrite_json_model(body, obj, "member-1")
    assert out == body.replace(b'"model" : "pool"', b'"model" : "member-1"')


def test_a_nested_model_alone_is_not_taken_for_the_top_level_one():
    body = b'{"metadata":{"model":"mine"}}'
    assert orjson.loads(rewrite_json_model(body, orjson.loads(body), "m")) == {"metadata": {"model": "mine"}, "model": "m"}


def test_a_nested_model_key_falls_back_to_the_parsed_object():
    body = b'{"model":"pool","metadata":{"model":"mine"}}'
    obj = orjson.loads(body)
    assert orjson.loads(rewrite_json_model(body, obj, "m")) == {"model": "m", "metadata": {"model": "mine"}}
