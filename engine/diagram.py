"""The request lifecycle as a picture: the chart as one pool's pipeline
configures it, optionally with one request's actual path drawn on top.

    to_mermaid(pipeline)                     # Mermaid stateDiagram-v2 text
    to_dot(pipeline, path=record)            # Graphviz DOT text, the path highlighted
    render("svg", pipeline, path=record)     # bytes; svg laid out in code (diagram_svg), png needs `dot`

The states and transitions come from the compiled table in
`busbar.lifecycle` (so the picture cannot drift from what the gateway runs);
the pipeline only names the edges: the `fault` edge lists the fault classes
whose rule retries elsewhere (failover / retry_larger_context), the
`rejected` edge out of `dispatched` lists those whose rule returns the error
to the client.  Events between the same two states share one edge.

A *path* is a finished (or in-flight) request: a `RequestRecord`, its
`as_dict()` form (an access-log line, `GET /admin/api/requests/{id}`), or a
plain list of state names.  Visited states are filled, traversed edges carry
their step numbers, and the attempts (member, key id, outcome, time, why it
failed) are listed beside the chart.
"""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterable

from busbar import lifecycle
from busbar.faults import FaultClass

FORMATS = ("mermaid", "dot", "svg", "png")

# Why a request leaves a state for `failed`, when the event alone says little.
_REJECT_WHY = {"received": "bad request", "routed": "no member available", "failing_over": "exhausted"}

VISITED = "#ffe082"
VISITED_LINE = "#e65100"
FAILED_FILL = "#ffcdd2"


class GraphvizMissing(RuntimeError):
    """png asked for, but Graphviz's `dot` is not on PATH."""

    def __init__(self) -> None:
        super().__init__("Graphviz's `dot` is needed for png output but is not installed: "
                         "`apt-get install graphviz` (Debian/Ubuntu) or `brew install graphviz`; "
                         "or ask for --format svg, mermaid or dot, which need nothing.")


# ---------------------------------------------------------------------------
# The chart's edges, named by a pipeline
# ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Edge:
    source: str
    target: str
    events: tuple[str, ...]
    label: str


def event_label(pipeline, source: str, event: str) -> str:
    """The label of one (state, event) transition under `pipeline` (None: bare event names)."""
    if pipeline is None:
        return event
    if event == "fault":
        classes = [c.value for c in FaultClass if pipeline.rules[c].action != "return"]
        return f"fault: {', '.join(classes)}" if classes else "fault"
    if event == "rejected":
        if source == "dispatched":
            classes = [c.value for c in FaultClass if pipeline.rules[c].action == "return"]
            return f"rejected: {', '.join(classes) or 'budget spent'}"
        why = _REJECT_WHY.get(source)
        return f"rejected: {why}" if why else event
    return event


def edges(pipeline=None) -> list[Edge]:
    """One edge per (source, target) pair of the compiled table, in a stable order."""
    grouped: dict[tuple[str, str], list[str]] = {}
    for (source, event), target in lifecycle.TRANSITIONS.items():
        grouped.setdefault((source, target), []).append(event)
    order = {state: i for i, state in enumerate(lifecycle.STATES)}
    out = []
    for (source, target), events in sorted(grouped.items(), key=lambda kv: (order[kv[0][0]], order[kv[0][1]])):
        events.sort(key=lambda e: (e == "cancelled", e))   # the meaningful event first
        out.append(Edge(source, target, tuple(events), " / ".join(event_label(pipeline, source, e) for e in events)))
    return out


# ---------------------------------------------------------------------------
# A request's path
# ---------------------------------------------------------------------------
@dataclass(slots=True)
class Trace:
    """What the diagram needs of one request."""

    steps: list[tuple[str, float | None, str]]                # (state, ms since start, note)
    attempts: list[dict] = field(default_factory=list)        # member, key, outcome, status, ms, message
    id: str = ""
    pool: str = ""
    status: int = 0

    @property
    def states(self) -> list[str]:
        return [s for s, _, _ in self.steps]

    def edge_steps(self) -> dict[tuple[str, str], list[int]]:
        """(source, target) -> the 1-based step numbers that took that edge."""
        out: dict[tuple[str, str], list[int]] = {}
        for i in range(1, len(self.steps)):
            out.setdefault((self.steps[i - 1][0], self.steps[i][0]), []).append(i)
        return out


def trace_of(path) -> Trace | None:
    """Normalise a RequestRecord, its as_dict() form, or a list of state names."""
    if path is None:
        return None
    if isinstance(path, Trace):
        return path
    if hasattr(path, "as_dict"):
        path = path.as_dict()
    if isinstance(path, dict):
        steps = [(s["state"], s.get("ms"), s.get("note", "")) for s in path.get("path", ())]
        return Trace(steps, list(path.get("attempts", ())), path.get("id", ""), path.get("pool", ""),
                     path.get("status", 0))
    return Trace([(str(s), None, "") for s in path])


def _attempt_lines(trace: Trace) -> list[str]:
    lines = []
    for i, a in enumerate(trace.attempts, 1):
        status = f" {a['status']}" if a.get("status") else ""
        why = f": {a['message']}" if a.get("message") else ""
        lines.append(f"attempt {i}: {a.get('member')} key {a.get('key') or '-'} → {a.get('outcome')}{status} "
                     f"({a.get('ms', 0):g} ms){why}")
    return lines


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} ms"


# ---------------------------------------------------------------------------
# Mermaid
# ---------------------------------------------------------------------------
def _mermaid_text(text: str) -> str:
    # Mermaid's state-diagram grammar has no escapes for these
    for bad, good in ((";", ","), ("{", "("), ("}", ")"), ("<", "‹"), (">", "›"), ('"', "'")):
        text = text.replace(bad, good)
    return text.replace("end note", "end-note")


def to_mermaid(pipeline=None, path=None, *, title: str | None = None) -> str:
    """The chart as a Mermaid stateDiagram-v2; `path` highlights a request."""
    trace = trace_of(path)
    taken = trace.edge_steps() if trace else {}
    lines = []
    if title:
        lines += ["---", f"title: {_mermaid_text(title)}", "---"]
    lines += ["stateDiagram-v2", f"    [*] --> {lifecycle.INITIAL}"]
    for edge in edges(pipeline):
        label = edge.label
        steps = taken.get((edge.source, edge.target))
        if steps:
            label += " [step " + ", ".join(map(str, steps)) + "]"
        lines.append(f"    {edge.source} --> {edge.target}: {_mermaid_text(label)}")
    for final in sorted(lifecycle.FINAL):
        lines.append(f"    {final} --> [*]")
    if trace:
        lines.append(f"    classDef visited fill:{VISITED},stroke:{VISITED_LINE},stroke-width:2px")
        lines.append(f"    classDef failedend fill:{FAILED_FILL},stroke:#b71c1c,stroke-width:2px")
        for state in dict.fromkeys(trace.states):
            cls = "failedend" if state == "failed" else "visited"
            lines.append(f"    class {state} {cls}")
        notes = [f"request {trace.id} pool {trace.pool} status {trace.status}".strip()]
        notes += [f"{i}. {state} at {_ms(ms)}" + (f" ({note})" if note else "")
                  for i, (state, ms, note) in enumerate(trace.steps)]
        notes += _attempt_lines(trace)
        anchor = "dispatched" if "dispatched" in trace.states else lifecycle.INITIAL
        lines.append(f"    note right of {anchor}")
        lines += [f"        {_mermaid_text(n)}" for n in notes]
        lines.append("    end note")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------
# Graphviz DOT
# ---------------------------------------------------------------------------
def _q(text: str) -> str:
    """A DOT double-quoted string (escString: \\n and \\l are line breaks)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def to_dot(pipeline=None, path=None, *, title: str | None = None,
           counts: dict[tuple[str, str], int] | None = None, notes: bool = True) -> str:
    """The chart as Graphviz DOT.  `path` highlights one request (with a note
    listing its steps and attempts unless `notes` is false); `counts`
    ((source, target) -> how many recent requests took it) thickens edges."""
    trace = trace_of(path)
    taken = trace.edge_steps() if trace else {}
    visits: dict[str, list[float | None]] = {}
    for state, ms, _ in (trace.steps if trace else ()):
        visits.setdefault(state, []).append(ms)
    out = ["digraph busbar {",
           '  graph [rankdir=LR, fontname="Helvetica", fontsize=12, labelloc=t, labeljust=l, nodesep=0.35,'
           ' ranksep=0.6, bgcolor="transparent"' + (f", label={_q(title)}" if title else "") + "];",
           '  node [shape=box, style="rounded,filled", fillcolor="#ffffff", color="#607d8b", fontname="Helvetica",'
           ' fontsize=11];',
           '  edge [fontname="Helvetica", fontsize=9, color="#90a4ae", fontcolor="#455a64"];',
           '  "__start" [shape=point, width=0.12, color="#455a64", fillcolor="#455a64", label=""];',
           f'  "__start" -> {_q(lifecycle.INITIAL)};']
    for state in lifecycle.STATES:
        attrs = {"label": state}
        if state in lifecycle.FINAL:
            attrs["peripheries"] = "2"
        if state in visits:
            times = [t for t in visits[state] if t is not None]
            if times:
                attrs["label"] = state + "\n" + ", ".join(f"{t:.1f} ms" for t in times[:4]) + \
                    (" …" if len(times) > 4 else "")
            attrs["fillcolor"] = FAILED_FILL if state == "failed" else VISITED
            attrs["color"] = "#b71c1c" if state == "failed" else VISITED_LINE
            attrs["penwidth"] = "2"
        out.append(f"  {_q(state)} [" + ", ".join(f"{k}={_q(v)}" for k, v in attrs.items()) + "];")
    peak = max(counts.values(), default=0) if counts else 0
    for edge in edges(pipeline):
        attrs = {"label": edge.label}
        n = counts.get((edge.source, edge.target), 0) if counts else 0
        if n:
            attrs["label"] += f"\n×{n}"
            attrs["penwidth"] = f"{1 + 3 * n / peak:.2f}"
            attrs["color"] = "#546e7a"
        steps = taken.get((edge.source, edge.target))
        if steps:
            attrs["label"] += "\nstep " + ", ".join(map(str, steps))
            attrs.update(color=VISITED_LINE, fontcolor=VISITED_LINE, penwidth="2.5")
        if edge.source == "failing_over":
            attrs["constraint"] = "false"   # the retry loop goes back left
        out.append(f"  {_q(edge.source)} -> {_q(edge.target)} [" +
                   ", ".join(f"{k}={_q(v)}" for k, v in attrs.items()) + "];")
    if trace and notes:
        head = f"request {trace.id}  pool {trace.pool}  status {trace.status}".strip()
        lines = [head, ""] + [f"{i}. {state}  {_ms(ms)}" + (f"  ({note})" if note else "")
                              for i, (state, ms, note) in enumerate(trace.steps)]
        attempt_lines = _attempt_lines(trace)
        if attempt_lines:
            lines += ["", "attempts:"] + attempt_lines
        text = "".join(_q(line)[1:-1][:160] + "\\l" for line in lines)
        out.append(f'  "__trace" [shape=note, fillcolor="#fffde7", color="#f9a825", fontname="Courier",'
                   f' fontsize=9, label="{text}"];')
        out.append('  { rank=sink; "__trace"; }')
    out.append("}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
def have_graphviz() -> bool:
    return shutil.which("dot") is not None


def dot_to(fmt: str, dot_text: str, *, timeout: float = 20.0) -> bytes:
    """Run Graphviz's `dot -T<fmt>` (blocking: call via trio.to_thread on a server)."""
    exe = shutil.which("dot")
    if exe is None:
        raise GraphvizMissing()
    proc = subprocess.run([exe, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"dot -T{fmt} failed: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


def render(fmt: str, pipeline=None, path=None, *, title: str | None = None,
           counts: dict[tuple[str, str], int] | None = None) -> bytes:
    """The diagram in `fmt` (mermaid | dot | svg | png) as bytes."""
    if fmt == "mermaid":
        return to_mermaid(pipeline, path, title=title).encode()
    if fmt not in FORMATS:
        raise ValueError(f"unknown diagram format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "svg":     # laid out in code: no system package needed
        from busbar.diagram_svg import to_svg
        return to_svg(pipeline, path, title=title, counts=counts).encode()
    text = to_dot(pipeline, path, title=title, counts=counts)
    if fmt == "dot":
        return text.encode()
    return dot_to(fmt, text)


def svg_inline(svg: bytes) -> str:
    """An SVG document reduced to its <svg> element, for embedding in HTML."""
    text = svg.decode()
    start = text.find("<svg")
    return text[start:] if start >= 0 else text


def path_counts(records: Iterable[dict]) -> dict[tuple[str, str], int]:
    """(source, target) -> how many of `records` (as_dict form) took that edge."""
    counts: dict[tuple[str, str], int] = {}
    for record in records:
        seen = set()
        path = record.get("path", ())
        for i in range(1, len(path)):
            pair = (path[i - 1]["state"], path[i]["state"])
            if pair not in seen:
                seen.add(pair)
                counts[pair] = counts.get(pair, 0) + 1
    return counts


# ---------------------------------------------------------------------------
# `busbar diagram`
# ---------------------------------------------------------------------------
def _read_record(source: str) -> dict:
    """A request record from a file (or - for stdin): an access-log line (any
    prefix before the JSON is skipped) or a `GET /admin/api/requests/{id}` answer."""
    import sys

    import orjson

    text = sys.stdin.read() if source == "-" else open(source, encoding="utf-8").read()
    text = text.strip()
    if not text.startswith("{"):
        # a log line: skip the logger's prefix, take the first line with JSON
        line = next((ln for ln in text.splitlines() if "{" in ln), "")
        text = line[line.find("{"):]
    if not text:
        raise ValueError(f"{source}: no JSON object found")
    data = orjson.loads(text)
    if isinstance(data, dict) and isinstance(data.get("record"), dict):
        data = data["record"]
    if not isinstance(data, dict) or "path" not in data:
        raise ValueError(f"{source}: not a request record (no `path`)")
    return data


def main(args) -> int:
    """`busbar diagram [--config FILE] [--pool X] [--request FILE|-] [--format F] [--output FILE]`."""
    import sys

    from busbar.pipeline import load_pipelines

    record = None
    if getattr(args, "request", None):
        try:
            record = _read_record(args.request)
        except (OSError, ValueError) as exc:
            print(f"busbar: cannot read the request record: {exc}", file=sys.stderr)
            return 1
    pool = args.pool or (record or {}).get("pool") or None
    title = None
    if args.config:
        from busbar.config import ConfigError, load_config
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"busbar: invalid config: {exc}", file=sys.stderr)
            return 1
        pipelines = load_pipelines(config.raw)
        if pool is not None and pool not in config.pools:
            if args.pool:
                print(f"busbar: no pool {pool!r}; pools: {', '.join(config.pools)}", file=sys.stderr)
                return 1
            pool = None   # a direct provider/model route: the default pipeline
        name = config.pools[pool].get("pipeline", "default") if pool else "default"
        pipeline = pipelines[name]
        title = f"pool {pool} · pipeline {name}" if pool else f"pipeline {name}"
    else:
        if args.pool:
            print("busbar: --pool needs --config (the pool's pipeline comes from it)", file=sys.stderr)
            return 1
        pipeline = load_pipelines({})["default"]
        title = "pipeline default"
    try:
        data = render(args.format, pipeline, record, title=title)
    except GraphvizMissing as exc:
        print(f"busbar: {exc}", file=sys.stderr)
        return 1
    if args.output:
        with open(args.output, "wb") as fh:
            fh.write(data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return 0
