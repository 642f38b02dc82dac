"""The gateway: everything built from one config, and the HTTP entry.

`Gateway.handle` is the server's handler.  It routes the path to a protocol
(`busbar.protocols.routes`), opens the request's record and hands the journey
to `busbar.exchange.Exchange` (admission, routing, attempts, relays, the
settle funnel: read that module top-down for a request's life).  What comes
back here is only what the journey could not answer itself: a `ClientError`
(bad input, in the client's protocol), a bug of ours (500 in the client's
protocol, traceback logged), or the client leaving / the deadline.

The driver modules, one concept each:

* `gateway`    config -> providers, router, records; HTTP entry; other routes
* `admission`  the `received` checks: envelope, client credentials
* `exchange`   the lifecycle-driven loop, one attempt, the `settle` funnel
* `relay`      buffered and streamed answers, up to and after the commit
* `outcome`    what an attempt returns (answered / failed / broken)
* `providers`  providers built once at config load (rules, signers)

Insertion point: per-request tracing spans wrap `Exchange.run` in `handle`.

Same-protocol calls never touch the IR: the body is passed through with only
`model` rewritten, and the response bytes are relayed as they arrive (whole
SSE events at a time).  Other pairs go through the IR: the client's dialect
parses, the member's renders; upstream streams are decoded and re-encoded
event by event.
"""
from __future__ import annotations

import itertools
import logging
import sys
import time
from collections import deque

import orjson
import trio

from busbar.config import Config, ConfigError
from busbar.redact import Redactor
from busbar.exchange import Exchange
from busbar.faults import ClientError
from busbar.protocols import PROTOCOLS, get_dialect
from busbar.protocols.base import JSON_CT
from busbar.protocols.listing import Listing
from busbar.protocols.routes import guess_protocol, match_route
from busbar import conversations, stored_responses
from busbar.background import Rerun
from busbar.providers import Provider, build_provider
from busbar.records import AttemptRecord, RequestRecord
from busbar.routing import Router
from busbar.routing.quota import key_secret
from busbar.selfhosted import WatchSpec
from busbar.server import CapturedResponder, ClientGone, HttpRequest, Responder
from busbar.upstream import UpstreamClient

__all__ = ["Gateway", "Provider", "RequestRecord", "AttemptRecord", "guess_protocol"]

DEFAULT_SLOT_WAIT = 5.0      # server.slot_wait, seconds

log = logging.getLogger("busbar.gateway")
access_log = logging.getLogger("busbar.access")


def _secrets(config: dict) -> Redactor:
    """The redactor of every credential in the config: provider keys, AWS
    secrets and session tokens, configured `headers:` values (they usually
    carry a vendor key or an org token), a password in a URL (base_url,
    proxy, state.url), gateway client keys and AWS pairs, the admin key."""
    from urllib.parse import urlsplit
    secrets = set()

    def url_password(url) -> None:
        try:
            password = urlsplit(url).password if isinstance(url, str) else None
        except ValueError:
            password = None
        if password:
            secrets.add(password)

    for provider in config.get("providers", {}).values():
        secrets.update(map(key_secret, provider.get("keys", ())))
        for name in ("key", "secret_access_key", "session_token"):
            if provider.get(name):
                secrets.add(provider[name])
        secrets.update(v for v in (provider.get("headers") or {}).values() if isinstance(v, str))
        url_password(provider.get("base_url"))
        url_password(provider.get("proxy"))
    url_password((config.get("state") or {}).get("url"))
    url_password((config.get("upstream") or {}).get("proxy"))
    auth = config.get("auth", {})
    secrets.update(k if isinstance(k, str) else k.get("key", "") for k in auth.get("keys", ()))
    secrets.update(c["secret_access_key"] for c in auth.get("aws_credentials", ()))
    if auth.get("aws_master_secret"):
        secrets.add(auth["aws_master_secret"])
    admin_key = (config.get("admin") or {}).get("key")
    if admin_key:
        secrets.add(admin_key)
    return Redactor(secrets)


class Gateway:
    """Everything built from one config: routes, providers, router, pools of
    upstream connections.  `handle` is the HTTP handler."""

    def __init__(self, config: Config, *, upstream: UpstreamClient | None = None, recent: int = 200,
                 state=None, minted=None, caches=None, reasoning=None, shares=None, items=None, runs=None,
                 affinity=None):
        self.config = config
        # Responses background mode's runs (busbar.background.BackgroundRuns, the App's); None: served inline
        self.background = runs
        # load shedding (docs/reliability.md): each pool's share of the
        # concurrency limit (the app's busbar.limits.PoolShares, None: no
        # shares), and how long an attempt may wait for an upstream slot
        self.shares = shares
        self.slot_wait = float(config.server.get("slot_wait", DEFAULT_SLOT_WAIT))
        self.router = Router.from_config(config.raw)
        self.state = state
        # replicas sharing a state backend share upstream key quotas too (ADR 0017)
        self.router.shared_quota = bool(getattr(state, "shared", False))
        self.upstream = upstream or UpstreamClient()
        self.providers = {name: build_provider(name, spec, config.raw.get("upstream"))
                          for name, spec in config.providers.items()}
        # self-hosted backends scraped in the background (busbar.selfhosted)
        self.watch_specs = [w for name, spec in config.providers.items()
                            if (w := WatchSpec.from_config(name, spec)) is not None]
        auth = config.auth
        # gateway client keys, their limits and budgets (busbar.tenancy); None: no client keys
        from busbar.tenancy import Tenancy, member_prices
        # limits live in the app's state backend (kept across reloads; shared through Redis when configured)
        # keys minted at run time (busbar.tenancy.minted) are the App's, kept across reloads like the state
        self.tenancy = Tenancy.from_config(auth, state, minted=minted) if auth.get("keys") or minted else None
        if self.tenancy is not None:       # a key without `direct` follows the server's flag
            self.tenancy.direct_routes = self.router.direct_routes
        if minted is not None:
            taken = [k.id for k in self.tenancy.by_hash.values() if k.id in minted.live_ids()]
            if taken:
                raise ConfigError(f"{config.source}: auth.keys", f"id(s) {', '.join(map(repr, taken))} already "
                                  "belong to minted keys (GET /admin/keys); choose another id or revoke the minted key")
        self.prices = member_prices(config.pools)       # member id -> Price (spend)
        # pools that answer repeats from a cache (busbar.cache); entries kept by the app across reloads
        from busbar.cache import ResponseCache
        self.cache = ResponseCache.from_config(config.pools, caches, state)
        self.aws_secrets = {c["access_key_id"]: c["secret_access_key"] for c in auth.get("aws_credentials", ())}
        # signed (SigV4) clients: an access key pair may stand for a client key (its pools, limits, budget)
        self.aws_key_ids = {c["access_key_id"]: c["key_id"] for c in auth.get("aws_credentials", ()) if "key_id" in c}
        # ... and minted keys may carry a pair whose secret derives from auth.aws_master_secret (ADR 0011)
        self.signed_clients = bool(self.aws_secrets) or bool(self.tenancy is not None and self.tenancy.aws_master)
        for i, c in enumerate(auth.get("aws_credentials", ())):
            if "key_id" in c and (self.tenancy is None or self.tenancy.by_id(c["key_id"]) is None):
                raise ConfigError(f"{config.source}: auth.aws_credentials[{i}].key_id",
                                  f"no client key with id {c['key_id']!r} in auth.keys")
        self.pool_policies = {name: pool.get("unsupported", "degrade") for name, pool in config.pools.items()}
        # what each member protocol cannot express, compiled from its renderer now rather
        # than on a request (busbar.protocols.expressible: routing skips those members)
        from busbar.protocols import expressible
        for protocol in {spec["protocol"] for spec in config.providers.values()}:
            expressible.cannot(protocol)
        # signed reasoning kept for clients whose protocol cannot carry it (kept across reloads
        # by the App); pools may turn it off (`keep_reasoning: false`)
        from busbar.reasoning_store import ReasoningStore
        self.reasoning_store = reasoning if reasoning is not None else ReasoningStore()
        self.no_reasoning_store = frozenset(name for name, pool in config.pools.items()
                                            if pool.get("keep_reasoning") is False)
        # output items of translated Responses answers, for the client's `item_reference`s (the App's too)
        from busbar.item_store import ItemStore
        self.item_store = items if items is not None else ItemStore()
        # where each vendor-minted Responses id lives: its provider and key (ADR 0027; the App's too)
        from busbar.affinity import ResponseAffinity
        self.affinity = affinity if affinity is not None else ResponseAffinity()
        # both stores shared with the other replicas when the state backend is Redis (None: this process)
        from busbar.state.shared import shared_entries
        self.shared_items = shared_entries(state, "items")
        # the protocols each pool's members speak: a pool mixing a client's own protocol with others
        # keeps that vendor's items too (a failed-over turn may reference them)
        self.pool_protocols = {name: frozenset(leaf.protocol for leaf in node.leaves)
                               for name, node in self.router.pools.items()}
        self.shared_reasoning = shared_entries(state, "reasoning")
        # per pool with `dispatch.hedge` in its pipeline: the hedge budget and its measured TTFB
        from busbar.routing.hedge import HedgeState
        self.hedging = {name: HedgeState(self.router.pipeline_for(name).dispatch.hedge)
                        for name in config.pools if self.router.pipeline_for(name).dispatch.hedge is not None}
        # pools that take requests without a client key (`auth: false`, or the
        # deprecated pipeline `received.checks` without `auth`)
        self.open_pools = frozenset(name for name, pool in config.pools.items()
                                    if pool.get("auth") is False or self.router.pipeline_for(name).legacy_open)
        # finished requests, newest last; turned into dicts only when asked
        self.recent_records: deque[RequestRecord] = deque(maxlen=recent)
        self.in_flight = 0
        self.active: dict[str, RequestRecord] = {}   # in-flight requests by id (admin: live paths)
        self.redactor = _secrets(config.raw)
        self.listeners: list = []     # callables(record) notified when a request finishes
        self._ids = itertools.count(1)
        self._id_prefix = f"{int(time.time()) & 0xFFFFFF:06x}"
        self.listing = Listing(self.router.pool_names(), int(time.time()),    # GET .../models, each SDK's shape
                               {name: [leaf.model for leaf in node.leaves] for name, node in self.router.pools.items()})
        from busbar.admin import Admin   # /admin, /metrics, usage accounting (ADR 0007: where they listen)
        self.admin = Admin(self)
        if self.admin.observing:
            self.listeners.append(self.admin.on_finish)
        from busbar import telemetry     # OpenTelemetry traces: None (nothing per request) unless configured
        self.telemetry = telemetry.from_config(config.raw.get("telemetry"))

    def scrub(self, text: str) -> str:
        """Remove any configured secret a vendor echoed back in an error."""
        return self.redactor.text(text)

    def scrub_bytes(self, data: bytes) -> bytes:
        return self.redactor.bytes(data)

    async def aclose(self) -> None:
        await self.upstream.aclose()

    # ---- HTTP entry ------------------------------------------------------
    def check_head(self, request: HttpRequest) -> tuple[int, list, bytes] | None:
        """Authenticate from the head alone, before the body is read (the
        server's `check_head`): a client without a valid gateway key gets its
        401 at once and its body is never parsed.  None: go on (no client
        keys, a signed request (verified with its body), or a model that may
        name an open pool and is only known from the body)."""
        if self.tenancy is None or not self.tenancy.required:
            return None
        route = match_route(request.path)
        if route is None:
            return None
        protocol, params = route
        dialect = get_dialect(protocol)
        if dialect.signed_requests and self.signed_clients:
            return None
        if self.open_pools:
            model = params.get("model")
            if model is None or model in self.open_pools:
                return None
        try:
            self.tenancy.authenticate(dialect.inbound_key(request.headers, request.query))
        except ClientError as err:
            return self._refused(protocol, dialect, err)
        # admission need not check again
        request.authenticated = True
        return None

    def aws_secret(self, access_key_id: str) -> str | None:
        """The secret of a signing client's access key id: the config's
        `auth.aws_credentials`, else a live minted key's derived one."""
        secret = self.aws_secrets.get(access_key_id)
        if secret is None and self.tenancy is not None:
            pair = self.tenancy.minted_pair(access_key_id)
            secret = pair[0] if pair is not None else None
        return secret

    def aws_key_id(self, access_key_id: str) -> str | None:
        """The client key a verified access key id stands for (None: unlimited)."""
        key_id = self.aws_key_ids.get(access_key_id)
        if key_id is None and access_key_id not in self.aws_secrets and self.tenancy is not None:
            pair = self.tenancy.minted_pair(access_key_id)
            key_id = pair[1] if pair is not None else None
        return key_id

    def _refused(self, protocol: str, dialect, err: ClientError) -> tuple[int, list, bytes]:
        """A request answered from its head (refused credentials, no route):
        still recorded (admin, access log, metrics see it like any other
        request), under the id its answer carries."""
        record = RequestRecord(f"{self._id_prefix}-{next(self._ids):x}", protocol)
        record.lifecycle.fail(err.message[:120])
        record.status = err.status
        record.error = err.message
        record.ms = 0.0
        self._finish(record)
        status, headers, body = dialect.render_error(err)
        return status, headers + dialect.request_id_headers(record.id.encode()), body

    def _any_key(self, request: HttpRequest) -> str | None:
        """The key however a protocol's SDK sends it (a route every SDK shares)."""
        for protocol in PROTOCOLS:
            key = get_dialect(protocol).inbound_key(request.headers, request.query)
            if key:
                return key
        return None

    async def handle(self, request: HttpRequest, responder: Responder) -> None:
        route = match_route(request.path)
        if route is None:
            return await self._handle_other(request, responder)
        protocol, params = route
        dialect = get_dialect(protocol, params.get("operation"))   # chat, or embeddings / rerank / counting
        await self.journey(request, responder, protocol, dialect, params)

    async def journey(self, request: HttpRequest, responder: Responder, protocol: str, dialect, params: dict,
                      background=None) -> None:
        """One request's exchange with its record; `background`: a background response's
        run (`busbar.background.Run`), which the exchange detaches once it is routed."""
        record = RequestRecord(f"{self._id_prefix}-{next(self._ids):x}", protocol)
        life = record.lifecycle
        # the id under which records, the admin API and logs show this request, where
        # its client's SDK reads a request id (ADR 0029): on every answer, errors and streams too
        responder.extra_headers = dialect.request_id_headers(record.id.encode())
        t0 = time.perf_counter()
        self.in_flight += 1
        self.active[record.id] = record
        exchange = rerun = None
        try:
            # The server runs this in a cancel scope that a departed client
            # cancels: everything the request started goes with it.
            exchange = Exchange(self, request, responder, dialect, params, record)
            exchange.background = background
            if self.telemetry is not None:
                exchange.span = self.telemetry.start_request(request.headers, protocol)
            try:
                await exchange.run()
            except ClientError as err:
                if not life.finished:
                    life.fail(err.message[:120])
                record.status = err.status
                record.error = err.message
                if not responder.started:
                    await responder.send(*dialect.render_error(err))
            except (trio.Cancelled, ClientGone):
                raise
            except Rerun as asked:     # `background: true`, seen once the body is read (ADR 0026)
                rerun = asked
            except Exception:
                # a bug of ours: the client still gets an answer in its own
                # protocol, and the log gets the traceback
                log.exception("request %s failed inside the gateway", record.id)
                if not life.finished:
                    life.fail("internal error")
                record.status = 500
                record.error = "internal gateway error"
                if not responder.started:
                    await responder.send(*dialect.render_error(ClientError(
                        500, f"Internal gateway error (request {record.id}); the gateway log has the details.",
                        "api_error")))
        except (trio.Cancelled, ClientGone):
            if not life.finished:
                life.fire("cancelled", "client disconnected")
                record.error = record.error or "client disconnected"
            record.status = record.status or 499
            raise
        finally:
            self.in_flight -= 1
            del self.active[record.id]
            record.ms = (time.perf_counter() - t0) * 1000
            if rerun is None:
                if exchange is not None and exchange.span is not None:
                    self.telemetry.end_request(exchange.span, record)
                self._finish(record)
        if rerun is not None:
            # run again detached from this connection, answered `queued` once routed (its own record)
            await self.background.create(self, request, responder, protocol, dialect, params, rerun.obj)

    async def embed(self, pool: str, text: str, timeout: float) -> list | None:
        """`text` embedded by this gateway's own pool `pool` (the semantic
        cache's prompts): an OpenAI embeddings request driven in process
        through `handle`, so routing, keys, the breaker, fault attribution,
        records and metrics are the embedding pool's, as for any client's call.
        None when it fails or takes longer than `timeout` seconds: the caller
        treats that as a cache miss (the request it serves never fails for it)."""
        body = orjson.dumps({"model": pool, "input": [text], "encoding_format": "base64"})
        request = HttpRequest(b"POST", b"/v1/embeddings", b"", [(b"content-type", b"application/json"),
                                                               (b"user-agent", b"busbar-semantic-cache")],
                              body, client="internal", authenticated=True)
        answer = CapturedResponder()
        with trio.move_on_after(timeout):
            try:
                await self.handle(request, answer)
            except (ClientGone, Exception):
                log.exception("semantic cache: embedding through pool %s failed", pool)
                return None
        if answer.status != 200 or not answer.body:
            return None
        try:
            item = orjson.loads(answer.body)["data"][0]["embedding"]
            if isinstance(item, str):
                import base64
                from array import array
                vector = array("f")
                vector.frombytes(base64.b64decode(item))
                if sys.byteorder != "little":
                    vector.byteswap()
                return vector
            return item
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            return None

    @property
    def recent(self) -> list[dict]:
        return [record.as_dict() for record in self.recent_records]

    def _finish(self, record: RequestRecord) -> None:
        self.recent_records.append(record)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(orjson.dumps(record.as_dict()).decode())
        for listener in self.listeners:
            try:
                listener(record)
            except Exception:
                log.exception("request listener failed")

    async def _handle_other(self, request: HttpRequest, responder: Responder) -> None:
        if request.path.startswith((b"/admin", b"/metrics")) and await self.admin.handle(request, responder):
            return
        # GET / DELETE /v1/responses/{id}, GET .../input_items: the responses kept here (ADR 0025)
        if request.path.startswith((b"/v1/responses/", b"/responses/")) and (
                await stored_responses.serve(self, request, responder) or
                (self.background is not None and await self.background.serve_cancel(self, request, responder))):
            return
        # the Conversations API, kept here for every member (ADR 0030)
        if request.path.startswith((b"/v1/conversations", b"/conversations")) and \
                await conversations.serve(self, request, responder):
            return
        if request.method == b"GET":
            listed = self.listing.answer(request.path, request.headers, request.query)
            if listed is not None:
                protocol, answer = listed
                dialect = get_dialect(protocol)
                try:                 # the lists are for key holders too
                    if dialect.signed_requests and self.signed_clients:    # config pairs and minted ones
                        dialect.verify_signed("GET", request.path.decode("latin-1"), request.query.decode("latin-1"),
                                              request.headers, request.body, self.aws_secret)
                    elif self.tenancy is not None and self.tenancy.required:
                        self.tenancy.authenticate(self._any_key(request))
                except ClientError as err:
                    return await responder.send(*self._refused(protocol, dialect, err))
                return await responder.send(*answer)
        if request.path in (b"/healthz", b"/health"):
            return await responder.send(200, [JSON_CT], b'{"status":"ok"}')
        protocol = guess_protocol(request.path)
        dialect = get_dialect(protocol)
        err = ClientError(404, f"No route for {request.method.decode()} {request.path.decode('latin-1')}. "
                               + (dialect.no_route_hint or
                                  "Busbar serves the vendors' own paths, e.g. POST /v1/chat/completions, "
                                  "/v1/messages, /v1/responses, /v1beta/models/{model}:generateContent, "
                                  "/model/{modelId}/converse, /v2/chat."), "not_found", code=dialect.no_route_code)
        await responder.send(*self._refused(protocol, dialect, err))
