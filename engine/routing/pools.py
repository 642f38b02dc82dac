"""Pools: weighted members, nested pools, and the strategies that pick one.

Built once from the config (`build_pools`), the tables are immutable; the
runtime state they point at lives in small mutable objects:

* `Target` - one upstream provider + model: its breaker, requests in flight
  and time-to-first-byte EWMA.  Shared by every pool listing the same
  provider + model, since health and load belong to the upstream.
* `PoolNode.rr` - the smooth round-robin counters of one pool.

A pool's members are models (`Member`) or other pools (`PoolRef`), to any
depth.  Picking walks down: at each pool the strategy chooses among the
children that can take the request, then recurses into a chosen pool.  So a
nested pool's share is its weight among its siblings, and a model's overall
share is the product of the weights' shares along its path.

Strategies (per pool; a pipeline's `dispatch.strategy` overrides):
  weighted         weighted random (default)
  round_robin      smooth weighted round robin (nginx): exact, evenly spread
  least_in_flight  fewest requests in flight per unit of weight; ties weighted random
  latency          lowest time-to-first-byte EWMA; members not yet measured are
                   tried first, and `dispatch.explore` of picks go weighted random
  ordered          lowest `priority` tier that can serve; weighted within it
  least_loaded     lowest backend pressure per unit of weight, from self-hosted
                   telemetry (queue, KV cache, cold model; `busbar.selfhosted`);
                   in-flight counts where telemetry is absent or stale
A member's effective weight is its weight times its breaker's ramp factor.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Mapping

from busbar.deprecations import deprecated
from busbar.pipeline import STRATEGIES, Pipeline
from busbar.routing.breaker import Breaker


class RouteConfigError(ValueError):
    """The pools in a config cannot be built; `path` says where."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class Target:
    """Runtime state of one upstream provider + model."""

    __slots__ = ("provider", "model", "breaker", "in_flight", "ewma", "samples", "drained", "unready", "load",
                 "load_stale_after")

    def __init__(self, provider: str, model: str):
        self.provider = provider
        self.model = model
        self.breaker = Breaker()
        self.in_flight = 0
        self.ewma: float | None = None   # seconds to first byte
        self.samples = 0
        self.drained = False             # operator drain: no new requests, in-flight ones finish
        self.unready = False             # self-hosted readiness probe failing: drained until it passes
        self.load = None                 # busbar.selfhosted.BackendLoad from the last telemetry scrape
        self.load_stale_after = 0.0      # seconds after which `load` is ignored

    def adopt(self, old: "Target") -> None:
        """Carry runtime state over a config reload (in-flight counts stay
        with the old tables, whose requests decrement them)."""
        self.breaker, self.ewma, self.samples, self.drained = old.breaker, old.ewma, old.samples, old.drained
        self.unready, self.load, self.load_stale_after = old.unready, old.load, old.load_stale_after

    @property
    def key(self) -> tuple[str, str]:
        return (self.provider, self.model)

    def observe_ttfb(self, ttfb: float, alpha: float) -> None:
        self.ewma = ttfb if self.ewma is None else alpha * ttfb + (1 - alpha) * self.ewma
        self.samples += 1

    def __repr__(self) -> str:
        return f"Target({self.provider}/{self.model})"


@dataclass(frozen=True, slots=True)
class Member:
    """A model in a pool (leaf)."""

    id: str
    pool: str
    provider: str
    protocol: str
    model: str
    weight: float
    priority: int
    context: int | None
    max_tokens: int | None
    capabilities: frozenset[str] | None   # None: assumed capable of everything
    target: Target = field(compare=False, repr=False)

    def capable(self, needs: frozenset[str], tokens: int) -> bool:
        if self.context is not None and tokens > self.context:
            return False
        return self.capabilities is None or needs <= self.capabilities


@dataclass(frozen=True, slots=True)
class PoolRef:
    """A pool nested in a pool."""

    pool: str
    weight: float
    priority: int
    node: "PoolNode" = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class OnExhausted:
    action: str = "reject"          # reject | wait | fallback
    max_wait: float | None = None   # wait: seconds, from the first wait of a request
    pool: str | None = None

    def as_dict(self) -> dict:
        out: dict = {"action": self.action}
        if self.max_wait is not None:
            out["max_wait"] = self.max_wait
        if self.pool is not None:
            out["pool"] = self.pool
        return out


@dataclass(frozen=True, slots=True)
class PoolNode:
    name: str
    strategy: str
    pipeline: Pipeline
    on_exhausted: OnExhausted
    children: tuple  # of Member | PoolRef
    leaves: tuple[Member, ...]       # every model below, depth first, each once
    rr: dict = field(default_factory=dict, compare=False, repr=False)  # child index -> current


# ---------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------
def build_pools(config: Mapping, pipelines: Mapping[str, Pipeline],
                targets: dict[tuple[str, str], Target]) -> dict[str, PoolNode]:
    """Every configured pool, children built before parents; `targets` is
    filled with one `Target` per distinct provider + model."""
    providers = config.get("providers") or {}
    raw_pools = config.get("pools") or {}
    nodes: dict[str, PoolNode] = {}
    building: list[str] = []

    def build(name: str, path: str) -> PoolNode:
        if name in nodes:
            return nodes[name]
        if name in building:
            cycle = " -> ".join([*building[building.index(name):], name])
            raise RouteConfigError(path, f"pools nest in a cycle: {cycle}")
        if name not in raw_pools:
            raise RouteConfigError(path, f"no pool named {name!r}")
        building.append(name)
        raw = raw_pools[name]
        where = f"pools.{name}"
        pipeline_name = raw.get("pipeline", "default")
        if pipeline_name not in pipelines:
            raise RouteConfigError(f"{where}.pipeline", f"no pipeline named {pipeline_name!r}")
        pipeline = pipelines[pipeline_name]
        strategy = pipeline.dispatch.strategy or raw.get("strategy") or "weighted"
        if strategy not in STRATEGIES:
            raise RouteConfigError(f"{where}.strategy", f"unknown strategy {strategy!r}")
        members = raw.get("members") or []
        if not members:
            raise RouteConfigError(f"{where}.members", "a pool needs at least one member")
        children: list = []
        leaves: list[Member] = []
        ids: set[str] = set()
        for i, m in enumerate(members):
            mpath = f"{where}.members[{i}]"
            weight = float(m.get("weight", 1))
            if not weight > 0:
                raise RouteConfigError(f"{mpath}.weight", "must be > 0")
            priority = int(m.get("priority", 0))
            if "pool" in m:
                child = build(m["pool"], f"{mpath}.pool")
                children.append(PoolRef(m["pool"], weight, priority, child))
                for leaf in child.leaves:
                    if all(leaf is not seen for seen in leaves):
                        leaves.append(leaf)
                continue
            provider = m.get("provider")
            if provider not in providers:
                raise RouteConfigError(f"{mpath}.provider", f"no provider named {provider!r}")
            model = m["model"]
            mid = m.get("id") or f"{name}/{provider}/{model}"
            if mid in ids:
                if "id" in m:
                    raise RouteConfigError(f"{mpath}.id", f"duplicate member id {mid!r}")
                mid = f"{mid}#{i}"
            ids.add(mid)
            target = targets.setdefault((provider, model), Target(provider, model))
            caps = m.get("capabilities")
            leaf = Member(
                id=mid, pool=name, provider=provider, protocol=providers[provider]["protocol"],
                model=model, weight=weight, priority=priority, context=m.get("context"),
                max_tokens=m.get("max_tokens"),
                capabilities=frozenset(caps) if caps is not None else None, target=target)
            children.append(leaf)
            leaves.append(leaf)
        oe = raw.get("on_exhausted") or {"action": "reject"}
        max_wait = oe.get("max_wait")
        if "max_ms" in oe:
            deprecated(f"{where}.on_exhausted.max_ms", "is deprecated (every other duration is seconds): "
                       f"write {where}.on_exhausted.max_wait: {oe['max_ms'] / 1000:g}")
            if max_wait is None:
                max_wait = oe["max_ms"] / 1000.0
        on_exhausted = OnExhausted(oe.get("action", "reject"), max_wait, oe.get("pool"))
        building.pop()
        node = PoolNode(name, strategy, pipeline, on_exhausted, tuple(children), tuple(leaves))
        nodes[name] = node
        return node

    for name in raw_pools:
        build(name, f"pools.{name}")

    # Fallback chains must end: A -> B -> A would never stop falling back.
    for name, node in nodes.items():
        seen = [name]
        cur = node
        while cur.on_exhausted.action == "fallback":
            nxt = cur.on_exhausted.pool
            where = f"pools.{cur.name}.on_exhausted.pool"
            if nxt not in nodes:
                raise RouteConfigError(where, f"no pool named {nxt!r}")
            if nxt in seen:
                raise RouteConfigError(where, f"fallback pools form a cycle: {' -> '.join([*seen, nxt])}")
            seen.append(nxt)
            cur = nodes[nxt]
    return nodes


# ---------------------------------------------------------------------------
# Picking
# ---------------------------------------------------------------------------
Usable = Callable[[Member], bool]


def effective_weight(child, node: PoolNode, now: float) -> float:
    if isinstance(child, Member):
        return child.weight * child.target.breaker.ramp_factor(now, node.pipeline.breaker)
    return child.weight


def _in_flight(child) -> int:
    if isinstance(child, Member):
        return child.target.in_flight
    return sum(leaf.target.in_flight for leaf in {id(l.target): l for l in child.node.leaves}.values())


def _ewma(child, usable: Usable) -> float | None:
    if isinstance(child, Member):
        return child.target.ewma
    measured = [leaf.target.ewma for leaf in child.node.leaves
                if leaf.target.ewma is not None and usable(leaf)]
    return min(measured) if measured else None


# A cold model (Ollama loads it on first use: seconds) counts as this many
# queued requests, so it is taken only when every warm backend is that busy.
COLD_PENALTY = 50.0


def backend_pressure(target: Target, now: float) -> float:
    """Queued work on a target's backend: waiting requests count double
    (they have not started), running ones or our own in-flight (whichever is
    larger: the scrape may predate requests sent since), scaled up as the KV
    cache fills (preemption ahead).  In-flight alone without fresh telemetry."""
    load = target.load
    if load is None or now - load.at > target.load_stale_after:
        return float(target.in_flight)
    pressure = 2.0 * (load.waiting or 0.0) + max(load.running or 0.0, float(target.in_flight))
    if load.kv_usage is not None:
        pressure *= 1.0 + 4.0 * max(0.0, load.kv_usage - 0.8)
    if load.cold:
        pressure += COLD_PENALTY
    return pressure


def _pressure(child, now: float) -> float:
    if isinstance(child, Member):
        return backend_pressure(child.target, now)
    return min(backend_pressure(leaf.target, now) for leaf in child.node.leaves)


def weighted_choice(items: list, weights: list[float], rng: random.Random):
    total = sum(weights)
    r = rng.random() * total
    acc = 0.0
    for item, w in zip(items, weights):
        acc += w
        if r < acc:
            return item
    return items[-1]


def _lowest(items: list, scores: list[float], weights: list[float], rng: random.Random):
    best = min(scores)
    tied = [(i, w) for i, s, w in zip(items, scores, weights) if s <= best + 1e-12]
    return weighted_choice([i for i, _ in tied], [w for _, w in tied], rng)


def choose(node: PoolNode, usable: Usable, now: float, rng: random.Random) -> Member | None:
    """A member of `node` (possibly deep) for which `usable` holds, or None."""
    indexed = [(i, c) for i, c in enumerate(node.children)
               if (usable(c) if isinstance(c, Member) else any(usable(l) for l in c.node.leaves))]
    if not indexed:
        return None
    kids = [c for _, c in indexed]
    weights = [effective_weight(c, node, now) for c in kids]
    strategy = node.strategy
    if strategy == "round_robin":
        rr = node.rr
        total = 0.0
        best = None
        for (i, _c), w in zip(indexed, weights):
            rr[i] = rr.get(i, 0.0) + w
            total += w
            if best is None or rr[i] > rr[best]:
                best = i
        rr[best] -= total
        child = node.children[best]
    elif strategy == "least_in_flight":
        child = _lowest(kids, [_in_flight(c) / w for c, w in zip(kids, weights)], weights, rng)
    elif strategy == "least_loaded":
        child = _lowest(kids, [_pressure(c, now) / w for c, w in zip(kids, weights)], weights, rng)
    elif strategy == "latency":
        lat = [_ewma(c, usable) for c in kids]
        fresh = [(c, w) for c, w, l in zip(kids, weights, lat) if l is None]
        if fresh:
            child = weighted_choice([c for c, _ in fresh], [w for _, w in fresh], rng)
        elif rng.random() < node.pipeline.dispatch.explore:
            child = weighted_choice(kids, weights, rng)
        else:
            child = _lowest(kids, lat, weights, rng)
    elif strategy == "ordered":
        tier = min(c.priority for c in kids)
        pairs = [(c, w) for c, w in zip(kids, weights) if c.priority == tier]
        child = weighted_choice([c for c, _ in pairs], [w for _, w in pairs], rng)
    else:
        child = weighted_choice(kids, weights, rng)
    if isinstance(child, Member):
        return child
    return choose(child.node, usable, now, rng)
