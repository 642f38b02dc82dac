"""Shared state: token buckets and period counters behind one small protocol.

`StateBackend` is what limits, budgets and quotas call (client keys, upstream keys).
`MemoryState` is the embedded default: one process, no I/O, injected clock.
The Redis backend (replicas and workers sharing state) implements the same protocol
with atomic Lua scripts, so callers never know which one they have (ADR 0010).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

QUOTA_WINDOW = 60.0   # seconds of the rpm / tpm sliding windows (busbar.routing.quota.WINDOW)


@dataclass(frozen=True, slots=True)
class Taken:
    """The answer of a take.

    ok: whether `amount` was taken (all of it; a take is all or nothing).
    level: the bucket's tokens / the counter's total after the take, or, when refused,
        the level that blocked it.
    retry_after: seconds until the same take could succeed (0.0 when ok; `inf` when it
        never can, e.g. amount > burst or a counter at its limit with no expiry known).
    """

    ok: bool
    level: float
    retry_after: float


@dataclass(frozen=True, slots=True)
class QuotaAsk:
    """One upstream key (and scope) a request could go to, with its limits (None: not limited).

    `name` is "<key id>:<scope>" (ids, never secrets); `day_end` the epoch second its
    counted day ends (the period in the day counter's name), `day_left_s` how far that is.
    """

    name: str
    rpm: int | None
    tpm: int | None
    rpd: int | None
    tokens: int
    day_end: int
    day_left_s: float


@dataclass(frozen=True, slots=True)
class QuotaTaken:
    """The answer of `take_quota`.

    index: which ask was taken (None: none had room); uid: the entry it made (to settle);
    frees: per ask, seconds until it has room (0.0: room now);
    used: per ask, (requests in the minute, tokens in the minute, requests today) before the take.
    """

    index: int | None
    uid: str
    frees: tuple[float, ...]
    used: tuple[tuple[float, float, float], ...]


@runtime_checkable
class StateBackend(Protocol):
    async def take_bucket(self, key: str, amount: float, rate: float, burst: float) -> Taken:
        """Token bucket: `rate` tokens/s refill up to `burst`; takes `amount` only if all fit.
        A new bucket starts full."""
        ...

    async def take_counter(self, key: str, amount: float, limit: float | None, ttl_s: float) -> Taken:
        """Counter for a fixed period (budgets, rpd): adds `amount` only if total+amount <= limit
        (limit None: always adds). The key expires `ttl_s` seconds from now (callers pass the
        time to the period's end plus a grace; the period belongs in the key). When refused,
        retry_after is the key's remaining lifetime."""
        ...

    async def add_counter(self, key: str, amount: float, ttl_s: float) -> float:
        """Settle or refund (amount may be < 0) with no limit check; returns the new total."""
        ...

    async def get_counter(self, key: str) -> float:
        """The counter's total (0.0 when absent or expired)."""
        ...

    def status(self) -> dict:
        """For admin and /metrics: {"backend": ..., "degraded": bool, ...}."""
        ...

    async def settle_bucket(self, key: str, amount: float, rate: float, burst: float) -> float:
        """Extension: take `amount` unconditionally (the bucket may go below 0: a debt later
        refills pay off), or give it back when negative (capped at `burst`). For limits that
        admit on an estimate and settle on the real usage (tpm). Returns the level after."""
        ...


# ---- batches: one call for a request's limits (tenancy admits a key and its team at once) ----
# An op is ("bucket", key, amount, rate, burst) or ("counter", key, amount, limit | None, ttl_s).

async def take_all(state, ops: list[tuple], reads: list[str] = ()) -> tuple[tuple[int, Taken] | None, list[float]]:
    """Take every op, all or nothing, then read the counters `reads`:
    (None, their totals) when every op was taken, else ((index, Taken) of the
    first refused op, []), the ones before it given back (a refused batch
    takes nothing).  The generic form over the protocol's single ops; a
    backend answers a batch in one go (MemoryState: synchronously, RedisState:
    one script, one round trip)."""
    for i, op in enumerate(ops):
        if op[0] == "bucket":
            taken = await state.take_bucket(op[1], op[2], op[3], op[4])
        else:
            taken = await state.take_counter(op[1], op[2], op[3], op[4])
        if not taken.ok:
            await apply_all(state, [negate(o) for o in reversed(ops[:i])])
            return (i, taken), []
    return None, [await state.get_counter(key) for key in reads]


async def apply_all(state, ops: list[tuple]) -> list[float]:
    """Apply every op unconditionally (settle, refund: amounts may be < 0; a
    counter's limit is ignored); the level / total after each."""
    out = []
    for op in ops:
        if op[0] == "bucket":
            out.append(await state.settle_bucket(op[1], op[2], op[3], op[4]))
        else:
            out.append(await state.add_counter(op[1], op[2], op[4]))
    return out


def negate(op: tuple) -> tuple:
    """The op that gives `op` back."""
    return (op[0], op[1], -op[2], op[3], op[4])


from busbar.state.memory import MemoryState  # noqa: E402  (re-exported for callers)



def build_state(section: dict | None) -> StateBackend:
    """The backend the `state:` config section names (absent: memory)."""
    section = section or {}
    if section.get("backend", "memory") == "memory":
        return MemoryState()
    from busbar.state.redis import RedisState

    return RedisState(
        section.get("url", "redis://127.0.0.1:6379/0"),
        section.get("prefix", "busbar"),
        timeout_s=section.get("timeout_ms", 5) / 1000,
        on_unavailable=section.get("on_unavailable", "open"),
    )


__all__ = ["StateBackend", "Taken", "QuotaAsk", "QuotaTaken", "QUOTA_WINDOW", "MemoryState", "build_state",
           "take_all", "apply_all", "negate"]
