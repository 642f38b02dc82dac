"""Bounds on what one request may hold, as small I/O-free objects the driver
calls (issue 12; docs/reliability.md).

`PrecommitBound`: a streamed answer is held until its first content (so an
earlier failure can still fail over).  An upstream that sends comments,
pings or empty events forever would grow that buffer without bound; past
`max_bytes` or `max_events` the attempt fails as the member's fault
(FaultClass.SERVER), and the request fails over.
"""
from __future__ import annotations

from busbar.faults import Fault, FaultClass

PRECOMMIT_MAX_BYTES = 1024 * 1024
PRECOMMIT_MAX_EVENTS = 1024


class PrecommitBound:
    """Counts what a stream holds before its commit point.  `add` returns
    None while within bounds, else the Fault that ends the attempt."""

    __slots__ = ("max_bytes", "max_events", "bytes", "events")

    def __init__(self, max_bytes: int = PRECOMMIT_MAX_BYTES, max_events: int = PRECOMMIT_MAX_EVENTS):
        self.max_bytes = max_bytes
        self.max_events = max_events
        self.bytes = 0
        self.events = 0

    def add(self, nbytes: int, nevents: int = 0) -> Fault | None:
        self.bytes += nbytes
        self.events += nevents
        if self.bytes > self.max_bytes:
            return Fault(FaultClass.SERVER, 0, f"upstream sent {self.bytes} bytes before any content "
                                               f"(limit {self.max_bytes})")
        if self.events > self.max_events:
            return Fault(FaultClass.SERVER, 0, f"upstream sent {self.events} events before any content "
                                               f"(limit {self.max_events})")
        return None


DEFAULT_MAX_CONCURRENT = 1024       # server.max_concurrent_requests
DEFAULT_POOL_SHARE = 0.8            # server.pool_share
DIRECT_ROUTES = "(direct)"          # every provider/model route counts as one pool here


class PoolShares:
    """Each pool's share of the gateway's concurrency limit
    (`server.max_concurrent_requests` x `server.pool_share`), so one pool's
    flood cannot take every slot: past its share a pool's requests are shed
    (503 + Retry-After) while other pools keep the rest.  Held by the app
    (kept across reloads, so requests started before one leave correctly)."""

    __slots__ = ("cap", "held")

    def __init__(self, limit: int = DEFAULT_MAX_CONCURRENT, share: float = DEFAULT_POOL_SHARE):
        self.cap = max(1, int(limit * share))
        self.held: dict[str, int] = {}

    def enter(self, pool: str) -> bool:
        """Take a slot for `pool`; False when it already holds its share."""
        held = self.held.get(pool, 0)
        if held >= self.cap:
            return False
        self.held[pool] = held + 1
        return True

    def leave(self, pool: str) -> None:
        held = self.held[pool] - 1
        if held:
            self.held[pool] = held
        else:
            del self.held[pool]        # only pools with requests in flight are kept
