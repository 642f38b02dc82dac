"""Gateway benchmark: RPS and added latency vs calling the vendor directly.

Runs on loopback: a simulated OpenAI vendor answering instantly
(`busbar mock`), the gateway (`busbar serve`, one process) and wrk as the load
generator (Debian package `wrk`).  Prints a table and writes JSON to
bench/results/.  Each figure is the median of --runs runs, with its spread.

    python bench/bench_gateway.py [--runs 3] [--duration 5] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                   "max_tokens": 32})
LUA = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def wrk(url: str, connections: int, duration: float, script: str) -> dict:
    out = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections), "-d", f"{max(1, round(duration))}s",
                          "--latency", "-s", script, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = parse_ms(re.search(r"50%\s+(\S+)", out).group(1))
    p99 = parse_ms(re.search(r"99%\s+(\S+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(map(int, m.groups()))
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": requests, "errors": errors}


def med(values):
    return statistics.median(values), (max(values) - min(values)) if len(values) > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--connections", type=int, nargs="*", default=[1, 8, 32, 128])
    parser.add_argument("--quick", action="store_true", help="one short run (CI smoke)")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration, args.connections = 1, 1, [1, 8]
    if not shutil.which("wrk"):
        print("bench: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    mock_port, gw_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="busbar-bench-"))
    (tmp / "post.lua").write_text(LUA % BODY)
    (tmp / "bench.yaml").write_text(
        f"providers:\n  mock: {{protocol: openai, base_url: 'http://127.0.0.1:{mock_port}/v1', key: sk-bench}}\n"
        f"pools:\n  bench:\n    members:\n      - {{provider: mock, model: gpt-bench}}\n")
    python = sys.executable
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    mock = subprocess.Popen([python, "-m", "engine.cli", "mock", "--port", str(mock_port)], env=env,
                            stdout=subprocess.DEVNULL)
    gateway = subprocess.Popen([python, "-m", "engine.cli", "serve", "--config", str(tmp / "bench.yaml"),
                                "--port", str(gw_port)], env=env, stderr=subprocess.DEVNULL)
    results: dict = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": args.runs, "duration": args.duration,
                     "figures": {}}
    try:
        wait_port(mock_port)
        wait_port(gw_port)
        script = str(tmp / "post.lua")
        direct = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
        via = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
        wrk(via, 8, 1, script)  # warm up
        results["idle_rss_mib"] = rss_mib(gateway.pid)
        rows = []
        for c in args.connections:
            d_runs, g_runs, cpu_runs = [], [], []
            for _ in range(args.runs):
                d_runs.append(wrk(direct, c, args.duration, script))
                cpu0 = cpu_seconds(gateway.pid)
                g = wrk(via, c, args.duration, script)
                cpu_runs.append((cpu_seconds(gateway.pid) - cpu0) / max(1, g["requests"]) * 1e6)
                g_runs.append(g)
            fig = {
                "direct_rps": med([r["rps"] for r in d_runs]),
                "gateway_rps": med([r["rps"] for r in g_runs]),
                "gateway_errors": sum(r["errors"] for r in g_runs),
                "added_p50_ms": med([g["p50_ms"] - d["p50_ms"] for g, d in zip(g_runs, d_runs)]),
                "added_p99_ms": med([g["p99_ms"] - d["p99_ms"] for g, d in zip(g_runs, d_runs)]),
                "cpu_us_per_request": med(cpu_runs),
            }
            results["figures"][f"c{c}"] = fig
            rows.append((c, fig))
        results["rss_after_mib"] = rss_mib(gateway.pid)
    finally:
        gateway.terminate()
        mock.terminate()
        gateway.wait(10)
        mock.wait(10)
    print(f"\nBusbar gateway bench (median of {args.runs} x {args.duration:g}s; ± = spread)")
    print(f"{'conns':>5} | {'direct RPS':>16} | {'gateway RPS':>16} | {'errors':>6} | {'added p50 ms':>14} | "
          f"{'added p99 ms':>14} | {'CPU µs/req':>12}")
    for c, f in rows:
        print(f"{c:>5} | {f['direct_rps'][0]:>9.0f} ±{f['direct_rps'][1]:<6.0f}| {f['gateway_rps'][0]:>9.0f} "
              f"±{f['gateway_rps'][1]:<6.0f}| {f['gateway_errors']:>6} | {f['added_p50_ms'][0]:>7.3f} ±{f['added_p50_ms'][1]:<5.3f}"
              f"| {f['added_p99_ms'][0]:>7.3f} ±{f['added_p99_ms'][1]:<5.3f}| {f['cpu_us_per_request'][0]:>7.0f} "
              f"±{f['cpu_us_per_request'][1]:<4.0f}")
    print(f"RSS idle {results['idle_rss_mib']:.1f} MiB, after run {results['rss_after_mib']:.1f} MiB")
    out = ROOT / "bench" / "results" / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
