"""ADR 0027's cost (response affinity): what a passthrough Responses answer pays to remember
where its vendor-minted id lives, what a continuation pays to be pinned (the lookup and the
plan's extra checks), and the cluster copy's write against a redis-server started here.
Medians of 5 runs x N, µs per call.

Usage: python bench/bench_affinity.py [N]      (the Redis row needs redis-server on PATH)
"""
import random
import time
from types import SimpleNamespace

import orjson
import trio

from busbar.affinity import MAX_ENTRIES, Pin, ResponseAffinity
from busbar.exchange import Exchange
from busbar.routing import Needs, Pinned, Router
from busbar.state.redis import RedisState
from busbar.state.shared import SharedEntries

import microbench  # bench/microbench.py: the shared timing loop
import redis_proc  # bench/redis_proc.py: a redis-server for the cluster rows


def run_sync(coro):
    """An async method that never suspends (no Redis), driven without a trio loop."""
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("suspended")


def main(n: int) -> None:
    affinity = ResponseAffinity()
    for i in range(MAX_ENTRIES):              # full: every remember evicts the oldest
        affinity.remember("-", f"resp_fill{i}", Pin("oai", "oai#0:abcdef12", "smart/oai/gpt-4o"))
    x = SimpleNamespace(stored=True, background=None, item_scope="-", _pin_key=None,
                        gw=SimpleNamespace(affinity=affinity, shared_items=None))
    attempt = SimpleNamespace(provider="oai", key_id="oai#1:9f86d081", member_id="smart/oai/gpt-4o")
    ids = iter(f"resp_{i:032x}" for i in range(10 ** 9))
    body = orjson.loads(orjson.dumps({"id": "resp_x", "object": "response", "output": []}))
    print("the POST path (buffered or streamed passthrough of a Responses answer):")
    microbench.measure("remember_minted on a full store (what each passthrough answer pays)",
                       lambda: run_sync(Exchange.remember_minted(x, attempt, next(ids))), n)
    microbench.measure("  of which the id: body.get('id') (buffered; a stream reads response.created)",
                       lambda: body.get("id"), n)
    x.stored = False
    microbench.measure("remember_minted with store: false (nothing kept)",
                       lambda: run_sync(Exchange.remember_minted(x, attempt, "resp_x")), n)
    x.stored = True
    affinity.remember("-", "resp_prev", Pin("oai", "oai#1:9f86d081", "smart/oai/gpt-4o"))
    cont = SimpleNamespace(gw=x.gw, item_scope="-", previous="resp_prev", client=SimpleNamespace(name="responses"),
                           pin=None, _pin_fetched=False, _pin_key=None)
    print("a continuation (previous_response_id):")
    microbench.measure("_pin_previous: the lookup, touch and pin",
                       lambda: run_sync(Exchange._pin_previous(cont)), n)
    config = {"providers": {"oai": {"protocol": "responses", "base_url": "http://x/v1",
                                    "keys": ["sk-a", "sk-b", "sk-c", "sk-d"]},
                            "oai2": {"protocol": "responses", "base_url": "http://y/v1", "key": "sk-e"}},
              "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"},
                                              {"provider": "oai2", "model": "gpt-4o"}]}}}
    router = Router.from_config(config, rng=random.Random(1))
    pin = Pinned("responses", "oai", router.providers["oai"].keys.keys[1].id, "resp_prev")

    def plan(needs):
        p = router.start("smart", needs, 0.0)
        step = p.next(0.0)
        p.report(step, None, 0.0)

    microbench.measure("plan: start, next, report (no pin)", lambda: plan(Needs()), n)
    microbench.measure("plan: start, next, report (pinned)", lambda: plan(Needs(pin=pin)), n)


async def redis_rows(port: int, n: int) -> None:
    state = RedisState(f"redis://127.0.0.1:{port}/0", "bench", timeout_s=1.0)
    shared = SharedEntries(state, "items")
    affinity = ResponseAffinity()
    kept = affinity.remember("-", "resp_bench", Pin("oai", "oai#1:9f86d081", "smart/oai/gpt-4o"))
    await microbench_async("cluster: put one affinity entry (one script; with Redis on, each answer)",
                           lambda: shared.put_many([kept], affinity.ttl_s), n)
    await microbench_async("cluster: MGET of the turn and the pin (a continuation's one round trip)",
                           lambda: shared.get_many(["-/response/resp_bench", kept[0]]), n)
    await state.aclose()


async def microbench_async(label, op, n):
    import statistics
    for _ in range(min(200, n)):
        await op()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            await op()
        runs.append((time.perf_counter() - t) / n * 1e6)
    print(f"{label:62s} {statistics.median(runs):7.1f} µs (spread {min(runs):.1f}-{max(runs):.1f}, "
          f"median of 5 x {n})")


if __name__ == "__main__":
    redis_proc.run(main, redis_rows)
