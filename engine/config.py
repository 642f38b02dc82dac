"""Configuration: YAML → environment expansion → JSON Schema → semantic checks.

Errors name the file, the YAML path, what is wrong and what is allowed, so
`busbar validate` can print them as they are.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from busbar import catalog, resources
SCHEMAS = resources.schemas_dir()
PIPELINES_DIR = resources.pipelines_dir()

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem, located: `where` is `file: yaml.path`."""

    def __init__(self, where: str, message: str):
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


@cache
def load_schema(name: str) -> dict:
    import orjson
    return orjson.loads((SCHEMAS / name).read_bytes())


def yaml_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def expand_env(value: Any, path: tuple = (), source: str = "config") -> Any:
    """Replace ${VAR} (or ${VAR:-default}) in every string; a missing
    variable is an error naming it and where it is used."""
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{source}: {yaml_path(path)}",
                              f"environment variable {name} is not set (referenced as ${{{name}}})")
        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, path + (k,), source) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, path + (i,), source) for i, v in enumerate(value)]
    return value


def _describe_schema_error(error: jsonschema.ValidationError) -> str:
    """A one-line explanation with what is allowed."""
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "enum":
        return f"{error.instance!r} is not allowed; allowed: {', '.join(map(str, error.validator_value))}"
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = [k for k in error.instance if k not in schema.get("properties", {})]
        return f"unknown key(s) {', '.join(map(repr, extra))}; allowed: {', '.join(allowed)}"
    if error.validator == "required":
        return error.message
    if error.validator == "oneOf" and isinstance(error.instance, dict):
        options = []
        for sub in error.validator_value:
            ref = sub.get("$ref", "")
            options.append(ref.rsplit("/", 1)[-1] or str(sub.get("properties", {}).keys()))
        best = jsonschema.exceptions.best_match(error.context) if error.context else None
        hint = f" ({best.message})" if best is not None else ""
        return f"does not match any allowed form: {', '.join(options)}{hint}"
    if error.validator == "not" and isinstance(error.instance, dict) and "key" in error.instance:
        return "give either `key` or `keys`, not both"
    return error.message


def validate_schema(data: Any, schema_name: str, source: str, prefix: tuple = ()) -> None:
    schema = load_schema(schema_name)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        error = errors[0]
        raise ConfigError(f"{source}: {yaml_path(prefix + tuple(error.absolute_path))}", _describe_schema_error(error))


@dataclass(frozen=True)
class Config:
    """The validated configuration (plain dicts; consumers build their own
    immutable tables from it once)."""

    raw: dict
    source: str

    @property
    def providers(self) -> dict:
        return self.raw["providers"]

    @property
    def pools(self) -> dict:
        return self.raw["pools"]

    @property
    def server(self) -> dict:
        return self.raw.get("server", {})

    @property
    def auth(self) -> dict:
        return self.raw.get("auth", {})

    @property
    def admin(self) -> dict:
        return self.raw.get("admin", {})


def _check_references(data: dict, source: str) -> None:
    providers = data["providers"]
    pools = data["pools"]
    for pool_name, pool in pools.items():
        for i, member in enumerate(pool["members"]):
            where = f"{source}: pools.{pool_name}.members[{i}]"
            if "provider" in member and member["provider"] not in providers:
                raise ConfigError(where, f"unknown provider {member['provider']!r}; defined: {', '.join(providers)}")
            if "pool" in member and member["pool"] not in pools:
                raise ConfigError(where, f"unknown pool {member['pool']!r}; defined: {', '.join(pools)}")
        fallback = pool.get("on_exhausted", {}).get("pool")
        if fallback is not None and fallback not in pools:
            raise ConfigError(f"{source}: pools.{pool_name}.on_exhausted.pool",
                              f"unknown pool {fallback!r}; defined: {', '.join(pools)}")
    # build every provider as the gateway will (error rules compiled, request
    # signers made): validation runs exactly what will serve
    from busbar.providers import ProviderError, build_provider
    for name, provider in providers.items():
        try:
            build_provider(name, provider)
        except ProviderError as exc:
            raise ConfigError(f"{source}: {exc.path}", exc.message) from None


def parse_config(data: Any, source: str = "config") -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level)", "the config must be a mapping with `providers` and `pools`")
    data = expand_env(data, (), source)
    try:
        data = catalog.expand(data)
    except catalog.CatalogError as exc:
        raise ConfigError(f"{source}: {exc.path}", exc.message) from None
    validate_schema(data, "config.schema.json", source)
    _check_references(data, source)
    config = Config(data, source)
    # Routing and pipelines validate their own semantics (cycles, rule
    # tables); do it now so a bad config never starts serving.
    try:
        from busbar.routing import Router
        Router.from_config(config.raw)
    except ConfigError:
        raise
    except ImportError:
        pass
    except Exception as exc:  # PipelineError / ValueError from routing
        where = getattr(exc, "path", None) or "pools"
        raise ConfigError(f"{source}: {where}", getattr(exc, "message", None) or str(exc)) from None
    return config


_REF_TOKEN = re.compile(r"__busbar_env_ref_(\d+)__")


def _restore_refs(value: Any, refs: list[str]) -> Any:
    if isinstance(value, str):
        return _REF_TOKEN.sub(lambda m: refs[int(m.group(1))], value) if "__busbar_env_ref_" in value else value
    if isinstance(value, dict):
        return {_restore_refs(k, refs): _restore_refs(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore_refs(v, refs) for v in value]
    return value


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror or exc}") from None
    # `${VAR}` is not a valid plain scalar inside a YAML flow mapping
    # (`{key: ${VAR}}`, the three-line provider form), so references are
    # swapped for inert tokens while parsing and restored afterwards.
    refs: list[str] = []

    def hide(match: re.Match) -> str:
        refs.append(match.group(0))
        return f"__busbar_env_ref_{len(refs) - 1}__"

    try:
        data = _restore_refs(yaml.safe_load(_ENV_REF.sub(hide, text)), refs)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, str(path))
