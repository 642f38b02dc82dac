"""The six wire protocols, one module each, around one IR (`busbar.ir`).

`get_dialect(name)` returns the module's stateless `dialect` singleton.
"""
from __future__ import annotations

import importlib
from functools import cache

PROTOCOLS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere")


@cache
def get_dialect(name: str, operation: str | None = None):
    """`operation`: a call other than chat on that protocol's own path (a
    route's `operation` param: embed, rerank, count...)."""
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    if operation is not None:
        from busbar.protocols.operation import operation_dialect
        found = operation_dialect(name, operation)
        if found is None:
            raise KeyError(f"protocol {name!r} has no {operation!r} operation")
        return found
    return importlib.import_module(f"busbar.protocols.{name}").dialect
