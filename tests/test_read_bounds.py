"""Streamed upstream reads' timeouts (engine/upstream.py `ReadBounds`,
ADR 0014 session 6): one sweep every TICK cancels a stream's read scope once
the read under way is past its bound; between reads (the relay writing to a
slow client) nothing is bounded.  Virtual time (autojump clock)."""
from __future__ import annotations

import math

import pytest
import trio

from busbar.relay import _next_read
from busbar.upstream import ReadBounds

pytestmark = pytest.mark.pure


async def _reads(*delays: float):
    """An upstream body whose reads take `delays` seconds each."""
    for delay in delays:
        await trio.sleep(delay)
        yield [b"piece"]


async def test_a_read_past_its_bound_is_cancelled_at_most_a_tick_late(autojump_clock):
    bounds = ReadBounds()
    async with trio.open_nursery() as nursery:
        await nursery.start(bounds.run)
        reads = _reads(0.05, 100)
        start = trio.current_time()
        with trio.CancelScope() as scope, bounds.bound(scope) as bound:
            assert await _next_read(reads, bound, start + 0.3) == [b"piece"]    # within its bound
            assert bound.until == math.inf
            await trio.sleep(5)          # the relay writing to a slow client: nothing bounds it
            assert not scope.cancel_called
            second = trio.current_time()
            await _next_read(reads, bound, second + 0.3)      # a stall
        assert scope.cancelled_caught
        assert trio.current_time() == pytest.approx(second + 0.3)     # the sweeper woke at the bound
        assert not bounds._open              # the stream's bound left with it
        nursery.cancel_scope.cancel()


async def _ready():
    yield [b"piece"]          # the data was already there: no checkpoint


async def test_a_read_returning_in_the_round_its_bound_passed_counts_as_a_stall(autojump_clock):
    bounds = ReadBounds()
    relayed = False
    async with trio.open_nursery() as nursery:
        await nursery.start(bounds.run)
        with trio.CancelScope() as scope, bounds.bound(scope) as bound:
            bound.until = trio.current_time() - 1      # past its bound ...
            bounds.sweep(trio.current_time())          # ... so the sweep cancelled the scope
            await _next_read(_ready(), bound, math.inf)
            relayed = True                             # the scope cannot be un-cancelled: never here
        assert scope.cancelled_caught and not relayed
        nursery.cancel_scope.cancel()


async def test_streams_without_the_sweep_running_are_refused():
    with pytest.raises(RuntimeError, match="not running"):
        ReadBounds().bound(trio.CancelScope())
