"""Upstream waits' timeouts (engine/upstream.py `ReadBounds`, ADR 0014):
one sweeper task, sleeping until the earliest bound it knows of, expires a
connection's wait once it is past its bound by closing the connection, which
wakes the wait with an error; between waits (the relay writing to a slow
client) nothing is bounded.  Virtual time (autojump clock); the socket
versions are in test_upstream.py and test_gateway_failover.py."""
from __future__ import annotations

import math

import pytest
import trio

from busbar.relay import _next_read
from busbar.upstream import ReadBound, ReadBounds, ReadTimeout, UpstreamError

pytestmark = pytest.mark.pure


class FakeConnection:
    """An upstream body whose reads take `delays` seconds each; closing it
    wakes the read under way with UpstreamError, as closing the socket under
    a real one does (`UpstreamResponse.aiter_reads`)."""

    def __init__(self, *delays: float):
        self.delays = delays
        self.closed = trio.Event()

    def close(self) -> None:
        self.closed.set()

    async def reads(self):
        for delay in self.delays:
            with trio.move_on_after(delay) as slept:
                await self.closed.wait()
            if not slept.cancelled_caught:
                raise UpstreamError("upstream connection lost: closed", before_response=False)
            yield [b"piece"]


async def test_a_read_past_its_bound_is_expired_at_its_bound(autojump_clock):
    bounds = ReadBounds()
    conn = FakeConnection(0.05, 100)
    bound = ReadBound(bounds, conn.close)
    relayed_after_the_stall = False
    async with trio.open_nursery() as nursery:
        await nursery.start(bounds.run)
        reads = conn.reads()
        start = trio.current_time()
        with bound:
            assert await _next_read(reads, bound, start + 0.3) == [b"piece"]    # within its bound
            assert bound.until == math.inf
            await trio.sleep(5)          # the relay writing to a slow client: nothing bounds it
            assert not conn.closed.is_set()
            second = trio.current_time()
            await _next_read(reads, bound, second + 0.3)      # a stall: ReadTimeout ends the `with`
            relayed_after_the_stall = True
        assert not relayed_after_the_stall and bound.expired and conn.closed.is_set()
        assert trio.current_time() == pytest.approx(second + 0.3)     # the sweeper woke at the bound
        assert not bounds._open              # the bound left the sweep with the `with`
        nursery.cancel_scope.cancel()


async def _ready():
    yield [b"piece"]          # the data was already there: no checkpoint


async def test_a_read_returning_in_the_round_its_bound_passed_counts_as_a_stall(autojump_clock):
    bounds = ReadBounds()
    closed = []
    bound = ReadBound(bounds, lambda: closed.append(True))
    relayed = False
    with bound:
        bound.until = trio.current_time() - 1      # past its bound ...
        bounds.sweep(trio.current_time())          # ... so the sweep closed the connection
        await _next_read(_ready(), bound, math.inf)
        relayed = True                             # the piece came over a closed connection: never here
    assert closed == [True] and not relayed


async def test_the_sweeper_sleeps_until_the_earliest_bound_and_only_an_earlier_one_moves_it(autojump_clock):
    """A steady flow of waits, each bounded past the one the sweeper waits
    for, moves nothing; the sweeper wakes at the earliest, closes only what
    is past due and sleeps until the next bound still armed."""
    bounds = ReadBounds()
    closed = []
    first, second, third = (ReadBound(bounds, lambda n=n: closed.append(n)) for n in (1, 2, 3))
    async with trio.open_nursery() as nursery:
        await nursery.start(bounds.run)
        now = trio.current_time()
        with first, second, third:
            first.arm(now + 10)
            assert bounds.wake_at == now + 10
            second.arm(now + 20)                   # later than the wake-up: not moved
            assert bounds.wake_at == now + 10
            third.arm(now + 5)                     # earlier: moved
            assert bounds.wake_at == now + 5
            third.disarm()                         # its wait ended in time
            await trio.sleep(7)
            assert closed == []                    # woke at +5, nothing due; sleeps until +10
            assert bounds.wake_at == now + 10
            await trio.sleep(4)
            assert closed == [1] and first.expired
            with pytest.raises(ReadTimeout):
                first.disarm()
            await trio.sleep(10)
            assert closed == [1, 2]
        nursery.cancel_scope.cancel()
