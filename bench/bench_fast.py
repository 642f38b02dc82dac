"""The gateway against a fast upstream (bench/fast_upstream.py), side by side
with the upstream itself and, optionally, with an older revision of the
gateway: every variant measured in the same run, interleaved run by run, so
the noise of a shared machine hits all of them alike (issue 20, ADR 0014).

    python bench/bench_fast.py                       # this tree vs direct
    python bench/bench_fast.py --baseline main       # ... and vs `main` (before/after)
    python bench/bench_fast.py --syscalls            # + strace -c counts per request at c=1
    python bench/bench_fast.py --floor               # + bench/trio_floor.py's proxies, buffered only
    python bench/bench_fast.py --portkey DIR         # + Portkey's gateway (npm i @portkey-ai/gateway in DIR)

Reported: RPS at each concurrency, added p50/p99 at c=1 (gateway minus
direct, per run), gateway CPU µs per request (from /proc), streamed added
time to first content and inter-chunk gaps, and added time to first content
on a kept-alive connection and a new one (bench/ttfb_probe.py: streamed and
buffered, like for like, back to back and after a 10 ms idle), medians with
spread (max - min).  `--floor` adds trio_floor.py's `bare` and `structure`
proxies to the buffered rows: the CPU a trio process pays for the two
loopback hops alone, and with the watch and two deadline scopes, measured
like the gateway in the same run (ADR 0014).  `--portkey DIR` adds Portkey's
open-source gateway (Node; `npm install @portkey-ai/gateway` in DIR, not a
dependency of Busbar) in front of the same upstream, buffered rows too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import (BODY, PY, ROOT, cpu_seconds, free_port, lua_for, med, pct,  # noqa: E402
                           stop_all, wait_port, wrk)

CONCURRENCY = (1, 8, 20, 32, 128)
FLOOR_MODES = ("bare", "structure")


def baseline_tree(ref: str, tmp: Path) -> Path:
    """A PYTHONPATH entry whose `busbar` is revision `ref` of this repository
    (laid out as the wheel lays it: engine/ as busbar, its data inside)."""
    tag = "".join(c if c.isalnum() else "_" for c in ref)
    src = tmp / f"baseline-src-{tag}"
    src.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    pkg = tmp / f"baseline-pkg-{tag}"
    shutil.copytree(src / "engine", pkg / "busbar")
    for data in ("schemas", "pipelines"):
        if (src / data).is_dir() and not (pkg / "busbar" / data).exists():
            shutil.copytree(src / data, pkg / "busbar" / data)
    return pkg


def start_gateway(config: Path, port: int, pythonpath: Path | None, log: Path) -> subprocess.Popen:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return subprocess.Popen([PY, "-m", "busbar.cli", "serve", "--config", str(config), "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"))


def start_upstream(port: int, chunks: int = 16, chunk_ms: float = 5.0) -> subprocess.Popen:
    return subprocess.Popen([PY, str(ROOT / "bench" / "fast_upstream.py"), "--port", str(port),
                             "--chunks", str(chunks), "--chunk-ms", str(chunk_ms)], stdout=subprocess.DEVNULL)


def gateway_config(tmp: Path, upstream_port: int) -> Path:
    path = tmp / "fast.yaml"
    path.write_text("providers:\n"
                    f"  fast: {{protocol: openai, base_url: 'http://127.0.0.1:{upstream_port}/v1', key: sk-bench}}\n"
                    "pools:\n  bench: {members: [{provider: fast, model: m}]}\n"
                    "admin: {listen: public}\n")      # several gateways at once: no fixed admin port
    return path


def stream_timing(port: int, n: int) -> dict:
    body = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    out = subprocess.run([PY, str(ROOT / "bench" / "streaming_probe.py"), "timing", str(port),
                          "/v1/chat/completions", str(n), json.dumps(body)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def syscalls_per_request(pid: int, url: str, script: str, duration: float) -> dict:
    """strace -c -f on the gateway while wrk runs at c=1: calls per request."""
    out = Path(tempfile.mkstemp(suffix=".strace")[1])
    tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", str(out)], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = wrk(url, 1, duration, script)
    tracer.send_signal(2)
    tracer.wait(10)
    counts = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1].isidentifier() and parts[-1] != "total" and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3]) / max(1, r["requests"])
    out.unlink()
    return {"per_request": {k: round(v, 2) for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v >= 0.01},
            "total": round(sum(counts.values()), 2), "requests": r["requests"]}


def measure(variants: dict, direct_url: str, script: str, runs: int, duration: float,
            concurrency=CONCURRENCY) -> dict:
    """variants: label -> (url, pid[, wrk script of its own]).  One round = every concurrency, every
    variant, in a fixed interleaved order; `runs` rounds."""
    raw: dict = {c: {"direct": [], **{label: [] for label in variants}} for c in concurrency}
    for _ in range(runs):
        for c in concurrency:
            raw[c]["direct"].append(wrk(direct_url, c, duration, script))
            for label, (url, pid, *own) in variants.items():
                cpu0 = cpu_seconds(pid)
                r = wrk(url, c, duration, own[0] if own else script)
                r["cpu_us"] = (cpu_seconds(pid) - cpu0) / max(1, r["requests"]) * 1e6
                raw[c][label].append(r)
    out: dict = {}
    for c in concurrency:
        direct = raw[c]["direct"]
        row = {"direct": {"rps": med([r["rps"] for r in direct]), "p50_ms": med([r["p50_ms"] for r in direct]),
                          "p99_ms": med([r["p99_ms"] for r in direct])}}
        for label in variants:
            runs_ = raw[c][label]
            row[label] = {"rps": med([r["rps"] for r in runs_]),
                          "rps_ratio_to_direct": med([g["rps"] / d["rps"] for g, d in zip(runs_, direct)]),
                          "p50_ms": med([r["p50_ms"] for r in runs_]), "p99_ms": med([r["p99_ms"] for r in runs_]),
                          "added_p50_ms": med([g["p50_ms"] - d["p50_ms"] for g, d in zip(runs_, direct)]),
                          "added_p99_ms": med([g["p99_ms"] - d["p99_ms"] for g, d in zip(runs_, direct)]),
                          "cpu_us_per_request": med([r["cpu_us"] for r in runs_]),
                          "errors": sum(r["errors"] for r in runs_)}
        out[f"c{c}"] = row
    return out


def measure_streams(variants: dict, upstream_port: int, runs: int, n: int) -> dict:
    direct, per = [], {label: [] for label in variants}
    for _ in range(runs):
        direct.append(stream_timing(upstream_port, n))
        for label, (url, _pid) in variants.items():
            per[label].append(stream_timing(int(url.rsplit(":", 1)[1].split("/")[0]), n))
    d_ttfb = [t for d in direct for t in d["ttfb"]]
    d_gaps = [g for d in direct for g in d["gaps"]]
    out = {"direct": {"ttfb_ms": med(d_ttfb), "gap_p50_ms": pct(d_gaps, 0.5), "gap_p99_ms": pct(d_gaps, 0.99)}}
    for label, rows in per.items():
        ttfb = [t for r in rows for t in r["ttfb"]]
        gaps = [g for r in rows for g in r["gaps"]]
        # added TTFB per round: the medians of that round's streams, gateway minus direct
        added = [med(r["ttfb"])[0] - med(d["ttfb"])[0] for r, d in zip(rows, direct)]
        out[label] = {"ttfb_ms": med(ttfb), "added_ttfb_ms": med(added), "gap_p50_ms": pct(gaps, 0.5),
                      "gap_p99_ms": pct(gaps, 0.99),
                      "added_gap_p99_ms": pct(gaps, 0.99) - pct(d_gaps, 0.99)}
    return out


TTFB_GAPS_MS = (0, 10)      # back to back, and after an idle longer than the upstream's 5 ms chunk pace


def ttfb_probe(port: int, n: int) -> dict:
    out = subprocess.run([PY, str(ROOT / "bench" / "ttfb_probe.py"), str(port), str(n),
                          "--gap-ms", ",".join(str(g) for g in TTFB_GAPS_MS)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)["gap_ms"]


def measure_ttfb(variants: dict, upstream_port: int, runs: int, n: int) -> dict:
    """Added time to first content, streamed and buffered, from
    bench/ttfb_probe.py (a blocking client; like for like, which the
    new-connection stream probe above is not), after each idle gap in
    `TTFB_GAPS_MS`: per round, the gateway's median minus direct's, then the
    median and spread of rounds."""
    direct, per = [], {label: [] for label in variants}
    for _ in range(runs):
        direct.append(ttfb_probe(upstream_port, n))
        for label, (url, _pid) in variants.items():
            per[label].append(ttfb_probe(int(url.rsplit(":", 1)[1].split("/")[0]), n))
    out: dict = {}
    for gap in direct[0]:
        row = {"direct": {kind: {"keepalive_ms": med([d[gap][kind]["keepalive_ms"] for d in direct])}
                          for kind in ("stream", "buffered")}}
        for label, rows in per.items():
            row[label] = {kind: {"keepalive_ms": med([r[gap][kind]["keepalive_ms"] for r in rows]),
                                 "added_keepalive_ms": med([r[gap][kind]["keepalive_ms"] - d[gap][kind]["keepalive_ms"]
                                                            for r, d in zip(rows, direct)]),
                                 "added_new_connection_ms": med([r[gap][kind]["new_connection_ms"]
                                                                 - d[gap][kind]["new_connection_ms"]
                                                                 for r, d in zip(rows, direct)])}
                          for kind in ("stream", "buffered")}
        out[f"gap_{gap}ms"] = row
    return out


def run(args, tmp: Path) -> dict:
    """Start the upstream and gateway(s), measure, stop them."""
    up_port = free_port()
    procs = [start_upstream(up_port)]
    config = gateway_config(tmp, up_port)
    trees = {"gateway": None}
    if getattr(args, "baseline", None):
        trees[f"gateway@{args.baseline}"] = baseline_tree(args.baseline, tmp)
    variants = {}
    try:
        for label, tree in trees.items():
            port = free_port()
            proc = start_gateway(config, port, tree, tmp / f"{label.replace('@', '-').replace('/', '_')}.log")
            procs.append(proc)
            variants[label] = (f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid)
        floors = {}
        for mode in (FLOOR_MODES if getattr(args, "floor", False) else ()):
            port = free_port()
            proc = subprocess.Popen([PY, str(ROOT / "bench" / "trio_floor.py"), "serve", "--mode", mode,
                                     "--port", str(port), "--upstream", str(up_port)], stdout=subprocess.DEVNULL)
            procs.append(proc)
            floors[f"floor:{mode}"] = (f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid)
        if getattr(args, "portkey", None):
            port = free_port()
            server = Path(args.portkey) / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
            proc = subprocess.Popen(["node", str(server), f"--port={port}", "--headless"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(proc)
            # Portkey routes by headers: the provider and the upstream's base URL
            floors["portkey"] = (f"http://127.0.0.1:{port}/v1/chat/completions", proc.pid,
                                 lua_for(tmp, "portkey-chat", BODY, headers={
                                     "x-portkey-provider": "openai",
                                     "x-portkey-custom-host": f"http://127.0.0.1:{up_port}/v1"}))
        wait_port(up_port)
        for url, *_ in (*variants.values(), *floors.values()):
            wait_port(int(url.rsplit(":", 1)[1].split("/")[0]))
        script = lua_for(tmp, "fast-chat", BODY)
        direct_url = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        for url, _, *own in (*variants.values(), *floors.values()):      # warm up (connections, caches)
            wrk(url, 8, 1, own[0] if own else script)
        results = {"buffered": measure({**variants, **floors}, direct_url, script, args.runs, args.duration,
                                       args.concurrency),
                   "streaming": measure_streams(variants, up_port, args.runs, args.streams_per_run),
                   "ttfb_keepalive": measure_ttfb(variants, up_port, args.runs, args.ttfb_per_run)}
        if getattr(args, "syscalls", False) and shutil.which("strace"):
            results["syscalls_c1"] = {label: syscalls_per_request(pid, url, script, min(args.duration, 2))
                                      for label, (url, pid) in variants.items()}
        return results
    finally:
        stop_all(procs)


def fmt(pair, digits=3) -> str:
    return f"{pair[0]:.{digits}f} ±{pair[1]:.{digits}f}"


def report(r: dict) -> None:
    buffered = r["buffered"]
    labels = [k for k in next(iter(buffered.values())) if k != "direct"]
    print("\nFast upstream (bench/fast_upstream.py), buffered OpenAI chat, same protocol; median ± spread")
    for c, row in buffered.items():
        d = row["direct"]
        line = f"   {c:>5} direct {d['rps'][0]:>8.0f} RPS p50 {d['p50_ms'][0]:.3f} ms"
        for label in labels:
            g = row[label]
            line += (f" | {label}: {g['rps'][0]:>6.0f} ±{g['rps'][1]:<5.0f} RPS "
                     f"({100 * g['rps_ratio_to_direct'][0]:.1f}% of direct), CPU {g['cpu_us_per_request'][0]:.0f} "
                     f"±{g['cpu_us_per_request'][1]:.0f} µs/req")
            if c == "c1":
                line += f", added p50 {fmt(g['added_p50_ms'])} ms p99 {fmt(g['added_p99_ms'])} ms"
            if g["errors"]:
                line += f", {g['errors']} errors"
        print(line)
    labels = [label for label in labels if label.startswith("gateway")]   # the others: buffered only
    s = r["streaming"]
    print(f"   stream: direct TTFB {s['direct']['ttfb_ms'][0]:.3f} ms, gaps p50/p99 "
          f"{s['direct']['gap_p50_ms']:.3f}/{s['direct']['gap_p99_ms']:.3f} ms")
    for label in labels:
        g = s[label]
        print(f"   stream {label}: added TTFB {fmt(g['added_ttfb_ms'])} ms, gaps p50/p99 "
              f"{g['gap_p50_ms']:.3f}/{g['gap_p99_ms']:.3f} ms (added p99 {g['added_gap_p99_ms']:.3f} ms)")
    for gap, t in r["ttfb_keepalive"].items():
        print(f"   TTFB, a blocking client, {gap.replace('_', ' ')} idle before each request (ttfb_probe): direct "
              f"stream {t['direct']['stream']['keepalive_ms'][0]:.3f} ms, buffered {t['direct']['buffered']['keepalive_ms'][0]:.3f} ms")
        for label in labels:
            g = t[label]
            print(f"     {label}: added stream {fmt(g['stream']['added_keepalive_ms'])} ms "
                  f"(new connection {fmt(g['stream']['added_new_connection_ms'])}), "
                  f"added buffered {fmt(g['buffered']['added_keepalive_ms'])} ms "
                  f"(new connection {fmt(g['buffered']['added_new_connection_ms'])})")
    for label, sc in r.get("syscalls_c1", {}).items():
        print(f"   syscalls per request at c=1, {label}: {sc['total']} — {sc['per_request']}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--baseline", help="a git revision to measure alongside this tree (before/after)")
    parser.add_argument("--syscalls", action="store_true", help="strace -c the gateway(s) at c=1")
    parser.add_argument("--portkey", metavar="DIR",
                        help="a directory where `npm install @portkey-ai/gateway` ran: measure Portkey too (buffered)")
    parser.add_argument("--floor", action="store_true",
                        help="measure trio_floor.py's bare and structure proxies beside the gateway (buffered)")
    parser.add_argument("--streams-per-run", type=int, default=5)
    parser.add_argument("--ttfb-per-run", type=int, default=100,
                        help="requests per kind and run for the kept-alive TTFB probe")
    parser.add_argument("--concurrency", type=lambda s: tuple(int(c) for c in s.split(",")), default=CONCURRENCY)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("bench: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="busbar-fast-"))
    results = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "runs": args.runs, "duration": args.duration,
               "baseline": args.baseline, **run(args, tmp)}
    report(results)
    out = ROOT / "bench" / "results" / f"fast-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
