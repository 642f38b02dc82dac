"""The three per-process stores' own put/get at capacity (every put evicts one), over the
map they share (busbar.lru, ADR 0016's 2026-12-07 amendment).  Median of 5 runs x N, µs per call.

Usage: python bench/bench_lru.py [N]
"""
import itertools
import sys

from busbar import ir
from busbar.cache.store import MemoryStore
from busbar.item_store import ItemStore
from busbar.reasoning_store import ReasoningStore

import microbench  # bench/microbench.py: the shared timing loop

CAP = 1000


def measure(label, fn, n):
    return microbench.measure(label, fn, n, width=48)


def main(n):
    keys = [f"key-{i:06d}" for i in range(4 * CAP)]
    hot = keys[-1]

    cache, entry = MemoryStore(), object()
    next_key = itertools.cycle(keys).__next__
    for key in keys[:CAP]:
        cache.put_now(key, entry, 3600.0, CAP, 100, 10**9)
    measure("cache put_now (evicts one)", lambda: cache.put_now(next_key(), entry, 3600.0, CAP, 100, 10**9), n)
    cache.put_now(hot, entry, 3600.0, CAP, 100, 10**9)
    measure("cache get_now (hit)", lambda: cache.get_now(hot), n)
    measure("cache get_now (miss)", lambda: cache.get_now("absent"), n)

    items, data = ItemStore(max_entries=CAP), b'{"type":"message","role":"assistant","content":[]}'
    next_key = itertools.cycle(keys).__next__
    for key in keys[:CAP]:
        items.put(key, data)
    measure("items put (evicts one)", lambda: items.put(next_key(), data), n)
    items.put(hot, data)
    measure("items get (hit)", lambda: items.get(hot), n)
    measure("items get (miss)", lambda: items.get("absent"), n)
    measure("items touch", lambda: items.touch(hot), n)

    reasoning = ReasoningStore(max_entries=CAP)
    answers = itertools.cycle([[ir.Reasoning("think", "S" * 40, "anthropic"), ir.ToolCall(key, "f", {"a": 1})]
                               for key in keys]).__next__
    for _ in range(CAP):
        reasoning.keep(answers())
    measure("reasoning keep (one call, evicts)", lambda: reasoning.keep(answers()), n)
    reasoning.keep([ir.Reasoning("think", "S" * 40, "anthropic"), ir.ToolCall("toolu_x", "f", {"a": 1})])
    turn = ir.Request(messages=[ir.Message(ir.ASSISTANT, [ir.ToolCall("toolu_x", "f", {"a": 1})])])
    measure("reasoning missing (1 call, held)", lambda: reasoning.missing(turn), n)
    measure("reasoning restore (1 turn restored)", lambda: reasoning.restore(turn), n)
    data = reasoning.encoded("toolu_x")
    measure("reasoning encoded", lambda: reasoning.encoded("toolu_x"), n)
    measure("reasoning put_encoded (evicts one)", lambda: reasoning.put_encoded(next_key(), data), n)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000)
