"""See inside a running gateway: the admin page, its JSON API and live
events, `/metrics`, and usage accounting.

    admin:
      listen: 127.0.0.1:9901     # the default: its own loopback socket; `public` = the gateway's port (demo)
      enabled: true              # the page and JSON API; off unless enabled
      key: ${BUSBAR_ADMIN_KEY}   # optional: then `Authorization: Bearer <key>` or `?key=<key>`
      metrics_need_key: false    # the default: /metrics on the admin listener needs no key
      metrics: true              # the default: Prometheus /metrics and usage accounting are on

With a separate listener the public port never answers `/admin*` or
`/metrics` (its usual 404).  Routes (all GET; 404 when the page is disabled,
401 without the key):

    /admin                     the page (plain HTML + a little JS; live over SSE)
    /admin/api/state           pools, members, breakers, keys, latency, recent requests
    /admin/api/requests        recent finished requests, newest first
    /admin/api/requests/{id}   one request: its record, path and diagram
    /admin/api/diagram         the lifecycle diagram of a pool (svg laid out in code; mermaid, dot, png with Graphviz)
    /admin/events              text/event-stream: the state every second and after requests finish
    /admin/usage               token usage from SQLite (?since=24h&group_by=pool,member,key)
    /metrics                   Prometheus text format

The gateway calls `on_finish(record)` for every finished request (when
metrics are on): it feeds the metrics and the usage batch, a few microseconds.
`run()` is the Admin's own task (flushes usage every second and on the way
out); whoever owns the gateway's nursery starts it.
"""
from __future__ import annotations

import logging
import os

import trio

log = logging.getLogger("busbar.admin")

FLUSH_EVERY = 1.0
DEFAULT_LISTEN = "127.0.0.1:9901"
PUBLIC = "public"        # admin.listen: served on the gateway's own port


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (IPv6 as `[::1]:9901`) -> (host, port)."""
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


class Admin:
    """The admin side of one Gateway (see the module docstring)."""

    def __init__(self, gateway):
        self.gateway = gateway
        cfg = gateway.config.admin or {}
        self.enabled = bool(cfg.get("enabled", False))       # the page and JSON API
        self.listen: str = cfg.get("listen", DEFAULT_LISTEN)
        self.on_public_port = self.listen == PUBLIC
        self.metrics_need_key = bool(cfg.get("metrics_need_key", False))
        key = cfg.get("key")
        self.key: bytes | None = key.encode() if key else None
        self.metrics = None
        self.usage = None
        self.closing = False
        self.diagrams: dict = {}        # small LRU of rendered diagrams (see api.diagram_for)
        if not cfg.get("metrics", True):
            return
        from busbar.admin.metrics import Metrics
        from busbar.admin.usage import DEFAULT_DB, UsageStore
        self.metrics = Metrics(gateway)
        path = cfg.get("usage_db", os.environ.get("BUSBAR_USAGE_DB", DEFAULT_DB))
        if path and path not in ("off", "none"):
            self.usage = UsageStore(path)

    # ---- the per-request listener ------------------------------------------
    def on_finish(self, record) -> None:
        """Gateway listener: count a finished request (hot path: keep it cheap)."""
        self.metrics.observe(record)
        if self.usage is not None:
            self.usage.observe(record)

    # ---- HTTP ------------------------------------------------------------------
    @property
    def observing(self) -> bool:
        """Metrics (and usage accounting) count every finished request."""
        return self.metrics is not None

    def serves(self, path: bytes) -> bool:
        if path == b"/metrics":
            return self.metrics is not None
        return self.enabled and (path == b"/admin" or path.startswith(b"/admin/"))

    async def handle(self, request, responder) -> bool:
        """On the gateway's public port: answer `/admin*` and `/metrics` only
        in the same-port mode (`listen: public`); False (not handled) for
        anything else, so the gateway renders its usual 404."""
        if not self.on_public_port or not self.serves(request.path):
            return False
        from busbar.admin import api
        await api.handle(self, request, responder)
        return True

    async def handle_private(self, request, responder) -> None:
        """The admin listener's handler: `/admin*` and `/metrics`, else 404."""
        from busbar.admin import api
        if self.serves(request.path):
            return await api.handle(self, request, responder)
        await api.not_found(responder, request.path)

    async def refresh_quota(self) -> None:
        """Replicas sharing a state backend: read every limited key's counts
        (all replicas') from it, so the page and /metrics show the cluster's
        used / limit, not this process's share.  One script call; skipped on
        the memory backend and while the backend is degraded."""
        gw = self.gateway
        state = getattr(gw, "state", None)
        if not getattr(state, "shared", False):
            return
        router, now = gw.router, trio.current_time()
        asks, where = [], []
        for name, provider in router.providers.items():
            models = [model for (p, model) in router.targets if p == name]
            for key in provider.keys.keys:
                if key.quota.limits.any:
                    for scope in key.quota.cluster_scopes(models):
                        asks.append(key.quota.ask(scope, 0, now, key.id))
                        where.append((key, scope))
        if not asks:
            return
        rows = await state.read_quota(asks)
        for (key, scope), row in zip(where, rows or ()):
            key.quota.observe_cluster(scope, row, now)

    # ---- lifetime ----------------------------------------------------------------
    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """The Admin's own task: flush usage every second until cancelled,
        then once more (shielded) so nothing counted is lost on shutdown."""
        task_status.started()
        if self.usage is None:
            return
        try:
            while True:
                await trio.sleep(FLUSH_EVERY)
                try:
                    await self.usage.flush()
                except Exception:
                    log.exception("usage flush to %s failed; will retry", self.usage.path)
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """End live event streams and write the last usage batch."""
        self.closing = True
        if self.usage is not None:
            try:
                await self.usage.flush()
            except Exception:
                log.exception("final usage flush to %s failed", self.usage.path)

    def adopt(self, old: "Admin") -> None:
        """After a config reload: keep the old Admin's counters and usage
        batch, and make sure only one Admin listener is registered on the new
        gateway (call it after the new gateway took over the old listeners)."""
        if old is self:
            return
        listeners = self.gateway.listeners
        listeners[:] = [fn for fn in listeners if getattr(fn, "__self__", None) is not old]
        if not (self.observing and old.observing):
            return
        self.metrics.adopt(old.metrics)
        if self.usage is not None and old.usage is not None and old.usage.path == self.usage.path:
            self.usage = old.usage         # same file, same pending batch
        old.metrics, old.usage = self.metrics, self.usage   # the old gateway's stragglers count here too
        if self.on_finish not in listeners:
            listeners.append(self.on_finish)
