"""Per-key quotas: an upstream account's limits, counted before the vendor says 429.

A `KeyQuota` belongs to one `Key` and answers the rotation's question: when
can this key take a request of about `tokens` tokens for `model`, and how
much room does it leave?  It counts per *scope*: the model (vendors' quotas
are usually per key and model), or the whole key with `per: key`:

* requests and tokens in the last 60 s, as a sliding log (`rpm`, `tpm`).
  That is the strictest reading of "per minute": a vendor enforcing fixed
  minutes or a token bucket with the same limit is never exceeded either;
* requests since the provider's last daily reset (`rpd`): a fixed day that
  ends at `quota_reset` wall-clock time in its time zone (DST included).

Requests are counted when issued, so concurrent requests never overshoot;
their tokens are first the gateway's estimate, then settled with what the
response reported.  A vendor's rate-limit headers (`VendorQuota`) cap what
the counts allow until their reset: they can only lower the room, never
raise it.  A per-day 429 benches the key until `next_reset` (keys.py).

I/O-free: `now` is monotonic seconds; the wall clock the daily reset needs
comes from the injected `wall(now) -> epoch seconds`.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from datetime import datetime, time as daytime, timedelta, timezone
from typing import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from busbar.faults import VendorQuota
from busbar.state import QuotaAsk

WINDOW = 60.0                    # seconds of the per-minute windows
DEFAULT_DAILY_RESET = "00:00 UTC"
PER = ("model", "key")
_DAILY = re.compile(r"\s*(\d{1,2}):(\d{2})\s+(\S+)\s*")

Wall = Callable[[float], float]


@dataclass(frozen=True, slots=True)
class Limits:
    """One key's configured limits (None: not limited on that window)."""

    rpm: int | None = None
    tpm: int | None = None
    rpd: int | None = None
    per: str = "model"          # model: counted per key and model; key: per key

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.rpd is not None


class DailyReset:
    """When per-day quotas reset: "HH:MM Area/City" (an IANA time zone)."""

    __slots__ = ("spec", "hour", "minute", "zone")

    def __init__(self, spec: str):
        m = _DAILY.fullmatch(spec) if isinstance(spec, str) else None
        if m is None:
            raise ValueError(f"{spec!r} is not \"HH:MM Area/City\" (e.g. \"00:00 America/Los_Angeles\")")
        hour, minute, name = int(m.group(1)), int(m.group(2)), m.group(3)
        if hour > 23 or minute > 59:
            raise ValueError(f"{spec!r}: the time must be 00:00 to 23:59")
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{spec!r}: unknown time zone {name!r}; use an IANA name such as "
                             "America/Los_Angeles or UTC (install `tzdata` if the system has no tz database)") from None
        self.spec, self.hour, self.minute, self.zone = spec.strip(), hour, minute, zone

    def __repr__(self) -> str:
        return f"DailyReset({self.spec!r})"

    def next_after(self, epoch: float) -> float:
        """The first reset strictly after `epoch` (epoch seconds)."""
        day = datetime.fromtimestamp(epoch, self.zone).date()
        for offset in range(3):   # today's, tomorrow's (a DST gap can shift it by an hour)
            at = datetime.combine(day + timedelta(days=offset), daytime(self.hour, self.minute),
                                  tzinfo=self.zone).timestamp()
            if at > epoch:
                return at
        raise AssertionError("unreachable: a reset happens every day")


class _Scope:
    """The counts of one key (and model)."""

    __slots__ = ("requests", "tokens", "token_sum", "day_count", "day_ends", "vendor_requests", "vendor_tokens",
                 "vendor_limits", "held_until", "cluster")

    def __init__(self):
        self.requests: deque[float] = deque()      # issue times in the last WINDOW
        self.tokens: deque[list] = deque()         # [issue time, tokens] in the last WINDOW
        self.token_sum = 0.0
        self.day_count = 0
        self.day_ends = 0.0                        # epoch at which the counted day ends
        self.vendor_requests: list | None = None   # [remaining, until] from the vendor's headers
        self.vendor_tokens: list | None = None
        self.vendor_limits: tuple = (None, None)   # (requests, tokens) limits the vendor announced
        self.held_until = 0.0                      # the cluster said: no room before then
        self.cluster: tuple | None = None          # (read at, rpm used, tpm used, rpd used, oldest leaves in s)

    def expire(self, now: float) -> None:
        edge = now - WINDOW
        requests = self.requests
        while requests and requests[0] <= edge:
            requests.popleft()
        tokens = self.tokens
        while tokens and tokens[0][0] <= edge:
            self.token_sum -= tokens.popleft()[1]
        if not tokens:
            self.token_sum = 0.0
        if self.vendor_requests is not None and now >= self.vendor_requests[1]:
            self.vendor_requests = None
        if self.vendor_tokens is not None and now >= self.vendor_tokens[1]:
            self.vendor_tokens = None


@dataclass(frozen=True, slots=True)
class Charge:
    """What one request took (to settle its tokens when it ends)."""

    scope: _Scope
    entry: list | None     # its [time, tokens] entry in the token log
    tokens: int
    at: float = 0.0        # when it was counted
    requests: bool = False  # whether it is in the request log
    day: bool = False      # whether it counted toward the day


class KeyQuota:
    """The quota state of one key; see the module docstring."""

    __slots__ = ("limits", "reset", "wall", "scopes", "nominal_rpm", "_day_end")

    def __init__(self, limits: Limits | None = None, reset: DailyReset | None = None,
                 wall: Wall | None = None):
        self.limits = limits or Limits()
        self.reset = reset or DailyReset(DEFAULT_DAILY_RESET)
        self.wall: Wall = wall or _system_wall
        self.scopes: dict[str, _Scope] = {}
        # a key without an rpm of its own, in a ring where others have one:
        # the rpm its share of the load is scored against (never enforced)
        self.nominal_rpm: int | None = None
        self._day_end = 0.0         # the next daily reset (epoch), recomputed once it passed

    def adopt(self, old: "KeyQuota") -> None:
        """Keep the counts over a config reload (the limits may have changed)."""
        self.scopes = old.scopes

    def _key(self, model: str) -> str:
        return "*" if self.limits.per == "key" else model

    def _roll(self, scope: _Scope, wall: float) -> None:
        if wall >= scope.day_ends:
            scope.day_count = 0
            scope.day_ends = self.reset.next_after(wall)

    # ---- queries -----------------------------------------------------------
    def free_at(self, model: str, tokens: int, now: float) -> float:
        """When this key has room for one more request of ~`tokens` tokens
        for `model` (`now` when it has room now)."""
        scope = self.scopes.get(self._key(model))
        if scope is None:
            return now
        scope.expire(now)
        lim = self.limits
        at = now
        if lim.rpm is not None and len(scope.requests) >= lim.rpm:
            at = max(at, scope.requests[len(scope.requests) - lim.rpm] + WINDOW)
        if lim.tpm is not None and scope.tokens:
            # a request larger than the whole limit waits for an empty window
            excess = scope.token_sum - (lim.tpm - min(tokens, lim.tpm))
            if excess > 0:
                for issued, amount in scope.tokens:
                    excess -= amount
                    if excess <= 0:
                        at = max(at, issued + WINDOW)
                        break
        if lim.rpd is not None:
            wall = self.wall(now)
            self._roll(scope, wall)
            if scope.day_count >= lim.rpd:
                at = max(at, now + (scope.day_ends - wall))
        vendor = scope.vendor_requests
        if vendor is not None and vendor[0] <= 0:
            at = max(at, vendor[1])
        vendor = scope.vendor_tokens
        if vendor is not None and vendor[0] < max(1, tokens):
            at = max(at, vendor[1])
        if scope.held_until > at:
            at = scope.held_until
        return at

    def headroom(self, model: str, tokens: int, now: float) -> float:
        """The share of its tightest window this key has left after such a
        request (1.0: untouched or unlimited); the rotation prefers the most."""
        scope = self.scopes.get(self._key(model))
        if scope is None:
            return 1.0
        lim = self.limits
        room = 1.0
        rpm = lim.rpm or self.nominal_rpm
        if rpm:
            room = min(room, (rpm - len(scope.requests) - 1) / rpm)
        if lim.tpm:
            room = min(room, (lim.tpm - scope.token_sum - tokens) / lim.tpm)
        if lim.rpd:
            room = min(room, (lim.rpd - scope.day_count - 1) / lim.rpd)
        limit_requests, _ = scope.vendor_limits
        if scope.vendor_requests is not None and limit_requests:
            room = min(room, (scope.vendor_requests[0] - 1) / limit_requests)
        return room

    def until_reset(self, now: float) -> float:
        """Seconds to the next daily reset (a per-day 429 benches that long)."""
        wall = self.wall(now)
        return self.reset.next_after(wall) - wall

    # ---- moves ---------------------------------------------------------------
    def take(self, model: str, tokens: int, now: float) -> Charge | None:
        """Count a request issued now with this key (~`tokens` estimated)."""
        key = self._key(model)
        scope = self.scopes.get(key)
        lim = self.limits
        if scope is None:
            if not lim.any and self.nominal_rpm is None:
                return None          # nothing to count on this key
            scope = self.scopes[key] = _Scope()
        scope.expire(now)
        counted = lim.rpm is not None or self.nominal_rpm is not None
        if counted:
            scope.requests.append(now)
        entry = None
        if lim.tpm is not None:
            entry = [now, tokens]
            scope.tokens.append(entry)
            scope.token_sum += tokens
        if lim.rpd is not None:
            self._roll(scope, self.wall(now))
            scope.day_count += 1
        if scope.vendor_requests is not None:
            scope.vendor_requests[0] -= 1
        if scope.vendor_tokens is not None:
            scope.vendor_tokens[0] -= tokens
        return Charge(scope, entry, tokens, now, counted, lim.rpd is not None)

    def refund(self, charge: Charge | None) -> None:
        """Undo a take whose request was never sent (the cluster placed it on
        another key, or had room on none)."""
        if charge is None:
            return
        scope = charge.scope
        if charge.requests:
            try:
                scope.requests.remove(charge.at)
            except ValueError:
                pass          # already left the window
        if charge.entry is not None:
            try:
                scope.tokens.remove(charge.entry)
                scope.token_sum -= charge.entry[1]
            except ValueError:
                pass
        if charge.day and scope.day_count > 0:
            scope.day_count -= 1
        if scope.vendor_requests is not None:
            scope.vendor_requests[0] += 1
        if scope.vendor_tokens is not None:
            scope.vendor_tokens[0] += charge.tokens

    def hold(self, model: str, until: float) -> None:
        """The cluster's counts say this key has no room for `model` before
        `until` (other replicas used it): not available until then."""
        key = self._key(model)
        scope = self.scopes.get(key)
        if scope is None:
            scope = self.scopes[key] = _Scope()
        scope.held_until = max(scope.held_until, until)

    def ask(self, model: str, tokens: int, now: float, key_id: str) -> QuotaAsk:
        """This key's limits for a request to `model`, as the cluster backend
        takes them (named by key id and scope, never the secret)."""
        lim, scope = self.limits, self._key(model)
        wall = self.wall(now)
        if wall >= self._day_end:
            self._day_end = self.reset.next_after(wall)
        day_end = self._day_end
        return QuotaAsk(f"{key_id}:{scope}", lim.rpm, lim.tpm, lim.rpd, tokens, int(day_end), day_end - wall)

    def cluster_scopes(self, models) -> list[str]:
        """The scopes the cluster may hold counts for (per key: one; per model: each model)."""
        return ["*"] if self.limits.per == "key" else sorted(set(models))

    def observe_cluster(self, scope_name: str, counts: tuple, now: float) -> None:
        """Counts read from the cluster backend (every replica's), for the snapshot."""
        scope = self.scopes.get(scope_name)
        if scope is None:
            scope = self.scopes[scope_name] = _Scope()
        scope.cluster = (now, *counts)

    def settle(self, charge: Charge | None, tokens: int | None) -> None:
        """The request ended having used `tokens` (None: unknown, keep the estimate)."""
        if charge is None or tokens is None:
            return
        delta = tokens - charge.tokens
        scope, entry = charge.scope, charge.entry
        if entry is not None and scope.tokens and scope.tokens[0][0] <= entry[0]:
            # still in the window (entries leave it oldest first)
            scope.token_sum += delta
            entry[1] = tokens
        if scope.vendor_tokens is not None:
            scope.vendor_tokens[0] -= delta

    def observe(self, model: str, vendor: VendorQuota, now: float) -> None:
        """Apply what the vendor's headers said is left (lowers the room until
        their reset; without a reset, for one window)."""
        key = self._key(model)
        scope = self.scopes.get(key)
        if scope is None:
            scope = self.scopes[key] = _Scope()
        if vendor.requests_remaining is not None:
            reset = vendor.requests_reset if vendor.requests_reset is not None else WINDOW
            scope.vendor_requests = [vendor.requests_remaining, now + max(0.0, reset)]
        if vendor.tokens_remaining is not None:
            reset = vendor.tokens_reset if vendor.tokens_reset is not None else WINDOW
            scope.vendor_tokens = [vendor.tokens_remaining, now + max(0.0, reset)]
        if vendor.requests_limit is not None or vendor.tokens_limit is not None:
            scope.vendor_limits = (vendor.requests_limit, vendor.tokens_limit)

    # ---- introspection ---------------------------------------------------------
    def snapshot(self, now: float) -> list[dict]:
        """Used / limit per window and when each frees, per scope (no secret)."""
        out = []
        lim = self.limits
        for name, scope in self.scopes.items():
            scope.expire(now)
            row: dict = {"scope": "key" if name == "*" else name}
            # the cluster's counts (every replica's) when the admin just read them, else this process's
            cluster = scope.cluster if scope.cluster is not None and now - scope.cluster[0] < 5.0 else None
            if lim.rpm is not None:
                used = int(cluster[1]) if cluster else len(scope.requests)
                resets = cluster[4] - (now - cluster[0]) if cluster else (
                    scope.requests[0] + WINDOW - now if scope.requests else 0.0)
                row["rpm"] = {"used": used, "limit": lim.rpm, "resets_in_s": _in(resets)}
            if lim.tpm is not None:
                used = int(cluster[2]) if cluster else int(scope.token_sum)
                resets = cluster[4] - (now - cluster[0]) if cluster else (
                    scope.tokens[0][0] + WINDOW - now if scope.tokens else 0.0)
                row["tpm"] = {"used": used, "limit": lim.tpm, "resets_in_s": _in(resets)}
            if lim.rpd is not None:
                wall = self.wall(now)
                self._roll(scope, wall)
                row["rpd"] = {"used": int(cluster[3]) if cluster else scope.day_count, "limit": lim.rpd,
                              "resets_in_s": _in(scope.day_ends - wall),
                              "resets_at": datetime.fromtimestamp(scope.day_ends, timezone.utc).isoformat()}
            if cluster:
                row["shared"] = True      # counts of every replica (the cluster backend)
            if scope.held_until > now:
                row["held_s"] = _in(scope.held_until - now)
            vendor = {}
            for window, hint, limit in (("requests", scope.vendor_requests, scope.vendor_limits[0]),
                                        ("tokens", scope.vendor_tokens, scope.vendor_limits[1])):
                if hint is not None:
                    vendor[window] = {"remaining": max(0, int(hint[0])), "limit": limit,
                                      "resets_in_s": _in(hint[1] - now)}
            if vendor:
                row["vendor"] = vendor
            if len(row) > 1:
                out.append(row)
        return out


def _in(seconds: float) -> float:
    return round(max(0.0, seconds), 3)


def _system_wall(now: float) -> float:
    import time
    return time.time()


def parse_key_entry(entry, where: str) -> tuple[str, Limits | None]:
    """A `providers.X.keys[i]` entry: a plain secret, or
    `{key, limits: {rpm, tpm, rpd}, per}`.  Raises ValueError naming `where`."""
    if isinstance(entry, str):
        return entry, None
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise ValueError(f"{where}: a key is a string or {{key, limits: {{rpm, tpm, rpd}}, per}}")
    raw = entry.get("limits") or {}
    per = entry.get("per", "model")
    if per not in PER:
        raise ValueError(f"{where}.per: must be one of {', '.join(PER)}, not {per!r}")
    for name, value in raw.items():
        if name not in ("rpm", "tpm", "rpd") or not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{where}.limits.{name}: limits are rpm, tpm and rpd, each a positive integer")
    return entry["key"], Limits(raw.get("rpm"), raw.get("tpm"), raw.get("rpd"), per)


def key_secret(entry) -> str:
    """The secret of a `keys` entry in either form (for redaction)."""
    return entry if isinstance(entry, str) else entry.get("key", "") if isinstance(entry, dict) else ""
