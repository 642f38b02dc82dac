"""What one attempt comes back with.  An attempt never raises for an upstream
fault: it returns one of these values and `Exchange.settle` (the one funnel)
turns it into the router report, the lifecycle event, the attempt record and
the alert line.  Only the client leaving, the deadline, and bugs of ours
travel as exceptions."""
from __future__ import annotations

from dataclasses import dataclass

from busbar.faults import Fault
from busbar.protocols.base import Headers


@dataclass(frozen=True, slots=True)
class Answered:
    """The answer is whole (a buffered body sent, or a stream relayed up to
    its last event; that last content may be held in the responder to go
    out with the closing chunk, which `settle` writes)."""

    status: int                 # the upstream's status
    ttfb: float                 # seconds from the call to the commit
    chunked: bool = False       # a stream: its closing chunk is still due


@dataclass(frozen=True, slots=True)
class Failed:
    """The attempt failed before the client saw anything: it can fail over.
    `body` is the vendor's own error body when it sent one over HTTP (relayed
    untouched to a same-protocol client when the pipeline returns the error)."""

    fault: Fault
    status: int = 0
    headers: Headers | None = None
    body: bytes | None = None


@dataclass(frozen=True, slots=True)
class Broken:
    """The stream broke after the commit.  The client's stream is ended
    honestly, or, when the pipeline resumes streams, continued on another
    member (`Exchange.settle`).  `encoder` writes the client protocol's error
    event (or the continuation); None when the vendor's own error event was
    already relayed (passthrough without resume).  `journal`: what the client
    was sent, as IR events (busbar.resume), when resume is on; `synced`:
    whether `encoder` has encoded it (False for a same-protocol stream, whose
    vendor bytes went out as they were)."""

    fault: Fault
    ttfb: float
    encoder: object = None
    journal: list | None = None
    synced: bool = True


@dataclass(frozen=True, slots=True)
class Lost:
    """A hedged attempt that lost the race: cancelled when another attempt
    produced content first (its upstream connection closed, not reused).
    `usage`: what it had reported by then, counted as hedge waste."""

    usage: object = None


@dataclass(frozen=True, slots=True)
class Saturated:
    """No upstream connection slot freed up within `server.slot_wait`: the
    member is busy, not failing.  It sits out this request (unblamed: no
    breaker, no key penalty) and the request fails over."""

    waited: float


@dataclass(frozen=True, slots=True)
class Inexpressible:
    """The member's protocol could not express the request: its render
    refused it (a feature the routing check `busbar.protocols.expressible`
    has no exemplar for).  Nothing was sent; the member sits out this
    request unblamed and the request goes to a member that can say it, or
    ends with this error when none is left."""

    error: object               # the render's ClientError, naming the field


Outcome = Answered | Failed | Broken | Lost | Saturated | Inexpressible
