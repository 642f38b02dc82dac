"""ADR 0013's item-store cost (issue 19): what a Responses client's translated answer pays
to keep its output items, and a turn carrying `item_reference`s pays to resolve them; ADR
0024's: keeping a turn and continuing a chain (`previous_response_id`); ADR 0025's: the
answer's fields a turn keeps for GET, and answering a GET; then
the cluster copy of both stores (busbar.state.shared) against a redis-server started here.
Medians of 5 runs x N, µs per call (wall; the Redis rows also CPU).

Usage: python bench/bench_item_store.py [N]      (the Redis rows need redis-server on PATH)
"""
import statistics
import time

import orjson
import trio

from busbar import ir
from busbar.item_store import MAX_ENTRIES, DELETED, ItemStore, decode_turn, key_of, shown_of, turn_key
from busbar.protocols.responses import dialect as responses
from busbar.reasoning_store import ReasoningStore
from busbar.state.redis import RedisState
from busbar.state.shared import PendingDeletions, ResponseDeletions, SharedEntries, deletion_message, read_deletion
from busbar.stored_responses import response_object

import microbench  # bench/microbench.py: the shared timing loop
import redis_proc  # bench/redis_proc.py: a redis-server for the cluster rows



def measure(label, fn, n):
    return microbench.measure(label, fn, n, width=64)


async def ameasure(label, op, n):
    for _ in range(min(200, n)):
        await op()
    runs = []
    for _ in range(5):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            await op()
        runs.append(((time.perf_counter() - t) / n * 1e6, (time.process_time() - c) / n * 1e6))
    wall = sorted(r[0] for r in runs)
    print(f"{label:64s} {statistics.median(wall):7.1f} µs (spread {wall[0]:.1f}-{wall[-1]:.1f}; "
          f"cpu {statistics.median(r[1] for r in runs):.1f} µs, median of 5 x {n})")


def answer(i: int) -> ir.Response:
    return ir.Response(f"msg_{i:020d}", "m", [
        ir.Reasoning("think " * 100, "S" * 400, "anthropic"), ir.Text("hello " * 60),
        ir.ToolCall(f"toolu_{i}", "get_weather", {"city": "Paris"})], ir.StopReason.TOOL_USE, None, ir.Usage(10, 20))


def main(n):
    store = ItemStore()
    text_only = ir.Response("msg_plain", "m", [ir.Text("hello " * 60)], ir.StopReason.END_TURN, None, ir.Usage(10, 20))
    three = answer(0)

    measure("render_response (a text answer), no keeping: the baseline",
            lambda: responses.render_response(text_only, "m"), n)
    measure("render_response_shown + keep (a text answer: 1 item)",
            lambda: store.keep("key", responses.render_response_shown(text_only, "m")[1]["output"]), n)
    measure("render_response (reasoning + text + call), no keeping",
            lambda: responses.render_response(three, "m"), n)
    measure("render_response_shown + keep (reasoning + text + call: 3 items)",
            lambda: store.keep("key", responses.render_response_shown(three, "m")[1]["output"]), n)
    rendered = responses.render_response_shown(three, "m")[1]["output"]
    measure("  of which keep alone (3 items: dumps, bounds, LRU)", lambda: store.keep("key", rendered), n)

    items = responses.render_response_shown(answer(1), "m")[1]["output"]
    store.keep("key", items)
    history = [{"role": "user", "content": f"turn {i}"} for i in range(8)]
    refs = [{"type": "item_reference", "id": item["id"]} for item in items]
    obj = {"model": "m", "input": history[:4] + refs + history[4:]}
    no_refs = {"model": "m", "input": history}
    body, plain = orjson.dumps(obj), orjson.dumps(no_refs)

    measure("a body without references: the marker check only", lambda: responses.reference_marker in plain, n)

    def resolve():
        found = {}
        for _, item_id in responses.references(obj):
            data = store.get(key_of("key", item_id))
            if data is not None:
                found[item_id] = data
        return responses.with_references(obj, found)
    measure("resolve 3 references in an 11-item input (find, get, put in place)", resolve, n)
    measure("  for scale: parse_request of the resolved input", lambda: responses.parse_request(resolve()), n)

    # previous_response_id (ADR 0024): keeping a turn, and walking a chain back as Exchange._continue does
    shown = responses.render_response_shown(text_only, "m")[1]
    user = [{"role": "user", "content": "a question of about sixty characters, as a chat turn has"}]
    measure("keep_turn of a one-message turn (input 1 item, output 1 item)",
            lambda: store.keep_turn("key", shown["id"], "resp_prev", user, shown["output"]), n)
    measure("  the same with the answer's fields for GET (shown_of, ADR 0025)",
            lambda: store.keep_turn("key", shown["id"], "resp_prev", user, shown["output"], shown=shown_of(shown)), n)
    kept_key = store.keep_turn("key", shown["id"], "resp_prev", user, shown["output"], shown=shown_of(shown))[0]
    measure("GET /v1/responses/{id}'s work: get, decode, response_object, dumps",
            lambda: orjson.dumps(response_object(shown["id"], decode_turn(store.get(kept_key)))), n)

    def chain(turns: int) -> str:
        previous = None
        for i in range(turns):
            rid = f"resp_{turns}_{i}"
            store.keep_turn("key", rid, previous, user, shown["output"])
            previous = rid
        return previous

    def walk(last: str):
        history, link, seen = [], last, []
        while link is not None:
            key = turn_key("key", link)
            turn = decode_turn(store.get(key))
            seen.append((key, turn))
            link = turn.previous
        for key, turn in reversed(seen):
            history += turn.input
            history += turn.output
            store.touch(key)
        return responses.with_history({"model": "m", "input": "next", "previous_response_id": last}, history)
    for turns in (1, 10, 100):
        last = chain(turns)
        measure(f"continue a {turns}-turn chain held here (get, decode, touch, join)", lambda: walk(last),
                max(1, n // turns))

    last = chain(10)
    measure("  for scale: parse_request of that 10-turn continuation", lambda: responses.parse_request(walk(last)),
            max(1, n // 10))

    # ADR 0025, deletions heard from every replica: what the POST path gains is Exchange._continue's and
    # _resolve_references' `if store.doubtful:` (an empty set: nothing missed), measured in place
    measure("a continuation's missed-deletions check (`doubtful` empty: all the POST path gains)",
            lambda: bool(store.doubtful), n)
    deletions = ResponseDeletions(store, RedisState("redis://127.0.0.1:1/0", "bench"))
    message = b"7\n" + deletion_message("key", "resp_deleted", ["msg_deleted"])
    store.keep_turn("key", "resp_deleted", None, user, shown["output"])
    measure("a published deletion heard (read, a turn and an item tombstoned)", lambda: deletions.on_message(message),
            n)
    measure("  of which read_deletion", lambda: read_deletion(message), n)
    pending, keys = PendingDeletions(), (turn_key("key", "resp_p"), key_of("key", "msg_1"), key_of("key", "msg_2"))
    measure("a deletion kept pending (PendingDeletions.add, Redis away)", lambda: pending.add(keys, message), n)
    full = ItemStore()
    for i in range(MAX_ENTRIES):
        full.put(f"key/response/resp_{i}", b"r{}")
    measure(f"a resubscribe's doubt_all of a full store ({MAX_ENTRIES} entries)", full.doubt_all, max(1, n // 2000))

    reasoning = ReasoningStore()
    keys = reasoning.keep(three.content)
    turn = ir.Request([ir.Message(ir.USER, [ir.Text("go")]), ir.Message(ir.ASSISTANT, [three.content[2]]),
                       ir.Message(ir.USER, [ir.ToolResult("toolu_0", [ir.Text("sunny")])])])
    measure("reasoning: missing() on a tool-result turn (held locally)", lambda: reasoning.missing(turn), n)
    measure("reasoning: encoded() of one entry (for the cluster)", lambda: reasoning.encoded(keys[0]), n)
    data = reasoning.encoded(keys[0])
    measure("reasoning: put_encoded() of one entry (from the cluster)",
            lambda: ReasoningStore().put_encoded("k", data), max(1, n // 4))


async def redis_rows(port: int, n: int) -> None:
    state = RedisState(f"redis://127.0.0.1:{port}/0", "bench", timeout_s=1.0)
    shared = SharedEntries(state, "items")
    store = ItemStore()
    items = responses.render_response_shown(answer(7), "m")[1]["output"]
    kept = store.keep("key", items)
    await ameasure("cluster: put one answer's 3 items (one script)", lambda: shared.put_many(kept, 3600), n)
    names = [key for key, _ in kept]
    await ameasure("cluster: MGET of 3 references", lambda: shared.get_many(names), n)
    await ameasure("cluster: MGET of 1 id absent", lambda: shared.get_many(["key/none"]), n)
    turn = store.keep_turn("key", "resp_bench", "resp_prev", [{"role": "user", "content": "hi"}], items)
    touched = tuple(turn_key("key", f"resp_{i}") for i in range(10))
    await ameasure("cluster: put 3 items + the turn, renewing 10 chain turns (one script)",
                   lambda: shared.put_many(kept + [turn], 3600, touched), n)
    dropped = (turn[0],) + tuple(names)
    await ameasure("cluster: a DELETE's drop (tombstone a turn and 3 items, count, publish: one script)",
                   lambda: shared.drop(dropped, DELETED, 3600, deletion_message("key", "resp_bench", names)), n)
    deletions = ResponseDeletions(store, state)
    await ameasure("cluster: the same through ResponseDeletions.delete (what a DELETE pays now)",
                   lambda: deletions.delete(dropped, deletion_message("key", "resp_bench", names)), n)
    await state.aclose()
    away = ResponseDeletions(store, RedisState("redis://127.0.0.1:1/0", "bench", timeout_s=1.0))
    await ameasure("a DELETE's delete while Redis is away (refused connection, kept pending)",
                   lambda: away.delete(dropped, deletion_message("key", "resp_bench", names)), n)
    print(f"  (pending after it: {len(away.pending)}: one response deleted over and over is one entry)")


if __name__ == "__main__":
    redis_proc.run(main, redis_rows)
