"""What a Responses client may name on its next turn, kept by the gateway (issue 19):
output items it sends back as `item_reference`, and whole turns it continues with
`previous_response_id` (ADR 0024).

The Vercel AI SDK's OpenAI provider defaults to `store: true` and then sends earlier
assistant output back as `{"type": "item_reference", "id": ...}` instead of the item: the
OpenAI API resolves the id from what it stored.  A member that is not OpenAI Responses has
no such store, so when the gateway translates an answer for a Responses client it keeps
the output items it showed (messages, function calls, reasoning: the wire items, without
their `id` and `status`) under the ids it minted, and resolves a later reference by putting
the item back in its place in `input` before the request is parsed
(`busbar.protocols.responses.resolve_references`).

`previous_response_id` is the same idea one level up: each answered turn is kept under the
response id shown (`keep_turn`) as the turn's own input items (as the client sent them,
references resolved; not `instructions`, which OpenAI does not carry over), the output
items shown, and the id it continued.  A later request naming that id gets the chain put
back before its own input.  Each turn holds only its own items and a link, so a conversation
of n turns costs O(n), not O(n^2); a chain is read link by link.

In a pool that also has an OpenAI Responses member, that member's own (passed-through)
answers are kept too, marked as the vendor's (`VENDOR` before the JSON): the vendor
resolves its ids itself, so a reference to one leaves the request passed through untouched,
and only a turn that fails over to a member of another protocol is given the item.

A turn also keeps what the answer object showed around its items (`shown`: model,
created_at, status, incomplete_details, usage, and each output item's id and status), so
`GET /v1/responses/{id}` can give the object back (`busbar.stored_responses`, ADR 0025);
`DELETE` replaces the turn and its items by a `DELETED` mark, here and in the cluster copy,
and every replica hears of it (`busbar.state.shared.ResponseDeletions`: `forget`, and the
copies held through a reconnect that may have missed one are `doubtful` until checked).

Conversations (the Conversations API, ADR 0030: `busbar.conversations`) live here too, under
`<scope>/conversation/<id>`: a small header and one immutable chunk per addition (`CONVERSATION`).

Keys are scoped by the caller (its gateway key id, `-` without keys), so one key cannot
read another's items by id.  Values are the JSON bytes behind a mark (`VENDOR`, `TURN`):
what the bounds count and what the cluster backend shares (`busbar.state.shared.SharedEntries`).

Bounded: `max_entries` (oldest first out), `max_bytes` in all, `max_item_bytes` per item
and `max_turn_bytes` per turn (larger ones are not kept: a turn leaves a small marker
saying so) and a TTL, renewed for the turns of a chain each time it is continued
(`busbar.lru`: only a put or that renewal is a use; reading an entry is not).
I/O-free, clock injected.
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, NamedTuple

import orjson

from busbar.lru import BoundedTTLMap
from busbar.protocols.responses import kept_echo

MAX_ENTRIES = 50_000
MAX_BYTES = 64 * 1024 * 1024
MAX_ITEM_BYTES = 1024 * 1024
MAX_TURN_BYTES = 4 * 1024 * 1024
MAX_CHAIN = 10_000                   # turns one continuation may walk back (a guard; the bytes bound the rest)
TTL_S = 3600.0

_BOOKKEEPING = ("id", "status")      # the vendor's store fields: not part of an input item
VENDOR = b"v"                        # a value's mark: an item (or turn) the vendor minted, and resolves, itself
TURN = b"r"                          # a value's mark: a kept response's turn, not an item
DELETED = b"x"                       # a value's mark: a turn the client deleted (the cluster copy's tombstone)
AFFINITY = b"a"                      # a value's mark: where a vendor's response lives (busbar.affinity, ADR 0027)
CONVERSATION = b"c"                  # a value's mark: a conversation's header or chunk (busbar.conversations, ADR 0030)
# what a turn keeps of the answer object beside its items (GET /v1/responses/{id})
SHOWN_FIELDS = ("model", "created_at", "status", "incomplete_details", "usage")


class Turn(NamedTuple):
    """One kept response: what its request added to the conversation and what it answered."""
    previous: str | None             # the response it continued
    input: list                      # its own input items (references resolved), no instructions
    output: list                     # the output items shown, without id/status
    vendor: bool                     # minted by a Responses vendor (that vendor holds the chain too)
    dropped: int = 0                 # > 0: too large to keep (its size in bytes); input/output empty
    shown: dict | None = None        # the answer object's SHOWN_FIELDS and `ids` ([id, status] per output item)


def decode(data: bytes) -> tuple[bytes, bool] | None:
    """A stored item as (its JSON, whether the vendor minted it); None when the
    value under that key is a turn, not an item."""
    vendor = data[:1] == VENDOR
    if vendor:
        data = data[1:]
    if data[:1] in (TURN, DELETED, AFFINITY, CONVERSATION):
        return None
    return data, vendor


def decode_turn(data: bytes) -> Turn | None:
    """A stored turn; None when the value is an item (or unreadable)."""
    vendor = data[:1] == VENDOR
    if vendor:
        data = data[1:]
    if data[:1] != TURN:
        return None
    try:
        obj = orjson.loads(data[1:])
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    previous = obj.get("previous")
    shown = obj.get("shown")
    return Turn(previous if isinstance(previous, str) else None, obj.get("input") or [], obj.get("output") or [],
                vendor, int(obj.get("dropped") or 0), shown if isinstance(shown, dict) else None)


def deleted(data: bytes | None) -> bool:
    """Whether a stored value is the mark a deleted turn leaves."""
    return data is not None and data[:1] == DELETED


def shown_of(response: dict) -> dict:
    """What a turn keeps of the answer object `response` beside its items."""
    shown = {k: response[k] for k in SHOWN_FIELDS if response.get(k) is not None}
    echo = kept_echo(response)       # only what the request set (ADR 0024): {} for most
    if echo:
        shown["echo"] = echo
    output = response.get("output")
    shown["ids"] = [[item.get("id"), item.get("status")] if isinstance(item, dict) else [None, None]
                    for item in (output if isinstance(output, list) else ())]
    return shown


def key_of(scope: str, item_id: str) -> str:
    return f"{scope}/{item_id}"


def turn_key(scope: str, response_id: str) -> str:
    """A turn's key: its own namespace, so an item id can never name a turn."""
    return f"{scope}/response/{response_id}"


def stripped(items) -> list:
    """Items without the store's bookkeeping fields (`id`, `status`): as input items."""
    return [{k: v for k, v in item.items() if k not in _BOOKKEEPING} if isinstance(item, dict) else item
            for item in items]


class ItemStore:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
                 max_item_bytes: int = MAX_ITEM_BYTES, max_turn_bytes: int = MAX_TURN_BYTES,
                 ttl_s: float = TTL_S, now: Callable[[], float] = time.monotonic):
        self.max_item_bytes, self.max_turn_bytes = max_item_bytes, max_turn_bytes
        self._lru = BoundedTTLMap(max_entries=max_entries, max_bytes=max_bytes, ttl=ttl_s, now=now)
        # get(key) -> bytes | None and touch(key) (a turn of a chain being continued: its TTL starts
        # over and it is the last to be evicted) are the map's own, bound here: no extra call per request
        self.get, self.touch = self._lru.get, self._lru.touch
        self.kept = self.resolved = 0        # items kept, references resolved (admin, tests)
        self.turns_kept = self.continued = 0  # turns kept, requests continued from one (admin, tests)
        # keys whose copy here may predate a deletion this replica did not hear (its subscription
        # to the deletions was away): checked against the cluster copy before they are trusted
        self.doubtful: set[str] = set()
        self.rechecked = 0                   # doubtful keys checked against the cluster copy (admin)

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def size(self) -> int:
        """Bytes held (the items' JSON)."""
        return self._lru.bytes

    @property
    def max_entries(self) -> int:
        return self._lru.max_entries

    @property
    def max_bytes(self) -> int:
        return self._lru.max_bytes

    @property
    def ttl_s(self) -> float:
        return self._lru.ttl

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

    def keep_turn(self, scope: str, response_id: str, previous: str | None, input_items: list, output: list,
                  vendor: bool = False, shown: dict | None = None) -> tuple[str, bytes]:
        """Keep one answered turn under (scope, response id); returns the (key, value)
        kept, for the cluster backend.  `shown`: the answer object's fields beside its
        items (`shown_of`).  A turn over `max_turn_bytes` leaves a marker with its size
        instead, so continuing it says why it cannot be."""
        mark = (VENDOR + TURN) if vendor else TURN
        turn = {"previous": previous, "input": input_items, "output": stripped(output)}
        if shown is not None:
            turn["shown"] = shown
        data = mark + orjson.dumps(turn)
        if len(data) > self.max_turn_bytes:
            data = mark + orjson.dumps({"previous": previous, "dropped": len(data)})
        key = turn_key(scope, response_id)
        self.put(key, data)
        self.turns_kept += 1
        return key, data

    def put(self, key: str, data: bytes, ttl_s: float | None = None) -> None:
        """One entry as stored (also what a cluster fetch brings in)."""
        self._lru.put(key, data, len(data), ttl_s)

    def delete(self, key: str) -> bool:
        """Forget one entry; whether it was held (and not expired)."""
        return self._lru.pop(key) is not None

    def forget(self, keys: Iterable[str]) -> int:
        """A deleted response's turn and items: each replaced by the `DELETED` mark (for the
        TTL), so a continuation here refuses it without asking the cluster, and a copy fetched
        before the deletion cannot come back (`take_in`).  Returns how many were held."""
        held = 0
        for key in keys:
            data = self.get(key)
            if data is not None and not deleted(data):
                held += 1
            self.put(key, DELETED)
            self.doubtful.discard(key)
        return held

    def take_in(self, key: str, data: bytes) -> bytes:
        """A value fetched from the cluster copy, kept here unless this replica holds the
        mark of its deletion (heard while the fetch was on its way); returns what is held."""
        held = self.get(key)
        if deleted(held):
            return held
        self.put(key, data)
        self.doubtful.discard(key)
        return data

    def doubt_all(self) -> None:
        """Every copy held now may have missed a deletion (the subscription was away)."""
        self.doubtful = set(self._lru.keys())
