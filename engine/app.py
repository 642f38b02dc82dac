"""The running gateway: the HTTP server, the current `Gateway`, and the
operations around it — hot reload, member drain, graceful shutdown.

A reload builds a new `Gateway` from the new config (validated first: a bad
one is rejected and the old one keeps serving), hands it the routing state
of the old one (breakers, cool-downs, disabled keys, drains) and the same
upstream connection pools, and swaps it in.  Requests already in flight keep
the `Gateway` they started with, so they finish on their own config.
"""
from __future__ import annotations

import ipaddress
import logging
import signal
import ssl

import trio

from busbar.cluster import build_sync
from busbar.config import Config, ConfigError, load_config, parse_config
from busbar.cache import Caches
from busbar.gateway import Gateway
from busbar.limits import DEFAULT_MAX_CONCURRENT, DEFAULT_POOL_SHARE, PoolShares
from busbar.protocols.routes import guess_protocol
from busbar.selfhosted import BackendWatcher
from busbar.http_in import DEFAULT as DEFAULT_PARSER
from busbar.server import HttpServer
from busbar.state import build_state
from busbar.upstream import UpstreamClient

log = logging.getLogger("busbar")


class App:
    def __init__(self, config: Config, *, config_path: str | None = None):
        self.config_path = config_path
        self.upstream = UpstreamClient()
        # limits, budgets and shared counters (busbar.state); kept across reloads like the pools
        self.state = build_state(config.state)
        # keys minted at run time (POST /admin/keys): SQLite or Redis, kept across reloads and restarts
        from busbar.tenancy.minted import MintedKeys, build_store
        self.minted = MintedKeys(build_store(config.auth, config.admin, self.state))
        self.caches = Caches()        # response cache entries and counters, kept across reloads too
        from busbar.reasoning_store import ReasoningStore
        self.reasoning = ReasoningStore()    # signed reasoning for clients that cannot carry it (issue 19)
        from busbar.item_store import ItemStore
        self.items = ItemStore()             # Responses output items by the ids the gateway minted (issue 19)
        from busbar.affinity import ResponseAffinity
        self.affinity = ResponseAffinity()   # where each vendor-minted Responses id lives (ADR 0027)
        # routing state shared with the other replicas (Redis backend); None: this process only
        self.cluster = build_sync(config.state)
        self.minted.follow(self.cluster)   # minted keys' changes ride the cluster's subscription (Redis store)
        # deleted responses heard from every replica at once, on the same subscription (ADR 0025)
        self.deletions = None
        if self.cluster is not None and self.state.status().get("backend") == "redis":
            from busbar.state.shared import ResponseDeletions
            self.deletions = ResponseDeletions(self.items, self.state)
            self.cluster.follow(self.deletions.channel, self.deletions)
        # Responses background mode: the runs detached from their client's connection (ADR 0026)
        from busbar.background import CANCEL_CHANNEL, BackgroundRuns
        self.background = BackgroundRuns(on_count=self._count_background)
        if self.deletions is not None:       # a cancel reaches the replica running it on the same subscription
            self.background.channel = f"{self.state.prefix}:{CANCEL_CHANNEL}"
            self.background.publish = self._publish
            self.background.state = self.state     # a stream's events relayed for resumes on the others
            self.cluster.follow(self.background.channel, self.background)
        opts = config.server
        # load shedding: requests served at once, and each pool's share of them
        # (server.* keys take effect at start; a reload keeps these)
        max_requests = opts.get("max_concurrent_requests", DEFAULT_MAX_CONCURRENT)
        self.shares = PoolShares(max_requests, opts.get("pool_share", DEFAULT_POOL_SHARE))
        self.gateway = Gateway(config, upstream=self.upstream, state=self.state, minted=self.minted,
                               caches=self.caches, reasoning=self.reasoning, shares=self.shares,
                               items=self.items, runs=self.background,
                          affinity=self.affinity)
        self.gateway.app = self
        if self.cluster is not None:
            self.cluster.attach(self.gateway.router)
        self.server = HttpServer(self.handle, max_body_bytes=opts.get("max_body_bytes", 8 * 1024 * 1024),
                                 header_timeout=opts.get("header_timeout", 30.0),
                                 keepalive_timeout=opts.get("keepalive_timeout", 75.0),
                                 on_error=_render_server_error, max_requests=max_requests,
                                 max_connections=opts.get("max_client_connections"),
                                 check_head=self.check_head, tls=server_tls(config),
                                 http_parser=opts.get("http_parser", DEFAULT_PARSER))
        # /admin* and /metrics on their own socket unless `admin.listen: public`
        self.admin_server = None if self.gateway.admin.on_public_port else HttpServer(
            self.handle_admin, max_body_bytes=64 * 1024, header_timeout=opts.get("header_timeout", 30.0),
            http_parser=opts.get("http_parser", DEFAULT_PARSER))
        self.admin_addrs: list = []
        self.reloads = 0
        self.watcher = None               # busbar.selfhosted.BackendWatcher, once run_gateway starts it
        self._admin_scope: trio.CancelScope | None = None

    async def run_admin(self) -> None:
        """Run the current gateway's Admin task (usage flushing); after a
        reload, the new one's."""
        while True:
            admin = self.gateway.admin
            with trio.CancelScope() as self._admin_scope:
                await admin.run()
                await trio.sleep_forever()      # an Admin with nothing to flush returns at once

    def _count_background(self, delta: int) -> None:
        """A buffered background run counts as a request in flight (the concurrency limit,
        the shutdown's drain) while it runs detached from its connection."""
        self.server.active_requests += delta

    async def _publish(self, channel: str, data: bytes) -> None:
        from busbar.state.redis import RedisUnavailable
        from busbar.state.resp import RespError
        try:
            await self.state.command("PUBLISH", channel, data)
        except (RedisUnavailable, RespError):
            pass        # the replica running it is not told: the cancel answers the status as it stands

    def check_head(self, request):
        return self.gateway.check_head(request)

    async def handle(self, request, responder) -> None:
        # read once: a reload mid-request must not switch this request's gateway
        await self.gateway.handle(request, responder)

    async def handle_admin(self, request, responder) -> None:
        await self.gateway.admin.handle_private(request, responder)

    @property
    def in_flight(self) -> int:
        return self.server.active_requests

    def reload(self, config: Config | dict | None = None) -> str:
        """Swap in a new config (the file again when None).  Raises
        ConfigError, leaving the current config serving."""
        if config is None:
            if not self.config_path:
                raise ConfigError("reload", "this gateway was not started from a config file")
            config = load_config(self.config_path)
        elif isinstance(config, dict):
            config = parse_config(config, "reload")
        old = self.gateway
        try:
            new = Gateway(config, upstream=self.upstream, state=self.state, minted=self.minted, caches=self.caches,
                          reasoning=self.reasoning, shares=self.shares, items=self.items, runs=self.background,
                          affinity=self.affinity)
        except ConfigError:
            raise
        except Exception as exc:   # whatever fails to build is a rejected config, never a dead server
            raise ConfigError(config.source, f"cannot build the gateway: {exc}") from exc
        new.app = self
        new.router.adopt_state(old.router)
        if self.cluster is not None:
            self.cluster.attach(new.router)
        new.listeners.extend(old.listeners)
        new.admin.adopt(old.admin)
        if new.admin.listen != old.admin.listen:     # the sockets stay as they were started
            log.warning("admin.listen changed to %s: takes effect on restart (still %s)", new.admin.listen,
                        old.admin.listen)
            new.admin.listen, new.admin.on_public_port = old.admin.listen, old.admin.on_public_port
        self.gateway = new
        if self._admin_scope is not None:
            self._admin_scope.cancel()     # run_admin moves on to the new gateway's Admin
        self.reloads += 1
        log.warning("config reloaded from %s (%d providers, %d pools)", config.source, len(config.providers),
                    len(config.pools))
        return f"reloaded {config.source}: {len(config.providers)} providers, {len(config.pools)} pools"

    async def load_minted_keys(self) -> None:
        """Before serving: the minted keys a previous run (or another replica) made."""
        from busbar.tenancy.minted import KeyStoreError
        try:
            await self.minted.load()
        except KeyStoreError as exc:
            log.error("minted keys not loaded (%s); they are refused until the store answers", exc)
        taken = [k.id for k in (self.gateway.tenancy.by_hash.values() if self.gateway.tenancy else ())
                 if k.id in self.minted.live_ids()]
        if taken:
            raise ConfigError(f"{self.gateway.config.source}: auth.keys",
                              f"id(s) {', '.join(map(repr, taken))} already belong to minted keys; "
                              "rename the config key or revoke the minted one (busbar keys revoke ID)")

    def drain(self, member_id: str, drained: bool = True) -> list[str]:
        return self.gateway.router.set_drained(member_id, drained)

    async def shutdown(self, deadline: float) -> None:
        """Stop accepting, then wait up to `deadline` seconds for in-flight
        requests (streams included) to finish."""
        self.server.stop_accepting()
        if self.admin_server is not None:
            self.admin_server.stop_accepting()
        await self.gateway.admin.aclose()       # ends live admin event streams, writes the usage batch
        with trio.move_on_after(deadline):
            # background runs too (ADR 0026): those still running when the grace ends are
            # cancelled with the app's nursery and marked failed (`BackgroundRuns._run`)
            while self.server.active_requests or self.background.running:
                await trio.sleep(0.05)

    async def aclose(self) -> None:
        await self.upstream.aclose()
        await self.state.aclose()
        if self.minted.store is not None:
            self.minted.store.close()
        from busbar import telemetry
        if telemetry._shared:       # send the spans still batched
            await trio.to_thread.run_sync(telemetry.shutdown_all)


def server_tls(config: Config) -> ssl.SSLContext | None:
    """`server.tls: {cert, key}` as a server context (busbar.tls), or None;
    a file that cannot be loaded is a ConfigError naming its YAML path."""
    tls = config.server.get("tls")
    if not tls:
        return None
    from busbar.tls import TlsFileError, server_context
    try:
        return server_context(tls)
    except TlsFileError as exc:
        raise ConfigError(f"{config.source}: {exc.path}", exc.message) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_admin_exposure(config: Config, admin, host: str) -> None:
    """The admin API can drain members and reload the config: without
    `admin.key` it may only listen on loopback (ConfigError otherwise), and
    even there a warning says so."""
    if not admin.enabled or admin.key:
        return
    from busbar.admin import PUBLIC, parse_listen
    where = host if admin.listen == PUBLIC else parse_listen(admin.listen)[0]
    shown = f"the gateway's port on {host}" if admin.listen == PUBLIC else admin.listen
    if not is_loopback(where):
        raise ConfigError(f"{config.source}: admin.key",
                          f"admin is enabled on {shown}, which is not a loopback address, without admin.key: "
                          "anyone who reaches it could drain members and reload the config; set admin.key "
                          "(e.g. ${BUSBAR_ADMIN_KEY}) or listen on 127.0.0.1")
    log.warning("admin API on %s has no admin.key: anyone on this host can drain members and reload", shown)


def _render_server_error(request, status, message):
    from busbar.faults import ClientError
    from busbar.protocols import get_dialect
    kinds = {400: "invalid_request", 408: "timeout", 413: "request_too_large", 431: "request_too_large",
             503: "overloaded"}
    protocol = guess_protocol(request.path if request is not None else None)
    return get_dialect(protocol).render_error(ClientError(status, message, kinds.get(status, "invalid_request")))


async def run_gateway(config: Config, host: str, port: int, *, config_path: str | None = None,
                      drain_seconds: float = 30.0, handle_signals: bool = True, reuse_port: bool = False,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGINT/SIGTERM (graceful: stop accepting, let in-flight
    requests finish for up to `drain_seconds`, exit); SIGHUP reloads the
    config file."""
    app = App(config, config_path=config_path)
    app.server.reuse_port = reuse_port
    try:
        await app.load_minted_keys()
        check_admin_exposure(config, app.gateway.admin, host)
        async with trio.open_nursery() as nursery:
            await nursery.start(app.upstream.read_bounds.run)     # upstream waits' timeouts
            if app.cluster is not None:     # the current routing state first (bounded wait), then serve
                await nursery.start(app.cluster.run)
            addrs = await nursery.start(app.server.serve, host, port)
            if app.admin_server is not None:
                from busbar.admin import parse_listen
                listen = app.gateway.admin.listen
                app.admin_server.reuse_port = reuse_port     # --workers: each worker answers its own share
                try:
                    app.admin_addrs = await nursery.start(app.admin_server.serve, *parse_listen(listen))
                except OSError as exc:
                    raise ConfigError(f"{config.source}: admin.listen",
                                      f"cannot listen on {listen}: {exc.strerror or exc}; choose another "
                                      "address, or `public` to serve admin on the gateway's port") from None
            await nursery.start(app.background.run)     # Responses background mode's runs (ADR 0026)
            nursery.start_soon(app.run_admin)
            nursery.start_soon(app.minted.run)
            if app.deletions is not None:
                nursery.start_soon(app.deletions.run)
            app.watcher = BackendWatcher(app)          # its samples feed the admin page's sparklines
            nursery.start_soon(app.watcher.run)
            task_status.started((app.gateway, app.server, addrs, app))
            if not handle_signals:
                return
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        try:
                            app.reload()
                        except ConfigError as exc:
                            log.error("reload rejected, keeping the current config: %s", exc)
                        continue
                    log.warning("received %s: draining (up to %.0fs)", signal.Signals(signum).name, drain_seconds)
                    await app.shutdown(drain_seconds)
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await app.aclose()
