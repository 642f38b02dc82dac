"""A throwaway redis-server on a free loopback port for the benches' cluster rows."""
from __future__ import annotations

import contextlib
import sys
import shutil
import socket
import subprocess
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def redis_server():
    """The port of a redis-server started here (no persistence), killed on exit; None when
    redis-server is not installed."""
    exe = shutil.which("redis-server")
    if exe is None:
        yield None
        return
    port = free_port()
    with tempfile.TemporaryDirectory() as d:
        proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                                 "--dir", d], stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield port
        finally:
            proc.kill()
            proc.wait()


def run(main, redis_rows, default_n: int = 20000) -> None:
    """A bench's entry point: `main(n)` in process, then `redis_rows(port, n // 10)` under
    trio against a redis-server started here (`n` from argv)."""
    import trio
    n = int(sys.argv[1]) if len(sys.argv) > 1 else default_n
    main(n)
    with redis_server() as port:
        if port is None:
            sys.exit("(redis-server not installed: no cluster rows)")
        trio.run(redis_rows, port, max(1, n // 10))
