"""The compiled lifecycle table agrees with the python-statemachine
declaration on every event sequence."""
from __future__ import annotations

from hypothesis import given, settings, strategies as st
from statemachine.exceptions import TransitionNotAllowed

import pytest

from busbar.lifecycle import (EVENTS, FAILURE_EVENT, FINAL, INITIAL, TRANSITIONS, Lifecycle, LifecycleError,
                             RequestChart, STATES, allowed, mermaid)

pytestmark = pytest.mark.pure


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=12))
def test_compiled_table_agrees_with_declaration(events):
    declared = RequestChart()
    compiled = Lifecycle()
    for event in events:
        try:
            declared.send(event)
            declared_ok = True
        except TransitionNotAllowed:
            declared_ok = False
        try:
            compiled.fire(event)
            compiled_ok = True
        except LifecycleError:
            compiled_ok = False
        assert declared_ok == compiled_ok, (event, compiled.state)
        declared_state = (declared.current_state_value if hasattr(declared, "current_state_value")
                          else declared.current_state.id)
        assert compiled.state == declared_state
        if compiled.finished:
            break


def test_shape():
    assert INITIAL == "received"
    assert FINAL == {"done", "failed"}
    assert set(STATES) == {"received", "routed", "dispatched", "streaming", "failing_over", "done", "failed"}


def test_path_is_recorded_with_times():
    life = Lifecycle(now=1.0)
    life.fire("route", now=1.001)
    life.fire("dispatch", "pool/a", now=1.002)
    life.fire("fault", "server", now=1.010)
    life.fire("dispatch", "pool/b", now=1.011)
    life.fire("first_byte", now=1.050)
    life.fire("complete", now=1.060)
    path = life.describe()
    assert [p["state"] for p in path] == ["received", "routed", "dispatched", "failing_over", "dispatched",
                                          "streaming", "done"]
    assert path[-1]["ms"] == 60.0 and path[2]["note"] == "pool/a"


def test_terminal_states_accept_nothing():
    life = Lifecycle()
    life.fire("rejected")
    for event in EVENTS:
        assert not life.can(event)


def test_mermaid_mentions_every_transition():
    text = mermaid(highlight=["received", "routed"])
    for (source, event), target in TRANSITIONS.items():
        assert f"    {source} --> {target}: {event}\n" in text
    assert text.count(" --> ") == len(TRANSITIONS) + 1 + len(FINAL)     # plus [*] --> initial and the finals
    assert "class routed visited" in text


def test_an_illegal_move_raises_one_clear_error():
    life = Lifecycle()
    with pytest.raises(LifecycleError) as exc:
        life.fire("first_byte")
    assert exc.value.state == "received" and exc.value.event == "first_byte"
    assert "allowed there: cancelled, rejected, route" in str(exc.value)
    assert life.state == "received" and len(life.path) == 1      # nothing moved


def test_failure_event_is_rejected_before_the_commit_and_broken_after():
    assert FAILURE_EVENT == {"received": "rejected", "routed": "rejected", "dispatched": "rejected",
                             "failing_over": "rejected", "streaming": "broken"}
    life = Lifecycle()
    for event in ("route", "dispatch", "first_byte"):
        life.fire(event)
    assert life.fail("boom") == "failed" and life.path[-1].note == "boom"
    assert allowed("failed") == ()
