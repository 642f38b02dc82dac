"""See inside a running gateway: the admin page, its JSON API and live
events, `/metrics`, and usage accounting.

    admin:                 # in the gateway config; off unless enabled
      enabled: true
      key: ${BUSBAR_ADMIN_KEY}   # optional: then `Authorization: Bearer <key>` or `?key=<key>`

Routes (all GET; 404 when admin is disabled, 401 without the key):

    /admin                     the page (plain HTML + a little JS; live over SSE)
    /admin/api/state           pools, members, breakers, keys, latency, recent requests
    /admin/api/requests        recent finished requests, newest first
    /admin/api/requests/{id}   one request: its record, path and diagram
    /admin/api/diagram         the lifecycle diagram of a pool (svg with Graphviz, else mermaid)
    /admin/events              text/event-stream: the state every second and after requests finish
    /admin/usage               token usage from SQLite (?since=24h&group_by=pool,member,key)
    /metrics                   Prometheus text format

The gateway calls `on_finish(record)` for every finished request (only when
enabled): it feeds the metrics and the usage batch, a few microseconds.
`run()` is the Admin's own task (flushes usage every second and on the way
out); whoever owns the gateway's nursery starts it.
"""
from __future__ import annotations

import logging
import os

import trio

log = logging.getLogger("busbar.admin")

FLUSH_EVERY = 1.0


class Admin:
    """The admin side of one Gateway (see the module docstring)."""

    def __init__(self, gateway):
        self.gateway = gateway
        cfg = gateway.config.admin or {}
        self.enabled = bool(cfg.get("enabled", False))
        key = cfg.get("key")
        self.key: bytes | None = key.encode() if key else None
        self.metrics = None
        self.usage = None
        self.closing = False
        self.diagrams: dict = {}        # small LRU of rendered diagrams (see api.diagram_for)
        if not self.enabled:
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
    async def handle(self, request, responder) -> bool:
        """Answer `/admin*` and `/metrics`; False (not handled) when disabled
        or for any other path, so the gateway renders its usual 404."""
        if not self.enabled:
            return False
        path = request.path
        if not (path == b"/metrics" or path == b"/admin" or path.startswith(b"/admin/")):
            return False
        from busbar.admin import api
        await api.handle(self, request, responder)
        return True

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
        if not (self.enabled and old.enabled):
            return
        self.metrics.adopt(old.metrics)
        if self.usage is not None and old.usage is not None and old.usage.path == self.usage.path:
            self.usage = old.usage         # same file, same pending batch
        old.metrics, old.usage = self.metrics, self.usage   # the old gateway's stragglers count here too
        if self.on_finish not in listeners:
            listeners.append(self.on_finish)
