"""The circuit breaker of one upstream target (provider + model).

States and moves (parameters from the pipeline's `breaker:` section):

    closed    --`failures` consecutive failures, or failure rate
                >= failure_rate over >= min_requests in `window`-->  open
    open      --`open_for` seconds passed, a request is let through-->  half_open (that request is the probe)
    half_open --the probe succeeded-->  closed   (weight ramps back over `ramp`)
    half_open --the probe failed-->     open     (open time doubles, up to open_for_max)

Only the probe moves a half-open breaker: while it is out nobody else gets
through.  A probe that is never reported (its request was lost) stops
blocking after `lease` seconds, so a breaker cannot stay wedged half-open.

The failure rate is measured over an exponentially decaying window: every
outcome adds 1 to a counter and counters decay with time constant `window`.
That needs O(1) memory and stays meaningful when pools with different
pipelines share the target (each call brings its own parameters).

Pure state: the caller passes `now` (monotonic seconds) and the parameters;
outcomes that are nobody's fault (client, context, rate) only release a probe.

Coordinated (replicas sharing routing state, busbar.cluster): one probe per
target runs cluster-wide.  A past-due breaker then lets a probe go only while
it holds a *grant* (`grant_until`), which the sync task obtains in the
background (a lease in Redis, or at once when Redis is unavailable); the
probe consumes it.  Other replicas' opens and closes arrive through
`apply_open` / `apply_closed`.  The request path never waits for any of it.
"""
from __future__ import annotations

import enum
import math

from busbar.pipeline import BreakerParams


# Coordinated: how soon a past-due breaker without a grant is worth asking again
# (the grant takes one Redis round trip; another replica's probe answers or is released).
GRANT_HINT = 0.25


class BreakerState(str, enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Breaker:
    __slots__ = ("state", "consecutive", "until", "open_for", "probe_since",
                 "closed_at", "_ok", "_fail", "_seen", "opens", "coordinated", "grant_until")

    def __init__(self) -> None:
        self.state = BreakerState.CLOSED
        self.consecutive = 0          # consecutive failures while closed
        self.until = 0.0              # open: when the next probe may go
        self.open_for = 0.0           # the current open period (doubles on reopen)
        self.probe_since: float | None = None  # half-open: when the probe left
        self.closed_at: float | None = None    # last close after an open (ramp start)
        self._ok = 0.0                # decayed counts
        self._fail = 0.0
        self._seen = 0.0              # time of the last decay
        self.opens = 0                # how many times it opened (metrics)
        self.coordinated = False      # one probe cluster-wide: a probe needs a grant
        self.grant_until = 0.0        # coordinated: this replica may send the probe until then

    def __repr__(self) -> str:
        return f"Breaker({self.state.value}, consecutive={self.consecutive}, until={self.until:g})"

    # ---- queries ---------------------------------------------------------
    def allows(self, now: float, lease: float) -> bool:
        """May a request go to this target now?"""
        if self.state is BreakerState.CLOSED:
            return True
        if self.coordinated and now >= self.grant_until:
            return False
        if self.state is BreakerState.OPEN:
            return now >= self.until
        return self.probe_since is None or now - self.probe_since >= lease

    def wants_grant(self, now: float, lease: float) -> bool:
        """Coordinated: would a probe go now if this replica held the grant?"""
        if not self.coordinated or self.state is BreakerState.CLOSED or now < self.grant_until:
            return False
        if self.state is BreakerState.OPEN:
            return now >= self.until
        return self.probe_since is None or now - self.probe_since >= lease

    def recovery(self, now: float, lease: float) -> float:
        """The earliest time `allows` can turn true (now when it is true)."""
        if self.state is BreakerState.CLOSED:
            return now
        if self.state is BreakerState.OPEN:
            at = max(now, self.until)
        elif self.probe_since is None:
            at = now
        else:
            at = max(now, self.probe_since + lease)
        if self.coordinated and at <= now and now >= self.grant_until:
            # the grant (or the answer of another replica's probe) is on its way
            return now + min(lease, GRANT_HINT)
        return at

    def ramp_factor(self, now: float, params: BreakerParams) -> float:
        """Share of its weight a member gets: 1, or less while ramping back."""
        if self.state is not BreakerState.CLOSED or self.closed_at is None or params.ramp <= 0:
            return 1.0
        elapsed = now - self.closed_at
        if elapsed >= params.ramp:
            return 1.0
        return params.ramp_floor + (1.0 - params.ramp_floor) * max(0.0, elapsed) / params.ramp

    def failure_rate(self, now: float, params: BreakerParams) -> tuple[float, float]:
        """(decayed request count, failure share) in the window."""
        self._decay(now, params)
        total = self._ok + self._fail
        return total, (self._fail / total if total else 0.0)

    # ---- moves -----------------------------------------------------------
    def acquire(self, now: float, lease: float) -> bool:
        """A request is about to go; True when it is the half-open probe."""
        if self.state is BreakerState.CLOSED:
            return False
        if not self.allows(now, lease):
            raise RuntimeError("breaker does not allow a request now")
        self.state = BreakerState.HALF_OPEN
        self.probe_since = now
        self.grant_until = 0.0        # a grant is good for one probe
        return True

    # ---- coordination (applied by the sync task) ---------------------------
    def grant(self, until: float) -> None:
        """This replica may send the probe until `until`."""
        self.grant_until = until

    def apply_open(self, until: float, open_for: float) -> None:
        """Another replica opened it (or reopened it after its probe failed)."""
        if self.state is not BreakerState.OPEN:
            self.opens += 1
        self.state = BreakerState.OPEN
        self.until = max(self.until, until)          # re-opening never shortens
        self.open_for = max(open_for, 0.0)
        self.probe_since = None
        self.consecutive = 0
        self.closed_at = None
        self.grant_until = 0.0

    def apply_closed(self, now: float) -> None:
        """Another replica's probe succeeded: close, and ramp back like a local close."""
        if self.state is BreakerState.CLOSED:
            return
        self.state = BreakerState.CLOSED
        self.probe_since = None
        self.open_for = 0.0
        self.closed_at = now
        self.consecutive = 0
        self._ok, self._fail = 1.0, 0.0

    def release(self, probe: bool) -> None:
        """The request ended in a way that says nothing about health."""
        if probe and self.state is BreakerState.HALF_OPEN:
            self.probe_since = None

    def success(self, now: float, params: BreakerParams, probe: bool) -> None:
        self._decay(now, params)
        self._ok += 1.0
        self.consecutive = 0
        if probe and self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.CLOSED
            self.probe_since = None
            self.open_for = 0.0
            self.closed_at = now
            self._ok, self._fail = 1.0, 0.0   # a fresh start for the rate

    def failure(self, now: float, params: BreakerParams, probe: bool) -> None:
        self._decay(now, params)
        self._fail += 1.0
        if self.state is BreakerState.HALF_OPEN:
            if probe:
                self._open(now, min(params.open_for_max, max(params.open_for, self.open_for * 2)))
            return
        if self.state is BreakerState.OPEN:
            return  # a straggler sent before it opened
        self.consecutive += 1
        total = self._ok + self._fail
        if (self.consecutive >= params.failures
                or (total >= params.min_requests and self._fail / total >= params.failure_rate)):
            self._open(now, params.open_for)

    def _open(self, now: float, period: float) -> None:
        self.state = BreakerState.OPEN
        self.open_for = period
        self.until = max(self.until, now + period)   # re-opening never shortens
        self.probe_since = None
        self.consecutive = 0
        self.closed_at = None
        self.opens += 1
        self.grant_until = 0.0

    def _decay(self, now: float, params: BreakerParams) -> None:
        dt = now - self._seen
        if dt > 0:
            factor = math.exp(-dt / params.window)
            self._ok *= factor
            self._fail *= factor
            self._seen = now

    def snapshot(self, now: float, params: BreakerParams) -> dict:
        total, rate = self.failure_rate(now, params)
        out = {"state": self.state.value, "consecutive_failures": self.consecutive,
               "window_requests": round(total, 2), "window_failure_rate": round(rate, 3),
               "opens": self.opens}
        if self.state is BreakerState.OPEN:
            out["until"] = self.until
            out["remaining_s"] = round(max(0.0, self.until - now), 3)
        if self.state is BreakerState.HALF_OPEN:
            out["probe_out"] = self.probe_since is not None
        return out
