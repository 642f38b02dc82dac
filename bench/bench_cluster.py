"""Issue 14's cluster figures (ADR 0010, docs/scaling.md), short runs on loopback.

1. mechanism: how fast a change reaches another connection through Redis, three ways
   (pub/sub; a stream read with XREAD BLOCK; a keyspace notification followed by the HGET it
   needs), p50/p99 over sequential changes;
2. propagation A -> B through Busbar's own sync (busbar.cluster.RoutingSync): two routers,
   two syncs, one Redis, in one process: from `emit` on A (a drain toggled) to `Router.apply`
   on B, p50/p99;
3. the request path: a routing plan's start/next/report with and without a sync attached
   (µs per request, pure), and `emit` itself (µs per change, fault paths only);
4. RPS and latency of `busbar serve` with state.backend memory vs redis, and redis with
   --workers 1 vs 2 (wrk, buffered OpenAI requests to bench/fast_upstream.py, no limits).

    python bench/bench_cluster.py [--duration 5] [--runs 3] [--connections 16]

Needs redis-server and wrk.  Each figure: the median of --runs with its spread.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
from bench_gateway import LUA, cpu_seconds, free_port, lua_for, wait_port, wrk  # noqa: E402

from busbar.cluster import RoutingSync  # noqa: E402
from busbar.routing import Needs, Router  # noqa: E402
from busbar.routing.shared import Drain  # noqa: E402
from busbar.state.resp import RespConnection  # noqa: E402

PY = sys.executable


def pct(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def fmt_us(values) -> str:
    return f"p50 {pct(values, 0.5) * 1e6:7.0f} µs   p99 {pct(values, 0.99) * 1e6:7.0f} µs   (n={len(values)})"


# -- 1. the mechanisms ---------------------------------------------------------------------

async def mechanisms(port: int, n: int) -> dict:
    writer = await RespConnection.open("127.0.0.1", port)
    await writer.call("CONFIG", "SET", "notify-keyspace-events", "Kh")
    out = {}

    async def timed(subscribe, write, wait_for):
        reader = await RespConnection.open("127.0.0.1", port)
        await subscribe(reader)
        delays = []
        for i in range(n):
            t = time.perf_counter()
            await write(i)
            await wait_for(reader, i)
            delays.append(time.perf_counter() - t)
        await reader.aclose()
        return delays

    async def sub_channel(r):
        await r.send("SUBSCRIBE", "bench:ch")
        await r.read()

    async def wait_message(r, i):
        await r.read()

    out["pub/sub"] = await timed(sub_channel, lambda i: writer.call("PUBLISH", "bench:ch", f"change {i}"),
                                 wait_message)

    last = {"id": "$"}

    async def no_sub(r):
        return None

    async def wait_stream(r, i):
        reply = await r.call("XREAD", "BLOCK", 1000, "STREAMS", "bench:stream", last["id"])
        last["id"] = reply[0][1][-1][0]

    async def xadd(i):
        # the reader blocks from the id it last saw; this add wakes it
        await writer.call("XADD", "bench:stream", "MAXLEN", "~", 1000, "*", "c", str(i))

    # XREAD BLOCK must be waiting before the XADD: run the reader in a task
    async def stream_run():
        reader = await RespConnection.open("127.0.0.1", port)
        delays = []
        first = await writer.call("XADD", "bench:stream", "*", "c", "start")
        last["id"] = first
        for i in range(n):
            async with trio.open_nursery() as nursery:
                got = trio.Event()

                async def read():
                    await wait_stream(reader, i)
                    got.set()
                nursery.start_soon(read)
                await trio.sleep(0.0005)          # the XREAD is in Redis' blocked list
                t = time.perf_counter()
                await xadd(i)
                await got.wait()
                delays.append(time.perf_counter() - t)
        await reader.aclose()
        return delays

    out["stream (XREAD BLOCK)"] = await stream_run()

    getter = await RespConnection.open("127.0.0.1", port)

    async def sub_keyspace(r):
        await r.send("SUBSCRIBE", "__keyspace@0__:bench:hash")
        await r.read()

    async def wait_keyspace(r, i):
        await r.read()
        await getter.call("HGET", "bench:hash", "f")     # the notification names the key, not the value

    out["keyspace notification + HGET"] = await timed(
        sub_keyspace, lambda i: writer.call("HSET", "bench:hash", "f", str(i)), wait_keyspace)
    await writer.call("CONFIG", "SET", "notify-keyspace-events", "")
    return out


# -- 2. Busbar's own sync: A -> B ----------------------------------------------------------

CONFIG = {"providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": ["k1", "k2"]}},
          "pools": {"bench": {"members": [{"provider": "p", "model": "m", "id": "m1"},
                                          {"provider": "p", "model": "n", "id": "m2"}]}}}


async def propagation(port: int, n: int) -> list[float]:
    url = f"redis://127.0.0.1:{port}/0"
    a, b = Router.from_config(CONFIG), Router.from_config(CONFIG)
    sync_a = RoutingSync(url, "prop", timeout_s=0.5)
    sync_b = RoutingSync(url, "prop", timeout_s=0.5)
    sync_a.attach(a)
    sync_b.attach(b)
    arrived = trio.Event()
    apply = b.apply

    def spy(change, now):
        done = apply(change, now)
        if isinstance(change, Drain):
            arrived.set()
        return done
    b.apply = spy
    delays = []
    async with trio.open_nursery() as nursery:
        await nursery.start(sync_a.run)
        await nursery.start(sync_b.run)
        for i in range(n):
            arrived = trio.Event()
            t = time.perf_counter()
            a.set_drained("m1", i % 2 == 0)
            await arrived.wait()
            delays.append(time.perf_counter() - t)
        nursery.cancel_scope.cancel()
    return delays


# -- 3. the request path --------------------------------------------------------------------

def request_path(n: int) -> dict:
    out = {}
    for label, attach in (("no sync", False), ("sync attached", True)):
        router = Router.from_config(CONFIG)
        if attach:
            sink = []
            router.coordinate(sink.append)
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            for i in range(n):
                plan = router.start("bench", Needs(), i * 1e-3)
                step = plan.next(i * 1e-3)
                plan.report(step, None, i * 1e-3, ttfb=0.01)
            runs.append((time.perf_counter() - t) / n * 1e6)
        out[label] = runs
    sync = RoutingSync("redis://127.0.0.1:9/0", "x")
    sync.attach(Router.from_config(CONFIG))
    change = Drain("p", "m", True)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            sync.emit(change)
        runs.append((time.perf_counter() - t) / n * 1e6)
    out["emit (one change)"] = runs
    return out


# -- 4. RPS ---------------------------------------------------------------------------------

def gateway_yaml(tmp: Path, upstream: int, backend: str, redis_port: int) -> Path:
    path = tmp / f"gw-{backend}.yaml"
    state = "{backend: memory}" if backend == "memory" else \
        f"{{backend: redis, url: 'redis://127.0.0.1:{redis_port}/0', prefix: bench}}"
    path.write_text("providers:\n"
                    f"  fast: {{protocol: openai, base_url: 'http://127.0.0.1:{upstream}/v1', key: sk-bench}}\n"
                    "pools:\n  bench: {members: [{provider: fast, model: m}]}\n"
                    f"admin: {{listen: public}}\nstate: {state}\n")
    return path


def start_gateway(config: Path, workers: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = dict(os.environ, BUSBAR_USAGE_DB="off")
    proc = subprocess.Popen([PY, "-m", "busbar.cli", "serve", "--config", str(config), "--port", str(port),
                             "--workers", str(workers)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, 60)
    return proc, port


def redis_commands(port: int) -> int:
    async def info():
        conn = await RespConnection.open("127.0.0.1", port)
        text = (await conn.call("INFO", "stats")).decode()
        await conn.aclose()
        return int(text.split("total_commands_processed:")[1].split()[0])
    return trio.run(info)


def tree_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of a gateway and its worker processes (`--workers N` forks them), by pid."""
    pids = [pid]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                pids.append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            pass
    out = {}
    for p in pids:
        try:
            out[p] = cpu_seconds(p)
        except OSError:
            pass
    return out


def rps_rows(variants: dict, args, script: str, redis_port: int) -> dict:
    """All gateways up at once, wrk runs interleaved (the box's load drifts; each variant sees
    the same drift).  Also counts the Redis commands a variant's runs caused."""
    procs = {label: start_gateway(config, workers) for label, (config, workers) in variants.items()}
    time.sleep(1.5)                                            # every worker listening and synced
    rows = {label: [] for label in variants}
    commands = {label: 0 for label in variants}
    try:
        for label, (_, port) in procs.items():
            wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.connections, 1, script)   # warm
        for _ in range(args.runs):
            for label, (_, port) in procs.items():
                before = redis_commands(redis_port)
                cpu_before = tree_cpu(procs[label][0].pid)
                row = wrk(f"http://127.0.0.1:{port}/v1/chat/completions", args.connections, args.duration, script)
                cpu_after = tree_cpu(procs[label][0].pid)
                used = [cpu_after[p] - cpu_before.get(p, 0.0) for p in cpu_after]
                row["cpu_us_per_request"] = 1e6 * sum(used) / max(1, row["requests"])
                # per process that served (the supervisor of --workers N hardly runs): CPU share of the run
                row["busy_cores"] = sorted((u / args.duration for u in used if u > 0.05 * args.duration),
                                           reverse=True)
                rows[label].append(row)
                commands[label] += redis_commands(redis_port) - before - 1     # the INFO itself
    finally:
        for proc, _ in procs.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return rows, commands


def med(runs: list[dict], field: str) -> str:
    values = [r[field] for r in runs]
    return f"{statistics.median(values):8.1f} (spread {max(values) - min(values):.1f})"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("-n", type=int, default=500, help="changes per propagation figure")
    args = parser.parse_args()
    redis_server = shutil.which("redis-server")
    if not redis_server or not shutil.which("wrk"):
        print("needs redis-server and wrk", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="busbar-cluster-bench-"))
    redis_port, upstream = free_port(), free_port()
    procs = [subprocess.Popen([redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL),
             subprocess.Popen([PY, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(upstream)],
                              stdout=subprocess.DEVNULL)]
    try:
        wait_port(redis_port)
        wait_port(upstream)
        print(f"load average at start: {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)")
        print("\n1. a change reaching another connection through Redis (sequential changes)")
        for name, delays in trio.run(mechanisms, redis_port, args.n).items():
            print(f"   {name:32s} {fmt_us(delays)}")
        print("\n2. propagation A -> B through busbar.cluster (emit on A -> Router.apply on B)")
        print(f"   {'drain toggled':32s} {fmt_us(trio.run(propagation, redis_port, args.n))}")
        print("\n3. the request path (pure, µs; median of 5 runs, spread)")
        for label, runs in request_path(20000).items():
            print(f"   {label:32s} {statistics.median(runs):6.2f} µs (spread {max(runs) - min(runs):.2f})")
        script = lua_for(tmp, "chat", {"model": "bench", "messages": [{"role": "user", "content": "hi"}]})
        print(f"\n4. busbar serve, wrk -c {args.connections}, {args.runs} x {args.duration:g} s, no limits")
        rows, commands = rps_rows({
            "memory, 1 worker": (gateway_yaml(tmp, upstream, "memory", redis_port), 1),
            "redis, 1 worker": (gateway_yaml(tmp, upstream, "redis", redis_port), 1),
            "redis, 2 workers": (gateway_yaml(tmp, upstream, "redis", redis_port), 2)}, args, script, redis_port)
        for label, runs in rows.items():
            errors = sum(r["errors"] for r in runs)
            requests = sum(r["requests"] for r in runs)
            print(f"   {label:18s} RPS {med(runs, 'rps')}   p50 {med(runs, 'p50_ms')} ms   "
                  f"p99 {med(runs, 'p99_ms')} ms   errors {errors}   redis commands {commands[label]} "
                  f"for {requests} requests")
            print(f"   {'':18s} CPU {med(runs, 'cpu_us_per_request')} µs/request   busy cores per process "
                  f"(last run) {', '.join(f'{c:.2f}' for c in runs[-1]['busy_cores'])}")
        memory = statistics.median(r["rps"] for r in rows["memory, 1 worker"])
        redis = statistics.median(r["rps"] for r in rows["redis, 1 worker"])
        print(f"   redis vs memory: {100 * (redis - memory) / memory:+.1f} % RPS")
        print(f"\nload average at end: {os.getloadavg()[0]:.1f}")
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
