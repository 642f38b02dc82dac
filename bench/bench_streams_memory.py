"""Gateway memory with N concurrent open streams (issue 20's "1,000 streams
<= 250 MiB"), on its own: bench_gateway.py's section 6 without the rest.

A simulated OpenAI vendor streams slowly (`busbar mock --chunk-delay 0.1 --chunks 400`: 40 s);
`streaming_probe.py hold` opens N streams through the gateway and keeps them
reading; the gateway's RSS is read from /proc while all are open (idle RSS
before).  Each gateway (this tree; `--baseline REV`; `--variant KEY=VALUE`
for a server option) is measured in turn against the same vendor.

    python bench/bench_streams_memory.py --streams 1000 --baseline main
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fast import baseline_tree, start_gateway  # noqa: E402
from bench_gateway import PY, ROOT, free_port, rss_mib, wait_port  # noqa: E402


def measure(config: Path, pythonpath: Path | None, streams: int, seconds: float, tmp: Path, label: str) -> dict:
    port = free_port()
    gateway = start_gateway(config, port, pythonpath, tmp / f"{label}.log")
    try:
        wait_port(port, timeout=60)
        time.sleep(0.5)
        idle = rss_mib(gateway.pid)
        holder = subprocess.Popen([PY, str(ROOT / "bench" / "streaming_probe.py"), "hold", str(port),
                                   "/v1/chat/completions", str(streams), str(seconds), "slow"],
                                  stdout=subprocess.PIPE, text=True)
        line = holder.stdout.readline()          # printed at half time, every stream open
        held = rss_mib(gateway.pid)
        holder.wait(seconds * 4 + 60)
        time.sleep(1.0)
        return {"idle_rss_mib": round(idle, 1), "streams_rss_mib": round(held, 1),
                "streams_open": json.loads(line)["opened"] if line else 0,
                "after_rss_mib": round(rss_mib(gateway.pid), 1)}
    finally:
        gateway.terminate()
        gateway.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=10.0, help="how long the streams stay open")
    parser.add_argument("--baseline", action="append", default=[], help="a git revision measured the same way")
    parser.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                        help="also this tree with server.KEY: VALUE")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="busbar-mem-"))
    vendor_port = free_port()
    vendor = subprocess.Popen([PY, "-m", "busbar.cli", "mock", "--port", str(vendor_port), "--chunk-delay", "0.1", "--chunks", "400",
                               "--no-record"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    config = tmp / "mem.yaml"
    config.write_text("providers:\n"
                      f"  v: {{protocol: openai, base_url: 'http://127.0.0.1:{vendor_port}/v1', key: sk-bench}}\n"
                      "pools:\n  slow: {members: [{provider: v, model: m}]}\n"
                      "server: {max_concurrent_requests: 4096}\n"
                      "admin: {listen: public}\n")
    runs = {"this tree": (None, config)}
    for variant in args.variant:
        key, _, value = variant.partition("=")
        path = tmp / f"variant-{key}.yaml"
        path.write_text(config.read_text().replace("server: {", f"server: {{{key}: {value}, "))
        runs[f"this tree, server.{key}: {value}"] = (None, path)
    for rev in args.baseline:
        runs[rev] = (baseline_tree(rev, tmp), config)
    result = {"streams": args.streams, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        wait_port(vendor_port)
        for label, (path, run_config) in runs.items():
            result[label] = measure(run_config, path, args.streams, args.seconds, tmp,
                                    "".join(c if c.isalnum() else "_" for c in label))
    finally:
        vendor.terminate()
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
