"""Socket sends and receives without a scheduler round when the kernel can
serve them at once.

trio's socket methods yield to the scheduler after every *successful* call
(its "cancellation/yielding sandwich"), so a request that does four socket
operations pays four extra scheduling rounds (an `epoll_wait` and a pass of
the run loop each) even though none of them blocked.  At concurrency 1 that
is most of what trio costs per request (docs/adr/0014-performance-at-c1.md).
These helpers try the non-blocking call first and only enter trio (wait for
readiness, which is a real checkpoint) when it would block.

Fairness: `send_all` and `receive_some` are used where the caller blocks
soon anyway (a response write, then waiting for the next request; a request
write, then waiting for the answer's head).  A long relay reads with
`receive_some_yielding`, which yields after a read that did not wait, as
trio's own does, so a fast stream still yields on every read.  Plain TCP
only; TLS streams take trio's path.
"""
from __future__ import annotations

import socket

import trio


def _raw(stream) -> socket.socket | None:
    if type(stream) is trio.SocketStream:
        return getattr(stream.socket, "_sock", None)   # the stdlib socket trio wraps (non-blocking)
    return None


async def send_all(stream: trio.abc.Stream, data: bytes) -> None:
    """`stream.send_all(data)`, with no scheduler round when the kernel takes
    all of it in one `send` (the common case: a response is one write)."""
    sock = _raw(stream)
    if sock is not None and data:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("socket was already closed") from exc
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        if sent == len(data):
            return
        data = memoryview(data)[sent:]
    await stream.send_all(data)


async def receive_some(stream: trio.abc.Stream, max_bytes: int) -> bytes:
    """`stream.receive_some(max_bytes)`, with no scheduler round when bytes
    are already waiting; otherwise waits for readiness (a checkpoint)."""
    sock = _raw(stream)
    if sock is None:
        return await stream.receive_some(max_bytes)
    while True:
        try:
            return sock.recv(max_bytes)
        except BlockingIOError:
            pass
        except OSError as exc:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("socket was already closed") from exc
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
        await trio.lowlevel.wait_readable(sock)


async def receive_some_yielding(stream: trio.abc.Stream, max_bytes: int) -> bytes:
    """`stream.receive_some(max_bytes)` for a long relay (a stream's body),
    with trio's semantics: a cancelled caller is cancelled before anything is
    read (bytes read and then dropped by a cancellation would be lost), and a
    read that did not wait yields after it, so a relay whose upstream always
    has bytes waiting does not starve the other tasks; a read that had to
    wait was its checkpoint already.  Without trio's wrappers around the call
    (an error-translating context manager, an async "try sync" one and a
    helper frame per read: ADR 0014, session 9)."""
    sock = _raw(stream)
    if sock is None:
        return await stream.receive_some(max_bytes)
    await trio.lowlevel.checkpoint_if_cancelled()
    waited = False
    while True:
        try:
            data = sock.recv(max_bytes)
            break
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            waited = True
        except OSError as exc:
            if sock.fileno() == -1:
                raise trio.ClosedResourceError("socket was already closed") from exc
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc
    if not waited:
        await trio.lowlevel.cancel_shielded_checkpoint()
    return data
