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
from busbar.redact import Redactor, config_secrets
SCHEMAS = resources.schemas_dir()
PIPELINES_DIR = resources.pipelines_dir()

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A configuration problem, located: `where` is `file: yaml.path` (or
    `file:LINE: yaml.path` when loaded from YAML).  `problems` holds every
    (where, message) found, in file order; `where`/`message` are the first."""

    def __init__(self, where: str, message: str, *, also: tuple = ()):
        self.problems = [(where, message), *also]
        super().__init__("\n".join(f"{w}: {m}" for w, m in self.problems))
        self.where = where
        self.message = message


Problem = tuple[tuple, str]        # (YAML path parts, message): located by `_raise_problems`
_PATH_PART = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _path_parts(where: str) -> tuple:
    """`pools.smart.members[0]` -> ('pools', 'smart', 'members', 0)."""
    return tuple(int(index) if index else name for name, index in _PATH_PART.findall(where))


def yaml_marks(node, path: tuple = (), out: dict | None = None) -> dict:
    """Line (1-based) of every value in a composed YAML node tree, by path."""
    out = {} if out is None else out
    if node is None:
        return out
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                yaml_marks(value, path + (key.value,), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, value in enumerate(node.value):
            yaml_marks(value, path + (i,), out)
    return out


def _line_of(path: tuple, marks: dict) -> int | None:
    for end in range(len(path), -1, -1):   # the deepest part of the path the file has
        line = marks.get(path[:end])
        if line is not None:
            return line
    return None


def _raise_problems(problems: list[Problem], source: str, marks: dict | None) -> None:
    """Raise one ConfigError listing every problem, each with its YAML path
    and (when the file's marks are known) its line, in file order."""
    if not problems:
        return
    located = []
    for path, message in problems:
        line = _line_of(path, marks) if marks else None
        where = f"{source}:{line}: {yaml_path(path)}" if line else f"{source}: {yaml_path(path)}"
        located.append((line or 0, where, message))
    located.sort(key=lambda item: item[0])
    (_, where, message), *rest = located
    raise ConfigError(where, message, also=tuple((w, m) for _, w, m in rest))


@cache
def load_schema(name: str) -> dict:
    import orjson
    return orjson.loads((SCHEMAS / name).read_bytes())


def yaml_path(parts) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def expand_env(value: Any, path: tuple = (), source: str = "config", problems: list | None = None) -> Any:
    """Replace ${VAR} (or ${VAR:-default}) in every string; a missing
    variable is an error naming it and where it is used (collected into
    `problems` when given, else raised)."""
    if isinstance(value, str):
        def sub(match: re.Match) -> str:
            name, default = match.group(1), match.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            message = f"environment variable {name} is not set (referenced as ${{{name}}})"
            if problems is None:
                raise ConfigError(f"{source}: {yaml_path(path)}", message)
            problems.append((path, message))
            return match.group(0)      # left as written: no follow-on errors about its value
        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: expand_env(v, path + (k,), source, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v, path + (i,), source, problems) for i, v in enumerate(value)]
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


def schema_problems(data: Any, schema_name: str, prefix: tuple = ()) -> list[Problem]:
    """Every schema violation, shallowest first."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    return [(prefix + tuple(error.absolute_path), _describe_schema_error(error)) for error in errors]


def validate_schema(data: Any, schema_name: str, source: str, prefix: tuple = ()) -> None:
    problems = schema_problems(data, schema_name, prefix)
    if problems:
        path, message = problems[0]
        raise ConfigError(f"{source}: {yaml_path(path)}", message)


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

    @property
    def state(self) -> dict:
        return self.raw.get("state", {})


def advisories(config: Config) -> list[str]:
    """What `busbar validate` warns about without refusing the config: a pool
    of embedding members (any declares `dimensions`) is expected to hold one
    model family, so its members should answer with vectors of one size."""
    from busbar.protocols.operation import operation_dialect
    notes = []
    for name, pool in config.pools.items():
        members = [m for m in pool.get("members", ()) if isinstance(m, dict) and "provider" in m]
        sizes = {f"{m['provider']}/{m['model']}": m["dimensions"] for m in members if "dimensions" in m}
        if not sizes:
            continue
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{member} {size}" for member, size in sizes.items())
            notes.append(f"pools.{name}: members declare different embedding dimensions ({listed}); vectors of "
                         "different sizes (or models) cannot be compared, so a pool should hold one model family")
        for m in members:
            protocol = config.providers.get(m["provider"], {}).get("protocol")
            if protocol and operation_dialect(protocol, "embed") is None:
                notes.append(f"pools.{name}: member {m['provider']}/{m['model']} speaks {protocol}, which has no "
                             "embeddings endpoint")
    return notes


def _tls_problems(data: dict, invalid: set) -> list[Problem]:
    """`server.tls` cert and key loaded as the server will load them (a
    missing file, a key not matching its certificate: named by YAML path);
    providers' `ca_bundle` files are checked by `build_provider`."""
    server = data.get("server")
    tls = server.get("tls") if isinstance(server, dict) else None
    if not isinstance(tls, dict) or any(path[:2] == ("server", "tls") or path in ((), ("server",))
                                        for path in invalid):
        return []
    from busbar.tls import TlsFileError, server_context
    try:
        server_context(tls)
    except TlsFileError as exc:
        return [(_path_parts(exc.path), exc.message)]
    return []


def _semantic_problems(pool_name: str, cache: dict, pools: dict, providers: dict) -> list[Problem]:
    """A semantic cache's `embed_pool` must be another pool of this config
    whose members are embedding models (a name that says `embed`, or a
    declared `dimensions`) on a protocol with an embeddings endpoint; the
    index needs numpy (the `busbar[semantic]` extra)."""
    from busbar.cache.semantic import available
    from busbar.protocols.operation import operation_dialect
    where = ("pools", pool_name, "cache", "embed_pool")
    name = cache["embed_pool"]
    problems: list[Problem] = []
    if not available():
        problems.append((("pools", pool_name, "cache", "mode"), "semantic matching needs numpy, which is not "
                         "installed: pip install 'busbar[semantic]' (or use mode: exact)"))
    if name == pool_name:
        return problems + [(where, "a pool cannot embed its own prompts; name a pool of embedding models")]
    if name not in pools:
        return problems + [(where, f"unknown pool {name!r}; defined: {', '.join(pools)}")]
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen or not isinstance(pools.get(current), dict):
            continue
        seen.add(current)
        for member in pools[current].get("members") or ():
            if not isinstance(member, dict):
                continue
            if "pool" in member:
                todo.append(member["pool"])
                continue
            provider, model = member.get("provider"), str(member.get("model", ""))
            protocol = (providers.get(provider) or {}).get("protocol") if isinstance(providers, dict) else None
            if protocol and operation_dialect(protocol, "embed") is None:
                problems.append((where, f"pool {name!r}: member {provider}/{model} speaks {protocol}, which has no "
                                        "embeddings endpoint; name a pool of embedding models"))
            elif "embed" not in model.lower() and "dimensions" not in member:
                problems.append((where, f"pool {name!r}: member {provider}/{model} is not an embedding model (its "
                                        "name does not say `embed` and it declares no `dimensions`); name a pool of "
                                        "embedding models, or declare the member's `dimensions`"))
    return problems


def _reference_problems(data: dict, invalid: set) -> list[Problem]:
    """Unknown providers/pools and providers that cannot be built.  Runs
    beside the schema check (so both kinds are reported at once): skips
    whatever the schema already rejected (`invalid`: paths with errors)."""
    problems: list[Problem] = []
    providers = data.get("providers") if isinstance(data.get("providers"), dict) else {}
    pools = data.get("pools") if isinstance(data.get("pools"), dict) else {}
    for pool_name, pool in pools.items():
        members = pool.get("members") if isinstance(pool, dict) else None
        for i, member in enumerate(members if isinstance(members, list) else []):
            if not isinstance(member, dict):
                continue
            where = ("pools", pool_name, "members", i)
            if "provider" in member and member["provider"] not in providers:
                problems.append((where, f"unknown provider {member['provider']!r}; defined: {', '.join(providers)}"))
            if "pool" in member and member["pool"] not in pools:
                problems.append((where, f"unknown pool {member['pool']!r}; defined: {', '.join(pools)}"))
        cache = pool.get("cache") if isinstance(pool, dict) else None
        if isinstance(cache, dict) and cache.get("mode") == "semantic" and isinstance(cache.get("embed_pool"), str):
            problems += _semantic_problems(pool_name, cache, pools, providers)
        exhausted = pool.get("on_exhausted") if isinstance(pool, dict) else None
        fallback = exhausted.get("pool") if isinstance(exhausted, dict) else None
        if fallback is not None and fallback not in pools:
            problems.append((("pools", pool_name, "on_exhausted", "pool"),
                             f"unknown pool {fallback!r}; defined: {', '.join(pools)}"))
    # build every provider as the gateway will (error rules compiled, request
    # signers made): validation runs exactly what will serve
    from busbar.providers import ProviderError, build_provider
    for name, provider in providers.items():
        if any(path[:2] == ("providers", name) or path == ("providers",) or path == () for path in invalid):
            continue
        try:
            build_provider(name, provider, data.get("upstream") if isinstance(data.get("upstream"), dict) else None)
        except ProviderError as exc:
            problem = (_path_parts(exc.path), exc.message)
            if problem not in problems:      # a bad upstream.ca_bundle: said once, not per provider
                problems.append(problem)
    return problems


def parse_config(data: Any, source: str = "config", marks: dict | None = None) -> Config:
    """Validate a config; every problem found is reported at once (one
    ConfigError, `problems` lists them); `marks` (YAML path -> line, from
    `load_config`) adds line numbers.  A ConfigError never carries a secret
    value (busbar.redact): `validate`, `serve`, the reload log and the admin
    reload answer all print it."""
    try:
        return _parse_config(data, source, marks)
    except ConfigError as exc:
        secrets = config_secrets(data)
        try:
            secrets |= config_secrets(expand_env(data, (), source, []))
        except ConfigError:
            pass
        # an unexpanded `${VAR}` names a secret, it is not one (and the error may need it)
        redactor = Redactor(s for s in secrets if not _ENV_REF.fullmatch(s))
        if not redactor or not any(redactor.search(w) or redactor.search(m) for w, m in exc.problems):
            raise
        clean = [(redactor.text(w), redactor.text(m)) for w, m in exc.problems]
        raise ConfigError(*clean[0], also=tuple(clean[1:])) from None


def _parse_config(data: Any, source: str, marks: dict | None) -> Config:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: (top level)", "the config must be a mapping with `providers` and `pools`")
    problems: list[Problem] = []
    data = expand_env(data, (), source, problems)
    try:
        data = catalog.expand(data)
    except catalog.CatalogError as exc:
        _raise_problems(problems + [(_path_parts(exc.path), exc.message)], source, marks)
    schema = schema_problems(data, "config.schema.json")
    problems += schema + _reference_problems(data, {path for path, _ in schema})
    problems += _tls_problems(data, {path for path, _ in schema})
    _raise_problems(problems, source, marks)
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
        _raise_problems([(_path_parts(where), getattr(exc, "message", None) or str(exc))], source, marks)
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

    # composed first (as yaml.safe_load does) so each value's line is kept
    loader = yaml.SafeLoader(_ENV_REF.sub(hide, text))
    try:
        node = loader.get_single_node()
        data = _restore_refs(loader.construct_document(node) if node is not None else None, refs)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(where, f"invalid YAML: {getattr(exc, 'problem', exc)}") from None
    finally:
        loader.dispose()
    return parse_config(data, str(path), yaml_marks(node))
