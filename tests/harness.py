"""Run simulated vendors and a gateway inside the test's trio nursery.

    async with gateway_with(config, a=MockVendor(), b=MockVendor()) as gw:
        ...gw.url, gw.vendors["a"], gw.gateway.router...

Provider base_urls may say `{a}` to mean vendor a's URL.  The official SDKs
are synchronous or asyncio-based, so tests call them in a worker thread with
`await sdk(lambda: client.chat.completions.create(...))` while the gateway
serves on the trio loop.
"""
from __future__ import annotations

import copy
import functools
from contextlib import asynccontextmanager
from dataclasses import dataclass

import trio

from busbar.cli import run_gateway
from busbar.config import parse_config
from busbar.mock import MockVendor


@dataclass
class Running:
    url: str
    port: int
    app: object
    server: object
    vendors: dict[str, MockVendor]

    @property
    def gateway(self):
        """The gateway currently serving (a reload swaps it)."""
        return self.app.gateway


def _fill(value, urls):
    if isinstance(value, str):
        for name, url in urls.items():
            value = value.replace("{" + name + "}", url)
        return value
    if isinstance(value, dict):
        return {k: _fill(v, urls) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, urls) for v in value]
    return value


@asynccontextmanager
async def gateway_with(config: dict, **vendors: MockVendor):
    async with trio.open_nursery() as nursery:
        for vendor in vendors.values():
            await nursery.start(vendor.serve, "127.0.0.1", 0)
        urls = {name: vendor.url for name, vendor in vendors.items()}
        config = _fill(copy.deepcopy(config), urls)
        # admin on the gateway's port unless the test says where (never the fixed default port)
        config.setdefault("admin", {}).setdefault("listen", "public")
        parsed = parse_config(config, "test-config")
        gateway, server, addrs, app = await nursery.start(
            functools.partial(run_gateway, handle_signals=False), parsed, "127.0.0.1", 0)
        port = addrs[0][1]
        running = Running(f"http://127.0.0.1:{port}", port, app, server, vendors)
        try:
            yield running
            await _assert_no_leaked_attempts(running)
        finally:
            nursery.cancel_scope.cancel()


async def _assert_no_leaked_attempts(running: Running) -> None:
    """Every test doubles as a check that no attempt outlives its request:
    once the gateway is idle, no upstream or key has anything in flight."""
    with trio.move_on_after(5):
        while running.server.active_requests:
            await trio.sleep(0.01)
    router = running.gateway.router
    leaked = {f"{p}/{m}": t.in_flight for (p, m), t in router.targets.items() if t.in_flight}
    leaked.update({k.id: k.in_flight for prov in router.providers.values() for k in prov.keys.keys if k.in_flight})
    assert not leaked, f"attempts still in flight after every request finished: {leaked}"


async def sdk(fn):
    """Run a blocking SDK call in a thread; the gateway keeps serving."""
    return await trio.to_thread.run_sync(fn)


async def last_record(running: Running) -> dict:
    """The most recent finished request's record (waits for the gateway to
    finish its bookkeeping, which happens just after the response is sent)."""
    with trio.fail_after(5):
        while running.gateway.in_flight or not running.gateway.recent:
            await trio.sleep(0.005)
    return running.gateway.recent[-1]


def free_port() -> int:
    """A loopback port nobody listens on (for tests that start processes)."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    """Block until something accepts connections on `port`."""
    import socket
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened")
