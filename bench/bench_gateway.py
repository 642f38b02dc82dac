"""Busbar benchmark suite: one command, everything on loopback.

Processes: simulated vendors (`busbar mock`: one answering instantly, one
streaming 64 chunks paced 20 ms apart, one slow stream for the memory probe),
the gateway (`busbar serve`, one process, and `--workers 2`), and the load
generators (wrk for HTTP load, a trio raw-socket client for stream timing).
Prints a table; writes JSON to bench/results/.  Every figure is the median of
--runs runs with its spread (max - min).

    python bench/bench_gateway.py            # full run (a few minutes)
    python bench/bench_gateway.py --quick    # smoke: seconds, used by CI

Last, the same figures against a fast upstream (bench/fast_upstream.py, via
bench/bench_fast.py), which shows the gateway's own cost the simulated
vendor hides.
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
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello in one short sentence."}],
                   "max_tokens": 32})
LUA = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer bench"
"""
# one minimal request per client protocol: (path, body, stream path, stream body)
PROTOCOL_REQUESTS = {
    "openai": ("/v1/chat/completions", {"model": "{pool}", "messages": [{"role": "user", "content": "{text}"}]}),
    "anthropic": ("/v1/messages", {"model": "{pool}", "max_tokens": 64, "messages": [{"role": "user", "content": "{text}"}]}),
    "responses": ("/v1/responses", {"model": "{pool}", "input": "{text}"}),
    "gemini": ("/v1beta/models/{pool}:generateContent", {"contents": [{"role": "user", "parts": [{"text": "{text}"}]}]}),
    "cohere": ("/v2/chat", {"model": "{pool}", "messages": [{"role": "user", "content": "{text}"}]}),
    "bedrock": ("/model/{pool}/converse", {"messages": [{"role": "user", "content": [{"text": "{text}"}]}]}),
    "bedrock-invoke": ("/model/{pool}/invoke", {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64,
                                                "messages": [{"role": "user", "content": "{text}"}]}),
}
PROTOCOLS = list(PROTOCOL_REQUESTS)
WORDS = " ".join(f"w{i:02d}" for i in range(64))   # echoed back by the paced vendor as 64 chunks


def request_for(protocol: str, pool: str, stream: bool, text: str = "hi") -> tuple[str, dict]:
    path, body = PROTOCOL_REQUESTS[protocol]
    path = path.replace("{pool}", pool)
    body = json.loads(json.dumps(body).replace("{pool}", pool).replace("{text}", text))
    if stream:
        if protocol == "gemini":
            path = path.replace(":generateContent", ":streamGenerateContent?alt=sse")
        elif protocol == "bedrock":
            path = path.replace("/converse", "/converse-stream")
        elif protocol == "bedrock-invoke":
            path = path.replace("/invoke", "/invoke-with-response-stream")
        else:
            body["stream"] = True
    return path, body


# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
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
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def parse_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if m is None:
        return float("nan")
    value, unit = m.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(url: str, connections: int, duration: float, script: str) -> dict:
    out = subprocess.run(["wrk", "-t", str(min(2, connections)), "-c", str(connections),
                          "-d", f"{max(1, round(duration))}s", "--latency", "-s", script, url],
                         capture_output=True, text=True, check=True).stdout
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(map(int, m.groups()))
    if "50%" not in out:
        raise RuntimeError(f"wrk against {url} produced no latency figures:\n{out}")
    # anchored: a thread-stats column such as "98.50%" must not be taken for the 50% line
    return {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": parse_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),
            "p99_ms": parse_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),
            "requests": int(re.search(r"(\d+) requests in", out).group(1)), "errors": errors}


def lua_for(tmp: Path, name: str, body: dict | str, headers: dict | None = None) -> str:
    path = tmp / f"{name}.lua"
    path.write_text(LUA % (body if isinstance(body, str) else json.dumps(body))
                    + "".join(f'wrk.headers["{k}"] = "{v}"\n' for k, v in (headers or {}).items()))
    return str(path)


def med(values: list[float]) -> list[float]:
    values = [v for v in values if v == v]
    if not values:
        return [float("nan"), 0.0]
    return [statistics.median(values), max(values) - min(values)]


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def probe_timing(port: int, path: str, body: dict, n: int) -> dict:
    out = subprocess.run([PY, str(ROOT / "bench" / "streaming_probe.py"), "timing", str(port), path, str(n),
                          json.dumps(body)], capture_output=True, text=True, check=True, env=ENV).stdout
    return json.loads(out)


LOGS = Path(tempfile.gettempdir()) / "busbar-bench-logs"


def check_alive(procs: list, where: str) -> None:
    dead = [" ".join(p.args[3:6]) for p in procs if p.poll() is not None]
    if dead:
        raise RuntimeError(f"before {where}: these processes died: {dead} (logs in {LOGS})")


def start(args: list[str], **kw) -> subprocess.Popen:
    """A busbar process; its stderr goes to a log file named after its role."""
    LOGS.mkdir(exist_ok=True)
    log = open(LOGS / f"{args[0]}-{args[args.index('--port') + 1]}.log", "w")
    return subprocess.Popen([PY, "-m", "busbar.cli", *args], env=ENV, stdout=subprocess.DEVNULL, stderr=log, **kw)


# ---------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--streams", type=int, default=1000, help="concurrent open streams for the memory probe")
    parser.add_argument("--soak", type=int, default=100_000, help="requests for the memory-growth probe")
    parser.add_argument("--quick", action="store_true", help="a few seconds: checks the bench still works")
    args = parser.parse_args()
    if args.quick:
        args.runs, args.duration, args.streams, args.soak = 1, 1, 50, 2000
    if not shutil.which("wrk"):
        print("bench: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="busbar-bench-"))
    fast, paced, slow = free_port(), free_port(), free_port()
    gw1, gw2 = free_port(), free_port()
    providers = {"fast": fast, "paced": paced, "slow": slow}
    lines = ["providers:"]
    for name, port in providers.items():
        for proto in PROTOCOLS:
            base = f"http://127.0.0.1:{port}" + ("/v1" if proto in ("openai", "responses") else "")
            extra = ", region: us-east-1, access_key_id: AKIDBENCH, secret_access_key: bench" \
                if proto in ("bedrock", "bedrock-invoke") else ", key: sk-bench"
            lines.append(f"  {name}-{proto}: {{protocol: {proto}, base_url: '{base}'{extra}}}")
    lines.append("admin: {listen: public}")      # workers share the port; no fixed admin port
    lines.append("pools:")
    lines.append("  bench: {members: [{provider: fast-openai, model: m}]}")
    for name in providers:
        for proto in PROTOCOLS:
            lines.append(f"  {name}-to-{proto}: {{members: [{{provider: {name}-{proto}, model: m, max_tokens: 256}}]}}")
    (tmp / "bench.yaml").write_text("\n".join(lines) + "\n")
    procs = [start(["mock", "--port", str(fast), "--reply", "Hello! How can I help you today?", "--no-record"]),
             start(["mock", "--port", str(paced), "--chunk-delay", "0.02", "--no-record"]),
             start(["mock", "--port", str(slow), "--chunk-delay", "0.1", "--no-record"])]
    gateway = start(["serve", "--config", str(tmp / "bench.yaml"), "--port", str(gw1)])
    gateway2 = start(["serve", "--config", str(tmp / "bench.yaml"), "--port", str(gw2), "--workers", "2"])
    procs += [gateway, gateway2]
    results: dict = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": args.runs, "duration": args.duration,
                     "machine": {"cores": os.cpu_count()}}
    try:
        for port in (fast, paced, slow, gw1, gw2):
            wait_port(port)
        time.sleep(1.0)   # --workers: every worker up, not just the first
        script = lua_for(tmp, "chat", BODY)
        direct = f"http://127.0.0.1:{fast}/v1/chat/completions"
        via = f"http://127.0.0.1:{gw1}/v1/chat/completions"
        via2 = f"http://127.0.0.1:{gw2}/v1/chat/completions"
        wrk(via, 8, 1, script)
        wrk(via2, 8, 1, script)
        time.sleep(0.5)
        results["idle_rss_mib"] = rss_mib(gateway.pid)

        # 1. added latency at concurrency 1
        d_runs, g_runs = [], []
        for _ in range(args.runs):
            d_runs.append(wrk(direct, 1, args.duration, script))
            g_runs.append(wrk(via, 1, args.duration, script))
        results["latency_c1"] = {
            "direct_p50_ms": med([r["p50_ms"] for r in d_runs]),
            "added_p50_ms": med([g["p50_ms"] - d["p50_ms"] for g, d in zip(g_runs, d_runs)]),
            "added_p99_ms": med([g["p99_ms"] - d["p99_ms"] for g, d in zip(g_runs, d_runs)])}

        check_alive(procs, "2 + 3. throughput")
        # 2 + 3. throughput and CPU per request
        results["throughput"] = {}
        for c in (8, 32, 128):
            row = {}
            for label, url in (("direct", direct), ("gateway", via), ("gateway_workers2", via2)):
                runs, cpu = [], []
                for _ in range(args.runs):
                    cpu0 = cpu_seconds(gateway.pid) if label == "gateway" else 0.0
                    r = wrk(url, c, args.duration, script)
                    if label == "gateway":
                        cpu.append((cpu_seconds(gateway.pid) - cpu0) / max(1, r["requests"]) * 1e6)
                    runs.append(r)
                row[label] = {"rps": med([r["rps"] for r in runs]), "errors": sum(r["errors"] for r in runs)}
                if cpu:
                    row[label]["cpu_us_per_request"] = med(cpu)
            results["throughput"][f"c{c}"] = row

        check_alive(procs, "4. streaming")
        # 4. streaming on the paced vendor: added TTFB and inter-chunk latency
        n = max(3, args.runs * 3)
        path, body = request_for("openai", "paced-to-openai", True, WORDS)
        direct_t = probe_timing(paced, "/v1/chat/completions", {**body, "model": "m"}, n)
        gw_t = probe_timing(gw1, path, body, n)
        results["streaming"] = {
            "added_ttfb_ms": statistics.median(gw_t["ttfb"]) - statistics.median(direct_t["ttfb"]),
            "gap_p50_ms": [pct(direct_t["gaps"], 0.5), pct(gw_t["gaps"], 0.5)],
            "gap_p99_ms": [pct(direct_t["gaps"], 0.99), pct(gw_t["gaps"], 0.99)]}
        results["streaming"]["added_gap_p50_ms"] = results["streaming"]["gap_p50_ms"][1] - results["streaming"]["gap_p50_ms"][0]
        results["streaming"]["added_gap_p99_ms"] = results["streaming"]["gap_p99_ms"][1] - results["streaming"]["gap_p99_ms"][0]

        check_alive(procs, "5. cross-protocol")
        # 5. cross-protocol cost
        results["cross_protocol"] = {}
        for label, client, vendor in (("openai->openai", "openai", "openai"), ("openai->anthropic", "openai", "anthropic"),
                                      ("anthropic->gemini", "anthropic", "gemini"),
                                      ("bedrock-invoke->bedrock-invoke", "bedrock-invoke", "bedrock-invoke"),
                                      ("bedrock-invoke->anthropic", "bedrock-invoke", "anthropic")):
            path, body = request_for(client, f"fast-to-{vendor}", False)
            s = lua_for(tmp, label.replace(">", ""), body)
            url = f"http://127.0.0.1:{gw1}{path}"
            c1 = [wrk(url, 1, args.duration, s) for _ in range(args.runs)]
            c32 = [wrk(url, 32, args.duration, s) for _ in range(args.runs)]
            spath, sbody = request_for(client, f"paced-to-{vendor}", True, WORDS)
            st = probe_timing(gw1, spath, sbody, n)
            results["cross_protocol"][label] = {
                "p50_ms_c1": med([r["p50_ms"] for r in c1]), "rps_c32": med([r["rps"] for r in c32]),
                "errors": sum(r["errors"] for r in c1 + c32),
                "stream_ttfb_ms": statistics.median(st["ttfb"]), "stream_gap_p99_ms": pct(st["gaps"], 0.99)}
        base = results["cross_protocol"]["openai->openai"]["p50_ms_c1"][0]
        for label, row in results["cross_protocol"].items():
            row["added_vs_passthrough_p50_ms"] = row["p50_ms_c1"][0] - base

        check_alive(procs, "the 7x7 matrix")
        # the 7x7 matrix: which pairs work, buffered and streamed
        matrix, errors = {}, {}
        import httpx
        with httpx.Client(timeout=10) as http:
            for client in PROTOCOLS:
                for vendor in PROTOCOLS:
                    cell = []
                    for stream in (False, True):
                        path, body = request_for(client, f"fast-to-{vendor}", stream)
                        try:
                            r = http.post(f"http://127.0.0.1:{gw1}{path}", json=body)
                            cell.append("ok" if r.status_code == 200 else str(r.status_code))
                            if r.status_code != 200:
                                errors[f"{client}->{vendor}{' stream' if stream else ''}"] = r.text[:300]
                        except httpx.HTTPError as exc:
                            cell.append(type(exc).__name__)
                            errors[f"{client}->{vendor}{' stream' if stream else ''}"] = repr(exc)[:300]
                    matrix[f"{client}->{vendor}"] = cell
        results["matrix"] = matrix
        results["matrix_errors"] = errors

        check_alive(procs, "6. memory")
        # 6. memory: concurrent open streams, then growth over many requests
        holder = subprocess.Popen([PY, str(ROOT / "bench" / "streaming_probe.py"), "hold", str(gw1),
                                   "/v1/chat/completions", str(args.streams), "8", "slow-to-openai"], env=ENV,
                                  stdout=subprocess.PIPE, text=True)
        line = holder.stdout.readline()
        results["streams_rss_mib"] = rss_mib(gateway.pid)
        results["streams_open"] = json.loads(line)["opened"] if line else 0
        holder.wait(60)
        before = rss_mib(gateway.pid)
        rps = results["throughput"]["c32"]["gateway"]["rps"][0] or 1000
        soak = wrk(via, 32, args.soak / rps + 1, script)
        results["soak"] = {"requests": soak["requests"], "errors": soak["errors"], "rss_before_mib": before,
                           "rss_after_mib": rss_mib(gateway.pid)}
    finally:
        stop_all(procs)
    # 0. the same gateway code against a fast upstream (bench/bench_fast.py):
    # the simulated vendor above is slow enough to hide the gateway's cost
    import bench_fast
    fast_args = argparse.Namespace(runs=args.runs, duration=args.duration, streams_per_run=3 if args.quick else 5,
                                   ttfb_per_run=20 if args.quick else 100,
                                   concurrency=(1, 20) if args.quick else bench_fast.CONCURRENCY)
    results["fast_upstream"] = bench_fast.run(fast_args, tmp)
    report(results)
    bench_fast.report(results["fast_upstream"])
    out = ROOT / "bench" / "results" / f"gateway-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


def stop_all(procs) -> None:
    """Terminate the bench's processes, killing any that will not stop."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def fmt(pair) -> str:
    return f"{pair[0]:.3f} ±{pair[1]:.3f}"


def report(r: dict) -> None:
    print(f"\nBusbar benchmark — median of {r['runs']} runs × {r['duration']:g}s (± = spread), "
          f"{r['machine']['cores']} cores shared by load generator, vendor and gateway")
    lat = r["latency_c1"]
    print("\n1. Added latency, concurrency 1, buffered, same protocol (gateway minus direct)")
    print(f"   direct p50 {fmt(lat['direct_p50_ms'])} ms | added p50 {fmt(lat['added_p50_ms'])} ms | "
          f"added p99 {fmt(lat['added_p99_ms'])} ms")
    print("\n2-3. Throughput (RPS, zero errors wanted) and gateway CPU per request")
    print(f"   {'conns':>5} | {'direct':>14} | {'gateway':>14} | {'errors':>6} | {'--workers 2':>14} | {'CPU µs/req':>12}")
    for c, row in r["throughput"].items():
        g = row["gateway"]
        print(f"   {c[1:]:>5} | {row['direct']['rps'][0]:>8.0f} ±{row['direct']['rps'][1]:<4.0f} | "
              f"{g['rps'][0]:>8.0f} ±{g['rps'][1]:<4.0f} | {g['errors'] + row['gateway_workers2']['errors']:>6} | "
              f"{row['gateway_workers2']['rps'][0]:>8.0f} ±{row['gateway_workers2']['rps'][1]:<4.0f} | "
              f"{g['cpu_us_per_request'][0]:>6.0f} ±{g['cpu_us_per_request'][1]:<4.0f}")
    s = r["streaming"]
    print("\n4. Streaming, 64 chunks paced 20 ms (same protocol)")
    print(f"   added TTFB {s['added_ttfb_ms']:.3f} ms | inter-chunk p50 direct/gateway "
          f"{s['gap_p50_ms'][0]:.3f}/{s['gap_p50_ms'][1]:.3f} ms | p99 {s['gap_p99_ms'][0]:.3f}/{s['gap_p99_ms'][1]:.3f} ms "
          f"(added p99 {s['added_gap_p99_ms']:.3f} ms)")
    print("\n5. Cross-protocol cost (buffered p50 at c=1 and RPS at c=32; streamed TTFB / chunk-gap p99 on the paced vendor)")
    for label, row in r["cross_protocol"].items():
        print(f"   {label:<18} p50 {fmt(row['p50_ms_c1'])} ms (+{row['added_vs_passthrough_p50_ms']:.3f} vs passthrough) | "
              f"{row['rps_c32'][0]:.0f} RPS | errors {row['errors']} | stream TTFB {row['stream_ttfb_ms']:.2f} ms, "
              f"gap p99 {row['stream_gap_p99_ms']:.2f} ms")
    print("\n   7x7 matrix (client -> vendor: buffered/streamed)")
    print("   " + " " * 10 + "".join(f"{v:>14}" for v in PROTOCOLS))
    for client in PROTOCOLS:
        print(f"   {client:<10}" + "".join(f"{'/'.join(r['matrix'][f'{client}->{v}']):>14}" for v in PROTOCOLS))
    print("\n6. Memory")
    print(f"   idle RSS {r['idle_rss_mib']:.1f} MiB | {r['streams_open']} concurrent open streams: "
          f"{r['streams_rss_mib']:.1f} MiB | after {r['soak']['requests']} requests: "
          f"{r['soak']['rss_before_mib']:.1f} -> {r['soak']['rss_after_mib']:.1f} MiB (errors {r['soak']['errors']})")


if __name__ == "__main__":
    sys.exit(main())
