"""A lean HTTP/1.1 server on trio sockets; requests parsed by `busbar.http_in`
(h11, or httptools with h11's decisions: `server.http_parser`, ADR 0023).

One nursery owns the listeners; each connection is a task; each request is
handled by an `async handler(request, responder)`.  Measured against
hypercorn's trio worker, this is what lets the gateway reach its throughput
target (see docs/adr/0002-http-stack.md).

Contract for handlers:
* `request.body` is fully read (bounded by `max_body_bytes`; larger bodies
  never reach the handler: `on_too_large` renders the 413).
* The handler answers exactly once: `responder.send(status, headers, body)`
  for a buffered answer, or `responder.start(...)`, `responder.write(...)`*,
  `responder.end()` for a stream (`responder.hold(...)` for its last
  content, which then goes out with the end in one send).
* A client that goes away cancels the handler (each connection has one
  reader task that notices EOF at once); a write after that raises
  `ClientGone`.
"""
from __future__ import annotations

import errno
import math
import logging
import os
import re
import ssl
from dataclasses import dataclass
from typing import Awaitable, Callable

import socket as _socket

import trio

from busbar import http_in, sockio

log = logging.getLogger("busbar.server")

Headers = list[tuple[bytes, bytes]]
READ_SIZE = 65536
SERVER_HEADER = (b"server", b"busbar")
_REASONS = {s.value: s.phrase.encode() for s in __import__("http").HTTPStatus}
_REASONS[529] = b"Overloaded"
# every status line, built once
_STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, reason) for status, reason in _REASONS.items()}
_TAIL = b"server: busbar\r\n\r\n"
_TAIL_CLOSE = b"server: busbar\r\nconnection: close\r\n\r\n"


class ClientGone(Exception):
    """The client closed its connection before the response was complete."""


class AbortConnection(Exception):
    """Raised by a handler to drop the connection without (finishing) an answer
    (the simulated vendors use it to inject resets)."""


@dataclass(slots=True)
class HttpRequest:
    method: bytes
    path: bytes          # without the query string
    query: bytes
    headers: Headers     # lower-case names, values without surrounding whitespace (as h11 reads them)
    body: bytes
    client: str = ""
    keep_alive: bool = True
    http10: bool = False
    authenticated: bool = False     # the handler's head check already accepted its credentials


_UNSAFE_VALUE = re.compile(rb"[\x00\r\n]")


def _escape_unsafe(match: re.Match) -> bytes:
    return b"%%%02X" % match.group()[0]


def response_head(status: int, headers: Headers, close: bool = False) -> bytes:
    """Serialise a status line and headers.  A value that carries a line
    break or NUL (e.g. a client-chosen model echoed in x-busbar-pool) has
    those bytes percent-escaped: no value can add a header or a response."""
    line = _STATUS_LINES.get(status) or b"HTTP/1.1 %d \r\n" % status
    parts = [line]
    for name, value in headers:
        if _UNSAFE_VALUE.search(value):
            value = _UNSAFE_VALUE.sub(_escape_unsafe, value)
        parts += (name, b": ", value, b"\r\n")
    parts.append(_TAIL_CLOSE if close else _TAIL)
    return b"".join(parts)


class Responder:
    """Writes one response.  Responses are serialised here directly (a fixed, simple format: content-length or chunked), which
    halves the per-request HTTP cost (docs/adr/0002-http-stack.md)."""

    __slots__ = ("_stream", "_started", "_finished", "_gone", "_close", "_head_only", "_http10", "extra_headers",
                 "_held")

    def __init__(self, stream: trio.abc.Stream, close: bool = False, *, head_only: bool = False,
                 http10: bool = False):
        self._stream = stream
        self._started = False
        self._finished = False
        self._gone = False
        self._close = close      # the client asked to close after this response
        self._head_only = head_only   # a HEAD request: the head, never a body
        self._http10 = http10         # an HTTP/1.0 client: no chunked encoding (the close ends a stream)
        self.extra_headers: Headers = []   # added to whatever response goes out (e.g. a request id)
        self._held = b""     # a stream's last content, framed, going out with its end

    @property
    def started(self) -> bool:
        return self._started

    async def _write(self, data: bytes) -> None:
        try:
            await sockio.send_all(self._stream, data)   # one write, no extra scheduler round
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._gone = True
            raise ClientGone() from exc

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        """A complete buffered response."""
        self._started = self._finished = True
        head = response_head(status, headers + self.extra_headers + [(b"content-length", b"%d" % len(body))],
                             self._close)
        await self._write(head if self._head_only else head + body)

    async def send_truncated(self, status: int, headers: Headers, body: bytes, keep: int) -> None:
        """A buffered response whose body stops after `keep` bytes (the
        simulated vendors' mid-body reset; the caller then drops the socket)."""
        self._started = True
        head = response_head(status, headers + self.extra_headers + [(b"content-length", b"%d" % len(body))],
                             self._close)
        await self._write(head + body[:keep])

    async def start(self, status: int, headers: Headers, first: bytes = b"") -> None:
        """Begin a streamed (chunked) response; `first` (the content held
        until the commit) goes out in the same write as the head.  To an
        HTTP/1.0 client (or a HEAD) unframed, ended by closing the connection."""
        self._started = True
        if self._http10 or self._head_only:
            self._close = True
            head = response_head(status, headers + self.extra_headers, True)
            await self._write(head + first if first and not self._head_only else head)
            return
        head = response_head(status, headers + self.extra_headers + [(b"transfer-encoding", b"chunked")], self._close)
        await self._write(head + b"%x\r\n" % len(first) + first + b"\r\n" if first else head)

    def _frame(self, data: bytes) -> bytes:
        """A stream's piece as it goes on the wire: one HTTP chunk (to an
        HTTP/1.0 client, the bytes themselves)."""
        return data if self._http10 else b"%x\r\n" % len(data) + data + b"\r\n"

    async def write(self, data: bytes) -> None:
        if data and not self._head_only:
            framed = self._frame(data)
            if self._held:
                framed, self._held = self._held + framed, b""
            await self._write(framed)

    def hold(self, data: bytes) -> None:
        """A stream's content known to be its last (the upstream body ended
        in the read that carried it): it goes out with the next write or
        with `end`, so the end of a stream costs no send of its own.  No
        checkpoint: nothing waits on the client here."""
        if data and not self._head_only:
            self._held += self._frame(data)

    async def end(self, trailers: Headers | None = None) -> None:
        """End a streamed response; `trailers` go in the chunked trailer
        section (announced by a `trailer` header in the head)."""
        self._finished = True
        held, self._held = self._held, b""
        if not (self._http10 or self._head_only):
            await self._write(held + b"0\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in trailers or ()) + b"\r\n")
        elif held:
            await self._write(held)


class CapturedResponder(Responder):
    """A responder with no socket: what an in-process request was answered
    (the gateway calling one of its own pools, `Gateway.embed`)."""

    __slots__ = ("status", "headers", "body")

    def __init__(self):
        super().__init__(None)
        self.status = 0
        self.headers: Headers = []
        self.body = b""

    async def _write(self, data: bytes) -> None:
        raise AssertionError("a captured response is not serialised")

    async def send(self, status: int, headers: Headers, body: bytes) -> None:
        self._started = self._finished = True
        self.status, self.headers, self.body = status, headers, body

    async def send_truncated(self, status: int, headers: Headers, body: bytes, keep: int) -> None:
        await self.send(status, headers, body[:keep])

    async def start(self, status: int, headers: Headers, first: bytes = b"") -> None:
        self._started = True
        self.status, self.headers, self.body = status, headers, first

    async def write(self, data: bytes) -> None:
        self.body += data

    def hold(self, data: bytes) -> None:
        self.body += data

    async def end(self, trailers: Headers | None = None) -> None:
        self._finished = True


Handler = Callable[[HttpRequest, Responder], Awaitable[None]]
# an answer decided from the head alone (e.g. 401 before reading a body), or None to go on
HeadCheck = Callable[[HttpRequest], "tuple[int, Headers, bytes] | None"]

# accept(2) errors that mean "out of resources", not "this listener is broken"
ACCEPT_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))
ACCEPT_BURST = 256                  # connections taken from the backlog per wake-up, at most
ACCEPT_BACKOFF = (0.001, 0.1)       # seconds between accepts while out of fds: first, longest
FD_LOG_EVERY = 60.0                 # seconds between "out of fds" log lines while it lasts
SHED_IDLE_ON_EMFILE = 16            # idle keep-alives closed per EMFILE episode step
MAX_REFUSALS = 128                  # over-limit connections answered 503 at once; past it closed at once
REFUSAL_READ_SECONDS = 0.5          # how long a refused connection may take to show its request line
RETRY_AFTER_SECONDS = 1             # Retry-After on a shed request or connection


def default_max_connections() -> int:
    """80 % of the process's fd limit: the rest stays for upstream
    connections, files and the listener (server.max_client_connections)."""
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return 1024
    if soft == resource.RLIM_INFINITY:
        return 65536
    return max(1, int(soft * 0.8))


class HttpServer:
    def __init__(self, handler: Handler, *, max_body_bytes: int = 8 * 1024 * 1024,
                 header_timeout: float = 30.0, keepalive_timeout: float = 75.0,
                 on_error: Callable[[HttpRequest | None, int, str], tuple[int, Headers, bytes]] | None = None,
                 max_connections: int | None = None, max_requests: int | None = None,
                 check_head: HeadCheck | None = None, tls: ssl.SSLContext | None = None,
                 http_parser: str = http_in.DEFAULT):
        self.handler = handler
        self.max_body_bytes = max_body_bytes
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        # renders a server-level error (malformed HTTP, too large, timeout, overload)
        # in the protocol the path implies; plain JSON when unknown
        self.on_error = on_error or _plain_error
        # load shedding (docs/reliability.md): connections held open at once
        # (past it: idle keep-alives closed first, then 503 and close), and
        # requests served at once (past it: 503 + Retry-After, no queue)
        self.max_connections = max_connections or default_max_connections()
        self.max_requests = max_requests or 1 << 30
        self.check_head = check_head
        self.tls = tls               # an ssl.SSLContext: serve HTTPS on every listener
        self.parser = http_in.PARSERS[http_parser]     # the request parser class (ADR 0023)
        self.accepting = True
        self.reuse_port = False      # several worker processes share the port (busbar serve --workers N)
        self._accept_scope: trio.CancelScope | None = None
        self.active_connections = 0
        self.active_requests = 0
        self.shed_connections = 0    # refused at accept (over max_connections or out of fds)
        self.shed_requests = 0       # answered 503 over max_requests
        # keep-alive connections waiting for their next request, oldest first:
        # the first to close when connections or fds run short
        # (scope, idle since): `_expire_idle` closes those past keepalive_timeout
        self._idle: dict[int, tuple[trio.CancelScope, float]] = {}
        self._long = LongRequests()       # whose clients to watch (`_Reader.watch`)
        self._refusing = 0
        self._reserve_fd: int | None = None    # one fd kept free to answer 503 while out of fds
        self._fd_logged_at: float | None = None

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Accept and serve until cancelled.  `stop_accepting()` closes the
        listening sockets while connections already open keep being served."""
        if self.reuse_port:
            listeners = [await _reuse_port_listener(host, port)]
        else:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=1024)
        self._reserve_fd = _open_reserve()
        try:
            async with trio.open_nursery() as connections:
                connections.start_soon(self._expire_idle)
                connections.start_soon(self._long.run, lambda: self.accepting or self.active_connections)
                async with trio.open_nursery() as accepting:
                    self._accept_scope = accepting.cancel_scope
                    for listener in listeners:
                        accepting.start_soon(self._accept, listener, connections)
                    task_status.started([l.socket.getsockname() for l in listeners])
                for listener in listeners:
                    await listener.aclose()
        finally:
            if self._reserve_fd is not None:
                os.close(self._reserve_fd)
                self._reserve_fd = None

    def stop_accepting(self) -> None:
        self.accepting = False
        if self._accept_scope is not None:
            self._accept_scope.cancel()

    # ---- accepting, and shedding at the door ----------------------------
    async def _accept(self, listener: trio.SocketListener, connections: trio.Nursery) -> None:
        """Accept forever: at each wake-up, every connection already waiting
        (up to ACCEPT_BURST).  Over `max_connections`, an idle keep-alive makes
        room (closed), else the newcomer gets a quick 503 and is closed.  Out
        of fds (EMFILE), the loop backs off instead of spinning, closes idle
        keep-alives, answers the waiting connection 503 on a reserved fd, and
        logs one line (then at most one a minute while it lasts)."""
        backoff = ACCEPT_BACKOFF[0]
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                # accept fails at once while the fd table is full, whether or not
                # anyone is waiting: wait for a real newcomer (no spinning), then
                # make room (idle keep-alives) or shed it (503 on the reserved fd)
                await trio.lowlevel.wait_readable(listener.socket)
                if not self._out_of_fds(exc):
                    self._shed_on_reserve(listener)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, ACCEPT_BACKOFF[1])
                continue
            backoff = ACCEPT_BACKOFF[0]
            # Every connection already waiting is taken now, not one per
            # scheduler round: under load a round runs every busy
            # connection's step, so one accept per round left a burst of
            # newcomers queued in the backlog for seconds (ADR 0014).
            taken = 0
            while stream is not None:
                if not self._admit(stream, connections):
                    await trio.aclose_forcefully(stream)
                taken += 1
                stream = _accept_waiting(listener) if taken < ACCEPT_BURST else None

    def _admit(self, stream: trio.SocketStream, connections: trio.Nursery) -> bool:
        """Serve an accepted connection, or refuse it over `max_connections`
        (an idle keep-alive closes to make room first).  False: neither;
        the caller closes it."""
        if self.active_connections >= self.max_connections and not self.shed_idle(1):
            self.shed_connections += 1
            if self._refusing >= MAX_REFUSALS:
                return False
            connections.start_soon(self._refuse, stream)
            return True
        connections.start_soon(self._connection, stream)
        return True

    async def _expire_idle(self) -> None:
        """Close keep-alive connections idle past `keepalive_timeout`, checked
        a few times per timeout (at most once a second): the idle wait has
        no deadline of its own, so a request on a kept-alive connection moves
        no deadline at all (each move cost ~3 µs, ADR 0014)."""
        tick = min(1.0, self.keepalive_timeout / 4)
        while self.accepting or self.active_connections:     # after stop_accepting, until the last one ends
            await trio.sleep(tick)
            expired = trio.current_time() - self.keepalive_timeout
            idle = self._idle
            while idle:
                key = next(iter(idle))       # oldest first: insertion order is idle order
                scope, since = idle[key]
                if since > expired:
                    break
                del idle[key]
                scope.cancel()

    def shed_idle(self, count: int) -> int:
        """Close up to `count` keep-alive connections that wait for a next
        request (oldest first); how many were closed."""
        closed = 0
        while closed < count and self._idle:
            _, (scope, _since) = _pop_oldest(self._idle)
            scope.cancel()
            closed += 1
        return closed

    def _out_of_fds(self, exc: OSError) -> int:
        """Log (at most once a minute) and close idle keep-alives; how many
        were closed."""
        now = trio.current_time()
        closed = self.shed_idle(SHED_IDLE_ON_EMFILE)
        if self._fd_logged_at is None or now - self._fd_logged_at >= FD_LOG_EVERY:
            self._fd_logged_at = now
            log.error("accept: out of file descriptors (%s: %s; %d connections open, limit %d): closing idle "
                      "keep-alives and answering new connections 503 until fds free up (logged once a minute)",
                      errno.errorcode.get(exc.errno, exc.errno), os.strerror(exc.errno), self.active_connections,
                      self.max_connections)
        return closed

    def _shed_on_reserve(self, listener: trio.SocketListener) -> None:
        """Give the reserved fd back, accept the waiting connection on it,
        answer 503 and close it, then reserve the fd again."""
        if self._reserve_fd is None:
            return
        os.close(self._reserve_fd)
        self._reserve_fd = None
        try:
            try:
                sock, _ = _stdlib_listener(listener).accept()
            except OSError:
                return
            self.shed_connections += 1
            with sock:
                sock.setblocking(False)
                try:
                    sock.recv(65536)         # what already arrived: closing over unread bytes would reset
                except OSError:
                    pass
                try:
                    sock.send(_plain_overload(close=True))
                    sock.shutdown(_socket.SHUT_WR)
                except OSError:
                    pass
        finally:
            self._reserve_fd = _open_reserve()

    async def _refuse(self, stream: trio.SocketStream) -> None:
        """An over-limit connection: read its request line (briefly) so the
        503 is in its protocol, answer with Retry-After, close."""
        self._refusing += 1
        try:
            if self.tls is not None:
                return          # no handshake for a refused connection: a plaintext answer would be noise
            head = b""
            with trio.move_on_after(REFUSAL_READ_SECONDS):
                while b"\r\n" not in head and len(head) < 8192:
                    data = await stream.receive_some(8192)
                    if not data:
                        break
                    head += data
            path = head.split(b" ", 2)[1].partition(b"?")[0] if head.count(b" ") >= 2 else b""
            request = HttpRequest(b"", path, b"", [], b"") if path else None
            await self._send_error(stream, request, 503, "The gateway is at its connection limit; retry shortly.",
                                   [(b"retry-after", b"%d" % RETRY_AFTER_SECONDS)], timeout=1)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._refusing -= 1
            await trio.aclose_forcefully(stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.active_connections += 1
        try:
            sock = stream.socket
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                peer = sock.getpeername()
                client = f"{peer[0]}:{peer[1]}"
            except OSError:
                client = ""
            if self.tls is not None:
                stream = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
                if not await self._handshake(stream):
                    return
            async with trio.open_nursery() as nursery:
                reader = _Reader(stream, READ_AHEAD_LIMIT + self.max_body_bytes, self._long)
                nursery.start_soon(reader.run_watcher)
                await self._serve_connection(stream, reader, client)
                nursery.cancel_scope.cancel()
        except Exception:  # never let one connection take the server down
            log.exception("connection handler crashed")
        finally:
            self.active_connections -= 1
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _handshake(self, stream: trio.SSLStream) -> bool:
        """The TLS handshake of a new connection, within `header_timeout`
        (one that never completes is closed then).  Plain HTTP sent to the
        TLS port gets a plaintext 400 saying to use https, then the close;
        any other failed handshake is closed (nothing to say in HTTP)."""
        with trio.move_on_after(self.header_timeout):
            try:
                await stream.do_handshake()
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                cause = exc.__cause__
                if isinstance(cause, ssl.SSLError) and cause.reason == "HTTP_REQUEST":
                    await self._plain_http_on_tls(stream.transport_stream)
        return False

    async def _plain_http_on_tls(self, transport: trio.abc.Stream) -> None:
        data = _closing_answer(self.on_error(
            None, 400, "This port serves HTTPS (server.tls); the request was sent as plain HTTP: use https://."))
        try:
            with trio.move_on_after(2):
                await transport.send_all(data)
                await transport.send_eof()
                # the rest of the request is still unread: closing over it would reset the answer away
                drained = 0
                while drained < 65536:
                    piece = await transport.receive_some(65536)
                    if not piece:
                        break
                    drained += len(piece)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def _serve_connection(self, stream: trio.SocketStream, reader: "_Reader", client: str) -> None:
        """Serve the connection's requests one after another.  One cancel
        scope serves its whole life: while a request is read, its deadline
        is the read timeout; while one is handled it has none, and the
        reader cancels it if the client goes away.  Either ends the
        connection, so a scope per phase (two per request, ~20 µs) was not
        needed (ADR 0014)."""
        scope = trio.CancelScope(deadline=trio.current_time() + self.header_timeout)   # the first request's
        turn = _Turn()
        with scope:
            await self._serve_requests(stream, reader, client, scope, turn)
        if scope.cancelled_caught and turn.reading and not (turn.served and turn.parser.idle):
            # too slow sending a request (an idle keep-alive that timed out or was shed closes quietly)
            await self._send_error(stream, None, 408, "Timed out reading the request.")

    async def _serve_requests(self, stream: trio.SocketStream, reader: "_Reader", client: str,
                              scope: trio.CancelScope, turn: "_Turn") -> None:
        while self.accepting:
            # a fresh parser per request; leftover bytes (pipelining) carry over
            conn = turn.parser = self.parser(http_in.MAX_HEAD_BYTES)
            idle = turn.served and not reader.buffered
            # A keep-alive connection may wait `keepalive_timeout` for its next
            # request (`_expire_idle`; it is also the first closed when
            # connections or fds run short); a new connection gets
            # `header_timeout` for its first request (the scope's deadline), and
            # once a request's first bytes arrived, all of it (head and body)
            # must arrive within `header_timeout` (`_read_request`).
            turn.reading = True
            if idle:
                self._idle[id(scope)] = (scope, trio.current_time())
            try:
                request = await self._read_request(conn, reader, client, scope)
            except (_BodyTooLarge, _AnsweredEarly, _Http2Preface, http_in.ParseError) as refused:
                turn.reading = False
                scope.deadline = math.inf     # the answer has its own bounds
                await self._refuse_request(stream, reader, conn, refused)
                return
            finally:
                if idle:
                    self._idle.pop(id(scope), None)
            turn.reading = False
            if request is None:
                return  # clean EOF between requests
            if scope.deadline != math.inf:     # a read that had to wait: handling has no read timeout
                scope.deadline = math.inf
            turn.served += 1
            reader.unread(conn.trailing)
            close = not request.keep_alive or not self.accepting
            responder = Responder(stream, close, head_only=request.method == b"HEAD",
                                  http10=request.http10)
            if self.active_requests >= self.max_requests:
                # shed, never queue: the client's protocol, Retry-After, the connection kept
                self.shed_requests += 1
                status, headers, body = self.on_error(
                    request, 503, "The gateway is at its concurrency limit; retry shortly.")
                try:
                    await responder.send(status, headers + [(b"retry-after", b"%d" % RETRY_AFTER_SECONDS)], body)
                except ClientGone:
                    return
                if close:
                    return
                continue
            self.active_requests += 1
            try:
                # a client that goes away cancels the scope, and with it
                # everything the handler started (its upstream call)
                reader.watch(scope)
                await self.handler(request, responder)
            except (ClientGone, AbortConnection):
                return
            finally:
                reader.unwatch()
                self.active_requests -= 1
            if responder._gone or not responder._finished or close:
                return

    async def _refuse_request(self, stream, reader: "_Reader", conn, refused: Exception) -> None:
        """The answer to a request refused while it was read; the connection ends after it."""
        if isinstance(refused, _BodyTooLarge):
            await self._send_error(stream, refused.request, 413,
                                   f"Request body exceeds the {self.max_body_bytes} byte limit.")
            await _drain(reader)
        elif isinstance(refused, _AnsweredEarly):
            # decided from the head (e.g. 401): the body is never read, only drained
            await self._send_raw(stream, refused.answer)
            await _drain(reader)
        elif isinstance(refused, _Http2Preface):
            await _refuse_http2(stream)
        elif not conn.idle:
            await self._send_error(stream, None, refused.status, f"Malformed HTTP request: {refused}")

    async def _read_request(self, conn, reader: "_Reader", client: str,
                            scope: trio.CancelScope) -> HttpRequest | None:
        head = None
        body_parts: list[bytes] = []
        size = 0
        whole_by = None       # once its first bytes came: when all of the request must be in
        while True:
            event = conn.next_event()
            if event is http_in.NEED_DATA:
                if whole_by is not None and whole_by < scope.deadline:
                    scope.deadline = whole_by       # waiting for the rest (most requests come whole)
                data = await reader.read()
                if data and whole_by is None:
                    whole_by = trio.current_time() + self.header_timeout
                    self._idle.pop(id(scope), None)     # a request is arriving: no longer sheddable
                if data and head is None and not body_parts:
                    # "PRI" is where HTTP/2 and HTTP/1 part: a shorter prefix ("P",
                    # "PR") may still be POST/PUT/PATCH, so it goes to the h1 parser
                    if conn.idle and len(data) >= 3 and data.startswith(H2_PREFACE[:len(data)]):
                        raise _Http2Preface()
                conn.receive_data(data)
                continue
            if type(event) is bytes:
                size += len(event)
                if size > self.max_body_bytes:
                    raise _BodyTooLarge(head)
                body_parts.append(event)
                continue
            if event is http_in.END:
                head.body = b"".join(body_parts) if len(body_parts) != 1 else body_parts[0]
                return head
            if event is http_in.CLOSED:
                return None
            target = event.target
            if target[:7].lower() == b"http://" or target[:8].lower() == b"https://":
                # absolute-form (RFC 9112 3.2.2): the path is what routes
                target = b"/" + target.split(b"/", 3)[3] if target.count(b"/") >= 3 else b"/"
            path, _, query = target.partition(b"?")
            head = HttpRequest(event.method, path, query, event.headers, b"", client)
            head.keep_alive = http_in.keep_alive(event)
            head.http10 = event.http_version == b"1.0"
            te = expect = False
            length = None
            for name, value in event.headers:
                if name == b"content-length":
                    length = value
                    if int(value) > self.max_body_bytes:
                        raise _BodyTooLarge(head)
                elif name == b"transfer-encoding":
                    te = True
                elif name == b"expect" and value.lower() == b"100-continue":
                    expect = True
            if te and length is not None:
                head.keep_alive = False    # RFC 9112 6.1: a smuggling attempt; serve this one, then close
            if self.check_head is not None:
                answer = self.check_head(head)
                if answer is not None:
                    raise _AnsweredEarly(answer)
            if expect and not head.http10:
                try:
                    await reader.stream.send_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None

    async def _send_error(self, stream, request, status, message, extra: Headers = (), timeout: float = 5) -> None:
        status, headers, body = self.on_error(request, status, message)
        await self._send_raw(stream, (status, headers + list(extra), body), timeout)

    async def _send_raw(self, stream, answer: tuple[int, Headers, bytes], timeout: float = 5) -> None:
        """A whole answer that ends the connection."""
        data = _closing_answer(answer)
        try:
            with trio.move_on_after(timeout):
                await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass


def _closing_answer(answer: tuple[int, Headers, bytes]) -> bytes:
    """A whole answer's bytes, content-length framed, that ends the connection."""
    status, headers, body = answer
    return response_head(status, headers + [(b"content-length", b"%d" % len(body))], close=True) + body


def _stdlib_listener(listener: trio.SocketListener) -> _socket.socket:
    """The listening socket itself, for accepts that must not wait
    (trio offers only the awaited one)."""
    return listener.socket._sock


def _accept_waiting(listener: trio.SocketListener) -> trio.SocketStream | None:
    """A connection already in the backlog, taken without waiting; None
    when none is, or on any error (the awaited accept meets a lasting
    one again and handles it; a connection reset before it was taken is
    simply gone)."""
    try:
        sock, _ = _stdlib_listener(listener).accept()
    except OSError:
        return None
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))


async def _reuse_port_listener(host: str, port: int) -> trio.SocketListener:
    import socket as stdlib_socket
    sock = trio.socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEADDR, 1)
    sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_REUSEPORT, 1)
    await sock.bind((host, port))
    sock.listen(1024)
    return trio.SocketListener(sock)


READ_AHEAD_LIMIT = 1024 * 1024
WATCH_AFTER = 0.05      # a request handled across a whole sweep of this has its client watched (ADR 0014)


class LongRequests:
    """The requests being handled, swept every WATCH_AFTER: one still being
    handled at the sweep after the one it started before has its client
    watched (50-100 ms after it started).  A request costs a table entry and
    its removal, no deadline moved (a timer per connection moved twice per
    request cost ~8 % of a small request, ADR 0014); the sweep ticks 20 times
    a second whatever the load."""

    __slots__ = ("handling", "sweeps")

    def __init__(self):
        self.handling: dict[_Reader, int] = {}     # each request's reader: the sweep it started in
        self.sweeps = 0

    def sweep(self) -> None:
        handling = self.handling
        for reader in [r for r, since in handling.items() if since < self.sweeps]:
            del handling[reader]
            reader.wake_watcher()
        self.sweeps += 1

    async def run(self, serving=lambda: True) -> None:
        """Sweep every WATCH_AFTER while `serving()` (the server: until it
        stops accepting and its last connection ends)."""
        while serving():
            await trio.sleep(WATCH_AFTER)
            self.sweep()


class _Reader:
    """A connection's bytes, and the watch that notices its client leave.

    The connection task reads its own socket (no hand-off per read).  While
    a request is handled nobody needs the socket, so `watch` only enters it
    in the server's `LongRequests`: a request that ends within WATCH_AFTER
    (most of them) wakes nobody.  One that outlasts it wakes the
    connection's watcher task, which reads on the request's behalf, so a
    client that goes away (EOF, reset) cancels the request's scope, and its
    upstream call with it, at once.  What the watcher reads (a pipelined
    request) is kept for the connection, bounded by `limit`: past it the
    watcher stops reading until the request ends.  It reads through the
    stream, not a peek at the socket, so TLS works the same (a peek cannot
    tell a close_notify from a pipelined request).
    """

    __slots__ = ("stream", "limit", "long", "buffer", "eof", "request_scope", "_timer", "_watching", "_released")

    def __init__(self, stream: trio.abc.Stream, limit: int, long: LongRequests):
        self.stream = stream
        self.limit = limit
        self.long = long
        self.buffer = bytearray()
        self.eof = False
        self.request_scope: trio.CancelScope | None = None
        self._timer = trio.CancelScope()         # the watcher sleeps in it; the sweep cancels it
        self._watching: trio.CancelScope | None = None   # while the watcher reads for a request
        self._released: trio.Event | None = None          # set when the watcher gives the socket back

    @property
    def buffered(self) -> bool:
        return bool(self.buffer)

    def watch(self, scope: trio.CancelScope) -> None:
        """A request is being handled: if it outlasts WATCH_AFTER, watch its
        client, cancelling `scope` if it leaves."""
        self.request_scope = scope
        self.long.handling[self] = self.long.sweeps

    def wake_watcher(self) -> None:
        self._timer.cancel()

    def unwatch(self) -> None:
        self.request_scope = None
        self.long.handling.pop(self, None)
        if self._watching is not None:
            self._watching.cancel()

    async def run_watcher(self) -> None:
        while not self.eof:
            with self._timer:
                await trio.sleep_forever()
            self._timer = trio.CancelScope()     # for the next long request
            if self.request_scope is None:
                continue                         # the request ended as the sweep woke it
            self._released = trio.Event()
            try:
                with trio.CancelScope() as self._watching:
                    while len(self.buffer) < self.limit:
                        data = await self._receive()
                        if not data:
                            if self.request_scope is not None:
                                self.request_scope.cancel()   # the client left: its request goes with it
                            break
                        self.buffer += data
                    else:
                        await trio.sleep_forever()    # read-ahead is full: until the request ends
            finally:
                self._watching = None
                self._released.set()
                self._released = None

    async def read(self) -> bytes:
        """Bytes from the client, waiting for some; b"" once it closed."""
        if self._released is not None:
            await self._released.wait()          # the watcher still holds the socket
        if self.buffer:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        if self.eof:
            return b""
        return await self._receive()

    async def _receive(self) -> bytes:
        """One read of the stream; b"" (and `eof`) once the client closed or broke it."""
        try:
            data = await sockio.receive_some(self.stream, READ_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            data = b""
        if not data:
            self.eof = True
        return data

    def unread(self, data: bytes) -> None:
        """Give back bytes the parser received but did not use (the start of
        a pipelined next request)."""
        if data:
            self.buffer[:0] = data


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DRAIN_BYTES = 4 * 1024 * 1024
DRAIN_SECONDS = 2.0


class _Turn:
    """Where a connection is between its requests (for `_serve_connection`
    to tell a read timeout from the rest once its scope was cancelled)."""

    __slots__ = ("parser", "served", "reading")

    def __init__(self):
        self.parser = None
        self.served = 0
        self.reading = False


class _Http2Preface(Exception):
    """A client opened with HTTP/2 prior knowledge (h2c)."""


async def _refuse_http2(stream) -> None:
    """Answer an h2c preface in HTTP/2 itself: an empty SETTINGS frame, then
    GOAWAY with HTTP_1_1_REQUIRED (0xd), so the client says why it failed."""
    debug = b"busbar speaks HTTP/1.1: use http/1.1 (or TLS with ALPN http/1.1)"
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    payload = b"\x00\x00\x00\x00" + (0xD).to_bytes(4, "big") + debug
    goaway = len(payload).to_bytes(3, "big") + b"\x07\x00\x00\x00\x00\x00" + payload
    try:
        with trio.move_on_after(5):
            await stream.send_all(settings + goaway)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _drain(reader: "_Reader") -> None:
    """After a 413: read and drop what the client is still sending (bounded
    in bytes and time), so even a sender that writes its whole body before
    reading gets the answer instead of a reset."""
    drained = 0
    with trio.move_on_after(DRAIN_SECONDS):
        while drained < DRAIN_BYTES:
            data = await reader.read()
            if not data:
                return
            drained += len(data)


class _BodyTooLarge(Exception):
    def __init__(self, request):
        self.request = request


class _AnsweredEarly(Exception):
    """`check_head` answered the request from its head alone."""

    def __init__(self, answer):
        self.answer = answer


def _pop_oldest(idle: dict):
    key = next(iter(idle))
    return key, idle.pop(key)


def _open_reserve() -> int | None:
    try:
        return os.open(os.devnull, os.O_RDONLY)
    except OSError:
        return None


def _plain_overload(close: bool) -> bytes:
    body = b'{"error":{"message":"The gateway is out of connections; retry shortly.","type":"overloaded"}}'
    return response_head(503, [(b"content-type", b"application/json"), (b"retry-after", b"%d" % RETRY_AFTER_SECONDS),
                               (b"content-length", b"%d" % len(body))], close) + body


def _plain_error(request, status, message):
    import orjson
    return status, [(b"content-type", b"application/json")], orjson.dumps({"error": {"message": message}})
