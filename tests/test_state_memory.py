"""MemoryState: the laws every StateBackend keeps (the Redis tests reuse these laws)."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busbar.state import MemoryState, StateBackend, Taken

pytestmark = pytest.mark.pure


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def drive(coro):
    """Run a MemoryState coroutine to completion: it never awaits anything."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise AssertionError("MemoryState awaited something")


steps = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.floats(0.01, 12, allow_nan=False)),
    min_size=1, max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, rate=st.floats(0.1, 20), burst=st.floats(1, 30))
def test_bucket_never_admits_more_than_burst_plus_refill(steps, rate, burst):
    clock = Clock()
    state = MemoryState(now=clock)
    start, admitted = clock.t, 0.0
    for dt, amount in steps:
        clock.t += dt
        taken = drive(state.take_bucket("k", amount, rate, burst))
        if taken.ok:
            admitted += amount
            assert taken.retry_after == 0.0
        else:
            assert taken.level < amount
            # waiting the stated retry_after (with no other taker) admits it
            if math.isfinite(taken.retry_after):
                probe = MemoryState(now=lambda: clock.t + taken.retry_after + 1e-9)
                probe._buckets = dict(state._buckets)
                assert drive(probe.take_bucket("k", amount, rate, burst)).ok
        assert admitted <= burst + rate * (clock.t - start) + 1e-6
        assert -1e-9 <= taken.level <= burst + 1e-9


@settings(max_examples=300, deadline=None)
@given(amounts=st.lists(st.floats(0, 10), min_size=1, max_size=60), limit=st.floats(0, 50))
def test_counter_never_exceeds_limit(amounts, limit):
    state = MemoryState(now=Clock())
    total = 0.0
    for amount in amounts:
        taken = drive(state.take_counter("c", amount, limit, 60))
        if taken.ok:
            total += amount
        else:
            assert taken.level + amount > limit
        assert taken.level == pytest.approx(total)
        assert total <= limit + 1e-9
    assert drive(state.get_counter("c")) == pytest.approx(total)


def test_counter_expires_and_refused_take_says_when():
    clock = Clock()
    state = MemoryState(now=clock)
    assert drive(state.take_counter("d", 3, 3, ttl_s=10)) == Taken(True, 3, 0.0)
    refused = drive(state.take_counter("d", 1, 3, ttl_s=10))
    assert not refused.ok and refused.level == 3 and refused.retry_after == pytest.approx(10)
    clock.t += 10
    assert drive(state.get_counter("d")) == 0.0
    assert drive(state.take_counter("d", 1, 3, ttl_s=10)).ok


def test_unlimited_counter_and_settle_with_refunds():
    state = MemoryState(now=Clock())
    assert drive(state.take_counter("u", 5, None, 60)).ok
    assert drive(state.add_counter("u", -2, 60)) == 3
    assert drive(state.add_counter("u", 4, 60)) == 7
    assert drive(state.get_counter("u")) == 7
    assert drive(state.get_counter("absent")) == 0.0


def test_settle_bucket_runs_a_debt_that_refill_repays():
    clock = Clock()
    state = MemoryState(now=clock)
    assert drive(state.take_bucket("t", 10, rate=1, burst=10)).ok
    assert drive(state.settle_bucket("t", 5, rate=1, burst=10)) == -5   # real usage beat the estimate
    refused = drive(state.take_bucket("t", 1, rate=1, burst=10))
    assert not refused.ok and refused.retry_after == pytest.approx(6)
    assert drive(state.settle_bucket("t", -100, rate=1, burst=10)) == 10  # refunds cap at burst


def test_amount_above_burst_never_fits():
    state = MemoryState(now=Clock())
    taken = drive(state.take_bucket("b", 11, rate=1, burst=10))
    assert not taken.ok and taken.retry_after == math.inf


def test_sweep_drops_only_what_is_indistinguishable_from_absent():
    clock = Clock()
    state = MemoryState(now=clock)
    drive(state.take_bucket("slow", 1, rate=0.001, burst=10))
    drive(state.take_bucket("fast", 1, rate=100, burst=10))
    drive(state.take_counter("old", 1, None, ttl_s=1))
    clock.t += 5
    state.sweep()
    assert set(state._buckets) == {"slow"} and not state._counters
    assert not drive(state.take_bucket("slow", 10, rate=0.001, burst=10)).ok


def test_memory_state_is_a_state_backend():
    assert isinstance(MemoryState(), StateBackend)


# ---- batches: MemoryState's inlined take_all / apply_all obey the per-op laws -------------
from hypothesis import given as _given, settings as _settings, strategies as _st  # noqa: E402

_op = _st.one_of(
    _st.tuples(_st.just("bucket"), _st.sampled_from(["b1", "b2"]), _st.integers(0, 6),
               _st.sampled_from([0.5, 2.0]), _st.sampled_from([3.0, 8.0])),
    _st.tuples(_st.just("counter"), _st.sampled_from(["c1", "c2"]), _st.integers(-1, 3),
               _st.sampled_from([None, 2.0, 5.0]), _st.sampled_from([1.0, 30.0])))


@pytest.mark.pure
@pytest.mark.slow
@_settings(max_examples=300, deadline=None)
@_given(_st.lists(_st.tuples(_st.booleans(), _st.lists(_op, max_size=5), _st.floats(0, 3)), max_size=8))
def test_batched_takes_and_applies_equal_the_generic_forms_over_single_ops(steps):
    import trio

    from busbar.state import apply_all, take_all
    from busbar.state.memory import MemoryState as Memory

    async def run():
        clock = [0.0]
        batched, single = Memory(now=lambda: clock[0]), Memory(now=lambda: clock[0])
        for is_take, ops, later in steps:
            clock[0] += later
            if is_take:
                reads = ["c1", "c2", "absent"]
                (got, got_totals), (want, want_totals) = (await batched.take_all(ops, reads),
                                                          await take_all(single, ops, reads))
                assert (got is None) == (want is None)
                if got is not None:
                    assert got[0] == want[0] and got[1].ok == want[1].ok
                    assert got[1].level == pytest.approx(want[1].level)
                    assert got[1].retry_after == pytest.approx(want[1].retry_after)
                    assert got_totals == want_totals == []      # a refused batch reads nothing
                else:
                    assert got_totals == pytest.approx(want_totals)
            else:
                assert await batched.apply_all(ops) == pytest.approx(await apply_all(single, ops))
            for mine, theirs in ((batched._buckets, single._buckets), (batched._counters, single._counters)):
                assert mine.keys() == theirs.keys()
                for key, value in mine.items():
                    assert value == pytest.approx(theirs[key])
    trio.run(run)
