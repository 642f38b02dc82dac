"""The lifecycle chart as SVG, laid out in code: no Graphviz needed.

The chart is small and fixed (the compiled `busbar.lifecycle` table: a few
states, a dozen edges), so a layered layout is enough: each state's column is
its distance from the initial state; states of one column are stacked in
declaration order; an edge to a later column is a straight line, any other
(a retry loop back, an edge within a column) an arc bending away from the
chart.  States, edges and their labels come from `diagram.edges()` and the
lifecycle module, never from here, so a renamed state or a new transition is
drawn as it is.  Same highlighting as the DOT form: visited states filled,
traversed edges orange with their step numbers, edge use counts thicken
edges, a note lists the request's steps and attempts.
"""
from __future__ import annotations

from html import escape

from busbar import diagram, lifecycle

NODE_W, NODE_H = 118, 34
COL_GAP, ROW_GAP = 92, 58
MARGIN = 24
FONT = "Helvetica, Arial, sans-serif"
LINE = "#90a4ae"
TEXT = "#455a64"


def _ranks() -> dict[str, int]:
    """Column of each state: a working state's shortest distance from the
    initial state; the final states share the last column, so every edge
    into them runs forward."""
    out = {lifecycle.INITIAL: 0}
    frontier = [lifecycle.INITIAL]
    while frontier:
        nxt = []
        for (source, _), target in lifecycle.TRANSITIONS.items():
            if source in frontier and target not in out and target not in lifecycle.FINAL:
                out[target] = out[source] + 1
                nxt.append(target)
        frontier = nxt
    last = max(out.values(), default=0) + 1
    for state in lifecycle.STATES:
        out.setdefault(state, last)
    return out


def layout() -> dict[str, tuple[float, float]]:
    """Centre (x, y) of every state's box."""
    ranks = _ranks()
    columns: dict[int, list[str]] = {}
    for state in lifecycle.STATES:
        columns.setdefault(ranks[state], []).append(state)
    tallest = max(len(c) for c in columns.values())
    pos = {}
    for rank, states in columns.items():
        top = (tallest - len(states)) * (NODE_H + ROW_GAP) / 2
        for i, state in enumerate(states):
            pos[state] = (MARGIN + NODE_W / 2 + rank * (NODE_W + COL_GAP),
                          MARGIN + 40 + NODE_H / 2 + top + i * (NODE_H + ROW_GAP))
    return pos


def _text(x: float, y: float, lines: list[str], *, size: int = 10, color: str = TEXT, anchor: str = "middle",
          family: str = FONT, weight: str = "normal") -> str:
    spans = "".join(f'<tspan x="{x:.1f}" dy="{0 if i == 0 else size + 2}">{escape(line)}</tspan>'
                    for i, line in enumerate(lines))
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-family="{family}" font-size="{size}" fill="{color}" '
            f'text-anchor="{anchor}" font-weight="{weight}" stroke="#ffffff" stroke-width="3" paint-order="stroke">{spans}</text>')


def _border(pos, source: str, target: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """Where the straight line between two boxes leaves the first and meets the second."""
    (x1, y1), (x2, y2) = pos[source], pos[target]

    def clip(x, y, dx, dy):
        sx = (NODE_W / 2) / abs(dx) if dx else float("inf")
        sy = (NODE_H / 2) / abs(dy) if dy else float("inf")
        s = min(sx, sy)
        return x + dx * s, y + dy * s

    dx, dy = x2 - x1, y2 - y1
    return clip(x1, y1, dx, dy), clip(x2, y2, -dx, -dy)


def to_svg(pipeline=None, path=None, *, title: str | None = None,
           counts: dict[tuple[str, str], int] | None = None, notes: bool = True) -> str:
    """The chart as a standalone SVG document (see the module docstring)."""
    trace = diagram.trace_of(path)
    taken = trace.edge_steps() if trace else {}
    visits: dict[str, list[float | None]] = {}
    for state, ms, _ in (trace.steps if trace else ()):
        visits.setdefault(state, []).append(ms)
    pos = layout()
    ranks = _ranks()
    width = max(x for x, _ in pos.values()) + NODE_W / 2 + MARGIN
    height = max(y for _, y in pos.values()) + NODE_H / 2 + MARGIN + 40
    peak = max(counts.values(), default=0) if counts else 0
    arcs = 0
    body: list[str] = []
    if title:
        body.append(_text(MARGIN, MARGIN + 4, [title], size=12, anchor="start", weight="bold"))
    # the start dot
    ix, iy = pos[lifecycle.INITIAL]
    body.append(f'<circle cx="{ix - NODE_W / 2 - 16:.1f}" cy="{iy:.1f}" r="5" fill="{TEXT}"/>')
    body.append(f'<line x1="{ix - NODE_W / 2 - 11:.1f}" y1="{iy:.1f}" x2="{ix - NODE_W / 2 - 1:.1f}" y2="{iy:.1f}" '
                f'stroke="{TEXT}" marker-end="url(#arrow)"/>')
    for edge in diagram.edges(pipeline):
        color, stroke, font_color, marker = LINE, 1.2, TEXT, "arrow"
        label = [edge.label]
        n = counts.get((edge.source, edge.target), 0) if counts else 0
        if n:
            label.append(f"×{n}")
            stroke, color = 1 + 3 * n / peak, "#546e7a"
        steps = taken.get((edge.source, edge.target))
        if steps:
            label.append("step " + ", ".join(map(str, steps)))
            color = font_color = diagram.VISITED_LINE
            stroke, marker = 2.5, "arrow-taken"
        (x1, y1), (x2, y2) = _border(pos, edge.source, edge.target)
        if ranks[edge.target] - ranks[edge.source] == 1:      # to the next column: straight
            d = f"M{x1:.1f},{y1:.1f} L{x2:.1f},{y2:.1f}"
            lx, ly = (x1 + x2) / 2, (y1 + y2) / 2 - 6
        else:
            # a loop back or a long jump: an arc below the boxes, each one deeper
            # than the last so arcs and their labels never overlap
            (sx, sy), (tx, ty) = pos[edge.source], pos[edge.target]
            x1, y1, x2, y2 = sx, sy + NODE_H / 2, tx, ty + NODE_H / 2
            cy = max(y1, y2) + 40 + 26 * arcs
            arcs += 1
            d = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{cy:.1f} {x2:.1f},{cy:.1f} {x2:.1f},{y2:.1f}"
            lx, ly = (x1 + x2) / 2, max(y1, y2) + 0.75 * (cy - max(y1, y2)) + 11   # just under the arc's low point
            height = max(height, ly + 12 * len(label) + MARGIN)
        body.append(f'<path class="edge" data-source="{escape(edge.source)}" data-target="{escape(edge.target)}" '
                    f'd="{d}" fill="none" stroke="{color}" stroke-width="{stroke:.2f}" marker-end="url(#{marker})"/>')
        body.append(_text(lx, ly, label, size=9, color=font_color))
    for state in lifecycle.STATES:
        x, y = pos[state]
        fill, line, width_px = "#ffffff", "#607d8b", 1.2
        lines = [state]
        if state in visits:
            times = [t for t in visits[state] if t is not None]
            if times:
                lines.append(", ".join(f"{t:.1f} ms" for t in times[:3]) + (" …" if len(times) > 3 else ""))
            failed = state == "failed"
            fill = diagram.FAILED_FILL if failed else diagram.VISITED
            line = "#b71c1c" if failed else diagram.VISITED_LINE
            width_px = 2
        box = (f'<rect x="{x - NODE_W / 2:.1f}" y="{y - NODE_H / 2:.1f}" width="{NODE_W}" height="{NODE_H}" rx="8" '
               f'fill="{fill}" stroke="{line}" stroke-width="{width_px}"/>')
        if state in lifecycle.FINAL:     # a final state has a double border, as in the DOT form
            box += (f'<rect x="{x - NODE_W / 2 + 3:.1f}" y="{y - NODE_H / 2 + 3:.1f}" width="{NODE_W - 6}" '
                    f'height="{NODE_H - 6}" rx="6" fill="none" stroke="{line}" stroke-width="1"/>')
        body.append(f'<g class="state" data-state="{escape(state)}">{box}'
                    + _text(x, y + (0 if len(lines) > 1 else 4), lines, size=11 if len(lines) == 1 else 10)
                    + "</g>")
    if trace and notes:
        head = f"request {trace.id}  pool {trace.pool}  status {trace.status}".strip()
        lines = [head] + [f"{i}. {state}  {diagram._ms(ms)}" + (f"  ({note})" if note else "")
                          for i, (state, ms, note) in enumerate(trace.steps)]
        attempt_lines = diagram._attempt_lines(trace)
        if attempt_lines:
            lines += ["attempts:"] + attempt_lines
        lines = [line[:160] for line in lines]
        top = height
        body.append(_text(MARGIN, top + 10, lines, size=9, anchor="start", family="Courier, monospace"))
        height = top + 10 + 11 * len(lines) + MARGIN
        width = max(width, MARGIN * 2 + 5.5 * max(map(len, lines)))
    defs = ("<defs>"
            f'<marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" markerHeight="7" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{LINE}"/></marker>'
            f'<marker id="arrow-taken" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" '
            f'orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="{diagram.VISITED_LINE}"/></marker>'
            "</defs>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{escape(title or "request lifecycle")}">'
            + defs + "".join(body) + "</svg>\n")
