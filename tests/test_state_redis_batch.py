"""RedisState's batches (busbar.state.take_all / apply_all) against a real redis-server: one
script evaluation per batch, op by op the same answers as MemoryState (hypothesis, differential),
all or nothing under concurrency, and the degraded answers when Redis is down or stalls."""

import itertools
import math

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from busbar.state import MemoryState, Taken
from busbar.state.redis import RedisState
from busbar.state.resp import RespConnection
from redis_support import command_counts, delta, needs_redis, redis_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, needs_redis]

# Buckets refill so slowly (<= 1e-3 token/s) and amounts are whole, so the few µs between the
# memory twin's clock reading (Redis' TIME just before the batch) and the script's own TIME can
# never decide a take: ok / index must agree exactly, levels to 1e-3, waits to the lag.
BUCKETS = {"b1": (1e-3, 3.0), "b2": (1e-4, 8.0)}          # key -> (rate, burst)
op = st.one_of(
    st.builds(lambda key, amount: ("bucket", key, amount, *BUCKETS[key]),
              st.sampled_from(sorted(BUCKETS)), st.integers(0, 9)),
    st.tuples(st.just("counter"), st.sampled_from(["c1", "c2"]), st.integers(-1, 3),
              st.sampled_from([None, 0.0, 2.0, 5.0]), st.sampled_from([600.0, 3600.0])))
step = st.tuples(st.sampled_from(["take", "apply"]), st.lists(op, max_size=6))
READS = ["c1", "c2", "absent"]
LAG_S = 1.0      # how far apart the twins' clocks may read on a loaded box (waits compare to this)
_prefixes = itertools.count()


async def redis_time(state: RedisState) -> float:
    seconds, micros = await state.command("TIME")
    return int(seconds) + int(micros) / 1e6


def same_refusal(got, want) -> None:
    assert (got is None) == (want is None), (got, want)
    if got is None:
        return
    assert got[0] == want[0] and not got[1].ok and not want[1].ok
    assert got[1].level == pytest.approx(want[1].level, abs=1e-3)
    if math.isinf(want[1].retry_after):
        assert math.isinf(got[1].retry_after)
    else:
        assert got[1].retry_after == pytest.approx(want[1].retry_after, abs=LAG_S)


def level(tokens, at, rate, burst, now) -> float:
    """A bucket's tokens at `now` (absent: full; an expired Redis bucket was full)."""
    if tokens is None:
        return burst
    return min(burst, tokens + max(0.0, now - at) * rate)


async def stored(state: RedisState, now: float) -> dict:
    """What Redis holds for the test's keys at `now`: bucket levels and counter totals."""
    out = {}
    for key, (rate, burst) in BUCKETS.items():
        tokens, at = await state.command("HMGET", f"{state.prefix}:{key}", "tokens", "at")
        out[key] = level(None if tokens is None else float(tokens), float(at or 0), rate, burst, now)
    for key in ("c1", "c2"):
        total = await state.command("GET", f"{state.prefix}:{key}")
        out[key] = float(total or 0)
    return out


def held(memory: MemoryState, now: float) -> dict:
    out = {}
    for key, (rate, burst) in BUCKETS.items():
        tokens, at, _ = memory._buckets.get(key, (None, 0.0, 0.0))
        out[key] = level(tokens, at, rate, burst, now)
    out.update({key: memory._counters.get(key, (0.0, 0.0))[0] for key in ("c1", "c2")})
    return out


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(step, min_size=1, max_size=10))
def test_redis_batches_answer_op_by_op_like_memory_batches(redis_server, steps):
    async def run():
        redis = RedisState(redis_server.url, prefix=f"diff{next(_prefixes)}", timeout_s=2.0)
        clock = [0.0]
        memory = MemoryState(now=lambda: clock[0])
        try:
            for mode, ops in steps:
                clock[0] = await redis_time(redis)
                before = await stored(redis, clock[0])
                if mode == "take":
                    (got, got_totals), (want, want_totals) = (await redis.take_all(ops, READS),
                                                              await memory.take_all(ops, READS))
                    same_refusal(got, want)
                    assert got_totals == want_totals        # whole amounts: exact; [] when refused
                    if got is not None:                     # a refused batch takes nothing
                        assert await stored(redis, clock[0]) == pytest.approx(before, abs=1e-3)
                else:
                    assert await redis.apply_all(ops) == pytest.approx(await memory.apply_all(ops), abs=1e-3)
                now = await redis_time(redis)
                assert await stored(redis, now) == pytest.approx(held(memory, now), abs=1e-3)
            assert not redis.degraded
        finally:
            await redis.aclose()
    trio.run(run)


async def test_a_batch_is_one_script_evaluation_loaded_once(redis_server):
    """Six ops and two reads are one EVALSHA; a flushed script cache costs one NOSCRIPT + EVAL
    once, then EVALSHA again; a single take is the same script."""
    state = RedisState(redis_server.url, prefix="one", timeout_s=2.0)
    ops = [("bucket", "k:rpm", 1, 1.0, 60), ("bucket", "k:tpm", 300, 1000.0, 60000),
           ("counter", "k:parallel", 1, 10, 3600), ("bucket", "t:rpm", 1, 10.0, 600),
           ("bucket", "t:tpm", 300, 1e4, 6e5), ("counter", "t:parallel", 1, 100, 3600)]
    assert await state.take_all(ops, ["k:usd", "t:usd"]) == (None, [0.0, 0.0])   # (loads the script)
    before = await command_counts(redis_server.url)
    for _ in range(5):
        refused, totals = await state.take_all(ops, ["k:usd", "t:usd"])
        assert refused is None and totals == [0.0, 0.0]
    settled = await state.apply_all([("counter", "k:parallel", -1, 10, 3600), ("counter", "k:usd", 0.25, None, 60)])
    assert settled == [5.0, 0.25]
    served = delta(before, await command_counts(redis_server.url))
    assert served["evalsha"] == 6 and "eval" not in served and "mget" not in served, served

    conn = await RespConnection.open("127.0.0.1", redis_server.port)
    await conn.call("SCRIPT", "FLUSH")
    await conn.aclose()
    before = await command_counts(redis_server.url)
    assert (await state.take_counter("k:parallel", 1, 10, 3600)) == Taken(True, 6.0, 0.0)
    assert (await state.take_all(ops))[0] is None
    served = delta(before, await command_counts(redis_server.url))
    assert served["evalsha"] == 2 and served["eval"] == 1, served    # NOSCRIPT once, then the cached sha
    await state.aclose()


async def test_concurrent_batches_are_all_or_nothing_across_connections(redis_server):
    """Eight takers on two backends (two connection pools) race batches of [bucket, counter]:
    the counter admits exactly its limit, and every refused batch gave its bucket token back
    inside the script, so the bucket lost exactly what the admitted batches took."""
    backends = [RedisState(redis_server.url, prefix="race", timeout_s=5.0) for _ in range(2)]
    batch = [("bucket", "rps", 1, 1e-4, 500), ("counter", "slots", 1, 60, 600)]
    admitted = []

    async def taker(state):
        for _ in range(40):
            refused, _ = await state.take_all(batch)
            admitted.append(refused is None)
            if refused is not None:
                assert refused[0] == 1          # the counter refuses; the bucket never runs dry
    async with trio.open_nursery() as nursery:
        for state in backends:
            for _ in range(4):
                nursery.start_soon(taker, state)
    assert len(admitted) == 320 and admitted.count(True) == 60
    tokens = float(await backends[0].command("HGET", "race:rps", "tokens"))
    assert 440 <= tokens <= 440 + 0.1      # 500 - 60, plus a few seconds of 1e-4/s refill
    assert await backends[1].get_counter("slots") == 60
    for state in backends:
        assert not state.degraded
        await state.aclose()


@pytest.mark.parametrize("policy", ["open", "local", "closed"])
async def test_a_batch_while_redis_is_down_is_answered_by_policy_and_replayed(redis_server, policy):
    """Redis killed: the batch is answered at once from this process (one failed connect, then
    no attempt until retry_every_s), with the per-op policies of ADR 0010 applied as one
    all-or-nothing batch; counters moved meanwhile reach Redis in one script when it returns."""
    state = RedisState(redis_server.url, prefix="down", timeout_s=0.5, retry_every_s=0.2, on_unavailable=policy)
    ops = [("bucket", "rpm", 1, 1e-3, 2), ("counter", "parallel", 1, 1, 3600), ("counter", "usd", 0.5, None, 3600)]
    assert (await state.take_all(ops, ["usd"])) == (None, [0.5])
    assert await state.apply_all([("counter", "parallel", -1, 1, 3600)]) == [0.0]
    redis_server.stop()
    answers = [await state.take_all(ops, ["usd"]) for _ in range(3)]
    assert state.degraded
    if policy == "open":            # admitted past every limit; counters counted here
        assert [refused for refused, _ in answers] == [None] * 3
        assert [totals for _, totals in answers] == [[0.5], [1.0], [1.5]]
    elif policy == "local":         # this process limits alone: the slot is held after the first
        assert answers[0] == (None, [0.5])
        assert [(refused[0], refused[1].ok) for refused, _ in answers[1:]] == [(1, False)] * 2
        assert state.local._counters["usd"][0] == 0.5      # refused batches took nothing here either
    else:                           # closed: refused at the first op, retry in 1 s
        assert all(refused == (0, Taken(False, 0.0, 1.0)) for refused, _ in answers)
    assert state.fallback_ops_total > 0
    redis_server.start()            # same port, empty
    await trio.sleep(0.3)
    await state.get_counter("usd")  # the first op after retry_every_s reconnects and replays
    assert await state.get_counter("usd") == {"open": 1.5, "local": 0.5, "closed": 0.0}[policy]   # replayed
    assert not state.degraded
    await state.aclose()


async def test_a_stalled_redis_bounds_the_batch_by_the_timeout(redis_server):
    """CLIENT PAUSE stalls every other client: the batch gives up after timeout_s, is answered
    locally (policy local) and the backend counts itself degraded, logged once."""
    state = RedisState(redis_server.url, prefix="slow", timeout_s=0.05, retry_every_s=60, on_unavailable="local")
    ops = [("counter", "parallel", 1, 1, 3600), ("bucket", "rpm", 1, 1e-3, 5)]
    assert (await state.take_all(ops))[0] is None
    pauser = await RespConnection.open("127.0.0.1", redis_server.port)
    await pauser.call("CLIENT", "PAUSE", 1000, "ALL")   # (the pauser's UNPAUSE waits for it too)
    try:
        with trio.fail_after(30):                        # (a hang guard; the 50 ms bound is the backend's)
            first = await state.take_all(ops)
            second = await state.take_all(ops)
        assert state.degraded
        assert first == (None, []) and second[0][0] == 0     # the local twin: one slot, then refused
    finally:
        await pauser.call("CLIENT", "UNPAUSE")
        await pauser.aclose()
    await state.aclose()
