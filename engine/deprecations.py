"""Old config spellings still accepted, each with a warning that says the new one.

A `ConfigDeprecationWarning` is a FutureWarning (shown to users by default),
so `busbar validate` and `busbar serve` print it on stderr; the config keeps
working unchanged until the old spelling is removed.
"""
from __future__ import annotations

import warnings


class ConfigDeprecationWarning(FutureWarning):
    """A config key written in a spelling that will go away."""


def deprecated(where: str, message: str) -> None:
    warnings.warn(f"{where}: {message}", ConfigDeprecationWarning, stacklevel=3)
