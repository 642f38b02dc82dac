"""Tenancy: who may call, how much (issue 15, ADR 0011).

I/O-free core on the counters API (`busbar.state`): a key registry (ids,
sha256 hashes compared in constant time, pools / `direct` permission,
expiry, teams), limits (rpm, tpm, parallel), budgets (usd or tokens per
day / week / month / total, `over_budget: {downgrade: POOL}`) and pricing.

The driver calls two functions:

* `Tenancy.admit(secret, pool, estimate, max_tokens)` before routing:
  authenticate -> permitted pool -> limits and budget of the key and its team
  (all or nothing: a level that refuses gives back what the others took) ->
  an `Admission`, or a `ClientError` saying which (kind authentication /
  permission / rate_limit with retry_after / billing).
* `Tenancy.settle(admission, usage, price)` when the response ends (streams
  included): frees the parallel slot, settles tpm from the estimate to the
  real usage, charges the budget.

tpm admits on an estimate: the prompt estimate (request bytes / 4) plus the
request's max output tokens (or 0 when it names none), then settles on the
real usage.  Budgets admit while the period's spend is below the limit, so the
request that crosses it completes and the next is refused (at most one
in-flight request per replica overruns).
"""
from __future__ import annotations

import hashlib
import hmac
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from busbar.faults import ClientError
from busbar.state import negate

PERIODS = ("day", "week", "month", "total")
_GRACE = 3600.0
_PARALLEL_TTL = 3600.0      # a parallel slot a crashed request never gave back expires


@dataclass(frozen=True, slots=True)
class Price:
    """USD per 1M tokens, as the vendor prices them: cache reads and writes
    at their own rates and never also as input; reasoning as output unless
    priced apart."""

    input: float
    output: float
    cached_input: float | None = None
    cache_write: float | None = None
    reasoning: float | None = None

    @classmethod
    def from_config(cls, spec: dict | None) -> "Price | None":
        if not spec:
            return None
        return cls(spec["input"], spec["output"], spec.get("cached_input"), spec.get("cache_write"),
                   spec.get("reasoning"))

    def cost(self, usage) -> float:
        """USD for one response's usage (`busbar.ir.Usage`: input includes cache
        reads and writes, output includes reasoning)."""
        cached = usage.cached_tokens
        written = getattr(usage, "cache_creation_tokens", 0)
        plain_input = max(0, usage.input_tokens - cached - written)
        reasoning = usage.reasoning_tokens if self.reasoning is not None else 0
        plain_output = max(0, usage.output_tokens - reasoning)
        micro = (plain_input * self.input
                 + cached * (self.input if self.cached_input is None else self.cached_input)
                 + written * (self.input if self.cache_write is None else self.cache_write)
                 + plain_output * self.output
                 + reasoning * (self.reasoning or 0.0))
        return micro / 1_000_000


@dataclass(frozen=True, slots=True)
class Limits:
    rpm: int | None = None
    tpm: int | None = None
    parallel: int | None = None

    @classmethod
    def from_config(cls, spec: dict | None) -> "Limits":
        spec = spec or {}
        return cls(spec.get("rpm"), spec.get("tpm"), spec.get("parallel"))


@dataclass(frozen=True, slots=True)
class Budget:
    limit: float
    unit: str           # usd | tokens
    period: str         # day | week | month | total
    alert: float = 0.8  # soft alert threshold (fraction of the limit)

    @classmethod
    def from_config(cls, spec: dict | None) -> "Budget | None":
        if not spec:
            return None
        unit = "usd" if "usd" in spec else "tokens"
        return cls(float(spec[unit]), unit, spec.get("period", "month"), float(spec.get("alert", 0.8)))


@dataclass(frozen=True, slots=True)
class Level:
    """One level limits and budgets apply at: a key or a team."""

    id: str
    limits: Limits = Limits()
    budget: Budget | None = None
    downgrade: str | None = None
    # the limits as busbar.state batch ops, built once: (reason, op, amount cap); the op's amount
    # is 1, except tpm's: the request's estimate, capped at the limit (set per request)
    ops: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self) -> None:
        limits, ops = self.limits, []
        if limits.rpm:
            ops.append(("rpm", ("bucket", f"tenancy:{self.id}:rpm", 1, limits.rpm / 60.0, limits.rpm), None))
        if limits.tpm:      # a request larger than the limit waits for a full bucket (amount capped)
            ops.append(("tpm", ("bucket", f"tenancy:{self.id}:tpm", 0, limits.tpm / 60.0, limits.tpm), limits.tpm))
        if limits.parallel:
            ops.append(("parallel", ("counter", f"tenancy:{self.id}:parallel", 1, limits.parallel, _PARALLEL_TTL),
                        None))
        object.__setattr__(self, "ops", tuple(ops))


@dataclass(frozen=True, slots=True)
class ClientKey:
    id: str
    sha256: str
    level: Level
    pools: frozenset | None = None     # None: every pool
    direct: bool | None = None         # provider/model routes: allowed, refused, or (None) as server.direct_routes
    expires: float | None = None       # epoch seconds
    team: str | None = None
    minted: bool = False               # made at run time (busbar.tenancy.minted), not in the config


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _expiry(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        when = value
    elif isinstance(value, date):
        when = datetime.combine(value, datetime.min.time())
    else:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def key_from_config(spec, index: int, *, minted: bool = False) -> ClientKey:
    """`auth.keys[i]` (a plain string: no limits; or an object), or a minted key's record."""
    if isinstance(spec, str):
        digest = hash_secret(spec)
        return ClientKey(f"key-{digest[:8]}", digest, Level(f"key-{digest[:8]}"))
    digest = spec.get("key_sha256") or hash_secret(spec["key"])
    level = Level(spec["id"], Limits.from_config(spec.get("limits")), Budget.from_config(spec.get("budget")),
                  (spec.get("over_budget") or {}).get("downgrade"))
    pools = spec.get("pools")
    return ClientKey(spec["id"], digest.lower(), level, frozenset(pools) if pools is not None else None,
                     None if spec.get("direct") is None else bool(spec["direct"]), _expiry(spec.get("expires")),
                     spec.get("team"), minted)


def period_bounds(period: str, wall: float) -> tuple[str, float]:
    """(label, seconds until the period ends) for the UTC period containing `wall`."""
    now = datetime.fromtimestamp(wall, timezone.utc)
    if period == "total":
        return "total", 10 * 365 * 86400.0
    if period == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=1)
    elif period == "week":
        start = (now - timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        end = start + timedelta(days=7)
    else:
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
    return start.strftime("%Y-%m-%d"), end.timestamp() - wall


@dataclass(slots=True)
class Admission:
    """What `admit` took, so `settle` can give back and charge exactly that."""

    key: ClientKey
    levels: tuple
    pool: str                      # the pool to route to (a downgrade may change it)
    estimate: int = 0
    downgraded: bool = False
    settled: bool = False
    taken: list = field(default_factory=list)
    alerts: list = field(default_factory=list)     # level ids whose soft alert this request crossed


class Tenancy:
    """The key registry and the admission / settle pair (see the module docstring)."""

    def __init__(self, keys: list[ClientKey], teams: dict[str, Level], state, *, wall=time.time, minted=None,
                 aws_master: str | None = None):
        self.by_hash = {k.sha256: k for k in keys}
        self.by_key_id = {k.id: k for k in keys}
        self.aws_master = aws_master        # auth.aws_master_secret: minted keys' SigV4 pairs (None: none)
        self._derived: dict[str, str] = {}  # access key id -> its derived secret (one HMAC per pair and config)
        self.minted = minted                # busbar.tenancy.minted.MintedKeys (the App's; None: none)
        if minted is not None:
            minted.reserve(frozenset(k.id for k in keys))
        self.teams = teams
        self.state = state
        self.wall = wall
        self.limited: dict[str, int] = {}   # refusals by reason (metrics)
        self.alerted: set[str] = set()
        self.spend_usd = 0.0
        self._periods: dict[tuple, tuple[str, float]] = {}   # (level id, unit, period) -> (budget key, period end)

    @classmethod
    def from_config(cls, auth: dict, state=None, *, wall=time.time, minted=None) -> "Tenancy":
        from busbar.state import MemoryState
        keys = [key_from_config(spec, i) for i, spec in enumerate(auth.get("keys", ()))]
        teams = {name: Level(name, Limits.from_config(t.get("limits")), Budget.from_config(t.get("budget")),
                             (t.get("over_budget") or {}).get("downgrade"))
                 for name, t in (auth.get("teams") or {}).items()}
        return cls(keys, teams, state if state is not None else MemoryState(), wall=wall, minted=minted,
                   aws_master=auth.get("aws_master_secret"))

    # ---- who ---------------------------------------------------------------
    @property
    def required(self) -> bool:
        """Clients must present a key: the config lists some, or some were minted."""
        return bool(self.by_hash) or (self.minted is not None and self.minted.active)

    def authenticate(self, secret: str | None) -> ClientKey:
        """The key `secret` belongs to (config keys, then this process's cache
        of the minted keys: never a store round trip), or the 401."""
        if not secret:
            raise ClientError(401, "Missing API key: send the gateway key the way your SDK sends its vendor key.",
                              "authentication")
        digest = hash_secret(secret)
        key = self.by_hash.get(digest)
        if key is None and self.minted is not None:
            key = self.minted.by_hash.get(digest)
        return self._checked(key, digest)

    def by_id(self, key_id: str) -> ClientKey | None:
        """A live key by id, config or minted (the key a signed request's access key pair stands for)."""
        key = self.by_key_id.get(key_id)
        if key is None and self.minted is not None:
            key = self.minted.by_id.get(key_id)
        return key

    def minted_pair(self, access_key_id: str) -> tuple[str, str] | None:
        """(secret, key id) of a live minted key's SigV4 access key id, else
        None.  The secret is derived from `auth.aws_master_secret`, never stored."""
        if self.aws_master is None or self.minted is None:
            return None
        key = self.minted.by_access_key.get(access_key_id)       # live keys only: a revoked pair is unknown
        if key is None:
            return None
        secret = self._derived.get(access_key_id)
        if secret is None:
            from busbar.tenancy.minted import derive_aws_secret
            secret = self._derived[access_key_id] = derive_aws_secret(self.aws_master, access_key_id)
        return secret, key.id

    def _checked(self, key: ClientKey | None, digest: str) -> ClientKey:
        if key is None or not hmac.compare_digest(key.sha256, digest):
            raise ClientError(401, "Invalid or missing API key for this gateway.", "authentication")
        if key.expires is not None and self.wall() >= key.expires:
            raise ClientError(401, f"The API key `{key.id}` has expired.", "authentication")
        return key

    # provider/model routes for a key that does not say (`direct` unset): server.direct_routes (the Gateway sets it)
    direct_routes = False

    def permit(self, key: ClientKey, pool: str, known_pool: bool) -> None:
        if not known_pool and "/" in pool:
            allowed = self.direct_routes if key.direct is None else key.direct
            if not allowed:
                why = ("its `direct: false`" if key.direct is False else
                       "server.direct_routes is off and the key has no `direct: true`")
                raise ClientError(403, f"The key `{key.id}` may not call provider/model routes such as `{pool}` "
                                       f"({why}).", "permission")
            return
        if key.pools is not None and pool not in key.pools:
            raise ClientError(403, f"The key `{key.id}` may not use the pool `{pool}`.", "permission")

    # ---- how much ------------------------------------------------------------
    async def admit(self, secret: str | None, pool: str, estimate: int, *, known_pool: bool = True,
                    billing_status: int = 429, key: ClientKey | None = None) -> Admission:
        """`key`: already authenticated (a verified signature's access key pair), else `secret` is."""
        if key is None:
            key = self.authenticate(secret)
        elif key.expires is not None and self.wall() >= key.expires:
            raise ClientError(401, f"The API key `{key.id}` has expired.", "authentication")
        self.permit(key, pool, known_pool)
        levels = (key.level,) + ((self.teams[key.team],) if key.team in self.teams else ())
        admission = Admission(key, levels, pool, estimate)
        try:
            # every level's limits and budget reads in one batch (all or nothing: the state gives
            # back what it took; one round trip with Redis)
            ops, taken = [], admission.taken
            for level in levels:
                for reason, op, cap in level.ops:
                    if cap is not None:
                        op = (op[0], op[1], min(estimate, cap), op[3], op[4])
                    ops.append(op)
                    taken.append((reason, level, op))
            budgeted = [level for level in levels if level.budget is not None]
            if budgeted:
                wall = self.wall()
                reads = [self._budget_key(level, wall)[0] for level in budgeted]
            else:
                reads = ()
            if ops or reads:
                refused, spent = await self.state.take_all(ops, reads)
                if refused is not None:
                    i, answer = refused
                    reason, level, _ = taken[i]
                    taken.clear()                 # (given back by take_all)
                    self._refuse(reason, level, 1.0 if reason == "parallel" else answer.retry_after)
                for level, used in zip(budgeted, spent):
                    if used < level.budget.limit:
                        continue
                    if level.downgrade and not admission.downgraded:
                        admission.pool, admission.downgraded = level.downgrade, True
                        continue
                    self._count("budget")
                    refused = ClientError(billing_status, f"The {('team' if level is not key.level else 'key')} "
                                          f"`{level.id}` has used its {level.budget.period} budget of "
                                          f"{level.budget.limit:g} {level.budget.unit}.", "billing",
                                          code="insufficient_quota")
                    refused.reason = "budget"
                    raise refused
        except ClientError as refused:
            refused.key_id = key.id            # for the metrics (busbar_key_limited_total{key, reason})
            await self._give_back(admission)
            raise
        return admission

    def _refuse(self, reason: str, level: Level, retry_after: float) -> None:
        self._count(reason)
        retry = retry_after if retry_after != float("inf") else 60.0
        refused = ClientError(429, f"Rate limit of `{level.id}` reached ({reason}); retry after {retry:.0f}s.",
                              "rate_limit", retry_after=max(retry, 0.001), code="rate_limit_exceeded")
        refused.reason = reason
        raise refused

    def _count(self, reason: str) -> None:
        self.limited[reason] = self.limited.get(reason, 0) + 1

    async def _give_back(self, adm: Admission) -> None:
        if adm.taken:
            await self.state.apply_all([negate(op) for _, _, op in reversed(adm.taken)])
            adm.taken.clear()

    def _budget_key(self, level: Level, wall: float | None = None) -> tuple[str, float]:
        # the period's key is computed once per period (calendar math is most of the cost);
        # by id, unit and period, so a minted key whose budget changes period gets its new key
        wall = self.wall() if wall is None else wall
        slot = (level.id, level.budget.unit, level.budget.period)
        cached = self._periods.get(slot)
        if cached is None or wall >= cached[1]:
            label, remaining = period_bounds(level.budget.period, wall)
            cached = self._periods[slot] = (f"tenancy:{level.id}:budget:{level.budget.unit}:{label}",
                                            wall + remaining)
        return cached[0], cached[1] - wall + _GRACE

    async def _spent(self, level: Level) -> float:
        return await self.state.get_counter(self._budget_key(level)[0])

    # ---- when it ends ----------------------------------------------------------
    async def settle(self, adm: Admission, usage=None, price: Price | None = None) -> float:
        """Give back the parallel slot, settle tpm on the real usage, charge the
        budgets; returns the request's cost in USD (0 without a price).
        Idempotent: a second call does nothing."""
        if adm.settled:
            return 0.0
        adm.settled = True
        tokens = usage.input_tokens + usage.output_tokens if usage is not None else 0
        ops = []                   # one batch: the parallel slots back, tpm to the real usage, the budgets
        for reason, _, op in adm.taken:
            if reason == "parallel":
                ops.append(negate(op))
            elif reason == "tpm" and usage is not None:
                ops.append(("bucket", op[1], tokens - op[2], op[3], op[4]))
        cost = price.cost(usage) if (price is not None and usage is not None) else 0.0
        self.spend_usd += cost
        charged, wall = [], None
        for level in adm.levels:
            if level.budget is None:
                continue
            amount = cost if level.budget.unit == "usd" else tokens
            if amount:
                wall = self.wall() if wall is None else wall
                key, ttl = self._budget_key(level, wall)
                charged.append((level, key, ttl, len(ops)))
                ops.append(("counter", key, amount, None, ttl))
        if not ops:
            return cost
        totals = await self.state.apply_all(ops)
        for level, key, ttl, i in charged:
            total = totals[i]
            if total >= level.budget.alert * level.budget.limit and await self._first_alert(level, key, ttl):
                self._alert(level, total)
                adm.alerts.append(level.id)
        return cost

    async def _first_alert(self, level: Level, budget_key: str, ttl: float) -> bool:
        """Whether this crossing of `level`'s soft alert is the period's first.
        Remembered here (no I/O on later settles) and in the key store (SQLite
        or Redis: a reload, a restart or another replica does not fire it
        again); without a key store, in the state backend (kept across reloads,
        shared through Redis)."""
        mark = f"{level.id}:{budget_key}"
        if mark in self.alerted:
            return False
        self.alerted.add(mark)
        store = getattr(self.minted, "store", None)
        try:
            if store is not None:
                return await store.claim_alert(mark, ttl, self.wall())
            return (await self.state.take_counter(f"tenancy:alerted:{mark}", 1, 1, ttl)).ok
        except Exception as exc:        # a store that cannot answer: alert (twice at worst), never fail the settle
            import logging
            logging.getLogger("busbar.tenancy").warning("budget alert marker not stored (%s)", exc)
            return True

    def _alert(self, level: Level, total: float) -> None:
        budget = level.budget
        self._count("budget_alert")
        import logging
        logging.getLogger("busbar.alert").warning(
            "tenancy: `%s` has used %.0f%% of its %s budget (%g of %g %s)", level.id,
            100 * total / budget.limit, budget.period, total, budget.limit, budget.unit)

    async def usage_of(self, level_id: str) -> dict:
        keys = list(self.by_hash.values()) + (list(self.minted.by_hash.values()) if self.minted is not None else [])
        level = next((k.level for k in keys if k.id == level_id), None) or self.teams.get(level_id)
        if level is None or level.budget is None:
            return {"id": level_id}
        return {"id": level_id, "budget": {"limit": level.budget.limit, "unit": level.budget.unit,
                                           "period": level.budget.period, "spent": await self._spent(level)}}


def member_prices(pools: dict) -> dict:
    """Member id (as the router names it: `id`, else pool/provider/model) -> Price."""
    out = {}
    for name, pool in pools.items():
        for m in pool.get("members", ()):
            if "provider" in m and m.get("price"):
                out[m.get("id") or f"{name}/{m['provider']}/{m['model']}"] = Price.from_config(m["price"])
    return out


def member_models(pools: dict) -> dict:
    """Member id (as `member_prices` names it) -> the upstream model (usage's `model` group)."""
    return {m.get("id") or f"{name}/{m['provider']}/{m['model']}": m["model"]
            for name, pool in pools.items() for m in pool.get("members", ()) if "provider" in m and "model" in m}


_MAX_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def estimate_tokens(body: bytes, obj: dict) -> int:
    """tpm's admission estimate: the prompt (request bytes / 4, the same
    estimate routing uses) plus the max output tokens the request names in
    any protocol's spelling (0 when it names none)."""
    out = 0
    for name in _MAX_TOKEN_FIELDS:
        if isinstance(obj.get(name), int):
            out = obj[name]
            break
    else:
        gen = obj.get("generationConfig") or obj.get("generation_config") or obj.get("inferenceConfig") or {}
        if isinstance(gen, dict):
            for name in ("maxOutputTokens", "max_output_tokens", "maxTokens"):
                if isinstance(gen.get(name), int):
                    out = gen[name]
                    break
    return len(body) // 4 + max(0, out)
