"""Busbar: a fast LLM API gateway (protocols, not providers)."""
from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("busbar")
except PackageNotFoundError:      # run from a source tree that was never installed
    __version__ = "0+unknown"
