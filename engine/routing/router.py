"""The routing façade the gateway driver calls: route -> plan -> attempts.

    router = Router.from_config(config)            # tables built once
    plan = router.start("fast", Needs(tokens=1200, tools=True), now)
    while True:
        step = plan.next(now)
        if isinstance(step, Wait):      sleep step.seconds, continue
        if isinstance(step, Exhausted): answer from step (429 + Retry-After when
                                        step.retry_after, else step.last_fault / 502 / 504)
        ... send upstream with step.key_secret to step.provider / step.model ...
        decision = plan.report(step, fault_or_None, now, ttfb=...)
        if not decision.retry: success, or render decision.fault to the client

A `Plan` is the routing side of one request: it owns the retry budget,
remembers which members and keys failed, and applies each outcome's
consequence (breaker, key benches, latency, in-flight counts) through the
pipeline's rules.  It never does I/O and never reads a clock: every call
takes `now` (monotonic seconds), and randomness comes from the router's
`random.Random`.

The retry budget has two counters (pipeline `retry:`):
* member attempts (`max_attempts`): the first attempt and every attempt on
  a member picked after a fail-over (failover / retry_larger_context);
* key rotations (`max_key_rotations`): attempts on the SAME member with
  another key after a fault that benched the previous key (cool_key or
  disable_key penalty).  They never consume member attempts; when they run
  out, the next key-benching fault fails over to another member instead.
So a plan issues at most max_attempts + max_key_rotations attempts.
A member that failed over is not picked again by the same plan.

When no member of the current pool can go (benched, circuit-open, already
tried, or unable to take the request), the pool's `on_exhausted` decides:
`reject` -> Exhausted; `wait` -> Wait until the soonest recovery of an untried
member, as long as all waits of the plan end within max_wait seconds of the first one;
`fallback` -> continue in that pool (same plan: same pipeline, budget and
tried members), whose own on_exhausted applies next.  Only the requested pool
and its fallbacks' on_exhausted count; nested pools' are ignored.

The request runs its route's pipeline throughout (rules, budget, breaker
thresholds); the ramp and the latency exploration of a nested pool follow
that pool's own pipeline.

Terminal outcomes, exactly one per plan: success (report without fault),
returned (a fault whose rule says `return`), exhausted (`next` answered
`Exhausted`).  Calling `next` afterwards raises `PlanError`.
"""
from __future__ import annotations

import math
import random
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple

from busbar.faults import Fault, FaultClass, VendorQuota
from busbar.pipeline import Pipeline, explain as explain_pipeline, load_pipelines
from busbar.routing.keys import Key, KeyRing
from busbar.routing.policy import Action, Consequence, alert_line, penalize
from busbar.routing.quota import DEFAULT_DAILY_RESET, DailyReset, KeyQuota, Wall, parse_key_entry
from busbar.routing.pools import (Member, OnExhausted, PoolNode, PoolRef, RouteConfigError, Target,
                                  build_pools, choose, effective_weight)
from busbar.routing.shared import BreakerChange, Change, Drain, KeyBench, ProbeOut, ProbeReleased, ProbeWanted

DIRECT_ROUTES_CACHED = 1024   # ad-hoc provider/model routes kept (LRU)


class PlanError(RuntimeError):
    """A plan used out of order: next() after it ended, an unknown attempt reported."""


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request requires of a member.  `tokens` is the gateway's
    estimate of prompt plus requested output; a member whose `context` is
    smaller is skipped.  Members that declare no capabilities take anything.
    `refused`: the member protocols that cannot express this request
    (`busbar.protocols.expressible`); members speaking them are skipped."""

    tokens: int = 0
    tools: bool = False
    vision: bool = False
    json: bool = False
    reasoning: bool = False
    documents: bool = False
    refused: frozenset[str] = frozenset()
    # the user turns the gateway may drop from the conversation's beginning to fit a
    # member's context (Responses `truncation: "auto"` to other protocols, ADR 0028),
    # and the estimate with all of them dropped; 0: it may drop none
    droppable: int = 0
    least_tokens: int = 0
    # the request names a response only one provider's key can resolve (ADR 0027): members
    # of `pin.protocol` go only to that provider, on that key; the others as usual
    pin: "Pinned | None" = None

    def capabilities(self) -> frozenset[str]:
        return frozenset(name for name in ("tools", "vision", "json", "reasoning", "documents")
                         if getattr(self, name))

    def describe(self) -> str:
        parts = [f"~{self.tokens} tokens"] if self.tokens else []
        if self.refused:
            parts.append("not expressible in " + "/".join(sorted(self.refused)))
        return ", ".join(parts + sorted(self.capabilities())) or "nothing special"


class Pinned(NamedTuple):
    """Response affinity (ADR 0027): the response `response_id` lives at `provider`, under the
    key `key_id` (its safe id); only those can continue it in `protocol`."""
    protocol: str
    provider: str
    key_id: str
    response_id: str


@dataclass(frozen=True, slots=True)
class Shrink:
    """An attempt's instruction to drop the conversation's earliest user turns
    (busbar.truncation.fit): until the estimate is within `budget` tokens, and
    at least `at_least` turns."""

    budget: int
    at_least: int = 0


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    protocol: str
    keys: KeyRing


class Attempt:
    """One upstream call to make.  The key's secret is only reachable through
    `key_secret`; `repr` shows the key's safe id."""

    __slots__ = ("number", "member", "key", "kind", "_probe", "charge", "vendor_quota", "candidates", "shared",
                 "shrink", "dropped")

    def __init__(self, number: int, member: Member, key: Key, kind: str, probe: bool, charge=None):
        self.number = number      # 1-based, counts every attempt of the plan
        self.member = member
        self.key = key
        self.kind = kind          # "member" | "key_rotation" | "hedge" | "truncation"
        self._probe = probe       # the breaker's half-open probe
        self.charge = charge      # what it took of the key's quota (settled at report)
        # the vendor's rate-limit headers on its response (the driver sets it)
        self.vendor_quota: VendorQuota | None = None
        # keys with limits shared with other replicas: the cluster backend picks
        # among these (`Plan.quota_asks` / `Plan.cluster_answer`); empty otherwise
        self.candidates: list[Key] = []
        self.shared: tuple | None = None     # (ask, uid) the cluster took, to settle tokens
        self.shrink: Shrink | None = None    # drop the earliest turns to fit (ADR 0028); None: send it whole
        # the user turns the driver dropped for this attempt; None: it could drop none
        # (the client's own protocol passes the field through)
        self.dropped: int | None = None

    provider = property(lambda self: self.member.provider)
    protocol = property(lambda self: self.member.protocol)
    model = property(lambda self: self.member.model)          # the upstream model id
    member_id = property(lambda self: self.member.id)
    pool = property(lambda self: self.member.pool)
    max_tokens = property(lambda self: self.member.max_tokens)
    context = property(lambda self: self.member.context)
    key_id = property(lambda self: self.key.id)
    probe = property(lambda self: self._probe)

    @property
    def key_secret(self) -> str | None:
        return self.key.secret

    def __repr__(self) -> str:
        return (f"Attempt(#{self.number} {self.kind} {self.member.id} -> "
                f"{self.member.provider}/{self.member.model} key={self.key.id})")

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class Wait:
    """Nothing is available now, but something recovers within the pool's
    `on_exhausted: wait` allowance: sleep, then call `next` again."""

    seconds: float
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Exhausted:
    """The plan is over without a success.

    `kind`: unavailable (every capable member is benched, open or already
    tried), saturated (unavailable, and the members tried had no free
    connection slot: answer 503 with Retry-After), incapable (no member can take this request: context, capabilities),
    budget (retry budget spent), deadline (pipeline deadline passed).
    `retry_after` (seconds) is set when every capable member is benched and
    says when the first comes back: answer 429 with it.
    """

    retry_after: float | None
    last_fault: Fault | None
    reason: str
    kind: str = "unavailable"


class Plan:
    """The routing state of one request.  See the module docstring."""

    def __init__(self, router: "Router", node: PoolNode, needs: Needs, now: float):
        self._router = router
        self.route = node.name
        self.pipeline: Pipeline = node.pipeline
        self.needs = needs
        self._caps = needs.capabilities()
        self._refused = needs.refused
        self._min_context = needs.tokens
        self.started = now
        self.deadline_at = now + self.pipeline.deadline
        self.member_attempts = 0
        self.key_rotations = 0
        self.number = 0
        self.outcome: str | None = None   # success | returned | exhausted
        self.last_fault: Fault | None = None
        self.history: list[tuple[str, str, str]] = []   # (member id, key id, result)
        self._pool = node
        self._visited = [node]
        self._tried: set[tuple[str, str]] = set()
        self._failed_keys: dict[tuple[str, str], set[str]] = {}
        # a pinned request (ADR 0027): per target of the pinned provider, every key but the pin's
        self._pinned_out: dict[tuple[str, str], frozenset[str]] = {}
        self._pin_lost: str | None = None    # why no member can take the pinned request
        if needs.pin is not None:
            self._pin(needs.pin)
        # members left only because their keys were cooled (rate limits): an
        # `on_exhausted: wait` may wait for them and try them again
        self._cooled: set[tuple[str, str]] = set()
        self._rotate: Member | None = None
        self._wait_limit: float | None = None
        self._outstanding: dict[int, Attempt] = {}
        self._saturated = 0     # members left out because their connection slots were full
        # truncation (ADR 0028): once no member's context fits, the context the largest
        # left has (those get the request shortened); the member to shorten it for again
        self._relaxed: int | None = None
        self._shrink: tuple[Member, Shrink] | None = None
        self.truncations = 0

    def __repr__(self) -> str:
        return (f"Plan({self.route!r}, attempts={self.member_attempts}+{self.key_rotations}, "
                f"outcome={self.outcome})")

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @property
    def outstanding(self) -> list[Attempt]:
        return list(self._outstanding.values())

    @property
    def _lease(self) -> float:
        return self.pipeline.deadline

    # ---- which members can go ------------------------------------------
    def _pin(self, pin: Pinned) -> None:
        provider = self._router.providers.get(pin.provider)
        key = provider.keys.holding(pin.key_id) if provider is not None else None
        if key is None:
            self._pin_lost = (f"the response '{pin.response_id}' was made with key {pin.key_id} of provider "
                              f"{pin.provider!r}, which the gateway no longer has"
                              if provider is not None else
                              f"the response '{pin.response_id}' was made by provider {pin.provider!r}, which the "
                              "gateway no longer has")
            return
        out = frozenset(k.id for k in provider.keys.keys) - {key.id}
        for node in [self._pool, *self._fallbacks()]:
            for leaf in node.leaves:
                if leaf.provider == pin.provider:
                    self._pinned_out[leaf.target.key] = out
        if not self._pinned_out:
            self._pin_lost = (f"the response '{pin.response_id}' was made by provider {pin.provider!r} "
                              f"(key {pin.key_id}), which pool {self.route!r} does not reach")

    def _fallbacks(self) -> list[PoolNode]:
        out, node, seen = [], self._pool, {self._pool.name}
        while node.on_exhausted.action == "fallback" and node.on_exhausted.pool not in seen:
            node = self._router.pools[node.on_exhausted.pool]
            seen.add(node.name)
            out.append(node)
        return out

    def _exclude(self, target: tuple[str, str]):
        """The keys this plan may not use on `target`: those that failed, and a pin's others."""
        failed = self._failed_keys.get(target, ())
        out = self._pinned_out.get(target) if self._pinned_out else None
        return failed if out is None else out.union(failed)

    def _capable(self, leaf: Member) -> bool:
        if self._refused and leaf.protocol in self._refused:
            return False
        pin = self.needs.pin
        if pin is not None and leaf.protocol == pin.protocol and leaf.target.key not in self._pinned_out:
            return False       # another vendor or account: it does not hold the response
        return leaf.capable(self._caps, self._min_context if self._relaxed is None else self._relaxed)

    def _largest_short(self, now: float) -> int | None:
        """Truncation: the largest context among the current pool's usable members
        too small for the whole request yet large enough once every droppable
        turn is dropped (None: no such member)."""
        self._relaxed = self.needs.least_tokens
        try:
            contexts = [leaf.context for leaf in self._pool.leaves
                        if leaf.context is not None and leaf.context < self._min_context and self._usable(leaf, now)]
        finally:
            self._relaxed = None
        return max(contexts) if contexts else None

    def _larger_left(self, now: float) -> bool:
        """A member of this route (its pool, then its fallbacks) that may still take
        the request at the context it now needs (larger than every one that said
        "too long", whether or not the plan is shortening it)."""
        node, seen = self._pool, set()
        relaxed, self._relaxed = self._relaxed, None
        try:
            while node.name not in seen:
                seen.add(node.name)
                if any(self._usable(leaf, now) for leaf in node.leaves):
                    return True
                if node.on_exhausted.action != "fallback":
                    return False
                node = self._router.pools[node.on_exhausted.pool]
            return False
        finally:
            self._relaxed = relaxed

    def _usable(self, leaf: Member, now: float) -> bool:
        t = leaf.target
        if t.key in self._tried or t.drained or t.unready or not self._capable(leaf):
            return False
        if any(a.member.target is t for a in self._outstanding.values()):
            return False   # a hedge goes elsewhere
        if not t.breaker.allows(now, self._lease):
            if self._router.outbox is None or not t.breaker.wants_grant(now, self._lease):
                return False
            # coordinated: ask for the probe's grant (answered in the background, or at
            # once by a sync task that cannot reach Redis: then this request probes)
            self._router.outbox(ProbeWanted(t.provider, t.model))
            if not t.breaker.allows(now, self._lease):
                return False
        ring = self._router.providers[leaf.provider].keys
        return ring.available(leaf.model, now, self._exclude(t.key), self.needs.tokens)

    def _recovery(self, leaf: Member, now: float, exclude=()) -> float | None:
        ring = self._router.providers[leaf.provider].keys
        keys = ring.recovery(leaf.model, now, exclude, self.needs.tokens)
        if keys is None:
            return None
        # A half-open breaker's probe is out: its answer is expected within
        # connect + first_byte (the gateway reports at the first byte), so
        # that is the hint, rather than the probe's full lease.
        t = self.pipeline.timeouts
        return max(keys, leaf.target.breaker.recovery(now, min(self._lease, t.connect + t.first_byte)))

    # ---- the steps -------------------------------------------------------
    def next(self, now: float) -> Attempt | Wait | Exhausted:
        """The next thing to do: an attempt, a wait, or the end."""
        if self.outcome is not None:
            raise PlanError(f"the plan already ended ({self.outcome}); start a new one")
        if now >= self.deadline_at:
            return self._exhaust(now, "deadline", f"deadline of {self.pipeline.deadline:g}s exceeded")
        if self._rotate is not None:
            member, self._rotate = self._rotate, None
            t = member.target
            if self.key_rotations < self.pipeline.max_key_rotations and t.breaker.allows(now, self._lease):
                ring = self._router.providers[member.provider].keys
                key = ring.pick(member.model, now, self._exclude(t.key), self.needs.tokens)
                if key is not None:
                    self.key_rotations += 1
                    return self._issue(member, key, "key_rotation", now)
            self._tried.add(t.key)
        if self._shrink is not None:
            # the member said "too long" to a request the gateway may shorten: again, with less
            (member, shrink), self._shrink = self._shrink, None
            t = member.target
            if t.breaker.allows(now, self._lease):
                ring = self._router.providers[member.provider].keys
                key = ring.pick(member.model, now, self._exclude(t.key), self.needs.tokens)
                if key is not None:
                    self.truncations += 1
                    attempt = self._issue(member, key, "truncation", now)
                    attempt.shrink = shrink
                    return attempt
        if self.member_attempts >= self.pipeline.max_attempts:
            return self._exhaust(now, "budget",
                                 f"retry budget spent: {self.member_attempts} member attempt(s), "
                                 f"{self.key_rotations} key rotation(s)")
        rng = self._router.rng
        while True:
            cache: dict[int, bool] = {}

            def usable(leaf: Member) -> bool:
                hit = cache.get(id(leaf))
                if hit is None:
                    hit = cache[id(leaf)] = self._usable(leaf, now)
                return hit

            member = choose(self._pool, usable, now, rng)
            if member is not None:
                ring = self._router.providers[member.provider].keys
                key = ring.pick(member.model, now, self._exclude(member.target.key), self.needs.tokens)
                self.member_attempts += 1
                return self._issue(member, key, "member", now)
            oe = self._pool.on_exhausted
            if oe.action == "fallback":
                self._pool = self._router.pools[oe.pool]
                self._visited.append(self._pool)
                continue
            if oe.action == "wait":
                soonest = self._soonest(now)
                if soonest is not None:
                    if self._wait_limit is None:
                        self._wait_limit = now + oe.max_wait
                    if soonest <= self._wait_limit and soonest < self.deadline_at:
                        # after the wait, a member benched only by cooled keys
                        # may be tried again (the member budget still applies)
                        for target in self._cooled:
                            self._tried.discard(target)
                            self._failed_keys.pop(target, None)
                        self._cooled.clear()
                        return Wait(soonest - now, f"pool {self._pool.name!r}: waiting for a member to recover")
            if (self.needs.droppable and self._relaxed is None and self._rule_truncates()
                    and (self.last_fault is None or self.last_fault.cls is not FaultClass.CONTEXT)):
                # no member's context fits the whole request, which may lose its earliest turns:
                # the largest that fits what must stay takes it, shortened (ADR 0028); after a
                # member said "too long", only `report`'s bounded retries shorten it further
                self._relaxed = self._largest_short(now)
                if self._relaxed is not None:
                    continue
            return self._exhaust(now, None, "")

    def _rule_truncates(self) -> bool:
        rule = self.pipeline.rules.context
        return rule.action == "retry_larger_context" and rule.truncate > 0

    def hedge(self, now: float) -> Attempt | None:
        """Another member to race the outstanding attempt(s) (a hedge), or
        None.  Never ends the plan, never waits, never falls back to another
        pool; a hedge uses no member attempt of the retry budget (the
        pipeline's `dispatch.hedge.max` and budget bound hedges)."""
        if self.outcome is not None or now >= self.deadline_at:
            return None
        member = choose(self._pool, lambda leaf: self._usable(leaf, now), now, self._router.rng)
        if member is None:
            return None
        ring = self._router.providers[member.provider].keys
        key = ring.pick(member.model, now, self._exclude(member.target.key), self.needs.tokens)
        if key is None:
            return None
        return self._issue(member, key, "hedge", now)

    def _issue(self, member: Member, key: Key, kind: str, now: float) -> Attempt:
        t = member.target
        probe = t.breaker.acquire(now, self._lease)
        if probe and self._router.outbox is not None:
            timeouts = self.pipeline.timeouts     # the probe's answer is due within these
            self._router.outbox(ProbeOut(t.provider, t.model, min(self._lease, timeouts.connect + timeouts.first_byte)))
        t.in_flight += 1
        key.in_flight += 1
        key.uses += 1
        self.number += 1
        charge = key.quota.take(member.model, self.needs.tokens, now)
        attempt = Attempt(self.number, member, key, kind, probe, charge)
        if self._relaxed is not None and member.context is not None and member.context < self._min_context:
            attempt.shrink = Shrink(member.context)      # it takes the request shortened (ADR 0028)
        if self._router.shared_quota and key.quota.limits.any:
            ring = self._router.providers[member.provider].keys
            attempt.candidates = ring.candidates(key, member.model, now, self._exclude(t.key),
                                                 self.needs.tokens)
        self._outstanding[attempt.number] = attempt
        return attempt

    # ---- keys shared with other replicas (the cluster backend decides) ----
    def quota_asks(self, attempt: Attempt, now: float) -> list:
        """What the cluster backend's `take_quota` is asked for this attempt:
        its candidate keys' limits, the local pick first (empty: no key with
        limits, nothing to ask)."""
        model, tokens = attempt.member.model, self.needs.tokens
        return [k.quota.ask(model, tokens, now, k.id) for k in attempt.candidates]

    def cluster_answer(self, attempt: Attempt, asks: list, taken, now: float) -> bool:
        """Apply the cluster's answer to `quota_asks`.  True: send `attempt`
        (on the key the cluster took, which may not be the local pick).
        False: no candidate had room across the replicas; the attempt is
        withdrawn without using the retry budget, the full keys are held
        until the cluster said they free, and `next` is asked again (another
        key, member, a wait, or a 429 with that exact Retry-After).
        `taken` None (backend degraded): the local counts stand."""
        if taken is None:
            return True
        model = attempt.member.model
        for key, free in zip(attempt.candidates, taken.frees):
            if free > 0:
                key.quota.hold(model, now + free)
        if taken.index is not None:
            chosen = attempt.candidates[taken.index]
            if chosen is not attempt.key:
                old = attempt.key
                old.quota.refund(attempt.charge)
                old.in_flight -= 1
                old.uses -= 1
                chosen.in_flight += 1
                chosen.uses += 1
                attempt.key = chosen
                attempt.charge = chosen.quota.take(model, self.needs.tokens, now)
            attempt.shared = (asks[taken.index], taken.uid)
            return True
        self._take(attempt)
        attempt.member.target.breaker.release(attempt._probe)
        attempt.key.quota.refund(attempt.charge)
        attempt.key.uses -= 1
        self.number -= 1
        if attempt.kind == "member":
            self.member_attempts -= 1
        else:
            self.key_rotations -= 1
            self._rotate = attempt.member
        return False

    def _soonest(self, now: float) -> float | None:
        """When a capable member of the current pool comes back: an untried
        one, or one tried and left only because its keys were cooled."""
        times = []
        for leaf in self._pool.leaves:
            key = leaf.target.key
            cooled = key in self._cooled
            if (key in self._tried and not cooled) or not self._capable(leaf):
                continue
            at = self._recovery(leaf, now, self._pinned_out.get(key, ()) if cooled else self._exclude(key))
            if at is not None and at > now:
                times.append(at)
        return min(times) if times else None

    def _exhaust(self, now: float, kind: str | None, reason: str) -> Exhausted:
        capable = [leaf for node in self._visited for leaf in node.leaves if self._capable(leaf)]
        times = [self._recovery(leaf, now, self._pinned_out.get(leaf.target.key, ())) for leaf in capable]
        retry_after = None
        if capable and all(t is not None and t > now for t in times):
            retry_after = min(times) - now
        if kind is None:
            if not capable and self._pin_lost is not None:
                kind, reason = "incapable", self._pin_lost
            elif not capable:
                kind = "incapable"
                larger = " (a larger context)" if self._min_context > self.needs.tokens else ""
                reason = f"no member of pool {self.route!r} can take this request{larger}: {self.needs.describe()}"
            elif self._saturated and self.last_fault is None and retry_after is None:
                kind = "saturated"
                reason = (f"every member of pool {self.route!r} is unavailable or at its connection limit "
                          f"({self._saturated} saturated)")
            else:
                kind = "unavailable"
                if self.needs.pin is not None and all(leaf.protocol == self.needs.pin.protocol
                                                          for leaf in capable):
                    pin = self.needs.pin
                    reason = (f"the response '{pin.response_id}' lives at provider {pin.provider!r} under key "
                              f"{pin.key_id}, the only one that can continue it, and that key is rate limited, "
                              "disabled or its member circuit-open or failed")
                    if retry_after is not None:
                        reason += f"; it recovers in {retry_after:.1f}s"
                elif retry_after is not None:
                    reason = (f"every member of pool {self.route!r} is rate limited, disabled or circuit-open; "
                              f"the first recovers in {retry_after:.1f}s")
                else:
                    reason = f"every member of pool {self.route!r} failed or is unavailable"
        self.outcome = "exhausted"
        return Exhausted(retry_after, self.last_fault, reason, kind)

    def report(self, attempt: Attempt, fault: Fault | None, now: float,
               ttfb: float | None = None, tokens: int | None = None) -> Consequence:
        """The outcome of `attempt`: None for success, else its classified fault.

        Applies the consequence (breaker, key bench, quota counts, latency
        sample, in-flight release) and says what the gateway does next
        (`Consequence.retry`).  Report when the upstream exchange is over (a
        stream at its end), with the time to first byte measured on the way
        and the tokens the response reported using (input + output).
        """
        self._take(attempt)
        member, key, t = attempt.member, attempt.key, attempt.member.target
        key.quota.settle(attempt.charge, tokens)
        if attempt.vendor_quota is not None:
            key.quota.observe(member.model, attempt.vendor_quota, now)
        params = self.pipeline.breaker
        before = (t.breaker.state, t.breaker.until)
        if fault is None:
            t.breaker.success(now, params, attempt._probe)
            if attempt._probe and self._router.outbox is not None:
                self._router.share_breaker(t, before, now, probe=True)
            key.succeeded(member.model, now)
            if ttfb is not None:
                t.observe_ttfb(ttfb, self.pipeline.dispatch.ewma_alpha)
            self.history.append((member.id, key.id, "ok"))
            if self.outcome is not None:
                return Consequence(Action.LATE, breaker=t.breaker.state.value)
            self.outcome = "success"
            return Consequence(Action.SUCCESS, breaker=t.breaker.state.value)

        rule = self.pipeline.rules[fault.cls]
        penalty, until = penalize(rule, fault, key=key, model=member.model, breaker=t.breaker,
                                  params=params, probe=attempt._probe, now=now)
        if self._router.outbox is not None:
            self._router.share_breaker(t, before, now, attempt._probe)
            if penalty == "cool_key":
                scope = member.model if rule.scope == "key_model" else None
                self._router.outbox(KeyBench(key.id, "cool", until, model=scope))
            elif penalty == "disable_key":
                self._router.outbox(KeyBench(key.id, "disable", until, reason=key.disabled_reason))
        alert = alert_line(rule, fault, key, member.provider, member.model, penalty, until, now)
        self.history.append((member.id, key.id, fault.cls.value))
        done = dict(fault=fault, penalty=penalty, until=until, breaker=t.breaker.state.value, alert=alert,
                    key_id=key.id if penalty in ("cool_key", "disable_key") else None)
        if self.outcome is not None:
            return Consequence(Action.LATE, **done)
        self.last_fault = fault
        if rule.action == "return":
            self.outcome = "returned"
            return Consequence(Action.RETURN, **done)
        if rule.action == "retry_larger_context":
            self._tried.add(t.key)
            if member.context is not None:
                self._min_context = max(self._min_context, member.context + 1)
            # a larger member before losing any of the conversation; then, when the
            # request may lose its earliest turns, this member again with fewer
            if (attempt.dropped is not None and attempt.dropped < self.needs.droppable
                    and self.truncations < rule.truncate and not self._larger_left(now)):
                budget = attempt.shrink.budget if attempt.shrink is not None else (member.context or self.needs.tokens)
                self._shrink = (member, Shrink(max(1, budget * 3 // 4), attempt.dropped + 1))
                return Consequence(Action.TRUNCATE, **done)
            return Consequence(Action.LARGER_CONTEXT, **done)
        failed = self._failed_keys.setdefault(t.key, set())
        failed.add(key.id)
        ring = self._router.providers[member.provider].keys
        if (penalty in ("cool_key", "disable_key")
                and self.key_rotations < self.pipeline.max_key_rotations
                and ring.available(member.model, now, self._exclude(t.key))
                and t.breaker.allows(now, self._lease)):
            self._rotate = member
            return Consequence(Action.ROTATE_KEY, **done)
        self._tried.add(t.key)
        if penalty == "cool_key":
            self._cooled.add(t.key)
        return Consequence(Action.FAILOVER, **done)

    def saturated(self, attempt: Attempt, now: float) -> None:
        """`attempt`'s member had no free connection slot in time: free the
        attempt unblamed (like `release`) and leave the member out of this
        plan; it does not spend the retry budget (the plan visits each member
        at most once, so this is bounded)."""
        self.release(attempt, now)
        attempt.key.quota.settle(attempt.charge, 0)      # nothing was sent: its tokens are given back
        self.history[-1] = (attempt.member.id, attempt.key.id, "saturated")
        self._tried.add(attempt.member.target.key)
        self._saturated += 1
        if attempt.kind == "member":
            self.member_attempts -= 1

    def inexpressible(self, attempt: Attempt, now: float) -> None:
        """`attempt`'s member cannot express the request (its protocol's
        render refused it before anything was sent): freed unblamed, left
        out of this plan, its retry budget given back."""
        self.release(attempt, now)
        attempt.key.quota.settle(attempt.charge, 0)
        self.history[-1] = (attempt.member.id, attempt.key.id, "inexpressible")
        self._tried.add(attempt.member.target.key)
        if attempt.kind == "member":
            self.member_attempts -= 1

    def release(self, attempt: Attempt, now: float) -> None:
        """An attempt abandoned without an outcome (client gone, hedge lost,
        cancelled): free its in-flight slot and breaker probe, blame nobody."""
        self._take(attempt)
        t = attempt.member.target
        t.breaker.release(attempt._probe)
        if attempt._probe and self._router.outbox is not None:
            self._router.outbox(ProbeReleased(t.provider, t.model))
        self.history.append((attempt.member.id, attempt.key.id, "released"))

    def _take(self, attempt: Attempt) -> None:
        if self._outstanding.get(attempt.number) is not attempt:
            raise PlanError(f"{attempt!r} is not outstanding in this plan")
        del self._outstanding[attempt.number]
        attempt.member.target.in_flight -= 1
        attempt.key.in_flight -= 1


class Router:
    """Immutable routing tables plus the shared runtime state they point at."""

    def __init__(self, providers: Mapping[str, Provider], pools: Mapping[str, PoolNode],
                 pipelines: Mapping[str, Pipeline], targets: Mapping[tuple[str, str], Target],
                 rng: random.Random | None = None, *, direct_routes: bool = True):
        self.providers = dict(providers)
        # `provider/model` as a model name: opt-in (server.direct_routes)
        self.direct_routes = direct_routes
        self.pools = dict(pools)
        self.pipelines = dict(pipelines)
        self.targets = dict(targets)
        self.rng = rng if rng is not None else random.Random()
        # keys' quota counts are shared with other replicas (a shared state backend):
        # attempts on keys with limits carry candidates for the cluster to choose from
        self.shared_quota = False
        self._direct: OrderedDict[str, PoolNode] = OrderedDict()
        self._route_members: dict[str, tuple[Member, ...]] = {}
        self._members_by_target: dict[tuple[str, str], Member] = {}
        for node in self.pools.values():
            for leaf in node.leaves:
                self._members_by_target.setdefault(leaf.target.key, leaf)
        self._keys_by_id = {k.id: k for p in self.providers.values() for k in p.keys.keys}
        # replicas sharing routing state (busbar.cluster): where changes go; None: this process only
        self.outbox: Callable[[Change], None] | None = None

    @classmethod
    def from_config(cls, config: Mapping, *, rng: random.Random | None = None,
                    pipelines: Mapping[str, Pipeline] | None = None,
                    pipelines_dir=None, wall: Wall | None = None) -> "Router":
        """Build from a config dict already validated by config.schema.json;
        checks what a schema cannot (references, nesting and fallback cycles).
        `wall(now)` gives epoch seconds for the daily quota resets (default:
        the system clock).  Raises RouteConfigError or PipelineError."""
        if pipelines is None:
            pipelines = load_pipelines(config, pipelines_dir)
        providers = {}
        for name, raw in (config.get("providers") or {}).items():
            if "key" in raw and "keys" in raw:
                raise RouteConfigError(f"providers.{name}", "give `key` or `keys`, not both")
            entries = list(raw["keys"]) if "keys" in raw else [raw["key"]] if "key" in raw else [None]
            reset = _daily_reset(name, raw)
            secrets, quotas = [], []
            for i, entry in enumerate(entries):
                try:
                    secret, limits = parse_key_entry(entry, f"providers.{name}.keys[{i}]") if entry else (entry, None)
                except ValueError as exc:
                    where, _, message = str(exc).partition(": ")
                    raise RouteConfigError(where, message) from None
                secrets.append(secret)
                quotas.append(KeyQuota(limits, reset, wall))
            rotation = raw.get("key_rotation", "round_robin")
            try:
                ring = KeyRing(name, secrets, rotation, quotas)
            except ValueError as exc:
                raise RouteConfigError(f"providers.{name}.key_rotation", str(exc)) from None
            providers[name] = Provider(name, raw["protocol"], ring)
        targets: dict[tuple[str, str], Target] = {}
        pools = build_pools(config, pipelines, targets)
        direct = bool((config.get("server") or {}).get("direct_routes", False))
        return cls(providers, pools, pipelines, targets, rng, direct_routes=direct)

    # ---- operations --------------------------------------------------------
    def adopt_state(self, old: "Router") -> None:
        """After a config reload: keep breakers, latency, drains, cool-downs
        and disabled keys of every upstream and key the new config still has."""
        for key, target in self.targets.items():
            if key in old.targets:
                target.adopt(old.targets[key])
        for name, provider in self.providers.items():
            previous = old.providers.get(name)
            if previous is None:
                continue
            old_keys = {k.id: k for k in previous.keys.keys}
            for k in provider.keys.keys:
                if k.id in old_keys:
                    k.adopt(old_keys[k.id])

    def set_drained(self, member_id: str, drained: bool) -> list[str]:
        """Drain (or undrain) the upstream behind a member id (as listed by
        `snapshot`), or `provider/model`.  Returns the member ids affected;
        raises KeyError for an unknown id."""
        targets = [leaf.target for node in self.pools.values() for leaf in node.leaves if leaf.id == member_id]
        if not targets and member_id.partition("/")[::2] in self.targets:
            provider, _, model = member_id.partition("/")
            targets = [self.targets[(provider, model)]]
        if not targets:
            raise KeyError(member_id)
        for target in targets:
            target.drained = drained
            if self.outbox is not None:
                self.outbox(Drain(target.provider, target.model, drained))
        return sorted({leaf.id for node in self.pools.values() for leaf in node.leaves if leaf.target in targets})

    # ---- shared routing state (busbar.routing.shared) --------------------------
    def coordinate(self, outbox: Callable[[Change], None]) -> None:
        """Share this router's state: changes go to `outbox`, and each
        target's half-open probe needs a grant (one probe cluster-wide)."""
        self.outbox = outbox
        for target in self.targets.values():
            target.breaker.coordinated = True
        for node in self._direct.values():
            for leaf in node.leaves:
                leaf.target.breaker.coordinated = True

    def share_breaker(self, t: Target, before: tuple, now: float, probe: bool) -> None:
        """Emit the target's breaker change when it opened, reopened or
        closed; a probe that ended saying nothing about health is released."""
        b = t.breaker
        if b.state.value == "half_open":
            if probe and b.probe_since is None:
                self.outbox(ProbeReleased(t.provider, t.model))
            return
        if (b.state, b.until) == before:
            return
        if b.state.value == "open":
            self.outbox(BreakerChange(t.provider, t.model, "open", b.until, b.open_for, now))
        elif before[0].value != "closed":
            self.outbox(BreakerChange(t.provider, t.model, "closed", at=now))

    def apply(self, change: Change, now: float) -> bool:
        """Another replica's change (times already in this process's clock).
        Returns False when this config has no such target or key."""
        if isinstance(change, KeyBench):
            key = self._keys_by_id.get(change.key_id)
            if key is None:
                return False
            if change.kind == "disable":
                key.disable(change.until - now, change.reason, now)
            elif change.model is None:
                key.cooling_until = max(key.cooling_until, change.until)
            else:
                entry = key.models.setdefault(change.model, [0.0, 0])
                entry[0] = max(entry[0], change.until)
            return True
        target = self._target(change.provider, change.model)
        if target is None:
            return False
        if isinstance(change, Drain):
            target.drained = change.drained
        elif isinstance(change, BreakerChange):
            if change.state == "open":
                target.breaker.apply_open(change.until, change.open_for)
            else:
                target.breaker.apply_closed(now)
        return True

    def grant_probe(self, provider: str, model: str, until: float) -> None:
        """The sync task won (or, Redis unavailable, stood in for) the target's probe lease."""
        target = self._target(provider, model)
        if target is not None:
            target.breaker.grant(until)

    def want_probe(self, provider: str, model: str, now: float) -> None:
        """An open breaker fell due: ask for its probe's grant before a request needs it."""
        target = self._target(provider, model)
        if target is not None and self.outbox is not None and target.breaker.wants_grant(now, math.inf):
            self.outbox(ProbeWanted(provider, model))

    def _target(self, provider: str, model: str) -> Target | None:
        target = self.targets.get((provider, model))
        if target is None:
            node = self._direct.get(f"{provider}/{model}")
            target = node.leaves[0].target if node is not None else None
        return target

    # ---- routes ------------------------------------------------------------
    def pool_names(self) -> list[str]:
        return list(self.pools)

    def has_route(self, model: str) -> bool:
        return self._node(model) is not None

    def direct_route_known(self, model: str) -> bool:
        """`model` is a direct route this router has served (and still caches)."""
        return model in self._direct

    def _node(self, model: str, direct: bool | None = None) -> PoolNode | None:
        """The pool `model` names, else a direct provider/model route when
        `direct` allows it (None: server.direct_routes decides; a client key's
        own `direct: true|false` overrides it)."""
        node = self.pools.get(model)
        if node is not None:
            return node
        if not (self.direct_routes if direct is None else direct):
            return None
        provider, sep, upstream = model.partition("/")
        if not sep or not upstream or provider not in self.providers:
            return None
        node = self._direct.get(model)
        if node is not None:
            self._direct.move_to_end(model)
            return node
        # A direct route: a one-member pool.  It shares the Target (breaker,
        # latency) with pools listing the same provider/model and inherits
        # that member's context, max_tokens and capabilities.
        known = self._members_by_target.get((provider, upstream))
        target = known.target if known else Target(provider, upstream)
        target.breaker.coordinated = self.outbox is not None
        member = Member(
            id=model, pool=model, provider=provider, protocol=self.providers[provider].protocol,
            model=upstream, weight=1.0, priority=0,
            context=known.context if known else None,
            max_tokens=known.max_tokens if known else None,
            capabilities=known.capabilities if known else None, target=target)
        node = PoolNode(model, "weighted", self.pipelines["default"], OnExhausted(), (member,), (member,))
        self._direct[model] = node
        if len(self._direct) > DIRECT_ROUTES_CACHED:
            self._direct.popitem(last=False)
        return node

    def start(self, model: str, needs: Needs | None = None, now: float = 0.0, *, direct: bool | None = None) -> Plan:
        """A plan for one request to `model` (a pool name or provider/model;
        `direct` as in `_node`).  Raises KeyError when there is no such route."""
        node = self._node(model, direct)
        if node is None:
            raise KeyError(model)
        return Plan(self, node, needs or Needs(), now)

    def members(self, model: str, direct: bool | None = None) -> tuple[Member, ...]:
        """Every member a request to `model` may reach: its pool's, then its
        fallback pools' (in that order, each once).  Raises KeyError
        (`direct` as for `start`)."""
        found = self._route_members.get(model)
        if found is not None:
            return found
        node = self._node(model, direct)
        if node is None:
            raise KeyError(model)
        leaves: list[Member] = []
        seen: set[str] = set()
        while node.name not in seen:
            seen.add(node.name)
            leaves.extend(leaf for leaf in node.leaves if all(leaf is not other for other in leaves))
            if node.on_exhausted.action != "fallback":
                break
            node = self.pools[node.on_exhausted.pool]
        found = tuple(leaves)
        if model in self.pools:          # direct routes come and go (LRU): not kept here
            self._route_members[model] = found
        return found

    def pipeline_for(self, model: str) -> Pipeline:
        node = self._node(model)
        if node is None:
            raise KeyError(model)
        return node.pipeline

    # ---- introspection -------------------------------------------------------
    def snapshot(self, now: float) -> dict:
        """State for the admin API and metrics.  Contains no secret."""
        pools = {}
        for name, node in self.pools.items():
            members = []
            for child in node.children:
                if isinstance(child, PoolRef):
                    members.append({"pool": child.pool, "weight": child.weight, "priority": child.priority})
                    continue
                t = child.target
                members.append({
                    "id": child.id, "provider": child.provider, "model": child.model,
                    "weight": child.weight,
                    "effective_weight": round(effective_weight(child, node, now), 6),
                    "priority": child.priority, "context": child.context,
                    "capabilities": sorted(child.capabilities) if child.capabilities is not None else None,
                    "breaker": t.breaker.snapshot(now, node.pipeline.breaker),
                    "in_flight": t.in_flight,
                    "drained": t.drained,
                    "unready": t.unready,
                    "backend": t.load.as_dict(now) if t.load is not None else None,
                    "ewma_ttfb": round(t.ewma, 6) if t.ewma is not None else None,
                    "ttfb_samples": t.samples,
                })
            pools[name] = {"strategy": node.strategy, "pipeline": node.pipeline.name,
                           "on_exhausted": node.on_exhausted.as_dict(), "members": members}
        providers = {name: {"protocol": p.protocol, "key_rotation": p.keys.rotation,
                            "quota_reset": p.keys.keys[0].quota.reset.spec,
                            "keys": [k.state(now) for k in p.keys.keys]}
                     for name, p in self.providers.items()}
        return {"pools": pools, "providers": providers, "direct_routes": list(self._direct)}

    def explain(self, model: str) -> str:
        """`busbar explain --pool X`: the route's members and effective pipeline."""
        node = self._node(model)
        if node is None:
            raise KeyError(model)
        lines = [f"pool {node.name}: strategy {node.strategy}, on_exhausted "
                 + " ".join(f"{k}={v}" for k, v in node.on_exhausted.as_dict().items())]

        def walk(n: PoolNode, depth: int) -> None:
            for child in n.children:
                pad = "  " * depth
                if isinstance(child, PoolRef):
                    lines.append(f"{pad}- pool {child.pool} weight {child.weight:g} priority {child.priority}"
                                 f" (strategy {child.node.strategy})")
                    walk(child.node, depth + 1)
                else:
                    extra = []
                    if child.context:
                        extra.append(f"context {child.context}")
                    if child.capabilities is not None:
                        extra.append("capabilities " + ",".join(sorted(child.capabilities)) if child.capabilities
                                     else "no capabilities")
                    keys = len(self.providers[child.provider].keys.keys)
                    extra.append(f"{keys} key(s)")
                    lines.append(f"{pad}- {child.id}: {child.provider}/{child.model} weight {child.weight:g} "
                                 f"priority {child.priority}; " + ", ".join(extra))

        walk(node, 1)
        seen = {node.name}
        cur = node
        while cur.on_exhausted.action == "fallback" and cur.on_exhausted.pool not in seen:
            lines.append(f"  then falls back to pool {cur.on_exhausted.pool}")
            seen.add(cur.on_exhausted.pool)
            cur = self.pools[cur.on_exhausted.pool]
        lines.append(explain_pipeline(node.pipeline))
        return "\n".join(lines)


def _daily_reset(name: str, raw: Mapping) -> DailyReset:
    """The provider's `quota_reset.daily`, else its vendor's documented reset
    (the protocol module knows it, e.g. Gemini's midnight Pacific), else UTC midnight."""
    spec = (raw.get("quota_reset") or {}).get("daily")
    if spec is None:
        from busbar.protocols import get_dialect   # read once at load: the vendor's own reset time
        try:
            spec = getattr(get_dialect(raw["protocol"]), "daily_quota_reset", None)
        except (KeyError, ValueError):
            spec = None
        spec = spec or DEFAULT_DAILY_RESET
    try:
        return DailyReset(spec)
    except ValueError as exc:
        raise RouteConfigError(f"providers.{name}.quota_reset.daily", str(exc)) from None
