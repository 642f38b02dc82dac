"""Gateway processes for the replica tests: `busbar serve` started as a real process (its own
interpreter, trio loop, clock and Redis connections), driven over its HTTP port, admin included."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from contextlib import asynccontextmanager

import httpx
import trio
import yaml

from busbar.mock import MockVendor
from harness import free_port, wait_port

CHAT = "/v1/chat/completions"


def chat_body(text: str = "hi") -> dict:
    return {"model": "smart", "messages": [{"role": "user", "content": text}]}


class Replica:
    """`busbar serve --config <yaml> --port <port> [--workers N]`, admin on the same port."""

    def __init__(self, tmp_path, name: str, config: dict, workers: int = 1) -> None:
        self.name, self.port, self.workers = name, free_port(), workers
        self.config_path = tmp_path / f"{name}.yaml"
        admin = {**config.get("admin", {}), "listen": "public", "enabled": True}     # (admin.key kept)
        self.config_path.write_text(yaml.safe_dump({**config, "admin": admin}))
        self.log_path = tmp_path / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> "Replica":
        command = [sys.executable, "-m", "busbar.cli", "--log-level", "warning", "serve", "--config",
                   str(self.config_path), "--port", str(self.port), "--workers", str(self.workers)]
        env = dict(os.environ, BUSBAR_USAGE_DB="off")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(command, stderr=self._log, env=env)
        await trio.to_thread.run_sync(wait_port, self.port, 60)
        return self

    def stop(self) -> str:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.log_path.read_text()

    async def state(self) -> dict:
        """/admin/api/state on a fresh connection (with --workers: whichever worker takes it)."""
        async with httpx.AsyncClient(timeout=30) as client:
            return (await client.get(self.url + "/admin/api/state")).json()

    async def post(self, path: str, json: dict | None = None) -> httpx.Response:
        async with httpx.AsyncClient(timeout=60) as client:
            return await client.post(self.url + path, json=json)


async def start_all(*replicas: Replica) -> None:
    async with trio.open_nursery() as nursery:
        for replica in replicas:
            nursery.start_soon(replica.start)


def member(state: dict, member_id: str) -> dict:
    return next(m for pool in state["pools"].values() for m in pool["members"] if m.get("id") == member_id)


def key_state(state: dict, provider: str, index: int) -> dict:
    return state["providers"][provider]["keys"][index]


async def eventually(check, what: str, timeout: float = 30.0):
    """Poll `check()` (async, truthy when done) until it holds; fail naming `what`.
    A generous bound for a loaded box: it is a liveness guard, not a timing assertion."""
    with trio.move_on_after(timeout):
        while True:
            result = await check()
            if result:
                return result
            await trio.sleep(0.02)
    raise AssertionError(f"never happened: {what}")


def claude_on_redis(redis_url: str, vendor: MockVendor, prefix: str) -> dict:
    """Pool `smart`: one Anthropic member on `vendor`; state in Redis under `prefix`."""
    return {"providers": {"claude": {"protocol": "anthropic", "base_url": vendor.url, "key": "vendor-key"}},
            "pools": {"smart": {"members": [{"provider": "claude", "model": "claude-sonnet-4", "max_tokens": 4096}]}},
            # generous: a loaded 2-core box must not trip the degraded mode by accident
            "state": {"backend": "redis", "url": redis_url, "prefix": prefix, "timeout_ms": 1000}}


@asynccontextmanager
async def two_replicas(tmp_path, redis_url: str, prefix: str, **vendor_options):
    """A simulated vendor and replicas A and B on it (`claude_on_redis`), started; on the
    way out both stopped, and neither may have logged a traceback."""
    vendor = MockVendor(**vendor_options)
    async with trio.open_nursery() as nursery:
        await nursery.start(vendor.serve)
        running = [Replica(tmp_path, name, claude_on_redis(redis_url, vendor, prefix)) for name in ("A", "B")]
        try:
            await start_all(*running)
            yield vendor, running
        finally:
            logs = [r.stop() for r in running]
            nursery.cancel_scope.cancel()
        for log in logs:
            assert "Traceback" not in log, log
