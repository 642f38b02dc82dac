"""The per-request steps the 2026-12-02 endpoint work added to the hot path,
timed in-process (load-proof enough at these sizes; ADR 0018):

* the per-attempt check whether the member takes fewer inputs per call than
  the request has (`Exchange._attempt`: `up.inputs_per_call is not None`), on
  a chat dialect: what every chat request now pays;
* `Endpoint.path` for a chat call and for an embeddings call (now through
  `Dialect.operation_path`), plain OpenAI and Azure deployments;
* `TitanEmbed.split` + `join` of an 8-text batch (the fan-out's own CPU,
  without its upstream calls).

    python bench/bench_operation_steps.py [--repeat 7]

Reported: ns per call, median over repeats and spread (max - min).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    from busbar.protocols import get_dialect
    from busbar.protocols.embeddings import ir as eir
    from busbar.protocols.operation import operation_dialect
    chat, embed = get_dialect("openai"), get_dialect("openai", "embed")
    plain = chat.build_endpoint({}, "/v1")
    azure = chat.build_endpoint({"deployment_paths": True, "api_version": "2024-10-21"}, "/openai")
    titan = operation_dialect("bedrock", "embed").for_model("amazon.titan-embed-text-v2:0")
    batch = eir.EmbedRequest([f"text {i}" for i in range(8)])
    answers = [eir.EmbedResponse([[0.1] * 256], "", 3) for _ in range(8)]
    cases = {
        "attempt check (chat dialect)": (lambda: chat.inputs_per_call is not None and chat is not embed, 2_000_000),
        "empty lambda (baseline)": (lambda: None, 2_000_000),
        "Endpoint.path chat": (lambda: plain.path("gpt-4o", False), 500_000),
        "Endpoint.path embeddings": (lambda: plain.path("text-embedding-3-small", False, embed), 500_000),
        "Endpoint.path Azure chat": (lambda: azure.path("prod-gpt4o", False), 200_000),
        "Endpoint.path Azure embeddings": (lambda: azure.path("prod-emb", False, embed), 200_000),
        "Titan split + join, 8 texts": (lambda: titan.join([answers[i] for i, _ in enumerate(titan.split(batch))]),
                                        100_000),
    }
    print(f"{'step':<34} {'ns/call':>14}")
    for name, (fn, number) in cases.items():
        runs = [t / number * 1e9 for t in timeit.repeat(fn, number=number, repeat=args.repeat)]
        print(f"{name:<34} {statistics.median(runs):>8.1f} ±{max(runs) - min(runs):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
