"""Per-account state: a provider's keys, their benches and their rotation.

A `Key` holds one secret and what happened to it:

* disabled (billing, auth): unusable for every model until a deadline;
* cooling for the whole key, or for one model on that key (rate limits are
  usually per key *and* model), until a deadline, with a streak counter that
  drives the exponential backoff and resets on success.

* at its quota: `quota` (quota.py) counts what the key sent against its
  configured limits and the vendor's rate-limit headers; the key is not
  available until that frees.

Benching only ever extends a deadline, never shortens it.

The secret never leaves through `repr`, `str`, snapshots or events: a key is
named by `id` = `<provider>#<index>:<sha256 prefix>`, which identifies it in
logs without revealing anything usable.
"""
from __future__ import annotations

import hashlib

from busbar.routing.quota import KeyQuota

ROTATIONS = ("round_robin", "least_used")


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag of a secret (sha256 prefix)."""
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


class Key:
    __slots__ = ("provider", "index", "id", "_secret", "disabled_until", "disabled_reason",
                 "cooling_until", "streak", "models", "in_flight", "uses", "quota")

    def __init__(self, provider: str, index: int, secret: str | None, quota: KeyQuota | None = None):
        self.provider = provider
        self.index = index
        self._secret = secret
        self.id = f"{provider}#{index}:{fingerprint(secret) if secret is not None else 'nokey'}"
        self.disabled_until = 0.0
        self.disabled_reason = ""
        self.cooling_until = 0.0      # whole-key cool-down
        self.streak = 0               # consecutive whole-key rate faults
        self.models: dict[str, list] = {}  # model -> [cooling_until, streak]
        self.in_flight = 0
        self.uses = 0
        self.quota = quota or KeyQuota()

    @property
    def secret(self) -> str | None:
        """The credential to send upstream.  Never log it."""
        return self._secret

    def __repr__(self) -> str:
        return f"Key({self.id})"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("keys are not serialisable")

    def adopt(self, old: "Key") -> None:
        """Carry cool-downs and disables over a config reload (same provider,
        index and secret)."""
        self.disabled_until, self.disabled_reason = old.disabled_until, old.disabled_reason
        self.cooling_until, self.streak, self.models, self.uses = old.cooling_until, old.streak, old.models, old.uses
        self.quota.adopt(old.quota)

    # ---- queries ---------------------------------------------------------
    def recovery(self, model: str, now: float = 0.0, tokens: int = 0) -> float:
        """When this key is usable for `model` with a ~`tokens` request (a
        past time: usable now)."""
        entry = self.models.get(model)
        return max(self.disabled_until, self.cooling_until, entry[0] if entry else 0.0,
                   self.quota.free_at(model, tokens, now))

    def available(self, model: str, now: float, tokens: int = 0) -> bool:
        return self.recovery(model, now, tokens) <= now

    # ---- moves -----------------------------------------------------------
    def next_streak(self, model: str | None) -> int:
        """The streak the next rate fault would make (for the backoff)."""
        if model is None:
            return self.streak + 1
        entry = self.models.get(model)
        return (entry[1] if entry else 0) + 1

    def cool(self, model: str | None, seconds: float, now: float) -> float:
        """Bench for `seconds` (for `model` only, or the whole key when None).
        Returns the resulting deadline, which never moves earlier."""
        if model is None:
            self.streak += 1
            self.cooling_until = max(self.cooling_until, now + seconds)
            return self.cooling_until
        entry = self.models.setdefault(model, [0.0, 0])
        entry[1] += 1
        entry[0] = max(entry[0], now + seconds)
        return entry[0]

    def disable(self, seconds: float, reason: str, now: float) -> float:
        until = now + seconds
        if until >= self.disabled_until:
            self.disabled_until = until
            self.disabled_reason = reason
        return self.disabled_until

    def succeeded(self, model: str, now: float) -> None:
        self.streak = 0
        entry = self.models.get(model)
        if entry is not None:
            if entry[0] <= now:
                del self.models[model]
            else:
                entry[1] = 0

    def state(self, now: float) -> dict:
        """Safe snapshot: no secret."""
        out: dict = {"id": self.id, "in_flight": self.in_flight, "uses": self.uses}
        if self.disabled_until > now:
            out.update(state="disabled", reason=self.disabled_reason, until=self.disabled_until,
                       remaining_s=round(self.disabled_until - now, 3))
        elif self.cooling_until > now:
            out.update(state="cooling", until=self.cooling_until,
                       remaining_s=round(self.cooling_until - now, 3))
        else:
            out["state"] = "active"
        models = {m: {"until": e[0], "remaining_s": round(e[0] - now, 3)}
                  for m, e in self.models.items() if e[0] > now}
        if models:
            out["models_cooling"] = models
        quota = self.quota.snapshot(now)
        if quota:
            out["quota"] = quota
        return out


class KeyRing:
    """The keys of one provider and how the next one is chosen.

    `round_robin` (default): the next available key after the last one used;
    when some key has quota limits, the available key with the most room left
    (quota.py `headroom`), ties in round-robin order, so load spreads and no
    key reaches its limit before the others.
    `least_used`: the available key with the fewest requests in flight, then
    the fewest uses so far, then the lowest index.
    A benched key (or one at its quota) is never chosen while another is available.
    """

    __slots__ = ("provider", "rotation", "keys", "_cursor", "quota_aware")

    def __init__(self, provider: str, secrets: list[str | None], rotation: str = "round_robin",
                 quotas: list[KeyQuota] | None = None):
        if rotation not in ROTATIONS:
            raise ValueError(f"unknown key rotation {rotation!r}")
        self.provider = provider
        self.rotation = rotation
        quotas = quotas or []
        self.keys = tuple(Key(provider, i, s, quotas[i] if i < len(quotas) else None)
                          for i, s in enumerate(secrets or [None]))
        self._cursor = 0
        limited = [k.quota.limits for k in self.keys if k.quota.limits.any]
        self.quota_aware = bool(limited)
        nominal = max((lim.rpm for lim in limited if lim.rpm), default=None)
        for k in self.keys:
            if k.quota.limits.rpm is None and nominal is not None:
                k.quota.nominal_rpm = nominal   # a plain key's share is scored like the largest

    def __repr__(self) -> str:
        return f"KeyRing({self.provider}, {len(self.keys)} keys, {self.rotation})"

    def holding(self, key_id: str) -> Key | None:
        """The key `key_id` names, or, when a reload moved that secret to another
        index, the key with the same secret (the id's fingerprint part): what a
        vendor holds per project follows the secret, not its place in the list."""
        for k in self.keys:
            if k.id == key_id:
                return k
        tag = key_id.rpartition(":")[2]
        return next((k for k in self.keys if k.id.rpartition(":")[2] == tag), None) if tag else None

    def available(self, model: str, now: float, exclude: frozenset | set = frozenset(), tokens: int = 0) -> bool:
        return any(k.available(model, now, tokens) for k in self.keys if k.id not in exclude)

    def recovery(self, model: str, now: float, exclude: frozenset | set = frozenset(),
                 tokens: int = 0) -> float | None:
        """Earliest time some non-excluded key is usable for `model`."""
        times = [k.recovery(model, now, tokens) for k in self.keys if k.id not in exclude]
        return max(now, min(times)) if times else None

    def candidates(self, first: Key, model: str, now: float, exclude: frozenset | set = frozenset(),
                   tokens: int = 0, limit: int = 8) -> list[Key]:
        """`first` (the local pick) and the other available keys with limits,
        most headroom first: what the cluster backend chooses among when other
        replicas share these keys (ADR 0017).  At most `limit` keys."""
        others = [k for k in self.keys if k is not first and k.id not in exclude and k.quota.limits.any
                  and k.available(model, now, tokens)]
        others.sort(key=lambda k: -k.quota.headroom(model, tokens, now))
        return [first] + others[:limit - 1]

    def pick(self, model: str, now: float, exclude: frozenset | set = frozenset(), tokens: int = 0) -> Key | None:
        n = len(self.keys)
        if self.rotation == "least_used":
            best = None
            for k in self.keys:
                if k.id not in exclude and k.available(model, now, tokens):
                    if best is None or (k.in_flight, k.uses) < (best.in_flight, best.uses):
                        best = k
            return best
        best, room = None, 0.0
        for step in range(n):
            k = self.keys[(self._cursor + step) % n]
            if k.id not in exclude and k.available(model, now, tokens):
                if not self.quota_aware:
                    best = k
                    break
                r = k.quota.headroom(model, tokens, now)
                if best is None or r > room + 1e-9:
                    best, room = k, r
        if best is not None:
            self._cursor = (best.index + 1) % n
        return best
