"""`/metrics`: the gateway's counters in the Prometheus text format.

The per-request cost has to stay at a few microseconds (the listener runs
in the request's own task, after the response went out), so `observe` only
bumps plain dicts keyed by label tuples and one histogram bucket per
latency; prometheus-client turns them into metric families when scraped
(`Collector.collect`), on its own `CollectorRegistry` per Gateway so several
gateways can live in one process.  Breaker and key states are read from the
router at scrape time, never tracked per request.

Every name starts with `busbar_`; labels never carry a secret (keys are
named by their id: provider, index and a hash prefix).  Labels are bounded:
a pool or member label is a configured name, one of at most
`MAX_DIRECT_LABELS` direct `provider/model` routes (then `direct`), or
`unknown` (a model the client made up), and never longer than
`MAX_LABEL_CHARS`; so no client can grow `/metrics` or this memory.
Scrapes render in a worker thread (`render_async`): a big scrape never
holds the event loop.
"""
from __future__ import annotations

import time
from bisect import bisect_left
from collections import deque

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, SummaryMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# seconds; generous at the top: LLM answers take minutes
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_BOUNDS_MS = tuple(b * 1000 for b in BUCKETS)
LATENCY_SAMPLES = 256           # per member, for the admin page's p50/p95
BREAKER_STATES = ("closed", "open", "half_open")
KEY_STATES = ("active", "cooling", "disabled")
FAULT_OUTCOMES = frozenset(("client", "context", "rate", "billing", "auth", "server"))
MAX_DIRECT_LABELS = 64          # distinct direct provider/model routes labelled by name
MAX_LABEL_CHARS = 128
UNKNOWN = "unknown"             # a pool name no route had
DIRECT_OTHER = "direct"         # a direct route past MAX_DIRECT_LABELS


def _hist() -> list:
    # bucket counts (one per bound, plus +Inf), then the sum in seconds
    return [0] * (len(BUCKETS) + 1) + [0.0]


class Metrics:
    """Counters fed by `observe(record)`, exposed by `render()`."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.started = time.time()
        self.total = 0
        # (pool, member, client_protocol, upstream_protocol, status, fault) -> count
        self.requests: dict[tuple, int] = {}
        self.attempts: dict[tuple, int] = {}       # (pool, member, outcome)
        self.failovers: dict[tuple, int] = {}      # (pool, member, fault): left this member for another
        self.tokens: dict[tuple, int] = {}         # (pool, member, kind)
        self.hedges: dict[tuple, int] = {}         # (pool, result): hedges started that won / lost / failed
        self.hedge_waste: dict[tuple, int] = {}    # (pool, member): tokens a lost attempt was billed
        self.resumes: dict[tuple, int] = {}        # (pool, result): resumed / refused
        self.duration: dict[str, list] = {}        # pool -> histogram
        self.ttfb: dict[tuple, list] = {}          # (pool, member) -> histogram
        self.samples: dict[str, deque] = {}        # member -> recent TTFB ms
        self.spend: dict[tuple, float] = {}        # (client key id, pool) -> USD priced when the request ended
        self.limited: dict[tuple, int] = {}        # (client key id, reason) -> refusals by tenancy
        self.budget_alerts: dict[str, int] = {}    # key or team id -> soft budget alerts
        self.key_requests: dict[str, int] = {}     # client key id -> requests (the admin page's rate)
        self._protocols: dict[str, str] = {}     # configured member id -> upstream protocol
        self._pools: frozenset = frozenset()
        self._direct: dict[str, str] = {}        # direct route -> its upstream protocol (bounded)
        self._router = None
        self._scrape_now: float | None = None    # the loop's clock, read before a threaded scrape
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        try:   # process CPU, memory, fds (Linux only; harmless elsewhere)
            from prometheus_client import ProcessCollector
            ProcessCollector(namespace="busbar", registry=self.registry)
        except Exception:  # pragma: no cover
            pass

    def adopt(self, old: "Metrics") -> None:
        """Carry the counters over a config reload."""
        for name in ("started", "total", "requests", "attempts", "failovers", "tokens", "duration", "ttfb",
                     "samples", "_direct", "spend", "limited", "budget_alerts", "key_requests",
                     "hedges", "hedge_waste", "resumes"):
            setattr(self, name, getattr(old, name))

    # ---- hot path ------------------------------------------------------------
    def _sync_router(self):
        router = self.gateway.router
        if router is not self._router:
            self._router = router
            self._protocols = {leaf.id: leaf.protocol for node in router.pools.values() for leaf in node.leaves}
            self._pools = frozenset(router.pools)
        return router

    def label(self, name: str) -> str:
        """The bounded label for a pool or member name (see the module doc)."""
        self._sync_router()
        if name in self._pools or name in self._protocols or name in self._direct or name in ("-", ""):
            return name or "-"
        provider, sep, model = name.partition("/")
        router = self._router
        if not sep or not model or provider not in router.providers or not (
                getattr(router, "direct_routes", True) or router.direct_route_known(name)):
            return UNKNOWN
        if len(self._direct) >= MAX_DIRECT_LABELS or len(name) > MAX_LABEL_CHARS:
            return DIRECT_OTHER
        self._direct[name] = router.providers[provider].protocol
        return name

    def upstream_protocol(self, member: str) -> str:
        """`member` is already a label."""
        self._sync_router()
        return self._protocols.get(member) or self._direct.get(member) or UNKNOWN

    def observe(self, record) -> None:
        """Count one finished request (a gateway RequestRecord)."""
        self.total += 1
        label = self.label
        pool = label(record.pool)
        attempts = record.attempts
        if attempts:
            counts = self.attempts
            for a in attempts:
                k = (pool, label(a.member), a.outcome)
                counts[k] = counts.get(k, 0) + 1
                if a.hedge:
                    result = "won" if a.outcome == "ok" else "lost" if a.outcome == "hedge_lost" else "failed"
                    self.hedges[(pool, result)] = self.hedges.get((pool, result), 0) + 1
                if a.waste_tokens:
                    k = (pool, label(a.member))
                    self.hedge_waste[k] = self.hedge_waste.get(k, 0) + a.waste_tokens
            if len(attempts) > 1:
                fo = self.failovers
                for a in attempts[:-1]:
                    if a.outcome in FAULT_OUTCOMES:
                        k = (pool, label(a.member), a.outcome)
                        fo[k] = fo.get(k, 0) + 1
            last = attempts[-1]
            member = label(last.member)
            fault = last.outcome if last.outcome in FAULT_OUTCOMES else "none"
            upstream = self.upstream_protocol(member)
        else:
            member = upstream = "-"
            fault = "none"
        k = (pool, member, record.client_protocol, upstream, record.status, fault)
        self.requests[k] = self.requests.get(k, 0) + 1
        h = self.duration.get(pool)
        if h is None:
            h = self.duration[pool] = _hist()
        h[bisect_left(_BOUNDS_MS, record.ms)] += 1
        h[-1] += record.ms / 1000.0
        ttfb = record.ttfb_ms
        if ttfb is not None:
            k = (pool, member)
            h = self.ttfb.get(k)
            if h is None:
                h = self.ttfb[k] = _hist()
            h[bisect_left(_BOUNDS_MS, ttfb)] += 1
            h[-1] += ttfb / 1000.0
            s = self.samples.get(member)
            if s is None:
                s = self.samples[member] = deque(maxlen=LATENCY_SAMPLES)
            s.append(ttfb)
        tenant = record.tenant        # a configured or minted key id: bounded by the keys, never a secret
        if tenant is not None:
            self.key_requests[tenant] = self.key_requests.get(tenant, 0) + 1
            if record.cost_usd:
                k = (tenant, pool)
                self.spend[k] = self.spend.get(k, 0.0) + record.cost_usd
            if record.limited:
                k = (tenant, record.limited)
                self.limited[k] = self.limited.get(k, 0) + 1
            for level in record.alerts:
                self.budget_alerts[level] = self.budget_alerts.get(level, 0) + 1
        for r in record.resumed:
            k = (pool, "resumed" if "to" in r else "refused" if "refused" in r else "failed")
            self.resumes[k] = self.resumes.get(k, 0) + 1
        usage = record.usage
        if usage is not None:
            t = self.tokens
            for kind, value in (("input", usage.input_tokens), ("output", usage.output_tokens),
                                ("cached", usage.cached_tokens), ("reasoning", usage.reasoning_tokens)):
                if value:
                    k = (pool, member, kind)
                    t[k] = t.get(k, 0) + value

    # ---- reading ---------------------------------------------------------------
    def latency(self, member: str) -> dict:
        """p50/p95 of the member's recent times to first byte (ms)."""
        s = self.samples.get(member)
        if not s:
            return {"p50_ms": None, "p95_ms": None, "samples": 0}
        ordered = sorted(s)
        n = len(ordered)
        return {"p50_ms": round(ordered[(n - 1) // 2], 3), "p95_ms": round(ordered[min(n - 1, int(n * 0.95))], 3),
                "samples": n}

    def render(self, now: float | None = None) -> bytes:
        """The Prometheus text.  `now`: the trio clock (read on the loop)
        for key cool-down states; the scrape itself may run in a thread."""
        self._scrape_now = now
        return generate_latest(self.registry)

    async def render_async(self) -> bytes:
        """`render` in a worker thread, so a scrape never stalls the loop
        (the dicts are snapshotted with `list()`; counters bumped meanwhile
        land in the next scrape)."""
        import trio
        return await trio.to_thread.run_sync(self.render, trio.current_time())


class _Collector:
    """Turns the Metrics dicts and the router's state into metric families."""

    def __init__(self, metrics: Metrics):
        self.m = metrics

    def collect(self):
        m = self.m
        gw = m.gateway
        # (name, help, labels, the Metrics dict counting per label tuple)
        counted = (
            ("busbar_requests", "Finished client requests.",
             ["pool", "member", "client_protocol", "upstream_protocol", "status", "fault"], m.requests),
            ("busbar_attempts", "Upstream attempts by outcome (ok, a fault class, cancelled).",
             ["pool", "member", "outcome"], m.attempts),
            ("busbar_failovers", "Attempts that failed and were retried elsewhere.",
             ["pool", "member", "fault"], m.failovers),
            ("busbar_tokens", "Tokens reported by upstreams (input includes cached, output includes reasoning).",
             ["pool", "member", "kind"], m.tokens),
            ("busbar_spend_usd", "Spend of each client key in USD, priced from the answering member's price "
             "when the request ended.", ["key", "pool"], m.spend),
            ("busbar_key_limited", "Requests of each client key refused by its limits or budget (reason: rpm, "
             "tpm, parallel, budget; the team's count for its keys).", ["key", "reason"], m.limited),
            ("busbar_budget_alerts", "Soft budget alerts (budget.alert of the period's budget spent) per key "
             "or team.", ["level"], m.budget_alerts),
            ("busbar_hedges", "Hedged attempts started (dispatch.hedge), by result: won (answered), lost "
             "(cancelled when another attempt answered first), failed.", ["pool", "result"], m.hedges),
            ("busbar_hedge_waste_tokens", "Tokens an attempt that lost a hedge race had been billed (reported "
             "by its upstream before it was cancelled).", ["pool", "member"], m.hedge_waste),
            ("busbar_stream_resumes", "Streams broken after content went out, by result: resumed on another "
             "member, refused (not continuable), failed.", ["pool", "result"], m.resumes),
        )
        for name, what, labels, counts in counted:
            fam = CounterMetricFamily(name, what, labels=labels)
            for key, n in list(counts.items()):
                fam.add_metric([str(v) for v in key] if isinstance(key, tuple) else [str(key)], n)
            yield fam
        fam = HistogramMetricFamily("busbar_request_duration_seconds", "Whole request, received to last byte.",
                                    labels=["pool"])
        for pool, h in list(m.duration.items()):
            fam.add_metric([pool], _buckets(h), h[-1])
        yield fam
        fam = HistogramMetricFamily("busbar_ttfb_seconds", "Time to first byte of the answering attempt.",
                                    labels=["pool", "member"])
        for (pool, member), h in list(m.ttfb.items()):
            fam.add_metric([pool, member], _buckets(h), h[-1])
        yield fam
        yield GaugeMetricFamily("busbar_in_flight_requests", "Client requests in progress.",
                                value=getattr(gw, "in_flight", 0))
        yield from _cache_families(gw)
        router = gw.router
        now = m._scrape_now
        if now is None:
            import trio
            try:
                now = trio.current_time()
            except RuntimeError:
                now = time.monotonic()
        state = GaugeMetricFamily("busbar_breaker_state", "1 for the breaker's current state of each upstream "
                                  "target (provider + model).", labels=["provider", "model", "state"])
        opens = CounterMetricFamily("busbar_breaker_opens", "Times the breaker opened.", labels=["provider", "model"])
        inflight = GaugeMetricFamily("busbar_upstream_in_flight", "Attempts in progress per upstream target.",
                                     labels=["provider", "model"])
        for (provider, model), target in list(router.targets.items()):
            current = target.breaker.state.value
            for s in BREAKER_STATES:
                state.add_metric([provider, model, s], 1.0 if s == current else 0.0)
            opens.add_metric([provider, model], target.breaker.opens)
            inflight.add_metric([provider, model], target.in_flight)
        yield state
        yield opens
        yield inflight
        keys = GaugeMetricFamily("busbar_key_state", "1 for each key's current state (disabled carries the reason).",
                                 labels=["provider", "key", "state", "reason"])
        key_uses = CounterMetricFamily("busbar_key_uses", "Attempts sent with each key.", labels=["provider", "key"])
        quota = ["provider", "key", "scope", "window"]    # scope: the model, or "key" (per: key)
        quota_used = GaugeMetricFamily("busbar_key_quota_used", "Requests (rpm, rpd) or tokens (tpm) counted "
                                       "against each key's configured limit in its current window.", labels=quota)
        quota_limit = GaugeMetricFamily("busbar_key_quota_limit", "Each key's configured limit per window.", labels=quota)
        quota_reset = GaugeMetricFamily("busbar_key_quota_resets_in_seconds", "Seconds until the window frees "
                                        "(the oldest request leaves the minute; the daily reset).", labels=quota)
        for name, provider in list(router.providers.items()):
            for key in provider.keys.keys:
                snap = key.state(now)
                current = snap["state"]
                reason = (snap.get("reason") or "").split(" ")[0] if current == "disabled" else ""
                for s in KEY_STATES:
                    keys.add_metric([name, key.id, s, reason if s == current else ""], 1.0 if s == current else 0.0)
                key_uses.add_metric([name, key.id], key.uses)
                for row in snap.get("quota", ()):
                    for window in ("rpm", "tpm", "rpd"):
                        if window in row:
                            labels = [name, key.id, row["scope"], window]
                            quota_used.add_metric(labels, row[window]["used"])
                            quota_limit.add_metric(labels, row[window]["limit"])
                            quota_reset.add_metric(labels, row[window]["resets_in_s"])
        yield keys
        yield key_uses
        yield quota_used
        yield quota_limit
        yield quota_reset
        backend = getattr(getattr(gw, "app", None), "state", None)
        if backend is not None:
            status = backend.status()
            degraded = GaugeMetricFamily("busbar_state_degraded", "1 while the shared state backend (Redis) is "
                                         "unavailable and takes are answered locally.", labels=["backend"])
            degraded.add_metric([status["backend"]], 1.0 if status["degraded"] else 0.0)
            yield degraded
            yield CounterMetricFamily("busbar_state_outages", "Times the shared state backend became unavailable.",
                                      value=status.get("outages_total", 0))
            yield CounterMetricFamily("busbar_state_fallback_ops", "Limit/counter operations answered without the "
                                      "shared backend (by state.on_unavailable).",
                                      value=status.get("fallback_ops_total", 0))
        cluster = getattr(getattr(gw, "app", None), "cluster", None)
        if cluster is not None:
            sync = cluster.status()
            yield GaugeMetricFamily("busbar_cluster_connected", "1 while routing state is shared with the other "
                                    "replicas through Redis (0: this replica routes on its own state).",
                                    value=1.0 if sync["connected"] else 0.0)
            for name, what in (("published", "Routing state changes this replica published."),
                               ("applied", "Other replicas' routing state changes applied here."),
                               ("dropped", "Routing state changes dropped because the sync queue was full."),
                               ("probe_grants", "Half-open probe leases won in Redis."),
                               ("local_probe_grants", "Half-open probes granted locally while Redis was away."),
                               ("outages", "Times the routing state sync lost Redis.")):
                yield CounterMetricFamily(f"busbar_cluster_{name}", what, value=sync[f"{name}_total"])
        deletions = getattr(getattr(gw, "app", None), "deletions", None)
        if deletions is not None:
            yield from _deletion_families(deletions.status())
        affinity = getattr(gw, "affinity", None)
        if affinity is not None:
            yield from _affinity_families(affinity.status())
        background = getattr(getattr(gw, "app", None), "background", None)
        if background is not None:
            yield from _background_families(background.status())


def _background_families(status: dict):
    """Responses background runs (ADR 0026), from the same numbers as /admin/api/state's
    `background`."""
    yield GaugeMetricFamily("busbar_background_runs_running", "Background Responses runs running on this "
                            "replica, detached from their client's connection.", value=status["running"])
    yield CounterMetricFamily("busbar_background_runs_started", "Background Responses runs started here.",
                              value=status["started"])
    yield _counter_by("busbar_background_runs_ended", "Background Responses runs ended here, by outcome "
                      "(shut_down: cut by this replica's shutdown).", "outcome",
                      {outcome: status[outcome] for outcome in ("completed", "failed", "cancelled", "shut_down")})
    yield _counter_by("busbar_background_cancels", "Cancels of background runs: heard on the cluster's channel "
                      "for a run here, forwarded to the replica running it.", "direction",
                      {"heard": status["cancels_heard"], "forwarded": status["cancels_forwarded"]})
    yield CounterMetricFamily("busbar_background_resumes", "Background streams resumed (GET ?stream=true).",
                              value=status["resumed"])
    yield CounterMetricFamily("busbar_background_resume_fell_behind", "Resumed readers ended because the "
                              "events they needed had left the stream's bounded log.", value=status["resume_fell_behind"])
    yield GaugeMetricFamily("busbar_background_resume_readers", "Resumed readers reading now.",
                            value=status["resume_readers"])
    yield GaugeMetricFamily("busbar_background_stream_log_bytes", "Bytes of background stream events kept "
                            "here for resumes.", value=status["stream_log_bytes"])


def _counter_by(name: str, what: str, label: str, values: dict[str, float]) -> CounterMetricFamily:
    """A counter family with one sample per value of `label`."""
    family = CounterMetricFamily(name, what, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count)
    return family


def _affinity_families(status: dict):
    """Vendor-minted response ids pinned to the key that made them (ADR 0027), from
    the same numbers as /admin/api/state's `response_affinity` (counts, never an id)."""
    yield GaugeMetricFamily("busbar_response_affinity_entries", "Vendor-minted response ids remembered here "
                            "with the provider and key that made them.", value=status["entries"])
    for name, what in (("remembered", "Passthrough Responses answers whose id was remembered."),
                       ("pinned", "Continuations (previous_response_id) pinned to the key that made the id."),
                       ("forwarded", "Retrieve, delete, input_items and cancel calls forwarded with that key.")):
        yield CounterMetricFamily(f"busbar_response_affinity_{name}", what, value=status[name])


def _deletion_families(status: dict):
    """Deleted stored responses across replicas (ADR 0025), from the same numbers as
    /admin/api/state's `response_deletions`."""
    made = CounterMetricFamily("busbar_response_deletions", "Stored responses deleted through this replica: "
                               "published to the other replicas at once, kept pending (Redis unreachable "
                               "from here), pending ones replayed later, refused (pending set full).",
                               labels=["outcome"])
    for outcome, field in (("published", "published"), ("pending", "pending_added"), ("replayed", "replayed"),
                           ("refused", "refused")):
        made.add_metric([outcome], status[field])
    yield made
    yield GaugeMetricFamily("busbar_response_deletions_pending", "Deletions made here waiting for Redis to reach "
                            "the other replicas (their copies still serve until then).", value=status["pending"])
    yield _counter_by("busbar_response_deletions_heard", "Deletions heard on the cluster's deletions channel "
                      "(every replica's, this one's included): applied, or ignored (unreadable).", "result",
                      {"applied": status["applied"], "ignored": status["ignored"]})
    yield CounterMetricFamily("busbar_response_deletions_copies_dropped", "Copies held here (turns, items) "
                              "replaced by a heard deletion's tombstone.", value=status["copies_dropped"])
    yield GaugeMetricFamily("busbar_response_deletions_doubtful", "Copies held here that may have missed a "
                            "deletion (after a resubscribe) and are checked on their next use.",
                            value=status["doubtful"])
    yield CounterMetricFamily("busbar_response_deletions_rechecked", "Doubtful copies checked against Redis.",
                              value=status["rechecked"])


def _cache_families(gw):
    """The response cache's counters per pool (busbar.cache.PoolStats), read
    at scrape time; the pool names are configured ones."""
    cache = getattr(gw, "cache", None)
    if cache is None or not cache.policies:
        return
    lookups = CounterMetricFamily("busbar_cache_lookups", "Requests to cached pools by verdict: hit, miss, "
                                  "bypass (a request header), skip (not cacheable).", labels=["pool", "result"])
    stored = CounterMetricFamily("busbar_cache_stores", "Answers stored in the response cache.", labels=["pool"])
    hit_bytes = CounterMetricFamily("busbar_cache_hit_bytes", "Bytes of answers served from the cache.",
                                    labels=["pool"])
    stored_bytes = CounterMetricFamily("busbar_cache_stored_bytes", "Bytes of answers stored (encoded entries).",
                                       labels=["pool"])
    saved = CounterMetricFamily("busbar_cache_saved_tokens", "Upstream tokens a hit did not spend (the stored "
                                "answer's usage).", labels=["pool", "kind"])
    spend = CounterMetricFamily("busbar_cache_saved_usd", "Spend hits saved, priced at the member that answered "
                                "the stored request (its `price`).", labels=["pool"])
    entries = GaugeMetricFamily("busbar_cache_entries", "Entries held in this process (pools cached in Redis "
                                "are not counted here).", labels=["pool"])
    for pool in list(cache.policies):
        st = cache.stats[pool]
        for result, n in (("hit", st.hits), ("miss", st.misses), ("bypass", st.bypassed), ("skip", st.skipped)):
            lookups.add_metric([pool, result], n)
        stored.add_metric([pool], st.stored)
        hit_bytes.add_metric([pool], st.hit_bytes)
        stored_bytes.add_metric([pool], st.stored_bytes)
        saved.add_metric([pool, "input"], st.saved_input_tokens)
        saved.add_metric([pool, "output"], st.saved_output_tokens)
        spend.add_metric([pool], st.saved_usd)
        held = cache.entries(pool)
        if held is not None:
            entries.add_metric([pool], held)
    yield from (lookups, stored, hit_bytes, stored_bytes, saved, spend, entries)
    if not cache.indexes:
        return
    semantic = CounterMetricFamily("busbar_cache_semantic_lookups", "Exact misses of semantic pools looked up by "
                                   "embedding: hit (a close cached prompt), miss, unavailable (the embedding pool "
                                   "failed or timed out: a miss).", labels=["pool", "result"])
    seconds = SummaryMetricFamily("busbar_cache_semantic_seconds", "Time a semantic lookup added to an exact miss: "
                                  "the embedding call, the index search (with the entry fetch).",
                                  labels=["pool", "stage"])
    indexed = GaugeMetricFamily("busbar_cache_semantic_index_entries", "Prompt embeddings in this process's index.",
                                labels=["pool"])
    for pool, index in list(cache.indexes.items()):
        st = cache.stats[pool]
        for result, n in (("hit", st.semantic_hits), ("miss", st.semantic_misses),
                          ("unavailable", st.semantic_unavailable)):
            semantic.add_metric([pool, result], n)
        searched = st.semantic_hits + st.semantic_misses
        seconds.add_metric([pool, "embed"], searched + st.semantic_unavailable, st.embed_seconds)
        seconds.add_metric([pool, "search"], searched, st.search_seconds)
        indexed.add_metric([pool], len(index))
    yield from (semantic, seconds, indexed)


def _buckets(h: list) -> list[tuple[str, float]]:
    out = []
    running = 0
    for bound, n in zip(BUCKETS, h):
        running += n
        out.append((repr(float(bound)), running))
    running += h[len(BUCKETS)]
    out.append(("+Inf", running))
    return out
