"""The wheel's package list (pyproject's explicit `packages`, needed by the
`package-dir` mapping, ADR 0007) names every code folder, so a new
subpackage cannot silently go missing from `pip install busbar`.  The built
wheel itself is smoke-tested by .ci/run (.ci/smoke_wheel.py)."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.pure
def test_every_subpackage_is_in_the_wheel():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {"busbar." + ".".join(p.parent.relative_to(ROOT / "engine").parts)
               for p in (ROOT / "engine").rglob("__init__.py") if p.parent != ROOT / "engine"}
    listed = set(setuptools["packages"])
    assert on_disk - listed == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert {"busbar", "busbar.schemas", "busbar.pipelines"} <= listed
    # data folders (a protocol's request schemas) are listed too, with their files as package data
    data = {"busbar.schemas." + d.name for d in (ROOT / "schemas").iterdir() if list(d.glob("*.json"))}
    assert data - listed == set(), "add these schema folders to [tool.setuptools] packages"
    assert data - set(setuptools["package-data"]) == set(), "and to [tool.setuptools.package-data]"


@pytest.mark.pure
def test_version_is_the_distribution_version():
    import busbar
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert busbar.__version__ == project["version"]
