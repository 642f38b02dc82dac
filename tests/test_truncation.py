"""Responses `truncation: "auto"` for members of other protocols (ADR 0028):
the pure cut (busbar.truncation) and the routing consequence (Plan)."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings, strategies as st

from busbar import ir, truncation
from busbar.faults import Fault, FaultClass
from busbar.protocols.counting import estimate
from busbar.routing import Action, Exhausted, Needs, Router

pytestmark = pytest.mark.pure

CONTEXT = Fault(FaultClass.CONTEXT, 400, "maximum context length is 8192 tokens", code="context_length_exceeded")

# ---- conversations, as an agent builds them ----------------------------------
words = st.text(alphabet="abcdefgh ", min_size=0, max_size=60)


@st.composite
def turn(draw, n: int):
    """One user turn: the user's message, then maybe an assistant answer with
    reasoning and tool calls, each call answered in the next user message."""
    out = [ir.Message(ir.USER, [ir.Text(draw(words))])]
    if draw(st.booleans()):
        out.append(ir.Message(ir.SYSTEM, [ir.Text("be brief " + draw(words))]))
    for step in range(draw(st.integers(0, 3))):
        parts: list = []
        if draw(st.booleans()):
            parts.append(ir.Reasoning(draw(words), signature=f"sig{n}.{step}", origin="anthropic"))
        calls = [ir.ToolCall(f"call_{n}_{step}_{i}", "lookup", {"q": draw(words)})
                 for i in range(draw(st.integers(0, 2)))]
        parts += calls
        if draw(st.booleans()) or not parts:
            parts.append(ir.Text(draw(words)))
        out.append(ir.Message(ir.ASSISTANT, parts))
        if calls:
            out.append(ir.Message(ir.USER, [ir.ToolResult(c.id, [ir.Text(draw(words))]) for c in calls]))
        else:
            break
    return out


@st.composite
def conversations(draw):
    messages: list = []
    if draw(st.booleans()):         # a conversation that starts mid-way (an assistant turn first)
        messages.append(ir.Message(ir.ASSISTANT, [ir.Text(draw(words))]))
    for n in range(draw(st.integers(0, 7))):
        messages += draw(turn(n))
    system = [ir.Text("You are terse. " + draw(words))]
    return ir.Request(messages, system=system, max_tokens=draw(st.one_of(st.none(), st.integers(1, 100))))


def _real_user(m):
    return m.role == ir.USER and not any(type(p) is ir.ToolResult for p in m.content)


def _calls(messages):
    return {p.id for m in messages for p in m.content if type(p) is ir.ToolCall}


def _results(messages):
    return {p.id for m in messages for p in m.content if type(p) is ir.ToolResult}


@settings(max_examples=400, deadline=None)
@given(conversations(), st.integers(0, 400), st.integers(0, 4))
def test_fit_keeps_what_must_stay_and_drops_the_fewest_turns(req, budget, at_least):
    cut = truncation.fit(req, budget, at_least=at_least)
    out = cut.request.messages
    before = req.messages
    # the instructions, every system message, and the last user turn onward stay
    assert cut.request.system is req.system and cut.request.max_tokens == req.max_tokens
    assert [m for m in out if m.role == ir.SYSTEM] == [m for m in before if m.role == ir.SYSTEM]
    starts = [i for i, m in enumerate(before) if _real_user(m)]
    if starts:
        tail = before[starts[-1]:]
        assert out[len(out) - len(tail):] == tail and all(a is b for a, b in zip(out[-len(tail):], tail))
    # a prefix went (system messages aside), cut at a user turn's start; whole messages, same objects
    points = truncation.cuts(before)
    k = 0 if cut.turns == 0 else points[cut.turns - 1]
    assert out == [m for m in before[:k] if m.role == ir.SYSTEM] + before[k:]
    assert all(any(m is b for b in before) for m in out)
    assert cut.messages == sum(1 for m in before[:k] if m.role != ir.SYSTEM)
    if k:
        assert _real_user(next(m for m in out if m.role != ir.SYSTEM))
    # no orphan tool result, no call without the result it had
    assert _results(out) & _calls(before) <= _calls(out)
    assert _calls(out) & _results(before) <= _results(out)
    # as many turns as asked (or all there are), then the fewest that fit
    assert cut.turns >= min(at_least, len(points))
    assert cut.tokens == estimate(cut.request)
    if cut.fits:
        assert cut.tokens <= budget
    else:
        assert cut.turns == len(points) and cut.tokens > budget
    if cut.turns > max(at_least, 1):
        fewer = truncation.fit(req, 10 ** 9, at_least=cut.turns - 1)
        assert fewer.turns == cut.turns - 1 and fewer.tokens > budget
    if at_least == 0 and estimate(req) <= budget:
        assert cut.request is req and cut.turns == 0


@given(conversations())
def test_floor_is_the_fit_with_every_turn_dropped(req):
    turns, least = truncation.floor(req)
    whole = truncation.fit(req, 0)
    assert turns == truncation.droppable(req) == len(truncation.cuts(req.messages))
    assert least == (whole.tokens if turns else estimate(req))
    if turns:
        assert whole.turns == turns


def test_an_agent_turn_is_one_unit():
    """The last user turn with its tool calls and results is never cut; the
    turns before it go whole, each with its reasoning and tool pairing."""
    msgs = [ir.Message(ir.USER, [ir.Text("old question " * 40)]),
            ir.Message(ir.ASSISTANT, [ir.Reasoning("hmm", "sig", "anthropic"), ir.ToolCall("c1", "f", {})]),
            ir.Message(ir.USER, [ir.ToolResult("c1", [ir.Text("r" * 200)])]),
            ir.Message(ir.ASSISTANT, [ir.Text("old answer")]),
            ir.Message(ir.USER, [ir.Text("new question")]),
            ir.Message(ir.ASSISTANT, [ir.ToolCall("c2", "f", {})]),
            ir.Message(ir.USER, [ir.ToolResult("c2", [ir.Text("fresh")])])]
    req = ir.Request(msgs, system=[ir.Text("instructions")])
    assert truncation.cuts(msgs) == [4]
    cut = truncation.fit(req, 30)
    assert cut.turns == 1 and cut.messages == 4 and cut.request.messages == msgs[4:] and cut.fits
    assert cut.request.system == [ir.Text("instructions")]
    only = ir.Request(msgs[4:])
    assert truncation.fit(only, 1).request is only and not truncation.fit(only, 1).fits


# ---- the routing consequence ------------------------------------------------------
def _router(members, truncate=2):
    config = {"providers": {n: {"protocol": "anthropic", "base_url": f"http://{n}.test", "key": f"k-{n}"}
                            for n in ("a", "b", "c")},
              "pools": {"p": {"strategy": "ordered", "members": members}},
              "pipelines": {"default": {"rules": {"context": {"action": "retry_larger_context", "penalty": "none",
                                                              "truncate": truncate}}}}}
    return Router.from_config(config, rng=random.Random(1))


SMALL_LARGE = [{"provider": "a", "model": "small", "context": 100, "priority": 0},
               {"provider": "b", "model": "large", "context": 1000, "priority": 1}]
NEEDS = Needs(tokens=500, droppable=3, least_tokens=60)


def test_a_member_that_fits_goes_first_then_the_request_is_shortened_for_the_largest():
    plan = _router(SMALL_LARGE).start("p", NEEDS, 0)
    first = plan.next(0)
    assert first.member.model == "large" and first.shrink is None       # it fits whole: nothing dropped
    first.dropped = 0
    decision = plan.report(first, CONTEXT, 0)
    # no larger member left: the same one again, at least one turn dropped, a smaller budget
    assert decision.action is Action.TRUNCATE and decision.retry
    again = plan.next(0)
    assert again.member.model == "large" and again.kind == "truncation"
    assert again.shrink.at_least == 1 and again.shrink.budget == 750
    again.dropped = 1
    assert plan.report(again, CONTEXT, 0).action is Action.TRUNCATE
    third = plan.next(0)
    assert third.shrink.at_least == 2 and third.shrink.budget == 562
    third.dropped = 2
    # the rule's `truncate: 2` is spent: the context error is the client's, as without truncation
    assert plan.report(third, CONTEXT, 0).action is Action.LARGER_CONTEXT
    end = plan.next(0)
    assert isinstance(end, Exhausted) and end.last_fault is CONTEXT


def test_a_larger_member_before_any_truncation():
    members = [{"provider": "a", "model": "small", "context": 600, "priority": 0},
               {"provider": "b", "model": "large", "context": 1000, "priority": 1}]
    plan = _router(members).start("p", NEEDS, 0)
    first = plan.next(0)
    assert first.member.model == "small" and first.shrink is None
    first.dropped = 0
    assert plan.report(first, CONTEXT, 0).action is Action.LARGER_CONTEXT
    second = plan.next(0)
    assert second.member.model == "large" and second.shrink is None


def test_no_member_fits_whole_the_largest_that_fits_what_stays_takes_it_shortened():
    members = [{"provider": "a", "model": "tiny", "context": 50, "priority": 0},
               {"provider": "b", "model": "small", "context": 100, "priority": 1},
               {"provider": "c", "model": "mid", "context": 200, "priority": 2}]
    plan = _router(members).start("p", NEEDS, 0)
    first = plan.next(0)
    assert first.member.model == "mid" and first.shrink.budget == 200 and first.shrink.at_least == 0
    # too little left to fit even the largest: refused before any attempt, as without truncation
    plan = _router(members).start("p", Needs(tokens=500, droppable=3, least_tokens=300), 0)
    end = plan.next(0)
    assert isinstance(end, Exhausted) and end.kind == "incapable"


def test_without_truncation_nothing_changes():
    for needs in (Needs(tokens=500), Needs(tokens=500, droppable=0, least_tokens=0)):
        plan = _router(SMALL_LARGE).start("p", needs, 0)
        first = plan.next(0)
        assert first.member.model == "large" and first.shrink is None
        assert plan.report(first, CONTEXT, 0).action is Action.LARGER_CONTEXT
        assert isinstance(plan.next(0), Exhausted)
    # the client's own protocol passed the field through (dropped None): the vendor's answer stands
    plan = _router(SMALL_LARGE).start("p", NEEDS, 0)
    first = plan.next(0)
    assert plan.report(first, CONTEXT, 0).action is Action.LARGER_CONTEXT
    # and a pipeline with `truncate: 0` never shortens
    plan = _router(SMALL_LARGE, truncate=0).start("p", NEEDS, 0)
    first = plan.next(0)
    first.dropped = 0
    assert plan.report(first, CONTEXT, 0).action is Action.LARGER_CONTEXT
    plan = _router([SMALL_LARGE[0]], truncate=0).start("p", NEEDS, 0)
    assert isinstance(plan.next(0), Exhausted)


def test_nothing_more_to_drop_ends_it():
    plan = _router(SMALL_LARGE).start("p", Needs(tokens=500, droppable=1, least_tokens=60), 0)
    first = plan.next(0)
    first.dropped = 1         # everything droppable already went
    assert plan.report(first, CONTEXT, 0).action is Action.LARGER_CONTEXT


def test_a_shortened_request_refused_is_shortened_more_on_the_same_member_not_an_equal_one():
    """The largest members are equal: the relaxed pass sends the request shortened to one;
    its "too long" is answered with less on the same member (no member is larger)."""
    members = [{"provider": "a", "model": "one", "context": 200, "priority": 0},
               {"provider": "b", "model": "two", "context": 200, "priority": 1}]
    plan = _router(members).start("p", NEEDS, 0)
    first = plan.next(0)
    assert first.member.model == "one" and first.shrink.budget == 200
    first.dropped = 1
    assert plan.report(first, CONTEXT, 0).action is Action.TRUNCATE
    again = plan.next(0)
    assert again.member.model == "one" and again.shrink.at_least == 2 and again.shrink.budget == 150
