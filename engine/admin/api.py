"""The admin HTTP routes: page, JSON API, live events, usage, metrics.

Everything here reads state the gateway already keeps (router snapshot,
finished-request records, the Admin's counters); nothing here is on a
client request's path.  Output never holds a secret: keys appear by id,
clients by hash, and the admin key is never echoed.
"""
from __future__ import annotations

import hmac
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote

import orjson
import trio

from busbar import diagram
from busbar.protocols.base import header

PAGE_FILE = Path(__file__).with_name("page.html")
PANELS = ("keys_panel.html",)      # the client keys panel (busbar.admin.keys)
RECENT_IN_STATE = 50
SSE_TICK = 0.25            # how often a stream checks for finished requests
SSE_EVERY = 1.0            # a snapshot at least this often
DIAGRAM_CACHE = 32

JSON = (b"content-type", b"application/json")
NO_STORE = (b"cache-control", b"no-store")
PAGE_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"), NO_STORE,
    (b"content-security-policy", b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                                  b"img-src data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
                                  b"frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
]
_page: bytes | None = None


def page() -> bytes:
    """page.html with its panels that live in their own files spliced in before </main>."""
    global _page
    if _page is None:
        panels = b"".join(PAGE_FILE.with_name(name).read_bytes() for name in PANELS)
        _page = PAGE_FILE.read_bytes().replace(b"</main>", panels + b"</main>", 1)
    return _page


# ---------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------
async def handle(admin, request, responder) -> None:
    # latin-1 throughout: any bytes (a non-UTF-8 ?key= too) decode, and the
    # key compares byte for byte
    query = {k: v[-1] for k, v in parse_qs(request.query.decode("latin-1"), encoding="latin-1").items()}
    if not _authorized(admin, request, query):
        if request.path == b"/admin":
            return await responder.send(401, PAGE_HEADERS[:1] + [NO_STORE], LOGIN_PAGE)
        return await _json(responder, 401, {"error": "admin key required: send `Authorization: Bearer <key>` "
                                                     "or add ?key=<key>"},
                           [(b"www-authenticate", b'Bearer realm="busbar admin"')])
    path = request.path.decode("latin-1")
    if path == "/admin/cache":
        return await cache_route(admin, request, responder, query)
    if path == "/admin/keys" or path.startswith("/admin/keys/"):
        from busbar.admin import keys
        return await keys.route(admin, request, responder, path, _json)
    if request.method == b"POST":
        return await operate(admin, responder, path)
    if request.method != b"GET":
        return await _json(responder, 405, {"error": f"{request.method.decode()} not allowed; use GET (POST for "
                                                     "/admin/reload and /admin/members/{id}/drain|undrain)"},
                           [(b"allow", b"GET, POST")])
    if path in ("/metrics", "/admin/api/state"):
        await admin.refresh_quota()        # replicas: the cluster's key quota counts
    if path == "/metrics":
        from busbar.admin.metrics import CONTENT_TYPE
        return await responder.send(200, [(b"content-type", CONTENT_TYPE.encode()), NO_STORE],
                                    await admin.metrics.render_async())
    if path in ("/admin", "/admin/"):
        return await responder.send(200, PAGE_HEADERS, page())
    if path == "/admin/api/state":
        return await _json(responder, 200, state(admin))
    if path == "/admin/api/requests":
        return await _json(responder, 200, {"requests": requests(admin, query)})
    if path.startswith("/admin/api/requests/"):
        return await request_detail(admin, responder, unquote(path[len("/admin/api/requests/"):]), query)
    if path == "/admin/api/diagram":
        return await diagram_route(admin, responder, query)
    if path == "/admin/events":
        return await events(admin, responder)
    if path == "/admin/usage":
        return await usage(admin, responder, query)
    return await _json(responder, 404, {"error": f"no admin route {path}", "routes": ROUTES})


async def operate(admin, responder, path: str) -> None:
    """The operations: POST /admin/reload (re-read the config file; a bad one
    is rejected and the current one keeps serving) and POST
    /admin/members/{id}/drain|undrain (no new requests; in-flight ones finish)."""
    from busbar.config import ConfigError
    app = getattr(admin.gateway, "app", None)
    if app is None:
        return await _json(responder, 503, {"error": "this gateway runs without an app to operate on"})
    if path == "/admin/reload":
        try:
            message = app.reload()
        except ConfigError as exc:
            return await _json(responder, 400, {"error": f"reload rejected, the current config keeps serving: {exc}"})
        return await _json(responder, 200, {"ok": True, "message": message})
    prefix = "/admin/members/"
    if path.startswith(prefix) and path.endswith(("/drain", "/undrain")):
        member_id, _, action = unquote(path[len(prefix):]).rpartition("/")
        try:
            members = app.drain(member_id, action == "drain")
        except KeyError:
            return await _json(responder, 404, {"error": f"no member {member_id!r}"})
        return await _json(responder, 200, {"ok": True, "drained": action == "drain", "members": members})
    return await _json(responder, 405, {"error": f"POST not allowed on {path}; operations: POST /admin/reload, "
                                                 "POST /admin/members/{id}/drain, POST /admin/members/{id}/undrain"},
                       [(b"allow", b"GET")])


async def cache_route(admin, request, responder, query: dict) -> None:
    """GET /admin/cache: each cached pool's entries, bytes and counters.
    DELETE /admin/cache[?pool=NAME]: invalidate every entry of one pool or of
    all (in Redis mode: for every replica).  Deleting needs the admin key
    configured (`admin.key`), even on a loopback listener."""
    cache = admin.gateway.cache
    pool = query.get("pool")
    if pool is not None and pool not in cache.policies:
        return await _json(responder, 404, {"error": f"pool {pool!r} keeps no cache; cached pools: "
                                                     f"{', '.join(cache.policies) or 'none'}"})
    if request.method == b"DELETE":
        if admin.key is None:
            return await _json(responder, 403, {"error": "DELETE /admin/cache needs an admin key: set admin.key in "
                                                         "the config and send it as `Authorization: Bearer <key>`"})
        cleared = await cache.clear(pool)
        if any(n is None for n in cleared.values()):
            return await _json(responder, 503, {"error": "the cache's Redis is unavailable; nothing was cleared "
                                                         "there", "cleared": cleared})
        return await _json(responder, 200, {"ok": True, "cleared": cleared})
    if request.method != b"GET":
        return await _json(responder, 405, {"error": f"{request.method.decode()} not allowed on /admin/cache; "
                                                     "use GET or DELETE"}, [(b"allow", b"GET, DELETE")])
    pools = {}
    for name, policy in cache.policies.items():
        if pool is not None and name != pool:
            continue
        st = cache.stats[name]
        index = cache.indexes.get(name)
        pools[name] = {"mode": policy.mode, "entries": cache.entries(name), "bytes": cache.bytes_held(name),
                       "max_entries": policy.max_entries, "max_bytes": policy.max_bytes or None,
                       "backend": "memory" if cache.entries(name) is not None else "redis",
                       "hits": st.hits, "misses": st.misses, "stored": st.stored,
                       **({"index_entries": len(index), "semantic_hits": st.semantic_hits,
                           "semantic_misses": st.semantic_misses, "semantic_unavailable": st.semantic_unavailable}
                          if index is not None else {})}
    return await _json(responder, 200, {"pools": pools})


ROUTES = ["/admin", "/admin/api/state", "/admin/api/requests", "/admin/api/requests/{id}",
          "/admin/api/diagram?pool=&request=&format=svg|mermaid|dot|png", "/admin/events",
          "/admin/usage?since=&until=&group_by=", "/admin/keys (GET, POST)", "/admin/keys/{id} (GET, PATCH, DELETE)",
          "/admin/cache (GET, DELETE ?pool=)", "/metrics"]


async def not_found(responder, path: bytes) -> None:
    await _json(responder, 404, {"error": f"no route {path.decode('latin-1')} on the admin listener",
                                 "routes": ROUTES})


def _authorized(admin, request, query: dict) -> bool:
    if admin.key is None or (request.path == b"/metrics" and not admin.metrics_need_key
                             and not admin.on_public_port):     # the admin listener is internal
        return True
    auth = header(request.headers, b"authorization")
    if auth is not None and auth[:7].lower() == b"bearer " and hmac.compare_digest(auth[7:].strip(), admin.key):
        return True
    given = query.get("key")
    return given is not None and hmac.compare_digest(given.encode("latin-1"), admin.key)


async def _json(responder, status: int, data, extra=()) -> None:
    await responder.send(status, [JSON, NO_STORE, *extra], orjson.dumps(data))


# ---------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------
def _now() -> float:
    try:
        return trio.current_time()
    except RuntimeError:
        return time.monotonic()


def _wall_clock(obj, wall_now: float):
    """Monotonic deadlines (`until`) mean nothing outside the process: give
    each a wall-clock `until_epoch` instead, from its `remaining_s`."""
    if isinstance(obj, dict):
        if "remaining_s" in obj:
            obj.pop("until", None)
            obj["until_epoch"] = round(wall_now + obj["remaining_s"], 3)
        for value in obj.values():
            if isinstance(value, (dict, list)):
                _wall_clock(value, wall_now)
    elif isinstance(obj, list):
        for value in obj:
            if isinstance(value, (dict, list)):
                _wall_clock(value, wall_now)
    return obj


def _records(gw) -> list:
    """Finished records, newest first."""
    return list(reversed(gw.recent_records))


def _active(gw) -> list:
    """In-flight records, when the gateway keeps them (`gateway.active`)."""
    active = getattr(gw, "active", None)
    if not active:
        return []
    return list(active.values()) if isinstance(active, dict) else list(active)


def state(admin) -> dict:
    gw = admin.gateway
    metrics = admin.metrics
    wall = time.time()
    snap = _wall_clock(gw.router.snapshot(_now()), wall)
    for pool in snap["pools"].values():
        for member in pool["members"]:
            if "id" in member:
                member.update(metrics.latency(member["id"]))
    _backend_history(gw, snap["pools"])
    ok = failed = 0
    for (_, _, _, _, status, _), n in list(metrics.requests.items()):
        if 0 < status < 400:
            ok += n
        else:
            failed += n
    app = getattr(gw, "app", None)
    return {
        "now": round(wall, 3),
        "uptime_s": round(wall - metrics.started, 1),
        "in_flight": gw.in_flight,
        "totals": {"requests": metrics.total, "ok": ok, "failed": failed},
        "reloads": getattr(app, "reloads", 0),
        "state": app.state.status() if hasattr(app, "state") else {"backend": "memory", "degraded": False},
        "cluster": app.cluster.status() if getattr(app, "cluster", None) is not None else None,
        "minted_keys": app.minted.status() if getattr(app, "minted", None) is not None else None,
        "response_deletions": app.deletions.status() if getattr(app, "deletions", None) is not None else None,
        "response_affinity": gw.affinity.status(),
        "background": app.background.status() if getattr(app, "background", None) is not None else None,
        "config": getattr(gw.config, "source", ""),
        "graphviz": diagram.have_graphviz(),
        "pools": snap["pools"],
        "providers": snap["providers"],
        "direct_routes": snap.get("direct_routes", []),
        "active": [r.as_dict() for r in _active(gw)],
        "recent": [r.as_dict() for r in _records(gw)[:RECENT_IN_STATE]],
    }


def _backend_history(gw, pools: dict) -> None:
    """Each self-hosted member's telemetry kind and its recent samples (the
    watcher's ring), for the page's backend panels."""
    kinds = {spec.provider: spec.kind for spec in getattr(gw, "watch_specs", ())}
    if not kinds:
        return
    watcher = getattr(getattr(gw, "app", None), "watcher", None)
    for pool in pools.values():
        for member in pool["members"]:
            kind = kinds.get(member.get("provider"))
            if kind is not None:
                member["telemetry"] = kind
                member["history"] = watcher.samples(member["provider"], member["model"]) if watcher else []


def requests(admin, query: dict) -> list[dict]:
    try:
        limit = max(1, min(int(query.get("limit", 100)), 10000))
    except ValueError:
        limit = 100
    pool, status = query.get("pool"), query.get("status")
    out = []
    for record in _records(admin.gateway):
        if pool and record.pool != pool:
            continue
        if status and str(record.status) != status and not (status == "failed" and record.status >= 400) \
                and not (status == "ok" and 0 < record.status < 400):
            continue
        out.append(record.as_dict())
        if len(out) >= limit:
            break
    return out


def find_record(admin, request_id: str):
    gw = admin.gateway
    for record in _active(gw):
        if record.id == request_id:
            return record, True
    for record in _records(gw):
        if record.id == request_id:
            return record, False
    return None, False


def _pipeline_for(gw, pool: str | None):
    router = gw.router
    if pool:
        try:
            return router.pipeline_for(pool)
        except KeyError:
            pass
    return router.pipelines["default"]


async def request_detail(admin, responder, request_id: str, query: dict) -> None:
    record, in_flight = find_record(admin, request_id)
    if record is None:
        return await _json(responder, 404, {"error": f"no request {request_id!r} among the "
                                                     f"{len(admin.gateway.recent_records)} most recent or in flight"})
    data = record.as_dict()
    pipeline = _pipeline_for(admin.gateway, record.pool)
    title = f"request {record.id} · pool {record.pool or '-'} · pipeline {pipeline.name}"
    from busbar.diagram_svg import to_svg
    svg = diagram.svg_inline(to_svg(pipeline, data, title=title).encode())     # laid out in code: no Graphviz
    await _json(responder, 200, {"record": data, "in_flight": in_flight, "pipeline": pipeline.name,
                                 "diagram": {"mermaid": diagram.to_mermaid(pipeline, data, title=title),
                                             "dot": diagram.to_dot(pipeline, data, title=title), "svg": svg}})


async def diagram_route(admin, responder, query: dict) -> None:
    """The lifecycle of a pool's pipeline, edges weighted by the recent
    requests of that pool, one request's path (default: the latest) on top."""
    gw = admin.gateway
    fmt = query.get("format") or "svg"
    if fmt not in diagram.FORMATS:
        return await _json(responder, 400, {"error": f"format: choose one of {', '.join(diagram.FORMATS)}"})
    pool = query.get("pool") or None
    records = [r for r in _records(gw) if pool is None or r.pool == pool]
    record = None
    if query.get("request"):
        record, _ = find_record(admin, query["request"])
        if record is None:
            return await _json(responder, 404, {"error": f"no request {query['request']!r}"})
    elif records and query.get("latest", "1") != "0":
        record = records[0]
    pipeline = _pipeline_for(gw, pool or (record.pool if record is not None else None))
    data = record.as_dict() if record is not None else None
    counts = diagram.path_counts(r.as_dict() for r in records[:200])
    title = (f"pool {pool} · " if pool else "all pools · ") + f"pipeline {pipeline.name} · {len(records[:200])} " \
            "recent request(s)" + (f" · highlighted: {record.id}" if record is not None else "")
    key = (fmt, pipeline.name, pool, data and data["id"], tuple(sorted(counts.items())))
    body = admin.diagrams.get(key)
    if body is None:
        if fmt == "mermaid":
            body = diagram.to_mermaid(pipeline, data, title=title).encode()
        elif fmt == "svg":      # laid out in code: no Graphviz needed
            from busbar.diagram_svg import to_svg
            body = to_svg(pipeline, data, title=title, counts=counts, notes=False).encode()
        else:
            dot_text = diagram.to_dot(pipeline, data, title=title, counts=counts, notes=False)
            if fmt == "dot":
                body = dot_text.encode()
            else:
                try:
                    body = await trio.to_thread.run_sync(diagram.dot_to, fmt, dot_text)
                except diagram.GraphvizMissing as exc:
                    return await _json(responder, 501, {"error": str(exc)})
        cache = admin.diagrams
        cache[key] = body
        while len(cache) > DIAGRAM_CACHE:
            cache.pop(next(iter(cache)))
    ctype = {"svg": b"image/svg+xml", "png": b"image/png", "dot": b"text/vnd.graphviz; charset=utf-8",
             "mermaid": b"text/plain; charset=utf-8"}[fmt]
    await responder.send(200, [(b"content-type", ctype), NO_STORE], body)


# ---------------------------------------------------------------------------
# Live events
# ---------------------------------------------------------------------------
async def events(admin, responder) -> None:
    """Server-sent events: `state` (the /admin/api/state document) every
    second, and within SSE_TICK after requests finish.  Ends when the Admin
    closes (shutdown); a client that goes away cancels it (the server's
    reader notices)."""
    await responder.start(200, [(b"content-type", b"text/event-stream"), NO_STORE, (b"x-accel-buffering", b"no")])
    await responder.write(b"retry: 2000\n\n")
    seen = -1
    pushed = float("-inf")
    while not admin.closing:
        now = trio.current_time()
        total = admin.metrics.total
        if total != seen or now - pushed >= SSE_EVERY:
            await admin.refresh_quota()
            await responder.write(b"event: state\ndata: " + orjson.dumps(state(admin)) + b"\n\n")
            seen, pushed = total, now
        await trio.sleep(SSE_TICK)
    await responder.end()


# ---------------------------------------------------------------------------
# Usage
# ---------------------------------------------------------------------------
async def usage(admin, responder, query: dict) -> None:
    from busbar.admin.usage import UsageError, parse_group_by, parse_since
    if admin.usage is None:
        return await _json(responder, 404, {"error": "usage accounting is off (admin.usage_db / BUSBAR_USAGE_DB)"})
    try:
        since = parse_since(query.get("since"))
        until = parse_since(query.get("until"))
        group_by = parse_group_by(query.get("group_by"))
    except UsageError as exc:
        return await _json(responder, 400, {"error": str(exc)})
    from busbar.tenancy import member_models
    gw = admin.gateway
    rows = await admin.usage.query(since, until, group_by, gw.prices, member_models(gw.config.pools))
    await _json(responder, 200, {"since": since, "until": until, "group_by": list(group_by), "rows": rows})


LOGIN_PAGE = b"""<!doctype html><html><head><meta charset="utf-8"><title>Busbar admin</title>
<link rel="icon" href="data:,"><style>body{font:15px system-ui,sans-serif;margin:15vh auto;max-width:28em;color:#263238}
input{font:inherit;padding:.4em;width:100%;box-sizing:border-box}button{font:inherit;margin-top:.6em;padding:.4em 1em}</style>
</head><body><h1>Busbar admin</h1><p>This gateway's admin page needs its key (<code>admin.key</code> in the config).</p>
<form method="get" action="/admin"><input type="password" name="key" autofocus placeholder="admin key">
<button>Open</button></form></body></html>"""
