"""Semantic cache: nearest-neighbour search over cached prompt embeddings.

Part 1 (`index`, the default): the candidates for the per-partition index of
`busbar.cache.semantic`, at 10k and 100k entries of 384 and 1536 dimensions
(unit float32 vectors; queries are stored vectors plus noise, so each has a
true nearest neighbour): numpy brute force (one contiguous float32 matrix,
one matrix-vector product and argmax, BLAS on one thread as on the event
loop), faiss IndexFlatIP (the same, faiss' kernel), and the HNSW graphs of
usearch, hnswlib and faiss.  Each case runs in its own process (clean
memory figure: the resident-set growth), under a time budget: a build that
does not finish is reported as such.  Per case: build time (all entries at
once; and the per-insert cost a fill pays), query p50 / p99, recall@1
against the exact answer, memory.

Part 2 (`--lookup`): the gateway's own cost of a semantic miss and a
semantic hit, in process (`SemanticIndex` + `ResponseCache` with the
embedding call replaced by a precomputed vector): everything the cache adds
on top of the embedding call itself.

    python bench/bench_semantic.py [--sizes 10000,100000] [--dims 384,1536] [--budget 240]
    python bench/bench_semantic.py --lookup
Results are written to bench/results/semantic.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

QUERIES = 400
LIBS = ("numpy", "faiss_flat", "usearch", "hnswlib", "faiss_hnsw")


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def data_for(n: int, dims: int, queries: int = QUERIES):
    import numpy as np
    rng = np.random.default_rng(7)
    data = rng.standard_normal((n, dims), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    qs = data[rng.integers(0, n, queries)] + np.float32(0.3 / dims ** 0.5) * rng.standard_normal((queries, dims),
                                                                                               dtype=np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    return np.ascontiguousarray(data), np.ascontiguousarray(qs)


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def run_case(lib: str, n: int, dims: int) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits
    base = rss_mib()
    data, qs = data_for(n, dims)
    truth = np.argmax(qs @ data.T, axis=1)
    row: dict = {"lib": lib, "n": n, "dims": dims}
    cpu_start = time.process_time()       # the build's CPU (all its threads; queries' CPU is per query)
    with threadpool_limits(1):
        if lib == "numpy":
            t0 = time.perf_counter()
            # as busbar.cache.semantic grows it: a preallocated matrix, rows copied in
            matrix = np.empty((n, dims), dtype=np.float32)
            for start in range(0, n, 1000):
                matrix[start:start + 1000] = data[start:start + 1000]
            row["build_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(1000):
                matrix[i] = data[i]
            row["insert_us"] = (time.perf_counter() - t0) * 1e6 / 1000
            del data

            def search(q):
                scores = matrix @ q
                return int(scores.argmax())
        elif lib == "faiss_flat":
            import faiss
            faiss.omp_set_num_threads(1)
            index = faiss.IndexFlatIP(dims)
            t0 = time.perf_counter()
            index.add(data)
            row["build_s"] = time.perf_counter() - t0
            del data

            def search(q):
                return int(index.search(q[None, :], 1)[1][0, 0])
        elif lib == "usearch":
            from usearch.index import Index
            index = Index(ndim=dims, metric="ip", dtype="f32", connectivity=16, expansion_add=128, expansion_search=64)
            t0 = time.perf_counter()
            index.add(np.arange(n - 1000), data[:n - 1000], threads=2)
            row["build_s"] = (time.perf_counter() - t0) * n / (n - 1000)
            t0 = time.perf_counter()
            for i in range(n - 1000, n):
                index.add(i, data[i], threads=1)
            row["insert_us"] = (time.perf_counter() - t0) * 1e6 / 1000
            del data

            def search(q):
                return int(index.search(q, 1, threads=1).keys[0])
        elif lib == "hnswlib":
            import hnswlib
            index = hnswlib.Index(space="ip", dim=dims)
            index.init_index(max_elements=n, ef_construction=128, M=16)
            t0 = time.perf_counter()
            index.add_items(data[:n - 1000], np.arange(n - 1000), num_threads=2)
            row["build_s"] = (time.perf_counter() - t0) * n / (n - 1000)
            t0 = time.perf_counter()
            for i in range(n - 1000, n):
                index.add_items(data[i:i + 1], [i], num_threads=1)
            row["insert_us"] = (time.perf_counter() - t0) * 1e6 / 1000
            index.set_ef(64)
            index.set_num_threads(1)
            del data

            def search(q):
                return int(index.knn_query(q, k=1)[0][0, 0])
        elif lib == "faiss_hnsw":
            import faiss
            faiss.omp_set_num_threads(2)
            index = faiss.IndexHNSWFlat(dims, 16, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 128
            t0 = time.perf_counter()
            index.add(data[:n - 1000])
            row["build_s"] = (time.perf_counter() - t0) * n / (n - 1000)
            faiss.omp_set_num_threads(1)
            t0 = time.perf_counter()
            for i in range(n - 1000, n):
                index.add(data[i:i + 1])
            row["insert_us"] = (time.perf_counter() - t0) * 1e6 / 1000
            index.hnsw.efSearch = 64
            del data

            def search(q):
                return int(index.search(q[None, :], 1)[1][0, 0])
        else:
            raise SystemExit(f"unknown lib {lib}")
        row["memory_mib"] = round(rss_mib() - base, 1)
        build_cpu = time.process_time() - cpu_start      # data generation included (same for every lib)
        for q in qs[:20]:       # warm
            search(q)
        times, cpu, agree = [], [], 0
        for q, t in zip(qs, truth):
            c0 = time.thread_time_ns()
            t0 = time.perf_counter()
            found = search(q)
            times.append((time.perf_counter() - t0) * 1e6)
            cpu.append((time.thread_time_ns() - c0) / 1000)
            agree += found == int(t)
    row.update(p50_us=round(statistics.median(times), 1), p99_us=round(pct(times, 0.99), 1),
               cpu_p50_us=round(statistics.median(cpu), 1), cpu_p99_us=round(pct(cpu, 0.99), 1),
               build_cpu_s=round(build_cpu, 2),
               recall_at_1=agree / len(qs), build_s=round(row["build_s"], 3))
    if "insert_us" in row:
        row["insert_us"] = round(row["insert_us"], 1)
    return row


def index_bench(sizes, dims_list, libs, budget: float) -> list[dict]:
    rows = []
    for dims in dims_list:
        for n in sizes:
            for lib in libs:
                cmd = [sys.executable, __file__, "--case", f"{lib}:{n}:{dims}"]
                t0 = time.perf_counter()
                try:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=budget)
                except subprocess.TimeoutExpired:
                    row = {"lib": lib, "n": n, "dims": dims, "error": f"did not finish within {budget:g} s"}
                else:
                    if done.returncode != 0:
                        row = {"lib": lib, "n": n, "dims": dims, "error": done.stderr.strip()[-300:]}
                    else:
                        row = json.loads(done.stdout.strip().splitlines()[-1])
                row["wall_s"] = round(time.perf_counter() - t0, 1)
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def lookup_bench(sizes=(100, 1_000, 10_000, 100_000), dims: int = 384, runs: int = 5, per_run: int = 400) -> dict:
    """The cache's own cost of a semantic lookup after an exact miss, without
    the embedding call (its vector is precomputed): `decide` (the canonical
    key and the partition split), the exact `get`, and `nearest` (the index
    scan over `n` entries of the one partition, the confirm, the entry fetch).
    A hit and a miss (a vector far from every stored one), BLAS on one thread."""
    import numpy as np
    import trio
    from threadpoolctl import threadpool_limits
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from busbar import ir
    from busbar.cache import Caches, ResponseCache
    from busbar.cache.entry import Entry
    out = {}
    rng = np.random.default_rng(3)

    def request(text):
        return ir.Request([ir.Message("user", [ir.Text(text)])], system=[ir.Text("Be brief.")], max_tokens=64)

    async def measure(cache, qs, texts):
        times = []
        for q, text in zip(qs, texts):
            t0 = time.perf_counter()
            lookup = cache.decide("smart", [], request(text), "-")
            if await cache.get(lookup) is None:
                await cache.nearest(lookup, q)
            times.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(times)

    with threadpool_limits(1):
        for n in sizes:
            cache = ResponseCache.from_config({"smart": {"cache": {"mode": "semantic", "embed_pool": "emb",
                                                                   "max_entries": n + per_run}}}, Caches())
            data = rng.standard_normal((n, dims), dtype=np.float32)
            data /= np.linalg.norm(data, axis=1, keepdims=True)
            partition = cache.decide("smart", [], request("x"), "-").partition
            store, index = cache.stores["smart"], cache.indexes["smart"]
            answer = Entry(ir.Response("r", "m", [ir.Text("an answer")]), "m", 0.0)
            for i in range(n):
                store.put_now(f"k{i}", answer, 3600, n + per_run, 10)
                index.add(partition, f"k{i}", data[i])
            texts = [f"question {i} in other words" for i in range(per_run)]
            near = data[np.arange(per_run) % n] + np.float32(0.1 / dims ** 0.5) * rng.standard_normal((per_run, dims),
                                                                                      dtype=np.float32)
            far = rng.standard_normal((per_run, dims), dtype=np.float32)
            res = {}
            for name, qs in (("hit", near), ("miss", far)):
                medians = [trio.run(measure, cache, qs, texts) for _ in range(runs)]
                res[f"{name}_us_median"] = round(statistics.median(medians), 1)
                res[f"{name}_us_spread"] = round(max(medians) - min(medians), 1)
            assert cache.stats["smart"].semantic_hits == runs * per_run, "the near queries should all hit"
            t0 = time.perf_counter()
            for i in range(per_run):
                index.add(partition, f"new{i}", far[i])
            res["index_add_us"] = round((time.perf_counter() - t0) * 1e6 / per_run, 1)
            out[str(n)] = res
            print(f"lookup n={n} dims={dims}: {res}", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--dims", default="384,1536")
    parser.add_argument("--libs", default=",".join(LIBS))
    parser.add_argument("--budget", type=float, default=240.0, help="seconds per case before it counts as not finished")
    parser.add_argument("--lookup", action="store_true", help="the gateway's own semantic lookup cost")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "semantic.json"))
    args = parser.parse_args()
    if args.case:
        lib, n, dims = args.case.split(":")
        print(json.dumps(run_case(lib, int(n), int(dims))))
        return 0
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.exists() else {}
    results["load_average_start"] = os.getloadavg()
    if args.lookup:
        results["lookup"] = lookup_bench()
    else:
        rows = index_bench([int(x) for x in args.sizes.split(",")], [int(x) for x in args.dims.split(",")],
                           args.libs.split(","), args.budget)
        fresh = {(r["lib"], r["n"], r["dims"]) for r in rows}      # cases not re-run keep their figures
        results["index"] = [r for r in results.get("index", ()) if (r["lib"], r["n"], r["dims"]) not in fresh] + rows
    results["load_average_end"] = os.getloadavg()
    out_path.parent.mkdir(exist_ok=True)
    out_path.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
