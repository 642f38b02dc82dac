"""The timing loop the pure micro-benchmarks share: warm up, then the median
of 5 runs of N calls, in µs per call, with the spread."""
import statistics
import time


def measure(label: str, fn, n: int, width: int = 62) -> float:
    for _ in range(min(1000, n)):
        fn()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t) / n * 1e6)
    median = statistics.median(runs)
    print(f"{label:{width}s} {median:7.2f} µs (spread {min(runs):.2f}-{max(runs):.2f}, median of 5 x {n})")
    return median
