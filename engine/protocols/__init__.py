"""The seven wire protocols, one module each, around one IR (`busbar.ir`).

`get_dialect(name)` returns the module's stateless `dialect` singleton (the
module of `bedrock-invoke` is `bedrock_invoke`).
"""
from __future__ import annotations

import importlib
from functools import cache

PROTOCOLS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere", "bedrock-invoke")


def module_name(protocol: str) -> str:
    """The module that speaks `protocol` (`bedrock-invoke` -> busbar.protocols.bedrock_invoke)."""
    return "busbar.protocols." + protocol.replace("-", "_")


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
    return importlib.import_module(module_name(name)).dialect
