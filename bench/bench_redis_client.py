"""ADR 0010's client measurement: coredis (anyio, on trio) vs our minimal RESP client on trio (busbar.state.resp).

Round trip (wall µs per sequential op) and CPU µs per op, GET and EVALSHA, against a
redis-server started here on a free loopback port. Usage: pip install coredis; python bench/bench_redis_client.py [N]
(coredis is only for this comparison, not a Busbar dependency)
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

from busbar.state.resp import RespConnection   # the client the Redis backend uses

SCRIPT = "return redis.call('INCRBYFLOAT', KEYS[1], ARGV[1])"


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
    mini = await RespConnection.open("127.0.0.1", port)
    sha = (await mini.call("SCRIPT", "LOAD", SCRIPT)).decode()
    await measure("busbar.state.resp GET", lambda: mini.call("GET", "bench:a"), n)
    await measure("busbar.state.resp EVALSHA", lambda: mini.call("EVALSHA", sha, "1", "bench:x", "1"), n)
    await mini.aclose()


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
