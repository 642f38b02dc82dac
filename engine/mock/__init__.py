"""Simulated vendors: the vendor APIs on loopback, with fault injection.

Used by `busbar demo`, the test suite and the benchmarks.  One `MockVendor`
serves every protocol it knows on its own path (a vendor's base_url points
at it); its behaviour is scriptable in-process (tests) or over HTTP
(`POST /_mock/script`, `GET /_mock/requests`) for out-of-process use.

Faults are dicts, consumed one per matching request from `queue`, or
applied to every request from `always`:
  {"status": 429, "retry_after": 2}            a vendor error with its real body
  {"error": "rate"|"billing"|"context"|"auth"|"invalid"|"overloaded"|"server"}
                                                the same, by fault class
  {"reset": "before"}                           close the socket, no response
  {"reset": "during", "after": 2}               close mid-stream after N chunks (buffered: the head and
                                                half the body, then close)
  {"stall": 5.0, "after": 0}                    stop sending for N seconds
  {"malformed": true, "after": 1}               garbage bytes in the stream (buffered: a garbage 200 body)
  {"inject": "data: {...}\n\n", "after": 2}      these exact bytes in the stream after N writes, then the rest
  {"error_event": "overloaded"|"context"}       200 stream whose first event is an error
  {"error_event": "overloaded", "after": 3}     the vendor's in-stream error event after N writes (the
                                                preamble and N-1 deltas): a stream dying mid-way
  {"quota": "minute"|"day", "retry_after": 30}  the vendor's quota 429 (Gemini: a QuotaFailure
                                                violation per minute or per day, with RetryInfo)
Optional "model": "x" / "key": "k" on a fault restricts which requests it hits.
`holds_responses` makes the Responses API keep each answer per key, as OpenAI keeps a response
in the project of the key that made it: `previous_response_id`, `GET`/`DELETE
/v1/responses/{id}`, `.../input_items` and `.../cancel` naming an id another key (or nobody)
made are OpenAI's 400 `previous_response_not_found` / 404.
`limits` makes the mock enforce per-key limits itself (and `rate_headers`
send OpenAI's / Anthropic's rate-limit headers); `GET /_mock/keys` and
`used_keys()` say how many requests each key had answered.
"""
from __future__ import annotations

import hashlib
import re
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import unquote

import orjson
import trio

from busbar.faults import ClientError
from busbar.server import AbortConnection, HttpRequest, HttpServer, Responder
from busbar.mock import vendors


@dataclass
class MockVendor:
    name: str = "mock"
    reply: str | None = None          # fixed reply text; None echoes the last user text
    latency: float = 0.0              # seconds before the response head
    chunk_delay: float = 0.0          # seconds between stream chunks
    chunks: int | None = None         # split the reply into this many chunks (default: per word)
    keys: list[str] | None = None     # accepted keys; None accepts any
    queue: list[dict] = field(default_factory=list)
    always: dict | None = None
    received: list[dict] = field(default_factory=list)
    record: bool = True
    max_records: int = 1000
    port: int = 0
    aws_credentials: dict[str, str] | None = None   # Bedrock: access key id -> secret; SigV4 is verified
    # the vendor's own limits, enforced per key and model: {"rpm": n, "rpd": n}
    # (a sliding minute; a day until the mock restarts); a request over them gets
    # the vendor's real 429 and lands in `rejected`
    limits: dict | None = None
    rate_headers: bool = False        # OpenAI/Anthropic: send x-ratelimit-* / anthropic-ratelimit-* from `limits`
    rejected: list[dict] = field(default_factory=list)
    _metered: dict = field(default_factory=dict, repr=False)   # (key, model) -> [minute times, day count]
    use_tools: bool = False           # offered tools: call the first, then answer "tool said: <result>"
    # thinking on: every answer starts with a signed reasoning block (the signature names this
    # mock), and a tool-result turn whose assistant turn before it lacks that signed block is
    # refused with a 400, as Anthropic refuses it with thinking enabled; `thoughts_seen` counts
    # the turns that carried it back
    think: bool = False
    thoughts_seen: int = 0
    in_flight: int = 0                # vendor calls being answered now, and the most at once
    peak_in_flight: int = 0
    # A request ending in an assistant turn (a prefill, or a resumed stream's
    # continuation) whose text starts `reply` is answered with the rest of
    # `reply`, as a model continuing its own answer does; `restate` > 0
    # repeats that many characters of the assistant text first (the overlap
    # a continuation may have).
    restate: int = 0
    # The model's context window: a request whose body weighs more tokens than
    # this (its bytes / 4, the input usage the mock reports) gets the vendor's
    # own context-too-long error, as a real model refuses a prompt too long.
    max_input_tokens: int | None = None
    # A self-hosted backend's telemetry (vLLM/SGLang `/metrics`, Ollama
    # `/api/ps`/`/api/tags`, readiness), scriptable: {"kind": "vllm",
    # "running": 0, "waiting": 0, "kv": 0.1, "ready": true, "models": [...],
    # "loaded": [...], "vram": bytes (ollama), "gpu": {"util": 50, "used": 1000, "free": 7000}}.
    backend: dict | None = None
    # an ssl.SSLContext (server side): serve HTTPS, as the real vendors do
    # (tests make a throwaway CA and certificate with trustme)
    tls: object = None
    _replies: dict = field(default_factory=dict, repr=False)   # rendered buffered replies (benchmarks hit one)
    holds_responses: bool = False     # Responses: answers kept per key (project); see the module docstring
    held: dict = field(default_factory=dict, repr=False)      # response id -> (key, response object, input items)

    # ---- scripting -------------------------------------------------------
    def fail_next(self, *faults: dict) -> None:
        self.queue.extend(faults)

    def reset_script(self) -> None:
        self.queue.clear()
        self.always = None
        self.received.clear()
        self.rejected.clear()
        self._metered.clear()

    def _take_fault(self, model: str | None, key: str | None) -> dict | None:
        for i, fault in enumerate(self.queue):
            if fault.get("model") not in (None, model) or fault.get("key") not in (None, key):
                continue
            return self.queue.pop(i)
        fault = self.always
        if fault and fault.get("model") in (None, model) and fault.get("key") in (None, key):
            return fault
        return None

    # ---- serving ---------------------------------------------------------
    def server(self) -> HttpServer:
        return HttpServer(self.handle, max_body_bytes=64 * 1024 * 1024, tls=self.tls)

    async def serve(self, host: str = "127.0.0.1", port: int = 0, *, task_status=trio.TASK_STATUS_IGNORED):
        server = self.server()

        async def run(task_status=trio.TASK_STATUS_IGNORED):
            await server.serve(host, port, task_status=task_status)

        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(run)
            self.port = addrs[0][1]
            task_status.started(self.port)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{self.port}"

    async def handle(self, request: HttpRequest, responder: Responder) -> None:
        path = request.path.decode("latin-1")
        if path.startswith("/_mock/"):
            return await self._control(path, request, responder)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await self._answer(path, request, responder)
        finally:
            self.in_flight -= 1

    async def _answer(self, path: str, request: HttpRequest, responder: Responder) -> None:
        if request.method == b"GET" and self.backend is not None:
            return await responder.send(*backend_page(self.backend, path))
        if self.holds_responses and await self._held_response(request, responder):
            return
        endpoint = vendors.match_route(request.path) or _azure_route(path)
        if endpoint is None:
            return await responder.send(404, [(b"content-type", b"application/json")],
                                        orjson.dumps({"error": {"message": f"mock: no route {path}"}}))
        protocol, params = endpoint
        vendor = vendors.VENDORS[protocol]
        request_id = None
        if vendor.dialect.request_id_header is not None:     # as the real vendor names every answer, errors too
            request_id = f"req_{uuid.uuid4().hex[:24]}"
            responder.extra_headers = [(vendor.dialect.request_id_header, request_id.encode())]
        try:
            await self._answer_as(vendor, protocol, params, path, request, responder, request_id)
        except (ClientError, TypeError, KeyError, AttributeError, ValueError, IndexError) as exc:
            # a body of the wrong shape is the vendor's 400, as a real one validates
            # it: never a dropped connection that would blame the member
            if responder.started:
                raise
            message = exc.message if isinstance(exc, ClientError) else "the request body does not have " \
                                                                        "this protocol's shape"
            status, headers, body = vendor.error("invalid", f"mock: {message}")
            await responder.send(status, headers, body)

    async def _answer_as(self, vendor, protocol: str, params: dict, path: str, request: HttpRequest,
                         responder: Responder, request_id: str | None) -> None:
        try:
            obj = orjson.loads(request.body) if request.body else {}
        except orjson.JSONDecodeError:
            status, headers, body = vendor.error("invalid", "Malformed JSON body")
            return await responder.send(status, headers, body)
        key = vendor.key(request) if "deployment" not in params else _header(request, b"api-key")
        if vendor.dialect.signed_requests and key is None:
            key = _aws_access_key(request)
        model = params.get("model") or params.get("deployment") or obj.get("model") or "unknown"
        stream = vendor.is_stream(params, obj, request)
        if self.record:
            if len(self.received) >= self.max_records:
                del self.received[: self.max_records // 2]
            self.received.append({"protocol": protocol, "path": path, "query": request.query.decode("latin-1"),
                                  "model": model, "key": key, "stream": stream, "body": obj,
                                  "request_id": request_id,      # the vendor's own, in its answer's header
                                  "raw": request.body.decode("utf-8", "replace"),     # the bytes, to compare
                                  "headers": {k.decode(): v.decode("latin-1") for k, v in request.headers},
                                  "at": time.monotonic()})
        if self.latency:
            await trio.sleep(self.latency)
        if self.keys is not None and key not in self.keys:
            status, headers, body = vendor.error("auth", "Incorrect API key provided.")
            return await responder.send(status, headers, body)
        quota_headers = []
        if self.limits:
            over, quota_headers = self._meter(vendor, key, model)
            if over is not None:
                self.rejected.append({"key": key, "model": model, "window": over[0], "at": time.monotonic()})
                return await responder.send(*vendor.quota_error(*over, model))
        fault = self._take_fault(model, key)
        if fault and fault.get("quota"):
            # a scripted quota 429: {"quota": "minute"|"day", "retry_after": s}
            return await responder.send(*vendor.quota_error(fault["quota"], fault.get("retry_after", 30), 10, model))
        if fault and fault.get("reset") == "before":
            raise AbortConnection()
        if fault and "stall" in fault and not fault.get("after"):
            await trio.sleep(fault["stall"])
        if fault and ("status" in fault or "error" in fault):
            cls = fault.get("error") or vendors.class_for_status(fault["status"])
            status, headers, body = vendor.error(cls, fault.get("message"), status=fault.get("status"))
            if fault.get("retry_after") is not None:
                headers = headers + [(b"retry-after", str(fault["retry_after"]).encode())]
            return await responder.send(status, headers, body)
        if self.max_input_tokens is not None and len(request.body) // 4 > self.max_input_tokens:
            return await responder.send(*vendor.error("context"))
        if vendor.dialect.signed_requests and self.aws_credentials:
            denied = self._check_signature(request, vendor)
            if denied is not None:
                return await responder.send(*denied)
        if "operation" in params:        # embeddings, rerank, token counting
            return await responder.send(*vendor.answer_operation(params, obj, model))
        try:
            body_dialect = vendor.dialect.for_body(obj)    # InvokeModel: an embeddings or a Messages body
        except ClientError as err:
            return await responder.send(*vendor.dialect.render_error(err))
        if body_dialect is not vendor.dialect:
            return await responder.send(*vendor.answer_operation(params, obj, model, body_dialect))
        refused = vendor.refusal(obj)
        if refused is not None:
            return await responder.send(*refused)
        holding = self.holds_responses and protocol == "responses"
        if holding:
            previous = obj.get("previous_response_id")
            if previous is not None and self.held.get(previous, (None,))[0] != key:
                return await responder.send(400, [(b"content-type", b"application/json")], orjson.dumps(
                    {"error": {"message": f"Previous response with id '{previous}' not found.",
                               "type": "invalid_request_error", "param": "previous_response_id",
                               "code": "previous_response_not_found"}}))
        thought = None
        if self.think:
            thought = vendors.ir.Reasoning(f"Thinking it over ({self.name}).", self.signature, vendor.dialect.family)
            refused = self._check_thought(vendor, obj, params)
            if refused is not None:
                return await responder.send(*refused)
        step = vendor.tool_step(obj, params) if self.use_tools else None
        if isinstance(step, vendors.ir.ToolCall):
            reply = vendor.render_call(model, step, max(1, len(request.body) // 4), stream, thought)
            if not stream:
                return await responder.send(*reply)
            await responder.start(200, vendor.stream_headers())
            for i, frame in enumerate(reply):
                if fault and fault.get("reset") == "during" and i == fault.get("after", 0):
                    raise AbortConnection()
                await responder.write(frame)
            return await responder.end()
        text = step if step is not None else (
            self.reply if self.reply is not None else vendor.last_user_text(obj, params) or "Hello from Busbar's mock.")
        if step is None and self.reply is not None:
            prefill = vendor.trailing_assistant_text(obj, params)
            if prefill and text.startswith(prefill):
                text = text[len(prefill) - min(self.restate, len(prefill)):]
        usage_in = max(1, len(request.body) // 4)
        if not stream:
            if fault and fault.get("malformed"):
                return await responder.send(200, [(b"content-type", b"application/json")], vendor.garbage())
            key_ = (protocol, model, text, usage_in, thought is not None)
            cached = self._replies.get(key_) if not holding else None
            if holding:          # a fresh id per answer, kept for the key that asked
                cached = vendor.render_reply(model, text, usage_in, obj, thought)
                self._hold(key, orjson.loads(cached[2]), obj)
            if cached is None:
                if len(self._replies) > 256:
                    self._replies.clear()
                cached = self._replies[key_] = vendor.render_reply(model, text, usage_in, obj, thought)
            status, headers, body = cached
            if fault and fault.get("reset") == "during":
                await responder.send_truncated(status, headers, body, len(body) // 2)
                raise AbortConnection()
            if self.record:      # what was answered, to check a passthrough's bytes against
                self.received[-1]["answer_sha256"] = hashlib.sha256(body).hexdigest()
            return await responder.send(status, headers + quota_headers, body)
        pieces = _split(text, self.chunks)
        framed = vendor.stream_frames(model, pieces, usage_in, obj, fault, thought)
        frames = [frame for frame, _ in framed]
        if holding:
            decoder = vendor.dialect.stream_decoder()
            events = decoder.feed(b"".join(frames))
            shown = decoder.shown_response()
            if shown is not None:
                self._hold(key, shown, obj)
            else:            # a stream cut short: kept by the id response.created showed, as OpenAI keeps it
                start = next((e for e in events if type(e) is vendors.ir.MessageStart), None)
                if start is not None:
                    self._hold(key, {"id": start.id, "object": "response", "status": "in_progress"}, obj)
        headers = vendor.stream_headers() + quota_headers
        await responder.start(200, headers)
        after = fault.get("after", 0) if fault else None
        if self.record:       # the answer text this stream carries (up to a scripted cut)
            cut = fault is not None and (fault.get("reset") == "during" or fault.get("malformed")
                                         or "stall" in fault)
            self.received[-1]["streamed"] = "".join(s for _, s in (framed[:after] if cut else framed))
            self.received[-1]["answer_sha256"] = hashlib.sha256(b"".join(frames[:after] if cut else frames)).hexdigest()
        for i, frame in enumerate(frames):
            if i == after:
                if fault.get("reset") == "during":
                    raise AbortConnection()
                if fault.get("malformed"):
                    await responder.write(vendor.garbage())
                    raise AbortConnection()
                if fault.get("inject") is not None:      # these exact bytes, then the rest
                    await responder.write(fault["inject"].encode())
                if "stall" in fault and after:
                    await trio.sleep(fault["stall"])
            await responder.write(frame)
            if self.chunk_delay and i < len(frames) - 1:
                await trio.sleep(self.chunk_delay)
        await responder.end()

    def _hold(self, key: str | None, response: dict, obj: dict) -> None:
        if obj.get("store") is False or not isinstance(response.get("id"), str):
            return
        inp = obj.get("input")
        items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": inp}]}] \
            if isinstance(inp, str) else list(inp or [])
        self.held[response["id"]] = (key, response, items)

    async def _held_response(self, request: HttpRequest, responder: Responder) -> bool:
        """`GET`/`DELETE /v1/responses/{id}`, `.../input_items`, `POST .../cancel`, for the key
        that made the response; OpenAI's 404 for any other (or none)."""
        from busbar.protocols.routes import match_response_cancel, match_stored_response
        found = match_stored_response(request.path)
        cancel = match_response_cancel(request.path) if found is None else None
        if found is None and cancel is None:
            return False
        response_id, listing = found if found is not None else (cancel, False)
        key = vendors.VENDORS["responses"].key(request)
        if self.record:
            self.received.append({"protocol": "responses", "path": request.path.decode("latin-1"),
                                  "method": request.method.decode(), "query": request.query.decode("latin-1"),
                                  "key": key, "response_id": response_id, "body": None, "at": time.monotonic()})
        json = [(b"content-type", b"application/json")]
        held = self.held.get(response_id)
        if held is None or held[0] != key:
            return await responder.send(404, json, orjson.dumps({"error": {
                "message": f"Response with id '{response_id}' not found.", "type": "invalid_request_error",
                "param": None, "code": None}})) or True
        _, response, items = held
        if cancel is not None:
            body = {"error": {"message": "Cannot cancel a synchronous response.", "type": "invalid_request_error",
                              "param": None, "code": None}}
            return await responder.send(400, json, orjson.dumps(body)) or True
        if listing:
            data = [{"id": f"msg_{response_id}_in_{i}", **item} for i, item in enumerate(items)]
            data.reverse()
            body = {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                    "last_id": data[-1]["id"] if data else None, "has_more": False}
        elif request.method == b"DELETE":
            del self.held[response_id]
            body = {"id": response_id, "object": "response", "deleted": True}
        else:
            body = response
        await responder.send(200, json, orjson.dumps(body))
        return True

    def _meter(self, vendor, key: str | None, model: str):
        """Count this request against `limits`; ((window, retry_after, limit) or
        None when it is within them, the rate-limit headers to send)."""
        now = time.monotonic()
        times, day = self._metered.setdefault((key, model), [[], [0]])
        times[:] = [t for t in times if t > now - 60.0]
        rpm, rpd = self.limits.get("rpm"), self.limits.get("rpd")
        if rpd is not None and day[0] >= rpd:
            return ("day", 3600.0, rpd), []
        if rpm is not None and len(times) >= rpm:
            return ("minute", times[len(times) - rpm] + 60.0 - now, rpm), []
        times.append(now)
        day[0] += 1
        headers = []
        if self.rate_headers and rpm is not None:
            headers = vendor.rate_headers(rpm, rpm - len(times), times[0] + 60.0 - now)
        return None, headers

    @property
    def signature(self) -> str:
        """The signature this mock's reasoning blocks carry (base64, as vendors' are)."""
        import base64
        return base64.b64encode(f"mock-signature:{self.name}:{id(self)}".encode()).decode()

    def _check_thought(self, vendor, obj: dict, params: dict):
        """Thinking on and a tool result in the last turn: the assistant turn
        before it must carry this mock's signed reasoning block."""
        try:
            request = vendor.dialect.parse_request(obj, params)
        except Exception:
            return None
        messages = request.messages
        if not messages or not any(isinstance(p, vendors.ir.ToolResult) for p in messages[-1].content):
            return None
        assistant = next((m for m in reversed(messages[:-1]) if m.role == vendors.ir.ASSISTANT), None)
        signed = assistant is not None and any(
            isinstance(p, vendors.ir.Reasoning) and p.signature == self.signature for p in assistant.content)
        if signed:
            self.thoughts_seen += 1
            return None
        return vendor.error("invalid", "messages: when thinking is enabled, the assistant turn with the tool "
                                       "call must start with its thinking block, signature included")

    def used_keys(self) -> dict:
        """Requests answered per key (rejected ones excluded), from the log."""
        counts: dict = {}
        rejected = len(self.rejected)
        for r in self.received:
            counts[r["key"]] = counts.get(r["key"], 0) + 1
        for r in self.rejected:
            counts[r["key"]] -= 1
        return {k: v for k, v in counts.items() if v} if rejected else counts

    def _check_signature(self, request: HttpRequest, vendor):
        """Verify the SigV4 signature a Bedrock client (the gateway) sent, so a
        signing bug fails the test instead of passing silently."""
        from busbar.aws.sigv4 import SignatureError, verify
        try:
            verify(request.method.decode(), request.path.decode("latin-1"), request.query.decode("latin-1"),
                   request.headers, request.body, lookup_secret=self.aws_credentials.get)
        except SignatureError as exc:
            return vendor.dialect.render_error(ClientError(exc.status, exc.message, "permission", code=exc.code))
        return None

    async def _control(self, path: str, request: HttpRequest, responder: Responder) -> None:
        json = [(b"content-type", b"application/json")]
        if path == "/_mock/script":
            script = orjson.loads(request.body or b"{}")
            if script.get("reset"):
                self.reset_script()
            self.queue.extend(script.get("queue", []))
            if "always" in script:
                self.always = script["always"]
            if "backend" in script:
                self.backend = {**(self.backend or {}), **script["backend"]}
            for knob in ("reply", "latency", "chunk_delay", "chunks", "keys", "use_tools", "limits", "rate_headers"):
                if knob in script:
                    setattr(self, knob, script[knob])
            return await responder.send(200, json, b'{"ok":true}')
        if path == "/_mock/requests":
            return await responder.send(200, json, orjson.dumps(self.received))
        if path == "/_mock/keys":
            return await responder.send(200, json, orjson.dumps({"used": self.used_keys(), "rejected": self.rejected}))
        return await responder.send(404, json, b'{"error":"unknown mock control path"}')


def backend_page(backend: dict, path: str) -> tuple[int, list, bytes]:
    """A simulated self-hosted server's GET pages, in each server's format."""
    json = [(b"content-type", b"application/json")]
    kind, ready, models = backend.get("kind", "vllm"), backend.get("ready", True), backend.get("models", [])
    if path == "/health":
        return (200, json, b"{}") if ready else (503, json, b'{"error":"not ready"}')
    if path == "/v1/models":
        if not ready:
            return 503, json, b'{"error":"not ready"}'
        return 200, json, orjson.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in models]})
    if path == "/api/tags" and kind == "ollama":
        if not ready:
            return 503, json, b'{"error":"not ready"}'
        return 200, json, orjson.dumps({"models": [{"name": m, "model": m} for m in models]})
    if path == "/api/ps" and kind == "ollama":
        vram = backend.get("vram", 4_000_000_000)
        return 200, json, orjson.dumps({"models": [{"name": m, "model": m, "size": vram, "size_vram": vram}
                                                   for m in backend.get("loaded", [])]})
    if path == "/metrics" and kind in ("vllm", "sglang"):
        names = {"vllm": ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"),
                 "sglang": ("sglang:num_running_reqs", "sglang:num_queue_reqs", "sglang:token_usage")}[kind]
        lines = []
        for model in models or ["unknown"]:
            label = f'{{model_name="{model}"}}'
            for name, knob in zip(names, ("running", "waiting", "kv")):
                lines.append(f"# TYPE {name} gauge\n{name}{label} {float(backend.get(knob, 0))}")
        return 200, [(b"content-type", b"text/plain; version=0.0.4")], ("\n".join(lines) + "\n").encode()
    if path == "/dcgm" and backend.get("gpu"):
        gpu = backend["gpu"]
        text = (f'DCGM_FI_DEV_GPU_UTIL{{gpu="0"}} {gpu.get("util", 0)}\n'
                f'DCGM_FI_DEV_FB_USED{{gpu="0"}} {gpu.get("used", 0)}\n'
                f'DCGM_FI_DEV_FB_FREE{{gpu="0"}} {gpu.get("free", 0)}\n'
                f'DCGM_FI_DEV_GPU_TEMP{{gpu="0"}} {gpu.get("temp", 60)}\n')
        return 200, [(b"content-type", b"text/plain")], text.encode()
    return 404, json, orjson.dumps({"error": f"mock backend: no page {path}"})


def _split(text: str, chunks: int | None) -> list[str]:
    if chunks is None:
        words = text.split(" ")
        return [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
    chunks = max(1, chunks)
    size = max(1, -(-len(text) // chunks))
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    while len(pieces) < chunks:
        pieces.append("")
    return pieces


# Azure OpenAI: the openai protocol with the model as a deployment in the
# path, `api-version` in the query and the key in an `api-key` header.
_AZURE = re.compile(r"^/openai/deployments/(?P<deployment>[^/]+)/(?P<call>chat/completions|embeddings)$")


def _azure_route(path: str) -> tuple[str, dict] | None:
    m = _AZURE.match(path)
    if not m:
        return None
    params = {"deployment": unquote(m["deployment"])}
    if m["call"] == "embeddings":
        params["operation"] = "embed"
    return "openai", params


def _header(request: HttpRequest, name: bytes) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _aws_access_key(request: HttpRequest) -> str | None:
    for name, value in request.headers:
        if name == b"authorization" and b"Credential=" in value:
            return value.split(b"Credential=", 1)[1].split(b"/", 1)[0].decode("latin-1")
    return None
