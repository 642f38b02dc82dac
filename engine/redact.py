"""The one place that removes secrets from text before anyone sees it:
error messages, relayed vendor bytes, request records, logs and config
errors (issue 12).  Leaf module: stdlib only.

A `Redactor` is built once per config from every secret it holds (provider
keys, AWS secrets and session tokens, gateway client keys, the admin key,
configured header values) and replaces each with `[redacted]`, longest
first, so a vendor that echoes a key (in a buffered error, an SSE error
event, mid-stream) never shows it to a client, the admin API or a log line.
"""
from __future__ import annotations

import re
from typing import Any, Iterable

REDACTED = "[redacted]"
# config fields whose values are secrets wherever they appear; `headers`
# values are included (they usually carry a vendor key)
SECRET_FIELDS = frozenset(("key", "keys", "secret_access_key", "session_token", "api_key", "password", "token",
                           "headers"))
MIN_SECRET_CHARS = 4      # shorter values would redact ordinary words


def config_secrets(data: Any) -> set[str]:
    """Every string under a secret-named field anywhere in a config tree
    (whatever its shape: a string where a list belongs is still a secret)."""
    found: set[str] = set()

    def strings(value: Any) -> None:
        if isinstance(value, str):
            found.add(value)
        elif isinstance(value, dict):
            for v in value.values():
                strings(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                strings(v)

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k in SECRET_FIELDS:
                    strings(v)
                else:
                    walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    walk(data)
    return found


class Redactor:
    """Replaces known secrets in text and bytes.  Cheap when nothing
    matches (one regex search); inert when there are no secrets."""

    __slots__ = ("_pattern", "_pattern_bytes")

    def __init__(self, secrets: Iterable[str]):
        ordered = sorted({s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET_CHARS},
                         key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._pattern_bytes = (re.compile(b"|".join(re.escape(s.encode()) for s in ordered)) if ordered else None)

    @classmethod
    def from_config(cls, raw: Any) -> "Redactor":
        return cls(config_secrets(raw))

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, value: str) -> str:
        pattern = self._pattern
        if pattern is None or not pattern.search(value):
            return value
        return pattern.sub(REDACTED, value)

    def bytes(self, value: bytes) -> bytes:
        pattern = self._pattern_bytes
        if pattern is None or not pattern.search(value):
            return value
        return pattern.sub(REDACTED.encode(), value)

    def search(self, value: str) -> bool:
        return self._pattern is not None and self._pattern.search(value) is not None
