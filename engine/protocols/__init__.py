"""The six wire protocols, one module each, around one IR (`busbar.ir`).

`get_dialect(name)` returns the module's stateless `dialect` singleton.
"""
from __future__ import annotations

import importlib
from functools import cache

PROTOCOLS = ("openai", "responses", "anthropic", "gemini", "bedrock", "cohere")


@cache
def get_dialect(name: str):
    if name not in PROTOCOLS:
        raise KeyError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    return importlib.import_module(f"busbar.protocols.{name}").dialect
