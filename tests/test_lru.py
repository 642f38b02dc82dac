"""The bounded, expiring map the three per-process stores keep their entries in (busbar.lru),
against a reference written as plainly as possible: a list, oldest first."""
from __future__ import annotations

import math

import pytest
from hypothesis import given, settings, strategies as st

from busbar.lru import BoundedTTLMap

pytestmark = pytest.mark.pure

KEYS = st.sampled_from("abcdef")


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


class Reference:
    """What the map should do: rows [key, expires, size, value], oldest first."""

    def __init__(self, max_entries, max_bytes, ttl, get_renews_order):
        self.rows, self.dropped = [], []
        self.max_entries, self.max_bytes, self.ttl = max_entries, max_bytes, ttl
        self.get_renews_order = get_renews_order

    def _find(self, key):
        return next((row for row in self.rows if row[0] == key), None)

    def _drop(self, row):
        self.rows.remove(row)
        self.dropped.append(row[0])

    def put(self, now, key, value, size, ttl):
        row = self._find(key)
        if row is not None:
            self.rows.remove(row)            # replaced: not told
        self.rows.append([key, now + (self.ttl if ttl is None else ttl), size, value])
        while len(self.rows) > self.max_entries or sum(r[2] for r in self.rows) > self.max_bytes:
            self._drop(self.rows[0])

    def get(self, now, key):
        row = self._find(key)
        if row is None:
            return None
        if row[1] <= now:
            self._drop(row)
            return None
        if self.get_renews_order:
            self.rows.remove(row)
            self.rows.append(row)
        return row[3]

    def live(self, now, key):
        row = self._find(key)
        return row is not None and row[1] > now

    def peek(self, now, key):
        row = self._find(key)
        return None if row is None else row[3]

    def pop(self, now, key):
        row = self._find(key)
        if row is None:
            return None
        self._drop(row)
        return row[3] if row[1] > now else None

    def touch(self, now, key):
        row = self._find(key)
        if row is not None:
            self.rows.remove(row)
            self.rows.append([key, now + self.ttl, row[2], row[3]])

    def sweep(self, now):
        dead = [row for row in self.rows if row[1] <= now]
        for row in dead:
            self._drop(row)
        return len(dead)

    def clear(self, now):
        n = len(self.rows)
        for row in list(self.rows):
            self._drop(row)
        return n


OPS = st.one_of(
    st.tuples(st.just("put"), KEYS, st.integers(0, 99), st.integers(0, 40),
              st.none() | st.sampled_from([0.0, 1.0, 5.0])),
    st.tuples(st.sampled_from(["get", "live", "peek", "pop", "touch"]), KEYS),
    st.tuples(st.sampled_from(["sweep", "clear"])),
    st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 3.0])),
    st.tuples(st.just("bounds"), st.integers(0, 5), st.sampled_from([math.inf, 0, 50, 100])),   # a pool's reload
)


@settings(max_examples=400, deadline=None)
@given(max_entries=st.integers(0, 5), max_bytes=st.sampled_from([math.inf, 0, 30, 100]),
       ttl=st.sampled_from([0.0, 1.0, 2.0, 10.0]), get_renews_order=st.booleans(), ops=st.lists(OPS, max_size=60))
def test_the_map_does_what_a_plain_list_of_rows_does(max_entries, max_bytes, ttl, get_renews_order, ops):
    clock, told = Clock(), []
    lru = BoundedTTLMap(max_entries=max_entries, max_bytes=max_bytes, ttl=ttl, now=clock,
                        get_renews_order=get_renews_order, dropped=told.append)
    ref = Reference(max_entries, max_bytes, ttl, get_renews_order)
    for op, *args in ops:
        if op == "wait":
            clock.t += args[0]
        elif op == "bounds":
            lru.max_entries, lru.max_bytes = ref.max_entries, ref.max_bytes = args
        elif op == "put":
            key, value, size, item_ttl = args
            assert lru.put(key, value, size, item_ttl) is None
            ref.put(clock.t, key, value, size, item_ttl)
        else:
            assert getattr(lru, op)(*args) == getattr(ref, op)(clock.t, *args), (op, args)
        assert [(k, *item) for k, item in lru.entries.items()] == [tuple(row) for row in ref.rows]
        assert list(lru.keys()) == [row[0] for row in ref.rows] and len(lru) == len(ref.rows)
        assert lru.bytes == sum(row[2] for row in ref.rows)
        assert told == ref.dropped


def test_a_get_renews_the_order_only_when_asked_and_never_the_ttl():
    clock = Clock()
    for renews, evicted in ((True, "b"), (False, "a")):
        lru = BoundedTTLMap(max_entries=2, ttl=10.0, now=clock, get_renews_order=renews)
        lru.put("a", 1)
        lru.put("b", 2)
        assert lru.get("a") == 1
        lru.put("c", 3)
        assert evicted not in list(lru.keys()), renews
    lru = BoundedTTLMap(max_entries=2, ttl=10.0, now=clock, get_renews_order=True)
    lru.put("a", 1)
    clock.t = 9.0
    assert lru.get("a") == 1
    clock.t = 10.0
    assert lru.get("a") is None and len(lru) == 0          # expired at put + ttl, however often read


def test_an_entry_larger_than_the_byte_bound_alone_empties_the_map_with_itself():
    """What the item store has always done with one; the response cache refuses those first."""
    lru = BoundedTTLMap(max_entries=10, max_bytes=100, ttl=10.0, now=Clock())
    lru.put("a", 1, 60)
    lru.put("b", 2, 30)
    lru.put("big", 3, 101)
    assert len(lru) == 0 and lru.bytes == 0


def test_each_store_keeps_its_own_idea_of_a_use():
    """The response cache is an LRU (a hit is a use); the item and reasoning stores evict the
    oldest kept (a read is not a use; an item store's `touch` is)."""
    from busbar import ir
    from busbar.cache.store import MemoryStore
    from busbar.item_store import ItemStore
    from busbar.reasoning_store import ReasoningStore

    cache = MemoryStore(Clock())
    for key in "ab":
        cache.put_now(key, key, 10.0, 2, 1)
    cache.get_now("a")
    cache.put_now("c", "c", 10.0, 2, 1)
    assert [k for k in "abc" if cache.get_now(k)] == ["a", "c"]

    items = ItemStore(max_entries=2, now=Clock())
    for key in "ab":
        items.put(key, b"{}")
    items.get("a")
    items.put("c", b"{}")
    assert [k for k in "abc" if items.get(k)] == ["b", "c"]
    items.touch("b")
    items.put("d", b"{}")
    assert [k for k in "bcd" if items.get(k)] == ["b", "d"]

    reasoning = ReasoningStore(max_entries=2, now=Clock())
    signed = ir.Reasoning("think", "SIG", "anthropic")
    for key in "ab":
        reasoning.keep([signed, ir.ToolCall(key, "f", {})])
    reasoning.restore(ir.Request(messages=[ir.Message(ir.ASSISTANT, [ir.ToolCall("a", "f", {})])]))
    reasoning.keep([signed, ir.ToolCall("c", "f", {})])
    assert reasoning.missing(ir.Request(messages=[ir.Message(ir.ASSISTANT, [ir.ToolCall(k, "f", {})
                                                                             for k in "abc"])])) == ["a"]
