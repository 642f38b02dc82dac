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


def normalise(obj: Any, root: _Node) -> Any:
    """`obj` with every field name in canonical lowerCamelCase (see module doc)."""
    return _walk(obj, root, ())


_NAMES: dict[str, str] = {}     # key -> canonical name, memoised (keys repeat across requests)


def _name(key: str) -> str:
    name = _NAMES.get(key)
    if name is None:
        name = camel(key)
        if len(_NAMES) < 4096:
            _NAMES[key] = name
    return name


def _where(path: tuple) -> str:
    """A path built lazily as nested (parent, step) pairs, rendered for an error."""
    steps = []
    while path:
        path, step = path
        steps.append(step)
    out = ""
    for step in reversed(steps):
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


def _walk(value: Any, node: _Node, path: tuple) -> Any:
    kind = node.kind
    if kind == "data":
        return value
    if type(value) is list:
        child = node.child if kind == "list" else (_ANY if kind == "any" else None)
        if child is None or child.kind == "data":
            return value
        out = value
        for i, item in enumerate(value):
            new = _walk(item, child, (path, i))
            if new is not item:
                if out is value:
                    out = list(value)
                out[i] = new
        return out
    if type(value) is not dict or kind == "list":
        return value
    if kind == "map":
        child = node.child
        out = value
        for k, v in value.items():
            new = _walk(v, child, (path, k))
            if new is not v:
                if out is value:
                    out = dict(value)
                out[k] = new
        return out
    fields = node.fields if kind == "msg" else None
    changed = False
    out: dict = {}
    for k, v in value.items():
        name = _name(k)
        if name in out:
            where = _where((path, name))
            raise ClientError(400, f"Field '{where}' is given twice (in camelCase and in snake_case); "
                                   "send one spelling.", param=where)
        child = fields.get(name, _ANY) if fields is not None else _ANY
        if child.kind != "data" and (type(v) is dict or type(v) is list):
            new = _walk(v, child, (path, name))
            if new is not v:
                changed = True
            v = new
        if name != k:
            changed = True
        out[name] = v
    return out if changed else value


def _load(dialect: str) -> _Node:
    path = resources.schemas_dir() / dialect / "request.schema.json"
    return compile_schema(orjson.loads(path.read_bytes()))


GEMINI_REQUEST = _load("gemini")
