"""`/admin/keys`: the gateway's client keys, and minting them at run time.

    POST   /admin/keys          {id?, pools?, direct?, team?, expires?, limits?, budget?, over_budget?, aws?}
                                -> 201 {..., "key": "bb-..."}  (the secret, this once; only its sha256 is kept)
                                with "aws": true also a SigV4 pair for Bedrock clients:
                                "aws_access_key_id" (kept, listed) and "aws_secret_access_key" (this
                                once; derived from auth.aws_master_secret, never stored)
    GET    /admin/keys          every key: the config's (`source: config`) and the minted ones
    GET    /admin/keys/{id}     one key
    PATCH  /admin/keys/{id}     change a minted key's fields (null removes one)
    DELETE /admin/keys/{id}     revoke a minted key: refused from the next request on

The fields are those of an `auth.keys` entry, validated by the same schema.
Managing keys needs `admin.key` to be set (a gateway without one answers
403): whoever can mint keys can spend the gateway's accounts.  Config keys
are listed but changed only in the config file (409).  No answer ever holds
a key's hash, and only the POST answer holds its secret.
"""
from __future__ import annotations

from urllib.parse import unquote

import jsonschema
import orjson

from busbar.tenancy import _expiry
from busbar.tenancy.minted import FIELDS, KeyStoreError, public_view

_validator = None


def validator() -> jsonschema.Draft202012Validator:
    """`auth.keys[]`'s schema without the secret fields (the gateway makes the secret)."""
    global _validator
    if _validator is None:
        from busbar.config import load_schema
        schema = load_schema("config.schema.json")
        entry = schema["$defs"]["client_key"]
        props = {k: v for k, v in entry["properties"].items() if k not in ("key", "key_sha256")}
        _validator = jsonschema.Draft202012Validator(
            {"type": "object", "additionalProperties": False, "properties": props, "$defs": schema["$defs"]})
    return _validator


class BadKey(ValueError):
    pass


def check_spec(spec, gateway, *, patch: bool = False) -> dict:
    """The request body as a key spec, or BadKey saying what is wrong and where."""
    if not isinstance(spec, dict):
        raise BadKey("the body must be a JSON object with the key's fields: " + ", ".join(("id",) + FIELDS))
    if patch:
        spec = {k: v for k, v in spec.items() if v is not None}      # null: remove the field
        if "id" in spec:
            raise BadKey("id: a key's id cannot change; mint a new key instead")
    from busbar.config import _describe_schema_error, yaml_path
    errors = sorted(validator().iter_errors(spec), key=lambda e: len(e.absolute_path))
    if errors:
        where = yaml_path(tuple(errors[0].absolute_path)) or "body"
        raise BadKey(f"{where}: {_describe_schema_error(errors[0])}")
    pools = set(gateway.router.pool_names())
    for name in spec.get("pools") or ():
        if name not in pools:
            raise BadKey(f"pools: no pool {name!r} in this gateway's config")
    downgrade = (spec.get("over_budget") or {}).get("downgrade")
    if downgrade is not None and downgrade not in pools:
        raise BadKey(f"over_budget.downgrade: no pool {downgrade!r} in this gateway's config")
    teams = (gateway.config.auth.get("teams") or {})
    if spec.get("team") is not None and spec["team"] not in teams:
        raise BadKey(f"team: no team {spec['team']!r} in auth.teams")
    if spec.get("expires") is not None:
        try:
            _expiry(spec["expires"])
        except ValueError:
            raise BadKey(f"expires: {spec['expires']!r} is not an ISO date or date-time") from None
    return spec


def config_keys(gateway) -> list[dict]:
    """The config's keys as the API lists them (plain strings by their derived id)."""
    tenancy = gateway.tenancy
    out = []
    specs = {}
    for spec in gateway.config.auth.get("keys", ()):
        if isinstance(spec, dict):
            specs[spec["id"]] = spec
    for key in (tenancy.by_hash.values() if tenancy is not None else ()):
        spec = specs.get(key.id, {})
        out.append({"id": key.id, "source": "config", **{f: spec[f] for f in FIELDS if f in spec}})
    return out


async def _with_spend(gateway, view: dict) -> dict:
    metrics = getattr(getattr(gateway, "admin", None), "metrics", None)
    if metrics is not None:
        view["requests"] = metrics.key_requests.get(view["id"], 0)
    if gateway.tenancy is not None and view.get("revoked") is None:
        budget = (await gateway.tenancy.usage_of(view["id"])).get("budget")
        if budget is not None:
            view["spent"] = budget["spent"]
    return view


async def listing(gateway, minted) -> list[dict]:
    views = config_keys(gateway)
    if minted is not None:
        views += [{**public_view(r), "source": "minted"} for r in minted.records.values()]
    return [await _with_spend(gateway, v) for v in views]


async def route(admin, request, responder, path: str, send_json) -> None:
    gateway = admin.gateway
    app = getattr(gateway, "app", None)
    minted = getattr(app, "minted", None)
    method = request.method
    key_id = unquote(path[len("/admin/keys/"):]) if path.startswith("/admin/keys/") else None
    if key_id is not None and (not key_id or "/" in key_id):
        return await send_json(responder, 404, {"error": f"no admin route {path}"})
    if method == b"GET":
        views = await listing(gateway, minted)
        if key_id is None:
            return await send_json(responder, 200, {"keys": views})
        view = next((v for v in views if v["id"] == key_id), None)
        if view is None:
            return await send_json(responder, 404, {"error": f"no key {key_id!r}"})
        return await send_json(responder, 200, view)
    allowed = b"POST" if key_id is None else b"PATCH, DELETE"
    if method not in ((b"POST",) if key_id is None else (b"PATCH", b"DELETE")):
        return await send_json(responder, 405, {"error": f"{method.decode('latin-1')} not allowed on {path}; "
                                                f"use GET, {allowed.decode()}"}, [(b"allow", b"GET, " + allowed)])
    if admin.key is None:
        return await send_json(responder, 403, {"error": "managing keys needs an admin key: set admin.key in the "
                                                "config (whoever can mint keys can spend the gateway's accounts)"})
    if minted is None or minted.store is None:
        return await send_json(responder, 409, {"error": "minting is off (auth.keys_db: off) or this gateway runs "
                                                "without an app; list keys in auth.keys instead"})
    try:
        if key_id is None:
            return await _create(gateway, minted, request, responder, send_json)
        if key_id not in minted.records:
            status = 409 if any(v["id"] == key_id for v in config_keys(gateway)) else 404
            message = (f"the key {key_id!r} is defined in the config file; change it there and reload"
                       if status == 409 else f"no minted key {key_id!r}")
            return await send_json(responder, status, {"error": message})
        if method == b"DELETE":
            record = await minted.revoke(key_id)
            return await send_json(responder, 200, {**public_view(record), "source": "minted"})
        try:
            body = _body(request)
            changes = check_spec(body, gateway, patch=True)
            changes.update({k: None for k, v in body.items() if v is None and k in FIELDS})
        except BadKey as exc:
            return await send_json(responder, 400, {"error": str(exc)})
        if minted.records[key_id].get("revoked") is not None:
            return await send_json(responder, 409, {"error": f"the key {key_id!r} is revoked; mint a new one"})
        record = await minted.update(key_id, changes)
        return await send_json(responder, 200, await _with_spend(gateway, {**public_view(record), "source": "minted"}))
    except KeyStoreError as exc:
        return await send_json(responder, 503, {"error": f"{exc}; nothing was changed, try again"})


def _body(request):
    try:
        return orjson.loads(request.body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise BadKey(f"the body is not JSON ({exc})") from None


async def _create(gateway, minted, request, responder, send_json) -> None:
    master = gateway.config.auth.get("aws_master_secret")
    try:
        body = _body(request)
        aws = body.pop("aws", False) if isinstance(body, dict) else False
        if not isinstance(aws, bool):
            raise BadKey("aws: true (give the key a SigV4 access key pair) or false")
        if aws and not master:
            raise BadKey("aws: minted keys get SigV4 pairs only when auth.aws_master_secret is set in the config "
                         "(their secrets derive from it; nothing secret is stored)")
        spec = check_spec(body, gateway)
    except BadKey as exc:
        return await send_json(responder, 400, {"error": str(exc)})
    try:
        record, secret = await minted.create(spec, aws=aws)
    except KeyError as exc:
        return await send_json(responder, 409, {"error": f"the id {exc.args[0]!r} is taken (ids are unique across "
                                                "config and minted keys, revoked ones included)"})
    answer = {**public_view(record), "source": "minted", "key": secret}
    if aws:
        from busbar.tenancy.minted import derive_aws_secret
        answer["aws_secret_access_key"] = derive_aws_secret(master, record["aws_access_key_id"])
    await send_json(responder, 201, answer)
