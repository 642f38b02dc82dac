"""The canonical form of a request: what decides its answer, and nothing else.

Two requests with the same canonical form get the same answer from the same
pool, whichever client protocol carried them: the form is built from the IR
(every protocol parses into it), not from the wire body.  Left out: `model`
(the pool is part of the cache key), `stream` (a hit is replayed either way),
`user` and `metadata` (attribution, not input), and each protocol's private
`$` notes in `extras` (which of two equivalent spellings the client used).
A protocol's own extras stay in: a field without IR meaning may still change
the answer (`logprobs`, a server tool).  Numbers are normalised (0 == 0.0).

`semantic_split` is the part of the form a semantic hit must match exactly
(all but the last user text: tools, system prompt, response format,
sampling, reasoning, stops, extras, earlier turns) and the text that is
embedded.  Pure functions (bench/bench_cache.py has their cost).
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib

import orjson

from busbar import ir

_SKIPPED = frozenset(("stream", "user", "metadata"))
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_DATACLASS


_FIELDS: dict[type, tuple[str, ...]] = {}      # a dataclass -> the field names its form keeps


def _fields(cls: type) -> tuple[str, ...]:
    names = _FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ()
        if cls is ir.Request:
            names = tuple(n for n in names if n not in _SKIPPED)
        names = _FIELDS[cls] = names
    return names


def _form(value):
    """orjson's `default` for the IR's dataclasses: a typed dict (a part's
    class is part of its form) without None fields, empty lists or private
    extras; integral floats as ints (0 == 0.0).  orjson walks the rest."""
    t = type(value)
    names = _fields(t)
    if not names:
        if isinstance(value, enum.Enum):
            return value.value
        raise TypeError(f"{t.__name__} has no canonical form")
    out = {"": t.__name__}
    for name in names:
        v = getattr(value, name)
        if v is None or v == []:
            continue
        if name == "extras":
            v = _extras(v)
            if v is None:
                continue
        elif type(v) is float and v.is_integer():
            v = int(v)
        out[name] = v
    return out


def _extras(extras):
    if not extras:
        return None
    kept = {}
    for protocol, fields in extras.items():
        public = {k: v for k, v in (fields or {}).items() if not str(k).startswith("$")}
        if public:
            kept[protocol] = public
    return kept or None


def canonical(request: ir.Request) -> bytes:
    """The canonical bytes of `request` (sorted-key JSON)."""
    return orjson.dumps(request, default=_form, option=_OPTIONS)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def request_digest(request: ir.Request) -> str:
    """The exact-cache key of `request` (before pool and client scope)."""
    return digest(canonical(request))


def semantic_split(request: ir.Request) -> tuple[str, str] | None:
    """(partition, text) of a request the semantic cache can match: `text`
    is its last message's text, when that message is the user's and holds
    only text; `partition` the digest of everything else (system prompt,
    tools, response format, sampling, reasoning, extras, every earlier turn
    and each message's role): a semantic hit must share all of it.  None:
    the request is only cached exactly (no messages, a last turn of tool
    results, images or documents)."""
    if not request.messages:
        return None
    last = request.messages[-1]
    if last.role != "user" or not last.content:
        return None
    texts = []
    for part in last.content:
        if type(part) is not ir.Text:
            return None
        texts.append(part.text)
    text = "\n".join(texts)
    if not text.strip():
        return None
    shape = dataclasses.replace(request, messages=request.messages[:-1] + [ir.Message("user", [], last.extras)])
    return digest(canonical(shape)), text
