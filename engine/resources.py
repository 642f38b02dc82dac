"""Where the package's data lives: JSON Schemas and the shipped pipelines.

The repository keeps the design-card layout (`schemas/`, `pipelines/` at the
top); the wheel carries them as the resource packages `busbar.schemas` and
`busbar.pipelines` (see `pyproject.toml`, ADR 0007). Both are regular packages
on disk in every supported install (wheel or editable), so callers get a `Path`.
"""
from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path


@cache
def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(f"busbar.{name}")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"busbar is installed without its {name!r} data; reinstall the package")
    return Path(next(iter(spec.submodule_search_locations)))


def schemas_dir() -> Path:
    return package_dir("schemas")


def pipelines_dir() -> Path:
    return package_dir("pipelines")
