"""Request pipelines: YAML in, frozen plan objects out, built once at load.

A pipeline is data that drives one request through its lifecycle
(received -> routed -> dispatched -> streaming -> done, with a
failing-over loop back to dispatched): which checks run on arrival, how a
member is picked, the retry budget, the deadline and timeouts, what each fault
class costs (`rules`) and the circuit-breaker parameters.

Sources, merged deeply (maps key by key, lists and scalars replaced):

1. `pipelines/default.yaml` shipped with Busbar: every knob, commented;
2. `<pipelines_dir>/<name>.yaml`: one pipeline per file, named by its stem,
   read when the config uses that name;
3. the config's `pipelines:` map, `name -> overrides`.

`default` is (1) + its overrides; every other named pipeline is the effective
`default` + its own overrides.  The merged result is validated against
`schemas/pipeline.schema.json`; any problem raises `PipelineError` carrying a
dotted path such as `pipelines.default.rules.rate.action`.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Mapping

import yaml

from busbar import resources
from busbar.deprecations import deprecated
from busbar.faults import FaultClass

DEFAULT_PIPELINES_DIR = resources.pipelines_dir()
DEFAULT_FILE = DEFAULT_PIPELINES_DIR / "default.yaml"
SCHEMA_FILE = resources.schemas_dir() / "pipeline.schema.json"
NAME_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")

# Values of the data, spelled once.
ACTIONS = ("return", "failover", "retry_larger_context")
PENALTIES = ("none", "cool_key", "disable_key", "breaker")
STRATEGIES = ("weighted", "round_robin", "least_in_flight", "latency", "ordered", "least_loaded")


class PipelineError(ValueError):
    """A pipeline that cannot be built; `path` says where (dotted YAML path)."""

    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


# ---------------------------------------------------------------------------
# The frozen plan objects
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff: base * factor**(n-1), capped at max (n >= 1)."""

    base: float = 1.0
    factor: float = 2.0
    max: float = 300.0

    def delay(self, n: int) -> float:
        n = max(1, n)
        # float overflow guard: past the cap, stop multiplying
        delay = self.base
        for _ in range(n - 1):
            delay *= self.factor
            if delay >= self.max:
                return self.max
        return min(delay, self.max)


@dataclass(frozen=True, slots=True)
class Rule:
    """What one fault class costs: where the request goes, who pays."""

    action: str                     # return | failover | retry_larger_context
    penalty: str                    # none | cool_key | disable_key | breaker
    scope: str = "key_model"        # cool_key: key_model | key
    honor_retry_after: bool = True  # cool_key: use the vendor's Retry-After
    max_retry_after: float = 3600.0  # cool_key: cap on a vendor's Retry-After
    backoff: Backoff = field(default_factory=Backoff)  # cool_key without Retry-After
    duration: float = 3600.0        # disable_key
    alert: bool = False             # carry an operator log line
    # retry_larger_context: a request that lets the gateway drop its earliest turns
    # (Responses `truncation: "auto"`, ADR 0028) goes again this many times, with
    # less, once no larger member is left (other actions ignore it: a pipeline that
    # says `context: {action: return}` inherits the default's value and never truncates)
    truncate: int = 0


@dataclass(frozen=True, slots=True)
class Rules:
    client: Rule
    context: Rule
    rate: Rule
    billing: Rule
    auth: Rule
    server: Rule

    def __getitem__(self, cls: FaultClass | str) -> Rule:
        return getattr(self, FaultClass(cls).value)


@dataclass(frozen=True, slots=True)
class BreakerParams:
    failures: int = 5
    window: float = 60.0
    failure_rate: float = 0.5
    min_requests: int = 10
    open_for: float = 30.0
    open_for_max: float = 300.0
    ramp: float = 60.0
    ramp_floor: float = 0.1


@dataclass(frozen=True, slots=True)
class Hedge:
    """`dispatch.hedge`: after `after_ms` (or the pool's measured TTFB
    percentile `after`) without first content, start another member."""

    max: int
    budget: float                   # hedges as a share of the pool's requests
    after_ms: float | None = None
    after: str | None = None        # p50 | p90 | p95 | p99


@dataclass(frozen=True, slots=True)
class Dispatch:
    explore: float
    ewma_alpha: float
    strategy: str | None = None     # deprecated override of the pool's own `strategy`
    hedge: Hedge | None = None      # off when absent


@dataclass(frozen=True, slots=True)
class Resume:
    """`streaming.resume`: continue a stream broken after the commit on
    another member, at most `max` times, each within `max_added_ms`."""

    max: int
    max_added_ms: float


@dataclass(frozen=True, slots=True)
class Streaming:
    resume: Resume | None = None    # off when absent


@dataclass(frozen=True, slots=True)
class Retry:
    max_attempts: int
    max_key_rotations: int


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float
    first_byte: float
    idle: float


@dataclass(frozen=True, slots=True)
class Pipeline:
    name: str
    dispatch: Dispatch
    retry: Retry
    deadline: float
    timeouts: Timeouts
    rules: Rules
    breaker: BreakerParams
    description: str = ""
    streaming: Streaming = Streaming()
    # deprecated `received.checks` without `auth`: the pools on this pipeline
    # skip the client-key check (today's spelling: pools.NAME.auth: false)
    legacy_open: bool = False

    @property
    def max_attempts(self) -> int:
        return self.retry.max_attempts

    @property
    def max_key_rotations(self) -> int:
        return self.retry.max_key_rotations

    def as_dict(self) -> dict:
        """Plain data (for admin output and round trips through the schema)."""
        data = asdict(self)
        data.pop("name")
        data.pop("legacy_open")
        if data["dispatch"]["strategy"] is None:
            data["dispatch"].pop("strategy")
        if data["dispatch"]["hedge"] is None:
            data["dispatch"].pop("hedge")
        else:
            data["dispatch"]["hedge"] = {k: v for k, v in data["dispatch"]["hedge"].items() if v is not None}
        if data["streaming"]["resume"] is None:
            data["streaming"].pop("resume")
        data["rules"] = {cls: _rule_dict(rule) for cls, rule in data["rules"].items()}
        if not data["description"]:
            data.pop("description")
        return data


# The parameters each penalty takes, nested under its name in a rule:
#   rate: {action: failover, penalty: cool_key, cool_key: {backoff: {max: 300}}}
PENALTY_PARAMS = {"cool_key": ("scope", "honor_retry_after", "max_retry_after", "backoff"),
                  "disable_key": ("duration",)}


def _rule_dict(rule: dict) -> dict:
    """A rule as plain data in today's spelling (penalty parameters nested
    under the penalty's name; an unused penalty's block only when it differs
    from the defaults)."""
    out = {"action": rule["action"], "penalty": rule["penalty"]}
    defaults = asdict(Rule("return", "none"))
    for penalty, keys in PENALTY_PARAMS.items():
        params = {k: rule[k] for k in keys}
        if penalty == rule["penalty"] or any(params[k] != defaults[k] for k in keys):
            out[penalty] = params
    if rule["alert"]:
        out["alert"] = True
    if rule["truncate"] and rule["action"] == "retry_larger_context":
        out["truncate"] = rule["truncate"]
    return out


# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------
@cache
def _validator():
    from jsonschema import Draft202012Validator

    schema = json.loads(SCHEMA_FILE.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@cache
def _builtin_default() -> dict:
    return _read_yaml(DEFAULT_FILE, "pipelines.default")


def _read_yaml(path: Path, where: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PipelineError(where, f"cannot read {path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PipelineError(where, f"{path} must hold a mapping, not {type(data).__name__}")
    return data


def deep_merge(base: Mapping, override: Mapping) -> dict:
    """`override` on top of `base`: maps merge recursively, anything else replaces."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_pipelines(config: Mapping | None = None, pipelines_dir: str | Path | None = None) -> dict[str, Pipeline]:
    """Every pipeline the config names, `default` always among them.

    A name is looked up as `<pipelines_dir>/<name>.yaml` (or `.yml`) and in
    the config's `pipelines:` map (which wins where both set a key).  Only
    names the config uses (a pool's `pipeline`, a `pipelines:` key, or
    `default`) are read, so other YAML files may live in that directory.
    """
    config = config or {}
    directory = Path(pipelines_dir) if pipelines_dir is not None else DEFAULT_PIPELINES_DIR
    inline = config.get("pipelines") or {}
    if not isinstance(inline, Mapping):
        raise PipelineError("pipelines", f"must be a mapping of name -> pipeline, not {type(inline).__name__}")
    names = ["default", *inline]
    for pool in (config.get("pools") or {}).values():
        if isinstance(pool, Mapping) and isinstance(pool.get("pipeline"), str):
            names.append(pool["pipeline"])

    overrides: dict[str, dict] = {}
    for name in dict.fromkeys(names):
        where = f"pipelines.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise PipelineError(where, "pipeline names use letters, digits and _ . : -")
        found = False
        data: dict = {}
        for suffix in (".yaml", ".yml"):
            path = directory / f"{name}{suffix}"
            if path.is_file() and path.resolve() != DEFAULT_FILE:
                data = deep_merge(data, _fold_rules(where, _read_yaml(path, where)))
                found = True
        if name in inline:
            extra = inline[name]
            if extra is None:
                extra = {}
            if not isinstance(extra, Mapping):
                raise PipelineError(where, f"must be a mapping, not {type(extra).__name__}")
            data = deep_merge(data, _fold_rules(where, extra))
            found = True
        if not found and name != "default":
            raise PipelineError(where, f"no pipeline named {name!r}: neither {directory / (name + '.yaml')} "
                                       "nor an entry under `pipelines:`")
        overrides[name] = data

    default = deep_merge(_builtin_default(), overrides.pop("default"))
    merged = {"default": default}
    for name, data in overrides.items():
        merged[name] = deep_merge(default, data)
    return {name: build_pipeline(name, data) for name, data in merged.items()}


LEGACY_CHECKS = ("auth", "max_body")


def _normalize(where: str, data: Mapping) -> tuple[dict, bool]:
    """Today's spelling of a merged pipeline, warning for each old one it
    rewrites; and whether the old `received.checks` opened its pools."""
    data = dict(data)
    legacy_open = False
    received = data.pop("received", None)
    if received is not None:
        checks = received.get("checks", []) if isinstance(received, Mapping) else None
        if not isinstance(checks, list):
            raise PipelineError(f"{where}.received.checks", "must be a list")
        for i, check in enumerate(checks):
            if check not in LEGACY_CHECKS:
                raise PipelineError(f"{where}.received.checks.{i}",
                                    f"{check!r} is not allowed; allowed: {', '.join(LEGACY_CHECKS)}")
        legacy_open = "auth" not in checks
        deprecated(f"{where}.received.checks", "is deprecated and no longer needed: the top-level `auth` decides "
                   "who may call (a pool opts out with `auth: false`), and bodies over server.max_body_bytes "
                   "always get a 413" + ("; this pipeline's pools skip the key check, as before" if legacy_open
                                         else ""))
    dispatch = data.get("dispatch")
    if isinstance(dispatch, Mapping) and dispatch.get("strategy") is not None:
        deprecated(f"{where}.dispatch.strategy", "is deprecated: set the strategy in one place, on the pool "
                   "(pools.NAME.strategy); it still overrides the pool's for now")
    return _fold_rules(where, data), legacy_open


def _fold_rules(where: str, data: Mapping) -> dict:
    """Today's spelling of one source's `rules` (done per source, before the
    merge, so an old-spelled override still wins over the shipped default)."""
    data = dict(data)
    rules = data.get("rules")
    if isinstance(rules, Mapping):
        data["rules"] = {cls: _normalize_rule(f"{where}.rules.{cls}", rule) if isinstance(rule, Mapping) else rule
                         for cls, rule in rules.items()}
    return data


def _normalize_rule(where: str, rule: Mapping) -> dict:
    """Fold the old flat penalty parameters (`rules.rate.backoff`) under the
    penalty that uses them (`rules.rate.cool_key.backoff`)."""
    rule = dict(rule)
    for penalty, keys in PENALTY_PARAMS.items():
        flat = {k: rule.pop(k) for k in keys if k in rule}
        if not flat:
            continue
        for key in flat:
            deprecated(f"{where}.{key}", f"is deprecated: write it under the penalty that uses it, as "
                                         f"{where}.{penalty}.{key}")
        nested = rule.get(penalty)
        rule[penalty] = deep_merge(nested, flat) if isinstance(nested, Mapping) else flat
    return rule


def build_pipeline(name: str, data: Mapping) -> Pipeline:
    """Validate one merged pipeline mapping and freeze it."""
    where = f"pipelines.{name}"
    data, legacy_open = _normalize(where, data)
    errors = sorted(_validator().iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        path = [str(p) for p in err.absolute_path]
        message = err.message
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            if extra:
                path.append(str(extra[0]))
                message = f"unknown key {extra[0]!r}"
        raise PipelineError(".".join([where, *path]), message)

    def rule(cls: str) -> Rule:
        raw = dict(data["rules"][cls])
        for penalty in PENALTY_PARAMS:
            raw.update(raw.pop(penalty, None) or {})
        if "backoff" in raw:
            raw["backoff"] = Backoff(**{k: float(v) for k, v in raw["backoff"].items()})
        for key in ("max_retry_after", "duration"):
            if key in raw:
                raw[key] = float(raw[key])
        rule = Rule(**raw)
        if rule.backoff.max < rule.backoff.base:
            raise PipelineError(f"{where}.rules.{cls}.cool_key.backoff.max", "must be at least backoff.base")
        return rule

    breaker = BreakerParams(**data["breaker"])
    if breaker.open_for_max < breaker.open_for:
        raise PipelineError(f"{where}.breaker.open_for_max", "must be at least breaker.open_for")
    dispatch = dict(data["dispatch"])
    if dispatch.get("hedge") is not None:
        dispatch["hedge"] = Hedge(**dispatch["hedge"])
    resume = (data.get("streaming") or {}).get("resume")
    return Pipeline(
        name=name,
        dispatch=Dispatch(**dispatch),
        streaming=Streaming(Resume(**resume) if resume is not None else None),
        retry=Retry(**data["retry"]),
        deadline=float(data["deadline"]),
        timeouts=Timeouts(**{k: float(v) for k, v in data["timeouts"].items()}),
        rules=Rules(**{cls.value: rule(cls.value) for cls in FaultClass}),
        breaker=breaker,
        description=data.get("description", ""),
        legacy_open=legacy_open,
    )


# ---------------------------------------------------------------------------
# Explaining
# ---------------------------------------------------------------------------
def _secs(value: float) -> str:
    if value >= 3600 and value % 3600 == 0:
        return f"{value / 3600:g}h"
    if value >= 60 and value % 60 == 0:
        return f"{value / 60:g}min"
    return f"{value:g}s"


def describe_rule(rule: Rule) -> str:
    """One line: what a fault class governed by `rule` costs."""
    action = {
        "return": "return the error to the client, no retry",
        "failover": "fail over",
        "retry_larger_context": "retry on a member with a larger context window",
    }[rule.action]
    if rule.penalty == "none":
        penalty = "no penalty"
    elif rule.penalty == "breaker":
        penalty = "count a failure toward the member's breaker"
    elif rule.penalty == "cool_key":
        what = "key for this model" if rule.scope == "key_model" else "key for every model"
        b = rule.backoff
        backoff = f"backoff {_secs(b.base)} x{b.factor:g} up to {_secs(b.max)}"
        if rule.honor_retry_after:
            penalty = f"cool the {what}: Retry-After (at most {_secs(rule.max_retry_after)}) else {backoff}"
        else:
            penalty = f"cool the {what}: {backoff}"
    else:
        penalty = f"disable the key for {_secs(rule.duration)}"
    if rule.action == "failover" and rule.penalty in ("cool_key", "disable_key"):
        action = "another key of the same member first, then fail over"
    if rule.truncate and rule.action == "retry_larger_context":
        action += (f"; with none left, `truncation: auto` requests go to the largest again with their earliest "
                   f"turns dropped (at most {rule.truncate} time(s))")
    alert = "; alert operators" if rule.alert else ""
    return f"{penalty}; {action}{alert}"


# What each table edge means, in words (an edge missing here is still listed,
# under its event name, so `explain` cannot drop an edge the driver can take).
_EDGE_WORDS = {
    ("received", "route"): ("checks pass", ""),
    ("received", "rejected"): ("a check fails", " (error in the client's protocol)"),
    ("routed", "dispatch"): ("member + key picked", ""),
    ("routed", "rejected"): ("none available", " (exhausted: pool on_exhausted: reject 429 | wait | fallback pool)"),
    ("dispatched", "first_byte"): ("first content", ""),
    ("failing_over", "dispatch"): ("budget left", ""),
    ("failing_over", "rejected"): ("budget spent / deadline / none available", " (exhausted)"),
    ("streaming", "complete"): ("end of answer", ""),
    ("streaming", "broken"): ("fault after content was sent",
                              " (error event in the client's protocol; the penalty still applies)"),
    ("streaming", "resume"): ("fault after content was sent, resume on",
                              " (the continuation on another member is spliced into the open stream)"),
    ("dispatched", "hedge"): ("no first content yet, hedge on", " (another member races; the first content wins)"),
}


def explain(pipeline: Pipeline) -> str:
    """Human readable effective pipeline and the transitions it allows."""
    p = pipeline
    b = p.breaker
    t = p.timeouts
    lines = [f"pipeline {p.name}" + (f": {p.description}" if p.description else "")]
    lines.append("  received     client keys: the top-level `auth` (a pool may opt out with `auth: false`)"
                 + ("; this pipeline's pools skip it (deprecated received.checks)" if p.legacy_open else ""))
    strategy = p.dispatch.strategy or "the pool's own strategy"
    lines.append(f"  dispatch     strategy: {strategy} (latency: explore {p.dispatch.explore:g}, ewma alpha {p.dispatch.ewma_alpha:g})")
    h = p.dispatch.hedge
    if h is not None:
        after = f"{h.after_ms:g} ms" if h.after_ms is not None else f"the pool's TTFB {h.after}"
        lines.append(f"  hedge        no first content after {after}: up to {h.max} more member(s) race, the first "
                     f"content wins; at most {h.budget:.0%} of the pool's requests")
    r = p.streaming.resume
    if r is not None:
        lines.append(f"  resume       a stream broken after content went out continues on another member, up to "
                     f"{r.max} time(s), each within {r.max_added_ms:g} ms of the failure")
    lines.append(
        f"  budget       {p.max_attempts} member attempt(s) + {p.max_key_rotations} key rotation(s) "
        f"= at most {p.max_attempts + p.max_key_rotations} upstream calls; deadline {_secs(p.deadline)}"
    )
    lines.append(f"  timeouts     connect {_secs(t.connect)}, first byte {_secs(t.first_byte)}, idle {_secs(t.idle)}")
    lines.append(
        f"  breaker      opens after {b.failures} consecutive failures or >= {b.failure_rate:.0%} of >= {b.min_requests} "
        f"requests in {_secs(b.window)}; half-open after {_secs(b.open_for)} (doubling to {_secs(b.open_for_max)}) "
        f"with one probe; recovered weight ramps from {b.ramp_floor:.0%} over {_secs(b.ramp)}"
    )
    lines.append("  faults")
    for cls in FaultClass:
        lines.append(f"    {cls.value:<8} {describe_rule(p.rules[cls])}")
    from busbar import lifecycle   # the chart the driver runs: edges come from its table
    lines.append(f"  states       {' -> '.join(s for s in lifecycle.STATES if s not in ('failing_over', 'failed'))}, "
                 "failing_over between attempts, failed on errors")
    edges = []
    for (src, event), dst in lifecycle.TRANSITIONS.items():
        if event == "cancelled":
            continue                  # from every state alike: one line at the end
        if (event == "resume" and p.streaming.resume is None) or (event == "hedge" and p.dispatch.hedge is None):
            continue                  # edges of features this pipeline leaves off
        if src == "dispatched" and event in ("fault", "rejected"):
            # one edge per fault class, along the event its rule picks
            for cls in FaultClass:
                rule = p.rules[cls]
                if (rule.action == "return") != (event == "rejected"):
                    continue
                detail = {"return": " (error in the client's protocol)",
                          "retry_larger_context": " (larger context only)"}.get(rule.action, "")
                if rule.action == "failover" and rule.penalty in ("cool_key", "disable_key"):
                    detail = " (same member, other key first)"
                edges.append((src, f"{cls.value} fault", dst + detail))
            continue
        label, detail = _EDGE_WORDS.get((src, event), (event, ""))
        edges.append((src, label, dst + detail))
    edges.append(("any", "client gone / cancelled", "failed"))
    lines.append("  transitions")
    src_w = max(len(e[0]) for e in edges)
    label_w = max(len(e[1]) for e in edges if len(e[1]) < 30) + 4
    for src, label, dst in edges:
        lines.append(f"    {src:<{src_w}} --{label}-->".ljust(4 + src_w + label_w + 6) + f" {dst}")
    return "\n".join(lines)
