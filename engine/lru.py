"""The bounded, expiring map the per-process stores keep their entries in: the response
cache's `MemoryStore`, the `ItemStore` and the `ReasoningStore` (ADR 0016's amendment).

An OrderedDict of key -> (expires, size, value), oldest first.  A `put` makes its key the
newest, then drops the oldest while there are more than `max_entries` or the sizes the
callers gave add up to more than `max_bytes` (inf: no byte bound).  An entry expires when
`now() >= expires`; a `get` of an expired one drops it and `sweep` drops them all, but until
then it still counts (len, `bytes`) and is evicted in its turn like any other.  `dropped`,
when set, is told of every key that leaves except by being replaced.  A size is the value's,
never the key's: the cache's encoded entry, the item store's JSON; the reasoning store gives 0.

The stores differ in one thing, a parameter: whether a `get` is a use (`get_renews_order`:
the hit becomes the newest, least recently used first out) or only a `put` or `touch` is
(oldest kept first out).  A `get` never renews the TTL; `touch` does.

I/O-free, clock injected (`now`: seconds).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any


class BoundedTTLMap:
    __slots__ = ("entries", "bytes", "max_entries", "max_bytes", "ttl", "get_renews_order", "dropped", "_now")

    def __init__(self, *, max_entries: int, ttl: float, now: Callable[[], float], max_bytes: float = math.inf,
                 get_renews_order: bool = False, dropped: Callable[[str], None] | None = None):
        self.entries: OrderedDict[str, tuple[float, int, Any]] = OrderedDict()   # read it, never write it
        self.bytes = 0                       # the sizes given with the entries held
        self.max_entries, self.max_bytes, self.ttl = max_entries, max_bytes, ttl
        self.get_renews_order = get_renews_order
        self.dropped = dropped
        self._now = now

    def __len__(self) -> int:
        return len(self.entries)

    def keys(self) -> Iterator[str]:
        """Every key held, expired or not, oldest first."""
        return iter(self.entries)

    def get(self, key: str) -> Any:
        """The value under `key`; None when absent or expired (an expired one is dropped)."""
        item = self.entries.get(key)
        if item is None:
            return None
        if item[0] <= self._now():
            self._drop(key)
            return None
        if self.get_renews_order:
            self.entries.move_to_end(key)
        return item[2]

    def live(self, key: str) -> bool:
        """Whether `key` is held and not expired; nothing changes."""
        item = self.entries.get(key)
        return item is not None and item[0] > self._now()

    def peek(self, key: str) -> Any:
        """The value under `key`, expired or not; nothing changes."""
        item = self.entries.get(key)
        return None if item is None else item[2]

    def put(self, key: str, value: Any, size: int = 0, ttl: float | None = None) -> None:
        """Hold `value` (`size`: what it counts against `max_bytes`) for `ttl` seconds (None:
        the map's), as the newest; then drop the oldest while over a bound, the new one too if
        it alone is (a caller that refuses those checks first)."""
        entries = self.entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= old[1]             # replaced, not dropped
        entries[key] = (self._now() + (self.ttl if ttl is None else ttl), size, value)
        self.bytes += size
        while len(entries) > self.max_entries or self.bytes > self.max_bytes:
            gone, item = entries.popitem(last=False)
            self.bytes -= item[1]
            if self.dropped is not None:
                self.dropped(gone)

    def pop(self, key: str) -> Any:
        """Drop `key`; its value if it was held and not expired, else None."""
        item = self.entries.get(key)
        if item is None:
            return None
        self._drop(key)
        return item[2] if item[0] > self._now() else None

    def touch(self, key: str) -> None:
        """`key` in use again: its TTL (the map's) starts over and it becomes the newest.  An
        expired one not yet dropped is renewed too."""
        item = self.entries.get(key)
        if item is not None:
            self.entries[key] = (self._now() + self.ttl, item[1], item[2])
            self.entries.move_to_end(key)

    def sweep(self) -> int:
        """Drop every expired entry; how many."""
        now = self._now()
        dead = [key for key, item in self.entries.items() if item[0] <= now]
        for key in dead:
            self._drop(key)
        return len(dead)

    def clear(self) -> int:
        """Drop every entry, oldest first; how many there were."""
        n = len(self.entries)
        for key in list(self.entries):
            self._drop(key)
        return n

    def _drop(self, key: str) -> None:
        self.bytes -= self.entries.pop(key)[1]
        if self.dropped is not None:
            self.dropped(key)
