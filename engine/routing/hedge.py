"""Hedged requests, the per-pool state: when to hedge and whether the
budget allows it.  I/O-free and clock-free (the budget counts requests,
the delay is a measured percentile), like the breaker and the router.

* `delay()`: seconds without first content before a hedge starts: the
  pipeline's `after_ms`, or the pool's own time-to-first-byte percentile
  (`after: p95`) over its last `WINDOW` answers, recomputed every
  `RECOMPUTE` samples; None (no hedging) until `MIN_SAMPLES` were seen.
* `credit()` once per request of the pool, `take()` per hedge: a token
  bucket that earns `budget` per request and holds at most `max(1, max)`
  tokens, so over N requests at most budget x N + that many hedges start:
  a slow vendor cannot double the load.
"""
from __future__ import annotations

from collections import deque

WINDOW = 256
RECOMPUTE = 32
MIN_SAMPLES = 20
PERCENTILES = {"p50": 0.50, "p90": 0.90, "p95": 0.95, "p99": 0.99}


class HedgeState:
    __slots__ = ("policy", "tokens", "capacity", "_samples", "_since", "_delay", "started", "won")

    def __init__(self, policy):
        self.policy = policy                 # busbar.pipeline.Hedge
        self.capacity = float(max(1, policy.max))
        self.tokens = self.capacity
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self._since = 0
        self._delay: float | None = policy.after_ms / 1000 if policy.after_ms is not None else None
        self.started = 0                     # hedges started (for the admin snapshot)
        self.won = 0

    def credit(self) -> None:
        tokens = self.tokens + self.policy.budget
        self.tokens = tokens if tokens < self.capacity else self.capacity

    def take(self) -> bool:
        if self.tokens < 1.0 - 1e-9:       # (budget steps add up in floating point)
            return False
        self.tokens -= 1.0
        self.started += 1
        return True

    def observe(self, ttfb: float) -> None:
        """A time to first byte of the pool (seconds), for `after: pNN`."""
        if self.policy.after is None:
            return
        self._samples.append(ttfb)
        self._since += 1
        if self._since >= RECOMPUTE or (self._delay is None and len(self._samples) >= MIN_SAMPLES):
            self._since = 0
            ordered = sorted(self._samples)
            self._delay = ordered[min(len(ordered) - 1, int(len(ordered) * PERCENTILES[self.policy.after]))]

    def delay(self) -> float | None:
        return self._delay
