"""Field-name casing for proto3-JSON dialects (Gemini).

The Gemini API reads proto3 JSON, which accepts both the lowerCamelCase JSON
name and the original snake_case proto name of every field, and the
google-genai Python SDK really sends a mix (`parameters_json_schema`,
`inlineData.mime_type`, `thinkingConfig.include_thoughts`).  One normalisation
turns every field name into its canonical lowerCamelCase before parsing, so
the parser (and the extras it keeps) sees one spelling.

Which keys are field names and which are data (a tool's argument names, a JSON
Schema's property names, label keys) is read from the dialect's request JSON
Schema (`schemas/gemini/request.schema.json`), compiled once at import:

* a node with `properties` is a message: its keys are field names (re-cased);
  a key the schema does not list is re-cased too and its value walked as an
  unknown message (every key a field name), as proto3 would;
* a node with `additionalProperties` (and no `properties`) is a map: keys are
  data, values follow the value schema;
* any other `object` node (a `google.protobuf.Struct`: `args`, `response`,
  `parametersJsonSchema`) and scalars are data, left untouched;
* `items` walks each element.

Nothing is copied unless a key changes.  Two spellings of one field in the
same object are a 400 naming both.
"""
from __future__ import annotations

import re
from typing import Any

import orjson

from busbar import resources
from busbar.faults import ClientError

_SNAKE = re.compile(r"_([a-z0-9])")


def camel(name: str) -> str:
    """The lowerCamelCase JSON name of a proto field name (idempotent)."""
    return _SNAKE.sub(lambda m: m.group(1).upper(), name) if "_" in name else name


class _Node:
    """One compiled schema node.  kind: 'msg', 'map', 'list', 'data', 'any'."""
    __slots__ = ("kind", "fields", "child")

    def __init__(self, kind: str):
        self.kind = kind
        self.fields: dict[str, _Node] = {}
        self.child: _Node | None = None


_DATA = _Node("data")
_ANY = _Node("any")         # a field the schema does not describe: every key a field name


def compile_schema(schema: dict) -> _Node:
    """Compile a request JSON Schema into the casing walk's node tree."""
    defs = schema.get("$defs", {})
    memo: dict[str, _Node] = {}

    def build(node: dict) -> _Node:
        ref = node.get("$ref")
        if ref is not None:
            name = ref.rsplit("/", 1)[-1]
            if name not in memo:
                memo[name] = _Node("msg")        # placeholder first: Schema is recursive
                built = build(defs[name])
                memo[name].kind, memo[name].fields, memo[name].child = built.kind, built.fields, built.child
            return memo[name]
        if "properties" in node:
            out = _Node("msg")
            out.fields = {camel(k): build(v) for k, v in node["properties"].items()}
            return out
        if isinstance(node.get("additionalProperties"), dict):
            out = _Node("map")
            out.child = build(node["additionalProperties"])
            return out
        if "items" in node:
            out = _Node("list")
            out.child = build(node["items"])
            return out
        return _DATA

    return build(schema)


def normalise(obj: Any, root: _Node, path: str = "") -> Any:
    """`obj` with every field name in canonical lowerCamelCase (see module doc)."""
    return _walk(obj, root, path)


def _walk(value: Any, node: _Node, path: str) -> Any:
    kind = node.kind
    if kind == "data":
        return value
    if isinstance(value, list):
        child = node.child if kind == "list" else (_ANY if kind == "any" else None)
        if child is None:
            return value
        out = value
        for i, item in enumerate(value):
            new = _walk(item, child, f"{path}[{i}]")
            if new is not item:
                if out is value:
                    out = list(value)
                out[i] = new
        return out
    if not isinstance(value, dict):
        return value
    if kind == "map":
        child = node.child
        out = value
        for k, v in value.items():
            new = _walk(v, child, f"{path}.{k}" if path else k)
            if new is not v:
                if out is value:
                    out = dict(value)
                out[k] = new
        return out
    if kind == "list":
        return value
    fields = node.fields
    changed = False
    out: dict = {}
    for k, v in value.items():
        name = camel(k)
        if name in out:
            where = f"{path}." if path else ""
            raise ClientError(400, f"Field '{where}{name}' is given twice (as '{name}' and in snake_case); "
                                   "send one spelling.", param=f"{where}{name}")
        child = fields.get(name, _ANY) if kind == "msg" else _ANY
        new = _walk(v, child, f"{path}.{name}" if path else name)
        if name != k or new is not v:
            changed = True
        out[name] = new
    return out if changed else value


def _load(dialect: str) -> _Node:
    path = resources.schemas_dir() / dialect / "request.schema.json"
    return compile_schema(orjson.loads(path.read_bytes()))


GEMINI_REQUEST = _load("gemini")
