"""The provider catalog: named presets for vendors and self-hosted servers.

`providers.x.catalog: groq` fills the provider's protocol, base URL and auth
style from `providers.yaml` (package data, validated by
`schemas/catalog.schema.json` when first loaded); every key the config sets
wins.  Members whose model the catalog lists get its `context` and `price`
unless they set their own.  Expansion runs before the config schema, so the
result is checked exactly like a hand-written provider.
"""
from __future__ import annotations

from functools import cache
from importlib.resources import files

import yaml

# Keys of a catalog entry that describe the catalog itself, not the provider.
_ENTRY_ONLY = ("models", "self_hosted")


class CatalogError(ValueError):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@cache
def entries() -> dict:
    """The shipped catalog, validated once."""
    from busbar.config import validate_schema
    data = yaml.safe_load(files(__name__).joinpath("providers.yaml").read_text(encoding="utf-8"))
    validate_schema(data, "catalog.schema.json", "busbar catalog")
    return data


def expand(data: dict) -> dict:
    """The config with catalog presets applied to `providers` and member
    defaults (`context`, `price`) to `pools`; raises CatalogError naming the
    YAML path."""
    providers = data.get("providers")
    if not isinstance(providers, dict) or not any(isinstance(p, dict) and "catalog" in p
                                                  for p in providers.values()):
        return data
    catalog = entries()
    expanded, models = {}, {}
    for name, spec in providers.items():
        if not isinstance(spec, dict) or "catalog" not in spec:
            expanded[name] = spec
            continue
        entry = catalog.get(spec["catalog"]) if isinstance(spec["catalog"], str) else None
        if entry is None:
            raise CatalogError(f"providers.{name}.catalog",
                               f"unknown catalog entry {spec['catalog']!r}; known: {', '.join(sorted(catalog))}")
        merged = {k: v for k, v in entry.items() if k not in _ENTRY_ONLY}
        merged.update(spec)
        if "base_url" not in merged:
            raise CatalogError(f"providers.{name}.base_url",
                               f"catalog entry {spec['catalog']!r} has no default base URL; set `base_url` "
                               "(for azure-openai: https://RESOURCE.openai.azure.com/openai)")
        if "{region}" in merged["base_url"]:
            merged["base_url"] = merged["base_url"].replace("{region}", merged.get("region", "us-east-1"))
        expanded[name] = merged
        models[name] = entry.get("models", {})
    out = {**data, "providers": expanded}
    pools = data.get("pools")
    if isinstance(pools, dict) and models:
        out["pools"] = {name: _member_defaults(pool, models) for name, pool in pools.items()}
    return out


def _member_defaults(pool, models: dict):
    if not isinstance(pool, dict) or not isinstance(pool.get("members"), list):
        return pool
    members = []
    for member in pool["members"]:
        known = models.get(member.get("provider")) if isinstance(member, dict) else None
        facts = known.get(member.get("model")) if known else None
        if facts:
            member = {**facts, **member}
        members.append(member)
    return {**pool, "members": members}


def describe() -> list[dict]:
    """One row per entry for `busbar catalog`."""
    rows = []
    for name, entry in sorted(entries().items()):
        rows.append({"name": name, "protocol": entry["protocol"], "base_url": entry.get("base_url", "(set base_url)"),
                     "auth": entry.get("auth_header") or "protocol default",
                     "self_hosted": bool(entry.get("self_hosted")), "models": sorted(entry.get("models", {}))})
    return rows
