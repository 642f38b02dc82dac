"""ADR 0010's client measurement: coredis (anyio, on trio) vs a minimal RESP client on trio.

Round trip (wall µs per sequential op) and CPU µs per op, GET and EVALSHA, against a
redis-server started here on a free loopback port. Usage: python bench/bench_redis_client.py [N]
"""

import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import coredis
import trio

SCRIPT = "return redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])"


class MiniResp:
    """The smallest RESP2 client that can GET and EVALSHA (the measured alternative)."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream, self.buf = stream, b""

    async def call(self, *args: bytes | str):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = a.encode() if isinstance(a, str) else a
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        await self.stream.send_all(b"".join(out))
        return await self._reply()

    async def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self.buf += await self.stream.receive_some(65536)
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    async def _reply(self):
        line = await self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += await self.stream.receive_some(65536)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"*":
            return [await self._reply() for _ in range(int(rest))]
        raise RuntimeError(f"RESP type {kind!r}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(label: str, op, n: int) -> None:
    for _ in range(200):
        await op()
    runs = []
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            await op()
        runs.append(((time.perf_counter() - t) / n * 1e6, (time.process_time() - c) / n * 1e6))
    rt = statistics.median(r[0] for r in runs)
    cpu = statistics.median(r[1] for r in runs)
    print(f"{label:28s} round trip {rt:7.1f} µs   cpu {cpu:6.1f} µs/op   (median of 5 x {n})")


async def main(port: int, n: int) -> None:
    client = coredis.Redis(host="127.0.0.1", port=port)
    async with client:
        await client.set("bench:a", "1")
        script = client.register_script(SCRIPT)
        await measure("coredis GET", lambda: client.get("bench:a"), n)
        await measure("coredis EVALSHA", lambda: script(keys=["bench:x"], args=[1]), n)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    mini = MiniResp(stream)
    sha = (await mini.call("SCRIPT", "LOAD", SCRIPT)).decode()
    await measure("mini RESP GET", lambda: mini.call("GET", "bench:a"), n)
    await measure("mini RESP EVALSHA", lambda: mini.call("EVALSHA", sha, "1", "bench:x", "1"), n)
    await stream.aclose()


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    exe = shutil.which("redis-server") or sys.exit("redis-server not installed")
    port, tmp = free_port(), tempfile.mkdtemp()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", tmp],
                            stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        trio.run(main, port, n)
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
