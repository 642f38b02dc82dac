"""Response affinity (ADR 0027): a response id a Responses vendor minted goes back to the
provider and key that minted it.

A Responses vendor keeps a response in the project (account) of the key that made it:
`previous_response_id`, `GET`/`DELETE /v1/responses/{id}`, `.../input_items` and
`.../cancel` succeed only with that key, at that vendor.  A pool rotating keys of several
projects (or several Responses vendors) would send half the continuations to a key that
answers `previous_response_not_found`.  So when a Responses member's answer passes through
(buffered or streamed, `store` not false), the gateway remembers, under the caller's scope,
`response id -> Pin(provider, key id, member)`: the key's safe id (`<provider>#<i>:<sha256
prefix>`, as records and metrics name it), never the secret; nothing of the body.

A continuation naming such an id is pinned (`Needs.pin`, busbar.routing.router: only that
provider's members of the client's protocol, on that key); a retrieve, delete, input-items
list or cancel is forwarded to that provider with that key (`busbar.stored_responses`).

Bounded like the item store (`busbar.lru`: `max_entries`, TTL renewed when a continuation
uses the entry); shared through the cluster copy of the item store when the state backend
is Redis, under `<scope>/affinity/<id>`, its value behind the `AFFINITY` mark, so no item
or turn lookup ever reads one.  I/O-free, clock injected.
"""
from __future__ import annotations

import time
from typing import Callable, NamedTuple

from busbar.item_store import AFFINITY       # a value's mark in the cluster copy (one table of marks)
from busbar.lru import BoundedTTLMap

MAX_ENTRIES = 100_000            # ~150 bytes each with the key: ~15 MB at most
TTL_S = 24 * 3600.0              # after the last answer or continuation that used it


class Pin(NamedTuple):
    """Where a vendor-minted response lives: the provider and key that made it (the member
    that answered, for messages)."""
    provider: str
    key_id: str
    member: str


def encode(pin: Pin) -> bytes:
    return AFFINITY + "\n".join(pin).encode()


def decode(data: bytes | None) -> Pin | None:
    """An encoded pin; None for anything else (an item, a turn, a tombstone, garbage)."""
    if not data or data[:1] != AFFINITY:
        return None
    parts = data[1:].decode("utf-8", "replace").split("\n")
    if len(parts) != 3 or not all(parts):
        return None
    return Pin(*parts)


def affinity_key(scope: str, response_id: str) -> str:
    """The entry's key: the caller's scope first, as the item store's, in a namespace no item id reaches."""
    return f"{scope}/affinity/{response_id}"


class ResponseAffinity:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S,
                 now: Callable[[], float] = time.monotonic):
        self._lru = BoundedTTLMap(max_entries=max_entries, ttl=ttl_s, now=now)
        self.remembered = self.pinned = self.forwarded = 0      # for admin and tests

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def ttl_s(self) -> float:
        return self._lru.ttl

    def remember(self, scope: str, response_id: str, pin: Pin) -> tuple[str, bytes]:
        """Keep where `response_id` lives; returns the (key, value) for the cluster copy."""
        key, data = affinity_key(scope, response_id), encode(pin)
        self._lru.put(key, data, 0)
        self.remembered += 1
        return key, data

    def get(self, key: str) -> Pin | None:
        return decode(self._lru.get(key))

    def take_in(self, key: str, data: bytes) -> Pin | None:
        """A value fetched from the cluster copy, kept here too."""
        pin = decode(data)
        if pin is not None:
            self._lru.put(key, data, 0)
        return pin

    def touch(self, key: str) -> None:
        self._lru.touch(key)

    def status(self) -> dict:
        """For `/admin/api/state`: counts only, never an id or a key."""
        return {"entries": len(self), "max_entries": self._lru.max_entries, "ttl_s": self.ttl_s,
                "remembered": self.remembered, "pinned": self.pinned, "forwarded": self.forwarded}
