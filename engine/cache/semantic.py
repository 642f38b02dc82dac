"""The semantic cache's index: the embeddings of cached prompts, nearest by cosine.

One index per pool, partitioned: a prompt is only ever compared with the
prompts of its own partition, the digest of everything about the request
but its last user text (`busbar.cache.canonical.semantic_split`) together
with the pool and the client scope.  So a hit never crosses client keys,
system prompts, tool sets, response formats, sampling settings or earlier
turns: that is structural, not a property of the threshold, and the search
space is one partition, not the whole cache.

Each partition is one contiguous float32 matrix of unit rows (grown by
doubling; freed rows are zeroed and reused) and a parallel list of entry
keys; a search is one matrix-vector product and an argmax, exact (ADR 0020
has the measurements against HNSW libraries).  Pure, no I/O, no clock;
numpy is imported on first use (`available`): it is the `semantic` extra.
The index is bounded by the pool's `max_entries` (oldest insertions go
first) and told by the store when an entry leaves (`discard`).
"""
from __future__ import annotations

from collections import OrderedDict

INITIAL_ROWS = 16


def available() -> bool:
    """Whether numpy (the `busbar[semantic]` extra) can be imported."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def unit(vector):
    """`vector` as a float32 unit vector, or None (empty, zero, not finite)."""
    import numpy as np
    try:
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        return None
    if not q.size:
        return None
    norm = float(np.sqrt(q @ q))
    if not norm or norm != norm or norm == float("inf"):
        return None
    return q / np.float32(norm)


class _Partition:
    __slots__ = ("matrix", "keys", "free", "high")

    def __init__(self, dims: int):
        import numpy as np
        self.matrix = np.zeros((INITIAL_ROWS, dims), dtype=np.float32)
        self.keys: list[str | None] = [None] * INITIAL_ROWS
        self.free: list[int] = []        # freed rows below `high`, reused first
        self.high = 0                    # rows [0, high) are searched

    def add(self, key: str, q) -> int:
        if self.free:
            row = self.free.pop()
        else:
            row = self.high
            if row == len(self.keys):
                import numpy as np
                grown = np.zeros((2 * row, self.matrix.shape[1]), dtype=np.float32)
                grown[:row] = self.matrix
                self.matrix = grown
                self.keys.extend([None] * row)
            self.high += 1
        self.matrix[row] = q
        self.keys[row] = key
        return row

    def remove(self, row: int) -> None:
        self.matrix[row] = 0.0          # scores 0: below every threshold (> 0)
        self.keys[row] = None
        if row == self.high - 1:
            self.high -= 1
            while self.high and self.keys[self.high - 1] is None:
                self.high -= 1
            self.free = [r for r in self.free if r < self.high]
        else:
            self.free.append(row)

    @property
    def live(self) -> int:
        return self.high - len(self.free)


class SemanticIndex:
    """Partition -> the unit embeddings of its cached prompts and their entry keys."""

    def __init__(self, max_entries: int = 100_000):
        self.max_entries = max_entries
        self.parts: dict[str, _Partition] = {}
        self.where: OrderedDict[str, tuple[str, int]] = OrderedDict()   # key -> (partition, row), oldest first

    def __len__(self) -> int:
        return len(self.where)

    def size(self, partition: str) -> int:
        """Rows a search of `partition` scans (live and freed)."""
        part = self.parts.get(partition)
        return 0 if part is None else part.high * part.matrix.shape[1]

    def add(self, partition: str, key: str, vector) -> bool:
        """Index `key`'s prompt embedding (replacing an older one of the same
        key).  False when the vector is unusable or of another size than the
        partition's (a pool should hold one embedding model)."""
        q = unit(vector)
        if q is None:
            return False
        if key in self.where:
            self.discard(key)
        part = self.parts.get(partition)
        if part is None:
            part = self.parts[partition] = _Partition(q.size)
        elif part.matrix.shape[1] != q.size:
            return False
        self.where[key] = (partition, part.add(key, q))
        while len(self.where) > self.max_entries:
            self.discard(next(iter(self.where)))
        return True

    def discard(self, key: str) -> None:
        """Forget `key` (its entry expired, was evicted or invalidated)."""
        found = self.where.pop(key, None)
        if found is None:
            return
        partition, row = found
        part = self.parts[partition]
        part.remove(row)
        if not part.live:
            del self.parts[partition]

    def clear(self) -> None:
        self.parts.clear()
        self.where.clear()

    # a search in two steps, so a large partition's scan can run off the event
    # loop (numpy releases the GIL) and its answer be confirmed back on it
    def scan(self, partition: str, q) -> tuple[int, float] | None:
        """The best row of `partition` for the unit vector `q` and its cosine
        (None: empty partition or another vector size).  Reads a snapshot of
        the partition's matrix, so it may run in a worker thread."""
        part = self.parts.get(partition)
        if part is None:
            return None
        matrix, high = part.matrix, part.high
        if not high or matrix.shape[1] != q.size:
            return None
        scores = matrix[:high] @ q
        row = int(scores.argmax())
        return row, float(scores[row])

    def confirm(self, partition: str, row: int, q, threshold: float) -> tuple[str, float] | None:
        """The key at `row` and its cosine, recomputed now (the row may have
        been reused while a worker thread scanned), when it reaches `threshold`."""
        part = self.parts.get(partition)
        if part is None or row >= part.high or part.keys[row] is None or part.matrix.shape[1] != q.size:
            return None
        score = float(part.matrix[row] @ q)
        return (part.keys[row], score) if score >= threshold else None

    def search(self, partition: str, vector, threshold: float) -> tuple[str, float] | None:
        """The cached prompt nearest to `vector` in `partition`, as (entry key,
        cosine), when its cosine is at least `threshold`; else None."""
        q = unit(vector)
        if q is None:
            return None
        best = self.scan(partition, q)
        if best is None or best[1] < threshold:
            return None
        return self.confirm(partition, best[0], q, threshold)
