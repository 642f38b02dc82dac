"""Lifecycle diagrams: the chart as a pipeline names it, a request's path on top."""
from __future__ import annotations

import json
import shutil

import pytest

from busbar import diagram, lifecycle
from busbar.cli import main as cli
from busbar.pipeline import load_pipelines

DEFAULT = load_pipelines({})["default"]
STRICT = load_pipelines({"pipelines": {"strict": {"rules": {"rate": {"action": "return", "penalty": "none"},
                                                            "context": {"action": "return"}}}},
                         "pools": {}})["strict"]
RECORD = {
    "id": "abc-1", "pool": "smart", "status": 200,
    "path": [{"state": "received", "ms": 0.0}, {"state": "routed", "ms": 0.1, "note": "smart"},
             {"state": "dispatched", "ms": 0.2, "note": "smart/first/m1"},
             {"state": "failing_over", "ms": 5.0, "note": "smart/first/m1: server"},
             {"state": "dispatched", "ms": 5.1, "note": "smart/second/m2"},
             {"state": "streaming", "ms": 9.0, "note": "smart/second/m2"}, {"state": "done", "ms": 12.0}],
    "attempts": [{"member": "smart/first/m1", "key": "first#0:1a2b3c4d", "outcome": "server", "status": 500,
                  "ms": 4.8, "message": 'upstream said "boom"'},
                 {"member": "smart/second/m2", "key": "second#0:99aa", "outcome": "ok", "status": 200, "ms": 3.9}],
}
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` not installed")


@pytest.mark.pure
def test_every_transition_of_the_compiled_table_is_drawn():
    drawn = {(e.source, event, e.target) for e in diagram.edges(DEFAULT) for event in e.events}
    assert drawn == {(s, ev, t) for (s, ev), t in lifecycle.TRANSITIONS.items()}


@pytest.mark.pure
def test_fault_and_rejected_edges_name_the_pipelines_fault_classes():
    text = diagram.to_mermaid(DEFAULT)
    assert "dispatched --> failing_over: fault: context, rate, billing, auth, server\n" in text
    assert "dispatched --> failed: rejected: client / cancelled\n" in text
    strict = diagram.to_mermaid(STRICT)
    assert "dispatched --> failing_over: fault: billing, auth, server\n" in strict
    assert "dispatched --> failed: rejected: client, context, rate / cancelled\n" in strict
    assert "[*] --> received" in text and "done --> [*]" in text and "failed --> [*]" in text


@pytest.mark.pure
def test_without_a_pipeline_edges_are_the_bare_events():
    text = diagram.to_mermaid(None)
    assert "dispatched --> failing_over: fault\n" in text


@pytest.mark.pure
def test_mermaid_highlights_a_requests_path_with_steps_and_attempts():
    text = diagram.to_mermaid(DEFAULT, RECORD, title="pool smart")
    assert text.startswith("---\ntitle: pool smart\n---\nstateDiagram-v2\n")
    assert "failing_over --> dispatched: dispatch [step 4]" in text
    assert "dispatched --> failing_over: fault: context, rate, billing, auth, server [step 3]" in text
    assert "class failing_over visited" in text and "class failed" not in text
    assert "attempt 1: smart/first/m1 key first#0:1a2b3c4d → server 500 (4.8 ms): upstream said 'boom'" in text
    assert "3. failing_over at 5.0 ms (smart/first/m1: server)" in text


@pytest.mark.pure
def test_dot_highlights_visited_states_and_traversed_edges():
    text = diagram.to_dot(DEFAULT, RECORD, title="pool smart")
    assert text.startswith("digraph busbar {")
    assert '"failing_over" [label="failing_over\\n5.0 ms", fillcolor="#ffe082"' in text
    assert '"dispatched" -> "failing_over" [label="fault: context, rate, billing, auth, server\\nstep 3"' in text
    assert '"failed" [label="failed", peripheries="2"]' in text          # not visited: plain
    assert 'upstream said \\"boom\\"' in text                            # quotes escaped
    counts = diagram.to_dot(DEFAULT, counts={("received", "routed"): 7})
    assert "×7" in counts


@pytest.mark.pure
def test_a_request_record_object_and_a_state_list_are_paths_too():
    life = lifecycle.Lifecycle()
    for event in ("route", "dispatch", "rejected"):
        life.fire(event)
    assert "class failed failedend" in diagram.to_mermaid(DEFAULT, [s.state for s in life.path])


@pytest.mark.integration
@needs_dot
def test_png_renders_with_graphviz():
    assert diagram.render("png", DEFAULT, RECORD, title="pool smart")[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.pure
def test_missing_graphviz_is_a_clear_error_for_png_only(monkeypatch):
    monkeypatch.setattr(diagram.shutil, "which", lambda name: None)
    with pytest.raises(diagram.GraphvizMissing, match="apt-get install graphviz"):
        diagram.render("png", DEFAULT)
    assert diagram.render("dot", DEFAULT).startswith(b"digraph")
    assert diagram.render("svg", DEFAULT).startswith(b"<?xml")


@pytest.mark.integration
def test_cli_diagram_svg_with_no_graphviz_on_path(tmp_path):
    import os
    import subprocess
    import sys
    out = tmp_path / "chart.svg"
    env = {**os.environ, "PATH": str(tmp_path)}          # no `dot` anywhere
    result = subprocess.run([sys.executable, "-m", "busbar.cli", "diagram", "--format", "svg", "--output", str(out)],
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {g.get("data-state") for g in _svg_tree(out.read_bytes()).iter("{http://www.w3.org/2000/svg}g")} \
        >= set(lifecycle.STATES)
    png = subprocess.run([sys.executable, "-m", "busbar.cli", "diagram", "--format", "png"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert png.returncode == 1 and "Graphviz" in png.stderr


def _svg_tree(data: bytes):
    import xml.etree.ElementTree as ET
    return ET.fromstring(data)


@pytest.mark.pure
def test_svg_without_graphviz_draws_every_state_and_edge_of_the_compiled_table(monkeypatch):
    monkeypatch.setattr(diagram.shutil, "which", lambda name: None)
    svg = _svg_tree(diagram.render("svg", DEFAULT, RECORD, title="pool smart"))
    ns = "{http://www.w3.org/2000/svg}"
    states = {g.get("data-state") for g in svg.iter(ns + "g") if g.get("class") == "state"}
    assert states == set(lifecycle.STATES)
    drawn = {(p.get("data-source"), p.get("data-target")) for p in svg.iter(ns + "path") if p.get("class") == "edge"}
    assert drawn == {(s, t) for (s, _), t in lifecycle.TRANSITIONS.items()}
    texts = " ".join("".join(t.itertext()) for t in svg.iter(ns + "text"))
    assert "fault: context, rate, billing, auth, server" in texts and "step 4" in texts
    assert 'upstream said "boom"' in texts                          # escaped in XML, intact as text


@pytest.mark.pure
def test_svg_highlights_the_path_and_thickens_used_edges():
    from busbar.diagram_svg import to_svg
    svg = _svg_tree(to_svg(DEFAULT, RECORD, counts={("received", "routed"): 3}).encode())
    ns = "{http://www.w3.org/2000/svg}"
    fills = {g.get("data-state"): g.find(ns + "rect").get("fill") for g in svg.iter(ns + "g")
             if g.get("class") == "state"}
    assert fills["failing_over"] == diagram.VISITED and fills["failed"] == "#ffffff"
    edges = {(p.get("data-source"), p.get("data-target")): p for p in svg.iter(ns + "path") if p.get("class") == "edge"}
    assert edges[("failing_over", "dispatched")].get("stroke") == diagram.VISITED_LINE
    assert float(edges[("received", "routed")].get("stroke-width")) > 2
    assert edges[("routed", "failed")].get("stroke") != diagram.VISITED_LINE


@pytest.mark.pure
def test_svg_follows_the_lifecycle_table(monkeypatch):
    """Nothing is hard-coded: a state added to the table is drawn, with its edges."""
    from busbar import diagram_svg
    table = dict(lifecycle.TRANSITIONS)
    table[("streaming", "paused")] = "parked"
    table[("parked", "resumed")] = "streaming"
    monkeypatch.setattr(lifecycle, "TRANSITIONS", table)
    monkeypatch.setattr(lifecycle, "STATES", (*lifecycle.STATES, "parked"))
    svg = _svg_tree(diagram_svg.to_svg(None).encode())
    ns = "{http://www.w3.org/2000/svg}"
    assert "parked" in {g.get("data-state") for g in svg.iter(ns + "g")}
    drawn = {(p.get("data-source"), p.get("data-target")) for p in svg.iter(ns + "path")}
    assert {("streaming", "parked"), ("parked", "streaming")} <= drawn


@pytest.mark.integration
def test_cli_diagram_for_a_pool_with_a_request(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("providers:\n  p: {protocol: openai, base_url: 'http://x/v1', key: k}\n"
                      "pipelines:\n  strict: {rules: {rate: {action: return, penalty: none}}}\n"
                      "pools:\n  smart: {pipeline: strict, members: [{provider: p, model: m}]}\n")
    log_line = tmp_path / "access.log"
    log_line.write_text("2024-06-01 12:00:00 INFO busbar.access " + json.dumps(RECORD) + "\n")
    assert cli(["diagram", "--config", str(config), "--request", str(log_line)]) == 0
    out = capsys.readouterr().out
    assert "title: pool smart · pipeline strict" in out          # the pool came from the record
    assert "fault: context, billing, auth, server [step 3]" in out
    assert cli(["diagram", "--config", str(config), "--pool", "nope"]) == 1
    assert "no pool 'nope'" in capsys.readouterr().err
    assert cli(["diagram", "--pool", "smart"]) == 1
    out_file = tmp_path / "d.dot"
    assert cli(["diagram", "--format", "dot", "--output", str(out_file)]) == 0
    assert out_file.read_text().startswith("digraph busbar")
    if shutil.which("dot"):
        png = tmp_path / "d.png"
        assert cli(["diagram", "--config", str(config), "--pool", "smart", "--format", "png",
                    "--output", str(png)]) == 0
        assert png.read_bytes()[:4] == b"\x89PNG"
