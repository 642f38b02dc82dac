"""Output items a Responses client sends back as `item_reference` (issue 19).

The Vercel AI SDK's OpenAI provider defaults to `store: true` and then sends earlier
assistant output back as `{"type": "item_reference", "id": ...}` instead of the item: the
OpenAI API resolves the id from what it stored.  A member that is not OpenAI Responses has
no such store, so when the gateway translates an answer for a Responses client it keeps
the output items it showed (messages, function calls, reasoning: the wire items, without
their `id` and `status`) under the ids it minted, and resolves a later reference by putting
the item back in its place in `input` before the request is parsed
(`busbar.protocols.responses.resolve_references`).

In a pool that also has an OpenAI Responses member, that member's own (passed-through)
answers are kept too, marked as the vendor's (`VENDOR` before the JSON): the vendor
resolves its ids itself, so a reference to one leaves the request passed through untouched,
and only a turn that fails over to a member of another protocol is given the item.

Keys are scoped by the caller (its gateway key id, `-` without keys), so one key cannot
read another's items by id.  Values are the item's JSON bytes: what the bounds count and
what the cluster backend shares (`busbar.state.shared.SharedEntries`).

Bounded: `max_entries` (oldest first out), `max_bytes` in all, `max_item_bytes` per item
(larger ones are not kept) and a TTL.  I/O-free, clock injected.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Callable, Iterable

import orjson

MAX_ENTRIES = 50_000
MAX_BYTES = 64 * 1024 * 1024
MAX_ITEM_BYTES = 1024 * 1024
TTL_S = 3600.0

_BOOKKEEPING = ("id", "status")      # the vendor's store fields: not part of an input item
VENDOR = b"v"                        # a value's mark: an item the vendor minted (and resolves) itself


def decode(data: bytes) -> tuple[bytes, bool]:
    """A stored value as (the item's JSON, whether the vendor minted it)."""
    if data[:1] == VENDOR:
        return data[1:], True
    return data, False


def key_of(scope: str, item_id: str) -> str:
    return f"{scope}/{item_id}"


class ItemStore:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 max_item_bytes: int = MAX_ITEM_BYTES, ttl_s: float = TTL_S,
                 now: Callable[[], float] = time.monotonic):
        self.max_entries, self.max_bytes, self.max_item_bytes, self.ttl_s = (max_entries, max_bytes,
                                                                             max_item_bytes, ttl_s)
        self._now = now
        self._entries: OrderedDict[str, tuple[bytes, float]] = OrderedDict()
        self._bytes = 0
        self.kept = self.resolved = 0        # items kept, references resolved (admin, tests)

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """Bytes held (the items' JSON)."""
        return self._bytes

    def keep(self, scope: str, items: Iterable[dict], vendor: bool = False) -> list[tuple[str, bytes]]:
        """Keep each output item that has an `id` under (scope, id) (`vendor`: ids the
        vendor minted); returns the (key, value) pairs kept, for the cluster backend."""
        kept = []
        for item in items:
            item_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(item_id, str) or not item_id:
                continue
            data = orjson.dumps({k: v for k, v in item.items() if k not in _BOOKKEEPING})
            if vendor:
                data = VENDOR + data
            if len(data) > self.max_item_bytes:
                continue
            key = key_of(scope, item_id)
            self.put(key, data)
            kept.append((key, data))
        self.kept += len(kept)
        return kept

    def put(self, key: str, data: bytes, ttl_s: float | None = None) -> None:
        """One entry as stored (also what a cluster fetch brings in)."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old[0])
        self._entries[key] = (data, self._now() + (self.ttl_s if ttl_s is None else ttl_s))
        self._bytes += len(data)
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            _, (gone, _) = self._entries.popitem(last=False)
            self._bytes -= len(gone)

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._now():
            del self._entries[key]
            self._bytes -= len(entry[0])
            return None
        return entry[0]
