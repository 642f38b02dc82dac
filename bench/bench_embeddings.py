"""Embeddings route overhead: `POST /v1/embeddings` straight to the simulated
vendor vs through the gateway (same-protocol passthrough, translated to a
Cohere member, and split into one call per text for a Titan member), token
counting (`POST /v1/responses/input_tokens` forwarded to a Responses member,
and estimated for a Chat Completions member), next to the chat passthrough
under the same load, interleaved run by run so a shared machine's noise hits
every variant alike (issue 18, ADR 0018).

    python bench/bench_embeddings.py [--runs 3] [--duration 4]

Reported per variant: p50 at c=1 (and the gateway's addition over direct,
per run), RPS at c=8, and the gateway's CPU µs per request (from /proc):
medians with spread (max - min).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_gateway import (PY, ROOT, cpu_seconds, free_port, lua_for, med, stop_all, wait_port,  # noqa: E402
                           wrk)

BODY = {"model": "{pool}", "input": ["The quick brown fox jumps over the lazy dog."] * 4, "dimensions": 256}
CHAT = {"model": "same-chat", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
COUNT = {"model": "{pool}", "instructions": "Be brief.", "input": [{"role": "user", "content": "How many tokens?"}]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="busbar-bench-embed-"))
    mock_port, gw_port = free_port(), free_port()
    config = tmp / "embed.yaml"
    config.write_text("providers:\n"
                      f"  oai: {{protocol: openai, base_url: 'http://127.0.0.1:{mock_port}/v1', key: sk-bench}}\n"
                      f"  coh: {{protocol: cohere, base_url: 'http://127.0.0.1:{mock_port}', key: co-bench}}\n"
                      f"  rsp: {{protocol: responses, base_url: 'http://127.0.0.1:{mock_port}/v1', key: sk-bench}}\n"
                      f"  aws: {{protocol: bedrock, base_url: 'http://127.0.0.1:{mock_port}', region: us-east-1, "
                      "access_key_id: AKIDBENCH, secret_access_key: bench-secret}\n"
                      "pools:\n"
                      "  same: {members: [{provider: oai, model: text-embedding-3-small, dimensions: 256}]}\n"
                      "  cross: {members: [{provider: coh, model: embed-v4.0, dimensions: 256}]}\n"
                      "  titan: {members: [{provider: aws, model: 'amazon.titan-embed-text-v2:0', dimensions: 256}]}\n"
                      "  same-chat: {members: [{provider: oai, model: gpt-4o}]}\n"
                      "  count-same: {members: [{provider: rsp, model: gpt-4.1}]}\n"
                      "  count-estimate: {members: [{provider: oai, model: gpt-4o}]}\n"
                      "admin: {listen: public}\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([PY, "-m", "busbar.cli", "mock", "--port", str(mock_port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([PY, "-m", "busbar.cli", "serve", "--config", str(config), "--port", str(gw_port)],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "gateway.log", "w"))]
    try:
        wait_port(mock_port)
        wait_port(gw_port)
        scripts = {name: lua_for(tmp, name, json.dumps(BODY).replace("{pool}", pool))
                   for name, pool in (("direct", "text-embedding-3-small"), ("same", "same"), ("cross", "cross"),
                                      ("titan", "titan"))}
        scripts.update({name: lua_for(tmp, name, json.dumps(COUNT).replace("{pool}", pool))
                        for name, pool in (("count_direct", "gpt-4.1"), ("count_same", "count-same"),
                                           ("count_estimate", "count-estimate"))})
        scripts["chat_direct"] = scripts["chat_same"] = lua_for(tmp, "chat", CHAT)
        urls = {"direct": f"http://127.0.0.1:{mock_port}/v1/embeddings",
                "same": f"http://127.0.0.1:{gw_port}/v1/embeddings",
                "cross": f"http://127.0.0.1:{gw_port}/v1/embeddings",
                "titan": f"http://127.0.0.1:{gw_port}/v1/embeddings",        # 4 texts: 4 Titan calls
                "count_direct": f"http://127.0.0.1:{mock_port}/v1/responses/input_tokens",
                "count_same": f"http://127.0.0.1:{gw_port}/v1/responses/input_tokens",
                "count_estimate": f"http://127.0.0.1:{gw_port}/v1/responses/input_tokens",
                # the chat passthrough under the same load: what the embeddings figures compare to
                "chat_direct": f"http://127.0.0.1:{mock_port}/v1/chat/completions",
                "chat_same": f"http://127.0.0.1:{gw_port}/v1/chat/completions"}
        baseline = {"same": "direct", "cross": "direct", "titan": "direct", "chat_same": "chat_direct",
                    "count_same": "count_direct", "count_estimate": "count_direct"}
        for name in urls:                                      # warm up, and fail loudly on a broken route
            out = wrk(urls[name], 1, 1, scripts[name])
            if out["errors"]:
                raise RuntimeError(f"{name}: {out['errors']} failed requests (log: {tmp / 'gateway.log'})")
        results: dict = {name: {"p50": [], "rps8": [], "cpu": [], "added": []} for name in urls}
        gw_pid = procs[1].pid
        for _ in range(args.runs):
            direct_p50 = {}
            for name in urls:
                cpu0 = cpu_seconds(gw_pid)
                one = wrk(urls[name], 1, args.duration, scripts[name])
                eight = wrk(urls[name], 8, args.duration, scripts[name])
                used = cpu_seconds(gw_pid) - cpu0
                results[name]["p50"].append(one["p50_ms"])
                results[name]["rps8"].append(eight["rps"])
                if name not in baseline:
                    direct_p50[name] = one["p50_ms"]
                else:
                    results[name]["added"].append(one["p50_ms"] - direct_p50[baseline[name]])
                    results[name]["cpu"].append(used / (one["requests"] + eight["requests"]) * 1e6)
        report = {name: {k: med(v) for k, v in r.items() if v} for name, r in results.items()}
        out_path = ROOT / "bench" / "results" / "embeddings.json"
        out_path.write_text(json.dumps(report, indent=2))
        print(f"{'variant':<15} {'p50 c=1 ms':>16} {'added p50 ms':>16} {'RPS c=8':>14} {'gw CPU µs/req':>16}")
        for name, r in report.items():
            cell = lambda key, d=3: f"{r[key][0]:.{d}f} ±{r[key][1]:.{d}f}" if key in r else "-"  # noqa: E731
            print(f"{name:<15} {cell('p50'):>16} {cell('added'):>16} {cell('rps8', 0):>14} {cell('cpu', 0):>16}")
        return 0
    finally:
        stop_all(procs)


if __name__ == "__main__":
    sys.exit(main())
