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
