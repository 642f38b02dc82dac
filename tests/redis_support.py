"""A real redis-server for tests: started on a free loopback port in a temp dir, stopped after."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

import pytest

from harness import free_port

REDIS_SERVER = shutil.which("redis-server")
needs_redis = pytest.mark.skipif(REDIS_SERVER is None, reason="redis-server not installed (CI installs it via apt)")


class RedisServer:
    def __init__(self, directory) -> None:
        self.dir = str(directory)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path):
    if REDIS_SERVER is None:
        pytest.skip("redis-server not installed (CI installs it via apt)")
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def command_counts(url: str) -> dict[str, int]:
    """Calls per command redis-server has served (its own INFO commandstats)."""
    from busbar.state.resp import RespConnection, parse_redis_url
    host, port, db, _ = parse_redis_url(url)
    conn = await RespConnection.open(host, port, db)
    try:
        info = (await conn.call("INFO", "commandstats")).decode()
    finally:
        await conn.aclose()
    counts = {}
    for line in info.splitlines():
        if line.startswith("cmdstat_"):
            name, _, stats = line[len("cmdstat_"):].partition(":")
            counts[name] = int(stats.split("calls=")[1].split(",")[0])
    return counts


def delta(before: dict[str, int], after: dict[str, int], *, ignore=("info",)) -> dict[str, int]:
    """Commands served between two `command_counts` (our own INFO calls left out)."""
    return {k: n - before.get(k, 0) for k, n in after.items() if n != before.get(k, 0) and k not in ignore}
