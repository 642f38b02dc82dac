"""The gateway driver: one request's journey, socket to socket.

    received ──parsed──▶ translated ──dispatch──▶ dispatched ──first_byte──▶ streaming ──complete──▶ done
                                                   │      ▲
                                             fault │      │ dispatch
                                                   ▼      │
                                                 failing_over          (any) ──rejected/broken/cancelled──▶ failed

Each request runs in a cancel scope the server owns: a client that goes
away (the connection's reader sees EOF), or the pipeline deadline, cancels
everything the request started, its upstream call included.  The client sees
nothing, not even a status line, until the chosen upstream produced content,
so every failure before that point can still fail over.

Same-protocol calls never touch the IR: the body is passed through with only
`model` rewritten, and the response bytes are relayed as they arrive (whole
SSE events at a time).  Other pairs go through the IR: the client's dialect
parses, the member's renders; upstream streams are decoded and re-encoded
event by event.
"""
from __future__ import annotations

import itertools
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field

import orjson
import trio

from busbar import ir, lifecycle
from busbar.config import Config
from busbar.faults import ClientError, Fault, FaultClass
from busbar.protocols import get_dialect
from busbar.protocols.base import JSON_CT, Headers, StreamError, header, load_json_object
from busbar.protocols.routes import match_route
from busbar.protocols.sse import SSESplitter
from busbar.routing import Attempt, Exhausted, Needs, Router, Wait, fingerprint
from busbar.server import ClientGone, HttpRequest, Responder
from busbar.upstream import Origin, UpstreamClient, UpstreamError

log = logging.getLogger("busbar.gateway")
access_log = logging.getLogger("busbar.access")

MAX_UPSTREAM_ERROR_BODY = 1024 * 1024
MAX_UPSTREAM_BODY = 64 * 1024 * 1024


def guess_protocol(path: bytes) -> str:
    """The protocol to render a server-level error in when no route matched
    (or the request never got that far)."""
    found = match_route(path)
    if found:
        return found[0]
    if path.startswith(b"/v1/messages"):
        return "anthropic"
    return "openai"


@dataclass(slots=True)
class Provider:
    """A provider as the hot path needs it, built once at config load."""

    name: str
    protocol: str
    dialect: object
    origin: Origin
    extra_headers: Headers
    error_rules: list[tuple[re.Pattern, int | None, FaultClass]]
    region: str | None = None
    credentials: object = None  # engine.aws.sigv4.Credentials for bedrock
    max_connections: int | None = None   # concurrent upstream connections to this provider


@dataclass(slots=True)
class AttemptRecord:
    member: str
    key: str | None
    outcome: str = "pending"      # ok | fault class | cancelled
    status: int = 0
    ms: float = 0.0
    message: str = ""


@dataclass(slots=True)
class RequestRecord:
    id: str
    client_protocol: str
    pool: str = ""
    stream: bool = False
    status: int = 0
    attempts: list[AttemptRecord] = field(default_factory=list)
    lifecycle: lifecycle.Lifecycle = field(default_factory=lifecycle.Lifecycle)
    started: float = field(default_factory=time.time)
    ms: float = 0.0
    ttfb_ms: float | None = None
    error: str = ""
    usage: object = None          # ir.Usage when the response told us
    client_key_id: str | None = None   # routing.fingerprint of the gateway client key (usage accounting)

    def as_dict(self) -> dict:
        return {"id": self.id, "client_protocol": self.client_protocol, "pool": self.pool, "stream": self.stream,
                "status": self.status, "ms": round(self.ms, 3),
                "ttfb_ms": None if self.ttfb_ms is None else round(self.ttfb_ms, 3),
                "attempts": [{"member": a.member, "key": a.key, "outcome": a.outcome, "status": a.status,
                              "ms": round(a.ms, 3), **({"message": a.message} if a.message else {})}
                             for a in self.attempts],
                "final_member": next((a.member for a in reversed(self.attempts) if a.outcome == "ok"), None),
                "path": self.lifecycle.describe(), "state": self.lifecycle.state,
                "usage": _usage_dict(self.usage),
                **({"error": self.error} if self.error else {})}


def _usage_dict(usage) -> dict | None:
    if usage is None:
        return None
    return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
            "cached_tokens": usage.cached_tokens, "reasoning_tokens": usage.reasoning_tokens}


def _secret_pattern(config: dict) -> re.Pattern | None:
    """One regex matching every credential in the config (provider keys and
    AWS secrets, gateway client keys), longest first."""
    secrets = set()
    for provider in config.get("providers", {}).values():
        secrets.update(provider.get("keys", ()))
        for name in ("key", "secret_access_key", "session_token"):
            if provider.get(name):
                secrets.add(provider[name])
    auth = config.get("auth", {})
    secrets.update(auth.get("keys", ()))
    secrets.update(c["secret_access_key"] for c in auth.get("aws_credentials", ()))
    secrets = sorted((s for s in secrets if len(s) >= 4), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, secrets))) if secrets else None


class Gateway:
    """Everything built from one config: routes, providers, router, pools of
    upstream connections.  `handle` is the HTTP handler."""

    def __init__(self, config: Config, *, upstream: UpstreamClient | None = None, recent: int = 200):
        self.config = config
        self.router = Router.from_config(config.raw)
        self.upstream = upstream or UpstreamClient()
        self.providers = {name: self._build_provider(name, spec) for name, spec in config.providers.items()}
        auth = config.auth
        self.client_keys = frozenset(auth.get("keys", ())) or None
        self.aws_secrets = {c["access_key_id"]: c["secret_access_key"] for c in auth.get("aws_credentials", ())}
        self.pool_policies = {name: pool.get("unsupported", "reject") for name, pool in config.pools.items()}
        # finished requests, newest last; turned into dicts only when asked
        self.recent_records: deque[RequestRecord] = deque(maxlen=recent)
        self.in_flight = 0
        self.active: dict[str, RequestRecord] = {}   # in-flight requests by id (admin: live paths)
        self._secrets = _secret_pattern(config.raw)
        self.listeners: list = []     # callables(record) notified when a request finishes
        self._ids = itertools.count(1)
        self._id_prefix = f"{int(time.time()) & 0xFFFFFF:06x}"
        self._models_body = self._render_models()
        from busbar.admin import Admin   # /admin, /metrics, usage accounting: inert unless admin.enabled
        self.admin = Admin(self)
        if self.admin.enabled:
            self.listeners.append(self.admin.on_finish)

    # ---- construction ----------------------------------------------------
    @staticmethod
    def _build_provider(name: str, spec: dict) -> Provider:
        rules = []
        for rule in spec.get("errors", ()):
            rules.append((re.compile(rule["match"]), rule.get("status"), FaultClass(rule["class"])))
        headers = [(k.lower().encode(), v.encode()) for k, v in spec.get("headers", {}).items()]
        credentials = None
        if spec["protocol"] == "bedrock":
            from busbar.aws.sigv4 import Credentials
            if spec.get("access_key_id") and spec.get("secret_access_key"):
                credentials = Credentials(spec["access_key_id"], spec["secret_access_key"], spec.get("session_token"))
            else:
                credentials = Credentials.from_env()
        region = spec.get("region")
        if spec["protocol"] == "bedrock" and not region:
            m = re.search(r"bedrock-runtime[.-]([a-z0-9-]+)\.amazonaws", spec["base_url"])
            region = m.group(1) if m else "us-east-1"
        return Provider(name, spec["protocol"], get_dialect(spec["protocol"]), Origin.from_url(spec["base_url"]),
                        headers, rules, region, credentials, spec.get("max_connections"))

    def scrub(self, text: str) -> str:
        """Remove any configured secret a vendor echoed back in an error."""
        return self._secrets.sub("[redacted]", text) if self._secrets is not None else text

    def scrub_bytes(self, data: bytes) -> bytes:
        if self._secrets is None:
            return data
        text = data.decode("utf-8", "replace")
        return self._secrets.sub("[redacted]", text).encode() if self._secrets.search(text) else data

    def _render_models(self) -> bytes:
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "busbar",
                 "type": "model", "display_name": name, "created_at": "2024-01-01T00:00:00Z"}
                for name in self.router.pool_names()]
        return orjson.dumps({"object": "list", "data": data, "has_more": False,
                             "first_id": data[0]["id"] if data else None, "last_id": data[-1]["id"] if data else None})

    async def aclose(self) -> None:
        await self.upstream.aclose()

    # ---- HTTP entry ------------------------------------------------------
    async def handle(self, request: HttpRequest, responder: Responder) -> None:
        route = match_route(request.path)
        if route is None:
            return await self._handle_other(request, responder)
        protocol, params = route
        dialect = get_dialect(protocol)
        record = RequestRecord(f"{self._id_prefix}-{next(self._ids):x}", protocol)
        # the id under which the admin API shows this request's path
        responder.extra_headers = [(b"x-busbar-request-id", record.id.encode())]
        t0 = time.perf_counter()
        self.in_flight += 1
        self.active[record.id] = record
        try:
            # The server runs this in a cancel scope that a departed client
            # cancels: everything the request started goes with it.
            try:
                await self._serve(request, responder, dialect, params, record)
            except ClientError as err:
                if record.lifecycle.can("rejected"):
                    record.lifecycle.fire("rejected", err.message[:120])
                record.status = err.status
                record.error = err.message
                if not responder.started:
                    status, headers, body = dialect.render_error(err)
                    await responder.send(status, headers, body)
            except (trio.Cancelled, ClientGone):
                raise
            except Exception:
                # a bug of ours: the client still gets an answer in its own
                # protocol, and the log gets the traceback
                log.exception("request %s failed inside the gateway", record.id)
                if record.lifecycle.can("rejected"):
                    record.lifecycle.fire("rejected", "internal error")
                record.status = 500
                record.error = "internal gateway error"
                if not responder.started:
                    status, headers, body = dialect.render_error(ClientError(
                        500, f"Internal gateway error (request {record.id}); the gateway log has the details.",
                        "api_error"))
                    await responder.send(status, headers, body)
        except trio.Cancelled:
            if not record.lifecycle.finished:
                record.lifecycle.fire("cancelled", "client disconnected")
                record.error = record.error or "client disconnected"
                record.status = record.status or 499
            raise
        except ClientGone:
            if not record.lifecycle.finished:
                record.lifecycle.fire("cancelled", "client disconnected")
            record.status = record.status or 499
            raise
        finally:
            self.in_flight -= 1
            del self.active[record.id]
            record.ms = (time.perf_counter() - t0) * 1000
            self._finish(record)

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
        if request.path in (b"/v1/models", b"/models") and request.method == b"GET":
            return await responder.send(200, [JSON_CT], self._models_body)
        if request.path in (b"/healthz", b"/health"):
            return await responder.send(200, [JSON_CT], b'{"status":"ok"}')
        protocol = guess_protocol(request.path)
        err = ClientError(404, f"No route for {request.method.decode()} {request.path.decode('latin-1')}. "
                               "Busbar serves the vendors' own paths, e.g. POST /v1/chat/completions, "
                               "/v1/messages, /v1/responses, /v1beta/models/{model}:generateContent, "
                               "/model/{modelId}/converse, /v2/chat.", "not_found")
        status, headers, body = get_dialect(protocol).render_error(err)
        await responder.send(status, headers, body)

    # ---- the journey -----------------------------------------------------
    def _authenticate(self, request: HttpRequest, dialect, params: dict) -> str | None:
        if dialect.name == "bedrock" and self.aws_secrets:
            from busbar.aws.sigv4 import SignatureError, verify
            try:
                return verify(request.method.decode(), request.path.decode("latin-1"), request.query.decode("latin-1"),
                              request.headers, request.body, lookup_secret=self.aws_secrets.get)
            except SignatureError as exc:
                raise ClientError(403, exc.message, "permission", code=exc.code) from None
        if self.client_keys is None:
            return None
        key = dialect.inbound_key(request.headers, request.query)
        if key is None or key not in self.client_keys:
            raise ClientError(401, "Invalid or missing API key for this gateway." if key else
                              "Missing API key: send the gateway key the way your SDK sends its vendor key.",
                              "authentication")
        return key

    async def _serve(self, request: HttpRequest, responder: Responder, dialect, params: dict,
                     record: RequestRecord) -> None:
        if request.method != b"POST":
            raise ClientError(405, f"Method {request.method.decode()} not allowed; use POST.", "invalid_request")
        content_type = header(request.headers, b"content-type")
        if content_type is not None and b"json" not in content_type.lower():
            raise ClientError(415, f"Content-Type must be application/json, got {content_type.decode('latin-1')!r}.",
                              "invalid_request")
        obj = load_json_object(request.body)
        model = dialect.inbound_model(params, obj)
        # the pool's pipeline says which checks run on `received`
        try:
            checks = self.router.pipeline_for(model).received.checks if model else ("auth",)
        except KeyError:
            checks = ("auth",)
        if "auth" in checks:
            key = self._authenticate(request, dialect, params)
            if key is not None:
                record.client_key_id = fingerprint(key)
        if not model:
            raise ClientError(400, "Missing `model`: name a Busbar pool (or provider/model).", "invalid_request",
                              param="model")
        stream = dialect.inbound_stream(params, obj)
        record.pool = model
        record.stream = stream
        now = trio.current_time()
        try:
            plan = self.router.start(model, _needs(request.body, obj), now)
        except KeyError:
            raise ClientError(404, f"The model `{model}` does not exist: it is neither a pool "
                                   f"({', '.join(self.router.pool_names()) or 'none configured'}) nor provider/model.",
                              "not_found", param="model", code="model_not_found") from None
        record.lifecycle.fire("parsed", model)
        exchange = _Exchange(self, request, responder, dialect, params, obj, model, stream, record, plan)
        pipeline = plan.pipeline
        with trio.move_on_after(pipeline.deadline) as deadline_scope:
            await exchange.run()
        if deadline_scope.cancelled_caught and not record.lifecycle.finished:
            err = ClientError(504, f"The request exceeded the gateway deadline of {pipeline.deadline:g}s.", "timeout")
            if responder.started:
                record.lifecycle.fire("broken", "deadline")
                await exchange.end_stream_with_error(err)
            else:
                raise err


def _needs(body: bytes, obj: dict) -> Needs:
    """What a member must offer to take this request, estimated cheaply from
    the raw body (no IR): about four bytes per token."""
    return Needs(tokens=len(body) // 4,
                 tools=bool(obj.get("tools") or obj.get("toolConfig")),
                 vision=(b'"image_url"' in body or b'"image"' in body or b'"inline_data"' in body
                         or b'"inlineData"' in body or b'"input_image"' in body),
                 json=bool(obj.get("response_format") or obj.get("text") or b'"responseMimeType"' in body))


class _Exchange:
    """The attempt loop of one request (kept as an object so the state it
    shares, e.g. the IR parsed once for all attempts, has one home)."""

    def __init__(self, gateway: Gateway, request: HttpRequest, responder: Responder, dialect, params, obj, model,
                 stream, record, plan):
        self.gw = gateway
        self.request = request
        self.responder = responder
        self.client = dialect
        self.params = params
        self.obj = obj
        self.model = model
        self.stream = stream
        self.record = record
        self.plan = plan
        self._ir = None
        self._warnings: list[str] = []   # fields translation dropped for the member that answers

    @property
    def lifecycle(self) -> lifecycle.Lifecycle:
        return self.record.lifecycle

    def _ir_request(self):
        if self._ir is None:
            self._ir = self.client.parse_request(self.obj, self.params)
        return self._ir

    async def run(self) -> None:
        plan = self.plan
        while True:
            step = plan.next(trio.current_time())
            if isinstance(step, Wait):
                await trio.sleep(step.seconds)
                continue
            if isinstance(step, Exhausted):
                raise self._exhausted_error(step)
            if await self._attempt(step):
                return

    def _exhausted_error(self, step: Exhausted) -> ClientError:
        fault = step.last_fault
        if step.kind == "incapable" and fault is None:
            # no member is large (or able) enough: the request's problem, not a backend's
            return ClientError(400, step.reason[:1].upper() + step.reason[1:] + ".", "invalid_request", param="messages",
                               code="context_length_exceeded" if "context" in step.reason or "token" in step.reason
                               else None)
        if fault is not None and fault.cls in (FaultClass.CLIENT, FaultClass.CONTEXT):
            err = self.client.fault_to_client_error(fault)
        elif step.retry_after is not None:
            err = ClientError(429, f"All members of `{self.model}` are cooling down or unavailable "
                                   f"({step.reason}); retry after {step.retry_after:.0f}s.", "rate_limit",
                              retry_after=step.retry_after)
        elif fault is not None:
            err = self.client.fault_to_client_error(fault)
            err.message = f"All members of `{self.model}` failed; last error: {fault.message}"
        else:
            err = ClientError(503, f"No member of `{self.model}` can take this request: {step.reason}.", "overloaded")
        return err

    # ---- one attempt -----------------------------------------------------
    def _build(self, attempt: Attempt, provider: Provider) -> tuple[bytes, Headers, bytes]:
        up = provider.dialect
        same = up is self.client
        if same:
            body = up.passthrough_body(self.request.body, self.obj, attempt.model)
            self._warnings = []
        else:
            policy = self.gw.pool_policies.get(self.model, "reject")
            body, warnings = up.render_request(self._ir_request(), attempt.model,
                                               max_tokens_default=attempt.max_tokens, unsupported=policy)
            self._warnings = warnings
            if warnings:
                log.warning("request %s: dropped fields not expressible in %s: %s", self.record.id, up.name,
                            ", ".join(warnings))
        path = up.upstream_path(provider.origin.base_path, attempt.model, self.stream)
        headers: Headers = [JSON_CT, (b"accept", b"text/event-stream" if self.stream else b"application/json")]
        auth = up.auth_headers(attempt.key_secret)
        if same and up.forward_headers:
            forwarded = [(k, v) for k, v in self.request.headers if k in up.forward_headers]
            names = {k for k, _ in forwarded}
            headers.extend(h for h in auth if h[0] not in names)
            headers.extend(forwarded)
        else:
            headers.extend(auth)
        headers.extend(provider.extra_headers)
        if provider.protocol == "bedrock" and provider.credentials is not None:
            from busbar.aws.sigv4 import sign
            headers.extend((k.lower().encode(), v.encode()) for k, v in sign(
                "POST", path, "", headers, body, credentials=provider.credentials, region=provider.region,
                host=provider.origin.host_header.decode()))
        return path.encode(), headers, body

    def _classify(self, provider: Provider, status: int, headers: Headers, body: bytes) -> Fault:
        fault = self._classify_raw(provider, status, headers, body)
        if self.gw._secrets is not None and self.gw._secrets.search(fault.message):
            fault = Fault(fault.cls, fault.status, self.gw.scrub(fault.message), fault.retry_after, fault.code)
        return fault

    def _classify_raw(self, provider: Provider, status: int, headers: Headers, body: bytes) -> Fault:
        if provider.error_rules:
            text = body.decode("utf-8", "replace")
            for pattern, rule_status, cls in provider.error_rules:
                if (rule_status is None or rule_status == status) and pattern.search(text):
                    fault = provider.dialect.classify(status, headers, body)
                    return Fault(cls, status, fault.message, fault.retry_after, fault.code)
        return provider.dialect.classify(status, headers, body)

    async def _attempt(self, attempt: Attempt) -> bool:
        """Run one attempt.  True when the request is finished (answered),
        False when the loop should consult the plan again."""
        gw = self.gw
        provider = gw.providers[attempt.provider]
        rec = AttemptRecord(attempt.member_id, attempt.key_id)
        self.record.attempts.append(rec)
        self.lifecycle.fire("dispatch", attempt.member_id)
        timeouts = self.plan.pipeline.timeouts
        t0 = trio.current_time()
        pool = gw.upstream.pool(provider.origin, provider.max_connections)
        reported = False
        try:
            target, headers, body = self._build(attempt, provider)
            try:
                response = await pool.request(b"POST", target, headers, body, connect_timeout=timeouts.connect,
                                              response_timeout=timeouts.first_byte)
            except UpstreamError as exc:
                return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, 0, str(exc)), t0)
            try:
                if response.status >= 400 or response.status < 200:
                    with trio.move_on_after(timeouts.idle):
                        error_body = await response.read(MAX_UPSTREAM_ERROR_BODY)
                        fault = self._classify(provider, response.status, response.headers, error_body)
                        reported = True
                        return await self._upstream_error(attempt, rec, provider, fault, response, error_body, t0)
                    reported = True
                    return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, response.status,
                                                                   "upstream error body timed out"), t0)
                if self.stream:
                    reported = True
                    return await self._relay_stream(attempt, rec, provider, response, t0)
                reported = True
                return await self._relay_buffered(attempt, rec, provider, response, t0)
            finally:
                await response.aclose()
        except UpstreamError as exc:
            if reported:
                raise
            return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, 0, str(exc)), t0)
        except BaseException:
            # cancelled (client gone, deadline) or a bug of ours: nobody's fault
            # upstream; free the attempt's in-flight slot (and breaker probe)
            if rec.outcome == "pending":
                rec.outcome = "cancelled"
                rec.ms = (trio.current_time() - t0) * 1000
            if any(a is attempt for a in self.plan.outstanding):
                self.plan.release(attempt, trio.current_time())
            raise

    def _fail(self, attempt: Attempt, rec: AttemptRecord, fault: Fault, t0: float) -> bool:
        """Report a fault; move to failing-over or reject.  Returns whether
        the plan allows another try."""
        now = trio.current_time()
        rec.outcome = fault.cls.value
        rec.status = fault.status
        rec.message = fault.message[:200]
        rec.ms = (now - t0) * 1000
        decision = self.plan.report(attempt, fault, now)
        if decision.retry:
            self.lifecycle.fire("fault", f"{attempt.member_id}: {fault.cls.value}")
            return True
        return False

    def _fail_or_raise(self, attempt: Attempt, rec: AttemptRecord, fault: Fault, t0: float) -> bool:
        """For failures with no upstream answer to relay: fail over, or end
        the request with the fault in the client's protocol."""
        if self._fail(attempt, rec, fault, t0):
            return False
        err = self.client.fault_to_client_error(fault)
        raise err

    async def _upstream_error(self, attempt, rec, provider, fault: Fault, response, error_body: bytes, t0) -> bool:
        if self._fail(attempt, rec, fault, t0):
            return False
        # Not retried: the client gets this error in its own protocol.  Same
        # protocol: the vendor's own body, untouched.
        self.lifecycle.fire("rejected", f"{attempt.member_id}: {fault.cls.value}")
        self.record.status = response.status
        self.record.error = fault.message
        if provider.dialect is self.client:
            headers = [(k, v) for k, v in response.headers if k in (b"content-type", b"retry-after")]
            await self.responder.send(response.status, headers or [JSON_CT], self.gw.scrub_bytes(error_body))
        else:
            status, headers, body = self.client.render_error(self.client.fault_to_client_error(fault))
            await self.responder.send(status, headers, body)
        return True

    async def _relay_buffered(self, attempt, rec, provider, response, t0) -> bool:
        timeouts = self.plan.pipeline.timeouts
        try:
            with trio.fail_after(max(timeouts.idle, timeouts.first_byte)):
                data = await response.read(MAX_UPSTREAM_BODY)
        except trio.TooSlowError:
            return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, 0, "upstream response stalled"), t0)
        up = provider.dialect
        if up is self.client:
            # the bytes go out untouched, but only if they are JSON at all: a
            # garbage 200 is the member's fault and fails over (~2 µs to check)
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                return self._fail_or_raise(attempt, rec, Fault(
                    FaultClass.SERVER, response.status, "upstream sent a response that is not JSON"), t0)
            out = data
            content_type = response.header(b"content-type") or b"application/json"
            if self.gw.listeners:       # usage accounting is on: worth the IR
                try:
                    self.record.usage = up.parse_response(obj).usage
                except Exception:
                    pass
        else:
            try:
                resp_ir = up.parse_response(orjson.loads(data))
                self.record.usage = resp_ir.usage
                out = self.client.render_response(resp_ir, self.model)
            except ClientError:
                raise
            except Exception as exc:  # upstream garbage: the member's fault
                return self._fail_or_raise(attempt, rec, Fault(
                    FaultClass.SERVER, response.status, f"unparseable upstream response: {type(exc).__name__}"), t0)
            content_type = b"application/json"
        now = trio.current_time()
        rec.outcome = "ok"
        rec.status = response.status
        rec.ms = (now - t0) * 1000
        self.record.ttfb_ms = rec.ms
        self.plan.report(attempt, None, now, ttfb=now - t0)
        self.lifecycle.fire("first_byte", attempt.member_id)
        self.record.status = 200
        await self.responder.send(200, [(b"content-type", content_type)] + self._warning_headers(), out)
        self.lifecycle.fire("complete")
        return True

    async def _relay_stream(self, attempt, rec, provider, response, t0) -> bool:
        """Hold the upstream's events until the first content-bearing one,
        then commit: send the head and what was held, and relay the rest as it
        comes.  Failures before the commit fail over; after it, the client
        stream ends with its protocol's error event.

        The upstream stream is always decoded (constant memory) to find the
        commit point, errors, garbage and usage.  Same protocol: the client
        gets the upstream's own bytes, whole events at a time.  Otherwise the
        decoded events are re-encoded in the client's protocol."""
        up, client = provider.dialect, self.client
        same = up is client
        timeouts = self.plan.pipeline.timeouts
        chunks = response.aiter_bytes()
        decoder = up.stream_decoder()
        encoder = client.stream_encoder(self.model, **self._encoder_options())
        relay = _PassthroughRelay(up.stream_content_type) if same else None
        held: list = []          # raw bytes (same protocol) or IR events, until the commit
        upstream_done = False
        committed = False
        while not committed:
            try:
                with trio.fail_after(timeouts.first_byte):
                    chunk = await chunks.__anext__()
                events = decoder.feed(chunk)
            except StopAsyncIteration:
                try:
                    events = decoder.close()
                except StreamError as exc:
                    return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, 0, f"upstream stream: {exc}"), t0)
                upstream_done = True
                chunk = b""
            except trio.TooSlowError:
                return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, 0, "no first byte before timeout"), t0)
            except UpstreamError as exc:
                return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, 0, str(exc)), t0)
            except StreamError as exc:
                return self._fail_or_raise(attempt, rec, Fault(FaultClass.SERVER, 0, f"malformed upstream stream: {exc}"), t0)
            for event in events:
                if type(event) is ir.ErrorEvent:
                    # an error before any content: classify it like the HTTP
                    # error it stands for, then fail over or return it
                    fault = up.classify(event.status, response.headers,
                                        event.raw or orjson.dumps({"message": event.message}))
                    if self._fail(attempt, rec, fault, t0):
                        return False
                    self.lifecycle.fire("rejected", f"{attempt.member_id}: {fault.cls.value}")
                    status, headers, body = client.render_error(client.fault_to_client_error(fault))
                    self.record.status = status
                    await self.responder.send(status, headers, body)
                    return True
                if ir.is_content(event):
                    committed = True
                if type(event) is ir.UsageEvent:
                    self.record.usage = event.usage
            if same:
                held.append(relay.take(chunk))
            else:
                held.extend(events)
            if upstream_done:
                break
        # commit: from here the client sees bytes and there is no failover
        now = trio.current_time()
        ttfb = now - t0
        rec.outcome = "ok"
        rec.status = response.status
        self.record.ttfb_ms = ttfb * 1000
        self.lifecycle.fire("first_byte", attempt.member_id)
        self.record.status = 200
        await self.responder.start(200, [(b"content-type", client.stream_content_type), (b"cache-control", b"no-cache")]
                                   + self._warning_headers())
        await self.responder.write(b"".join(held) if same else b"".join(encoder.encode(e) for e in held))
        failure = None
        relayed = False
        try:
            while not upstream_done:
                with trio.fail_after(timeouts.idle):
                    try:
                        chunk = await chunks.__anext__()
                    except StopAsyncIteration:
                        break
                events = decoder.feed(chunk)
                broken = None
                for event in events:
                    kind = type(event)
                    if kind is ir.UsageEvent:
                        self.record.usage = event.usage
                    elif kind is ir.ErrorEvent:
                        broken = event
                if same:
                    await self.responder.write(relay.take(chunk))
                else:
                    await self.responder.write(b"".join(encoder.encode(e) for e in events))
                if broken is not None:
                    relayed = same      # passthrough: the vendor's own error event already went out
                    raise StreamError(f"upstream error mid-stream: {broken.message}")
            if not upstream_done:
                tail = decoder.close()
                if not same:
                    await self.responder.write(b"".join(encoder.encode(e) for e in tail))
            if not same:
                await self.responder.write(encoder.finish())
        except trio.TooSlowError:
            failure = "upstream stream stalled"
        except (UpstreamError, StreamError) as exc:
            failure = str(exc)
        now = trio.current_time()
        rec.ms = (now - t0) * 1000
        if failure is not None:
            rec.message = failure
            self.record.error = failure
            self.lifecycle.fire("broken", failure)
            self.plan.report(attempt, Fault(FaultClass.SERVER, 0, failure), now)
            err = ClientError(502, f"Upstream stream failed after content was sent: {failure}", "upstream")
            if relayed:
                await self.responder.end()
            else:
                await self.end_stream_with_error(err, encoder)
            return True
        # reported at the end so in-flight counts cover the whole stream; and
        # complete before the closing chunk: a client that has its answer may
        # hang up before that last write, which is no failure
        self.plan.report(attempt, None, now, ttfb=ttfb)
        self.lifecycle.fire("complete")
        await self.responder.end()
        return True

    def _warning_headers(self) -> Headers:
        """`x-busbar-warning` names what translation dropped (pool policy
        `unsupported: drop`), so a client can see it without the logs."""
        if not self._warnings:
            return []
        text = "; ".join(self._warnings).encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        return [(b"x-busbar-warning", text[:2000])]

    def _encoder_options(self) -> dict:
        if self.client.name == "openai":
            # the usage chunk only when the client asked for it, as OpenAI does
            return {"include_usage": bool((self.obj.get("stream_options") or {}).get("include_usage"))}
        return {}

    async def end_stream_with_error(self, err: ClientError, encoder=None) -> None:
        """End a committed stream with the client protocol's error event, so
        its SDK raises instead of taking a truncated answer as complete."""
        if encoder is None:
            encoder = self.client.stream_encoder(self.model)
        try:
            await self.responder.write(encoder.error(err.kind, err.message))
            await self.responder.end()
        except ClientGone:
            pass


class _PassthroughRelay:
    """Same-protocol stream relay: forwards the upstream's bytes untouched,
    whole SSE events at a time (an incomplete event waits for its end, so an
    error event we append can never land inside one).  Binary framings
    (Bedrock's eventstream) are forwarded as they come."""

    __slots__ = ("splitter",)

    def __init__(self, content_type: bytes):
        self.splitter = SSESplitter() if content_type == b"text/event-stream" else None

    def take(self, chunk: bytes) -> bytes:
        if self.splitter is None or not chunk:
            return chunk
        aligned = not self.splitter.pending
        events = self.splitter.feed(chunk)
        if aligned and not self.splitter.pending:
            return chunk                      # the common case: whole events, as received
        return b"".join(event.raw for event in events)
