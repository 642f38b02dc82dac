"""Upstream HTTP client: pooled keep-alive HTTP/1.1 connections on trio.

Why not httpx's AsyncClient on the hot path: measured here, a minimal proxy
caps at ~1,350 RPS through httpx/httpcore on trio and ~6,000 with h11 on
both ends (docs/adr/0002-http-stack.md).  This module is that lean client,
framing HTTP/1.1 with the I/O-free `busbar.http11`:
one `ConnectionPool` per upstream origin, idle connections reused LIFO,
responses streamed as they arrive, every task owned by the caller (no
background reader tasks: bytes are read only when the caller asks).
The contract is httpx's transport shape (request in, streamed response out),
so an `httpx.AsyncBaseTransport` wrapper is a thin layer if one is needed.
"""
from __future__ import annotations

import math
import select
import socket
import ssl
from dataclasses import dataclass, field
from typing import AsyncIterator
from urllib.parse import urlsplit

import trio

from busbar import sockio
from busbar.http11 import BodyDecoder, ProtocolError, parse_head, serialize_request
from busbar.tls import client_context, describe_handshake_error

Headers = list[tuple[bytes, bytes]]
READ_SIZE = 65536


class UpstreamError(Exception):
    """A network-level failure talking to the upstream (connect refused,
    reset, timeout, malformed HTTP).  `before_response` is True when nothing
    of the response had arrived, so the attempt can fail over."""

    def __init__(self, message: str, *, before_response: bool = True, timeout: bool = False):
        super().__init__(message)
        self.before_response = before_response
        self.timeout = timeout


class SlotTimeout(Exception):
    """No connection slot (the provider's `max_connections`) freed up within
    `slot_wait`: the member is saturated, not failing; the caller tries
    another member without blaming this one."""

    def __init__(self, waited: float):
        super().__init__(f"no upstream connection slot within {waited:g}s (provider max_connections reached)")
        self.waited = waited


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int
    base_path: str          # path prefix of the configured base_url, no trailing slash
    host_header: bytes

    @classmethod
    def from_url(cls, url: str) -> "Origin":
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme in {url!r}")
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname or ""
        default = (scheme == "https" and port == 443) or (scheme == "http" and port == 80)
        host_header = (host if default else f"{host}:{port}").encode("idna")
        return cls(scheme, host, port, parts.path.rstrip("/"), host_header)


@dataclass(frozen=True, slots=True)
class Proxy:
    """An HTTP egress proxy (`http://[user:password@]host:port`): an https
    upstream is reached through a CONNECT tunnel (TLS end to end, the proxy
    sees only the host and port), a plain http one by absolute-form requests.
    `authorization` is the Proxy-Authorization value (Basic) when the URL has
    credentials."""
    host: str
    port: int
    authorization: bytes | None = None

    @classmethod
    def from_url(cls, url: str) -> "Proxy":
        import base64
        from urllib.parse import unquote
        parts = urlsplit(url)
        if parts.scheme.lower() != "http":
            raise ValueError(f"the proxy must be an http:// URL (TLS to the proxy is not supported), not {url!r}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise ValueError("the proxy URL needs a host and a port (http://host:port)")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = b"Basic " + base64.b64encode(pair)
        return cls(parts.hostname, port, auth)

    def __str__(self) -> str:            # never the credentials
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Transport:
    """How a provider's connections are made beyond its origin: the CA
    bundle its TLS trusts (None: the system store) and the egress proxy
    (None: connect directly).  Part of the pool's key, so two providers on
    one origin with different trust or proxies never share a connection; the
    context itself is not (a reload that reads the same bundle path keeps the
    pool and its connections)."""
    ca_bundle: str | None = None
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False, hash=False)
    proxy: Proxy | None = None


DIRECT = Transport()


class _Connection:
    __slots__ = ("stream", "reused", "idle_since", "bound")

    def __init__(self, stream: trio.abc.Stream, bounds: "ReadBounds"):
        self.stream = stream
        self.reused = False
        self.idle_since = 0.0
        socket_ = stream.socket if isinstance(stream, trio.SocketStream) else stream.transport_stream.socket
        # past a wait's bound the sweeper closes the socket under it: a
        # connection whose answer is late can carry nothing else
        self.bound = ReadBound(bounds, socket_.close)

    def dropped(self) -> bool:
        """True when the idle connection can no longer carry a request: the
        server closed it (EOF is readable) or sent something unasked."""
        stream = self.stream
        sock = stream.socket if isinstance(stream, trio.SocketStream) else stream.transport_stream.socket
        try:
            return bool(select.select([sock.fileno()], [], [], 0)[0])
        except (OSError, ValueError):
            return True


class UpstreamResponse:
    """Status and headers of an upstream answer; the body is read on demand
    with `aiter_bytes()` / `read()`.  Always `aclose()` it (the gateway does so
    in a finally): a fully read keep-alive response returns its connection to
    the pool, anything else closes it."""

    __slots__ = ("status", "headers", "_pool", "_conn", "_body", "_keep_alive", "_first")

    def __init__(self, status: int, headers: Headers, pool: "ConnectionPool", conn: _Connection,
                 body: BodyDecoder, keep_alive: bool, first: bytes):
        self.status = status
        self.headers = headers
        self._pool = pool
        self._conn = conn
        self._body = body
        self._keep_alive = keep_alive
        self._first = first           # body bytes that arrived with the head

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def read_bound(self) -> ReadBound:
        """The bound of this answer's body reads (its connection's)."""
        return self._conn.bound

    @property
    def ended(self) -> bool:
        """The whole body has been read (a stream relay's last content is known)."""
        return self._body.done

    async def aiter_reads(self) -> AsyncIterator[list[bytes]]:
        """The body as it arrives, one list per network read: the pieces (the
        chunks of a chunked body) that read carried, never an empty list.  A
        stream relay decides per piece (its commit point does not depend on
        how the network cut the bytes) and does its per-read work (the read
        deadline, the client write) once per read."""
        body = self._body
        try:
            if self._first:
                first, self._first = self._first, b""
                pieces = body.feed(first)
                if pieces:
                    yield pieces
            while not body.done:
                try:
                    data = await sockio.receive_some_yielding(self._conn.stream, READ_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                    raise UpstreamError(f"upstream connection lost: {exc}", before_response=False) from None
                if not data:
                    body.eof()
                    return
                pieces = body.feed(data)
                if pieces:
                    yield pieces
        except ProtocolError as exc:
            raise UpstreamError(f"malformed upstream response: {exc}", before_response=False) from None

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        async for pieces in self.aiter_reads():
            for piece in pieces:
                yield piece

    def read_now(self, limit: int = 64 * 1024 * 1024) -> bytes | None:
        """The whole body without waiting when it came with the head (a
        content-length answer, the common case for a buffered JSON answer),
        so the caller needs no read timeout; else None (then `read()`)."""
        body = self._body
        if body.framing != "length" or len(self._first) < body.remaining:
            return None
        if body.remaining > limit:
            raise UpstreamError(f"upstream response exceeds {limit} bytes", before_response=False)
        first, self._first = self._first, b""
        return b"".join(body.feed(first))

    async def read(self, limit: int = 64 * 1024 * 1024) -> bytes:
        parts = []
        size = 0
        async for chunk in self.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise UpstreamError(f"upstream response exceeds {limit} bytes", before_response=False)
            parts.append(chunk)
        return b"".join(parts)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._body.done and self._keep_alive and not self._body.leftover and self._body.framing != "close":
            self._pool._release(conn)
        else:
            await self._pool._discard(conn)


class ConnectionPool:
    """Keep-alive connections to one origin."""

    def __init__(self, origin: Origin, *, max_connections: int = 256, ssl_context: ssl.SSLContext | None = None,
                 keepalive_expiry: float = 30.0, transport: Transport = DIRECT, bounds: "ReadBounds | None" = None):
        self.origin = origin
        self.bounds = bounds if bounds is not None else ReadBounds()   # run its sweeper: it times out every wait
        self.ca_bundle = transport.ca_bundle
        self.proxy = transport.proxy
        ssl_context = ssl_context or transport.ssl_context
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._open = 0
        self._slots = trio.Semaphore(max_connections)
        self._ssl = ssl_context
        self.keepalive_expiry = keepalive_expiry
        self._close_later: list[_Connection] = []

    async def _connect(self, timeout: float) -> _Connection:
        proxy = self.proxy
        try:
            with trio.fail_after(timeout):
                if proxy is None:
                    stream = await trio.open_tcp_stream(self.origin.host, self.origin.port)
                else:
                    try:
                        stream = await trio.open_tcp_stream(proxy.host, proxy.port)
                    except OSError as exc:
                        raise UpstreamError(f"cannot connect to the proxy {proxy}: {exc.strerror or exc}") from None
                stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if proxy is not None and self.origin.scheme == "https":
                    await self._tunnel(stream, proxy)
                if self.origin.scheme == "https":
                    stream = trio.SSLStream(stream, self._ssl or client_context(), server_hostname=self.origin.host,
                                            https_compatible=True)
                    try:
                        await stream.do_handshake()
                    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                        await trio.aclose_forcefully(stream)
                        raise _HandshakeFailed(describe_handshake_error(exc)) from None
        except trio.TooSlowError:
            via = f" through the proxy {proxy}" if proxy is not None else ""
            raise UpstreamError(f"connect to {self.origin.host}:{self.origin.port}{via} timed out",
                                timeout=True) from None
        except _HandshakeFailed as exc:
            trust = f"the CA bundle {self.ca_bundle!r}" if self.ca_bundle else "the system trust store"
            hint = f" (checked against {trust}; a private CA goes in the provider's ca_bundle)" \
                if "certificate verify failed" in str(exc) else ""
            raise UpstreamError(f"TLS handshake with {self.origin.host}:{self.origin.port} failed: {exc}{hint}") from None
        except OSError as exc:
            raise UpstreamError(f"cannot connect to {self.origin.host}:{self.origin.port}: {exc.strerror or exc}") from None
        return _Connection(stream, self.bounds)

    async def _tunnel(self, stream: trio.SocketStream, proxy: Proxy) -> None:
        """CONNECT host:port through the proxy; any answer but 2xx fails the
        attempt (a transport fault: the request fails over)."""
        authority = f"{self.origin.host}:{self.origin.port}".encode("idna")
        head = b"CONNECT " + authority + b" HTTP/1.1\r\nhost: " + authority + b"\r\n"
        if proxy.authorization is not None:
            head += b"proxy-authorization: " + proxy.authorization + b"\r\n"
        buf = b""
        try:
            await stream.send_all(head + b"\r\n")
            while True:
                chunk = await stream.receive_some(READ_SIZE)
                if not chunk:
                    raise ProtocolError("the proxy closed the connection")
                buf += chunk
                parsed = parse_head(buf, b"HEAD")      # a CONNECT answer's body is the tunnel, never framed
                if parsed is not None:
                    break
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError) as exc:
            await trio.aclose_forcefully(stream)
            raise UpstreamError(f"CONNECT to {self.origin.host}:{self.origin.port} through the proxy {proxy} "
                                f"failed: {exc}") from None
        answer, used = parsed
        if not 200 <= answer.status < 300 or buf[used:]:
            await trio.aclose_forcefully(stream)
            reason = buf.split(b"\r\n", 1)[0].decode("latin-1")[13:80] or str(answer.status)
            raise UpstreamError(f"the proxy {proxy} refused CONNECT to {self.origin.host}:{self.origin.port}: "
                                f"{answer.status} {reason}".rstrip())

    def _release(self, conn: _Connection) -> None:
        conn.reused = True
        conn.idle_since = trio.current_time()
        self._idle.append(conn)
        self._slots.release()

    def _take_idle(self) -> _Connection | None:
        """The most recently used idle connection that is still good; ones
        the server closed, or idle past `keepalive_expiry`, are dropped here
        (without blaming the upstream: closing idle connections is its right)."""
        expired = trio.current_time() - self.keepalive_expiry
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_since >= expired and not conn.dropped():
                return conn
            self._open -= 1
            self._close_later.append(conn)
        return None

    async def _discard(self, conn: _Connection) -> None:
        self._open -= 1
        self._slots.release()
        with trio.CancelScope(shield=True):
            try:
                await trio.aclose_forcefully(conn.stream)
            except Exception:
                pass

    async def request(self, method: bytes, target: bytes, headers: Headers, body: bytes, *,
                      connect_timeout: float = 10.0, response_timeout: float = 600.0,
                      slot_wait: float | None = None) -> UpstreamResponse:
        """Send one request and return once the response head arrived.

        Waits at most `slot_wait` seconds for a connection slot, then raises
        `SlotTimeout` (None: as long as it takes).  Sending the request and
        receiving the response head share `response_timeout`, so an upstream
        that stops reading our body is as bounded as one that never answers.
        A reused idle connection the server had already closed is detected
        (nothing of the response arrived) and the request is resent once on
        a fresh connection; any other failure raises `UpstreamError`.
        """
        if not self.bounds.running:
            raise RuntimeError("ReadBounds.run is not running: upstream calls would have no timeout")
        # built before taking a slot: an unsafe request (UnsafeRequest) is
        # refused here and never reaches a connection
        data = serialize_request(method, target, self.origin.host_header, headers, body)
        if self.proxy is not None and self.origin.scheme == "http":
            data = self._absolute_form(method, data)
        try:
            self._slots.acquire_nowait()          # the common case: a slot is free, no wait
        except trio.WouldBlock:
            with trio.move_on_after(float("inf") if slot_wait is None else slot_wait) as waiting:
                await self._slots.acquire()
            if waiting.cancelled_caught:
                raise SlotTimeout(slot_wait) from None
        try:
            for attempt in range(2):
                # a retry after a stale connection always takes a fresh one
                conn = self._take_idle() if attempt == 0 else None
                if self._close_later:
                    await self._close_dropped()
                if conn is None:
                    conn = await self._connect(connect_timeout)
                    self._open += 1
                try:
                    return await self._exchange(conn, method, data, response_timeout)
                except _StaleConnection:
                    # closed by the server between our check and our send
                    self._open -= 1
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(conn.stream)
                    continue
                except BaseException:
                    self._open -= 1
                    with trio.CancelScope(shield=True):
                        await trio.aclose_forcefully(conn.stream)
                    raise
            raise UpstreamError("upstream closed the connection before responding")
        except BaseException:
            self._slots.release()
            raise

    def _absolute_form(self, method: bytes, data: bytes) -> bytes:
        """A plain-http request for the proxy: the target in absolute form
        (`POST http://host:port/path`), with the proxy's credentials."""
        start = len(method) + 1              # serialize_request began with "METHOD /target"
        auth = b"" if self.proxy.authorization is None else b"proxy-authorization: " + self.proxy.authorization + b"\r\n"
        line_end = data.index(b"\r\n") + 2
        return (data[:start] + b"http://" + self.origin.host_header + data[start:line_end] + auth + data[line_end:])

    async def _exchange(self, conn: _Connection, method: bytes, data: bytes, response_timeout) -> UpstreamResponse:
        # Sending the request and waiting for the head share `response_timeout`,
        # enforced by the connection's ReadBound (the sweeper closes it past
        # the bound) rather than by a cancel scope per request (entering one
        # cost ~10 % of a small request's instructions, ADR 0014).
        buf = b""
        sent = False
        bound = conn.bound
        with bound:
            bound.arm(trio.current_time() + response_timeout)
            try:
                await sockio.send_all(conn.stream, data)
                sent = True
                while True:
                    chunk = await sockio.receive_some(conn.stream, READ_SIZE)
                    if not chunk:
                        raise ProtocolError("connection closed before a response")
                    buf += chunk
                    parsed = parse_head(buf, method)
                    if parsed is None:
                        continue
                    head, used = parsed
                    if head.status < 200:        # 100 Continue and friends: skip
                        buf = buf[used:]
                        continue
                    return UpstreamResponse(head.status, head.headers, self, conn, BodyDecoder(head),
                                            head.keep_alive, buf[used:])
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError, ProtocolError) as exc:
                if bound.expired:
                    raise UpstreamError("upstream did not answer in time" if sent else
                                        "upstream stopped reading the request (send timed out)",
                                        timeout=True) from None
                if conn.reused and not buf:
                    raise _StaleConnection() from None
                raise UpstreamError(f"upstream connection failed: {exc}") from None
            finally:
                bound.until = math.inf

    async def _close_dropped(self) -> None:
        dropped, self._close_later = self._close_later, []
        with trio.CancelScope(shield=True):
            for conn in dropped:
                await trio.aclose_forcefully(conn.stream)

    async def aclose(self) -> None:
        await self._close_dropped()
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(conn.stream)


class _StaleConnection(Exception):
    pass


class _HandshakeFailed(Exception):
    pass


class ReadTimeout(Exception):
    """A bounded wait on an upstream connection passed its bound (the sweeper
    closed the connection under it); `with bound:` ends at it, as a cancel
    scope ends at its own deadline."""


class ReadBound:
    """The timeout of the waits on one upstream connection: `until` is when
    the wait under way must have ended (inf between waits, so a write to a
    slow client never counts as an upstream stall); past it the sweeper calls
    `close`, which wakes the waiting send or receive (trio's `notify_closing`)
    with `ClosedResourceError`, and `expired` tells that from a broken
    connection.  One per connection, made with it; `with` it while its waits
    are bounded (it is swept only inside).  Leaving the `with` by `disarm`'s
    ReadTimeout goes on after it."""

    __slots__ = ("bounds", "close", "until", "expired")

    def __init__(self, bounds: "ReadBounds", close):
        self.bounds = bounds
        self.close = close
        self.until = math.inf
        self.expired = False

    def arm(self, until: float) -> None:
        """Bound the wait that follows: it must end by `until`."""
        self.until = until
        if until < self.bounds.wake_at:
            self.bounds.expect(until)

    def disarm(self) -> None:
        """The wait ended; ReadTimeout when its bound passed (a wait that
        returned in the scheduler round its bound passed is a stall all the
        same: the connection is closed)."""
        self.until = math.inf
        if self.expired:
            raise ReadTimeout()

    def expire(self) -> None:
        self.expired = True
        self.close()

    def __enter__(self) -> "ReadBound":
        self.bounds._open.add(self)
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        self.bounds._open.discard(self)
        return kind is ReadTimeout


class ReadBounds:
    """Timeouts on upstream waits (sending a request and waiting for its
    head, a body's reads, a stream's reads), enforced by one sweeper task that
    sleeps until the earliest bound it knows of, rather than a cancel scope
    per wait or a deadline moved to and from each read (trio registers every
    deadline in its heap through a generator context manager: a scope per
    request was ~10 % of a small request, the moves ~10 % of relaying a
    chunk, ADR 0014).

    A wait arms its bound (`ReadBound.arm`); only a bound earlier than the
    sweeper's wake-up moves that wake-up (`expect`), so steady traffic, whose
    every bound lies past the one the sweeper waits for, moves nothing: the
    sweeper wakes about once per timeout, finds the bounds moved on, closes
    the connections past due and sleeps until the next earliest."""

    def __init__(self):
        self._open: set[ReadBound] = set()
        self.running = False
        self.wake_at = math.inf
        self._sleep: trio.CancelScope | None = None

    def expect(self, until: float) -> None:
        """A bound earlier than the sweeper's wake-up: wake it then."""
        self.wake_at = until
        if self._sleep is not None:
            self._sleep.deadline = until

    def sweep(self, now: float) -> float:
        """Expire the waits past their bound; the earliest bound still ahead."""
        earliest = math.inf
        for bound in self._open:
            until = bound.until
            if until <= now:
                if not bound.expired:
                    bound.expire()
            elif until < earliest:
                earliest = until
        return earliest

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.running = True
        try:
            task_status.started()
            while True:
                with trio.CancelScope(deadline=self.wake_at) as self._sleep:
                    await trio.sleep_forever()
                self._sleep = None
                self.wake_at = self.sweep(trio.current_time())
        finally:
            self.running = False


class UpstreamClient:
    """One pool per origin, created on first use; the sweep that bounds
    every upstream wait (`read_bounds`: run it beside the gateway)."""

    def __init__(self, *, max_connections: int = 256):
        self.max_connections = max_connections
        self._pools: dict[tuple[Origin, Transport], ConnectionPool] = {}
        self.read_bounds = ReadBounds()

    def pool(self, origin: Origin, max_connections: int | None = None, transport: Transport = DIRECT) -> ConnectionPool:
        """The pool for `origin` reached through `transport` (its TLS trust),
        created on first use with `max_connections` (the provider's limit) or
        the client's default."""
        pool = self._pools.get((origin, transport))
        if pool is None:
            pool = self._pools[(origin, transport)] = ConnectionPool(
                origin, max_connections=max_connections or self.max_connections, transport=transport,
                bounds=self.read_bounds)
        return pool

    async def aclose(self) -> None:
        for pool in self._pools.values():
            await pool.aclose()
