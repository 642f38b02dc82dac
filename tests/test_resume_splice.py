"""The splice of a continuation into a broken stream (busbar.resume), pure:
what the client holds, what the continuation asks, how its events map."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from busbar import ir
from busbar.resume import HOLD_CHARS, Partial, Splice, broken_usage, continuation, overlap

pytestmark = pytest.mark.pure


def stream(text_pieces, *, reasoning=None, open_=True, usage=None):
    events = [ir.MessageStart("msg_1", "m", usage)]
    i = 0
    if reasoning is not None:
        events += [ir.BlockStart(0, ir.Reasoning("", None, "anthropic")), ir.ReasoningDelta(0, reasoning),
                   ir.SignatureDelta(0, "sig"), ir.BlockStop(0)]
        i = 1
    events.append(ir.BlockStart(i, ir.Text("")))
    events += [ir.TextDelta(i, p) for p in text_pieces]
    if not open_:
        events.append(ir.BlockStop(i))
    return events


def cont(text_pieces, usage=ir.Usage(10, 5)):
    return ([ir.MessageStart("other", "m2", ir.Usage(10)), ir.BlockStart(0, ir.Text(""))]
            + [ir.TextDelta(0, p) for p in text_pieces]
            + [ir.BlockStop(0), ir.UsageEvent(usage), ir.MessageStop(ir.StopReason.END_TURN)])


def spliced_text(events, index) -> str:
    return "".join(e.text for e in events if type(e) is ir.TextDelta and e.index == index)


def pieces(text: str, n: int = 3) -> list[str]:
    size = max(1, len(text) // n)
    return [text[i:i + size] for i in range(0, len(text), size)]


def test_the_continuation_extends_the_open_block_under_the_same_message():
    partial = Partial.of(stream(["Hello ", "wor"]))
    assert partial.refusal() is None and partial.open_index == 0 and partial.text == "Hello wor"
    out = Splice(partial, ir.Usage()).feed(cont(["ld, and", " more text to go past the hold"]))
    assert not any(type(e) in (ir.MessageStart, ir.BlockStart) for e in out)    # same message, same block
    assert spliced_text(out, 0) == "ld, and more text to go past the hold"
    assert [type(e) for e in out[-3:]] == [ir.BlockStop, ir.UsageEvent, ir.MessageStop]


def test_later_blocks_take_the_next_indexes_and_reasoning_is_dropped():
    partial = Partial.of(stream(["Done."], reasoning="hmm", open_=False))
    assert partial.open_index is None and partial.next_index == 2
    events = [ir.MessageStart("x", "m"), ir.BlockStart(0, ir.Reasoning("", None, "x")), ir.ReasoningDelta(0, "new"),
              ir.BlockStop(0), ir.BlockStart(1, ir.Text("")), ir.TextDelta(1, " Then more."), ir.BlockStop(1),
              ir.BlockStart(2, ir.ToolCall("c1", "f", {})), ir.ToolArgsDelta(2, "{}"), ir.BlockStop(2),
              ir.MessageStop(ir.StopReason.TOOL_USE)]
    out = Splice(partial, ir.Usage()).feed(events)
    assert not any(type(e) is ir.ReasoningDelta for e in out)
    starts = [(e.index, type(e.part)) for e in out if type(e) is ir.BlockStart]
    assert starts == [(2, ir.Text), (3, ir.ToolCall)]
    assert spliced_text(out, 2) == " Then more."


@pytest.mark.parametrize("events,why", [
    (stream(["a"]) + [ir.BlockStop(1), ir.BlockStart(2, ir.ToolCall("c", "f", {})), ir.ToolArgsDelta(2, '{"ci')],
     "cut inside a tool call's arguments"),
    ([ir.MessageStart("m", "m"), ir.BlockStart(0, ir.Reasoning("")), ir.ReasoningDelta(0, "thinking")],
     "cut inside a reasoning block (its signature can never be completed)"),
    (stream(["a"], open_=False) + [ir.BlockStart(1, ir.ToolCall("c", "f", {})), ir.BlockStop(1)],
     "the answer holds a tool call"),
    (stream(["a"], open_=False) + [ir.MessageStop(ir.StopReason.END_TURN)], "the answer was already complete"),
])
def test_what_cannot_be_continued(events, why):
    assert Partial.of(events).refusal() == why


def test_the_continuation_request_carries_the_partial_as_the_assistant_turn():
    req = ir.Request([ir.Message(ir.USER, [ir.Text("hi")])], reasoning=ir.ReasoningConfig(budget_tokens=1024))
    out = continuation(req, Partial.of(stream(["Hello ", "there  "])))
    assert out.messages[-1] == ir.Message(ir.ASSISTANT, [ir.Text("Hello there")])   # no trailing whitespace
    assert out.reasoning is None and req.messages == [ir.Message(ir.USER, [ir.Text("hi")])]
    prefilled = ir.Request([ir.Message(ir.USER, [ir.Text("hi")]), ir.Message(ir.ASSISTANT, [ir.Text("{")])])
    # the client's own prefill and the partial make one assistant turn
    assert continuation(prefilled, Partial.of(stream(['"a": 1']))).messages[-1].content == [ir.Text('{"a": 1')]


def test_usage_adds_both_attempts_with_the_unreported_parts_estimated():
    partial = Partial.of(stream(["x" * 40], usage=None))
    base = broken_usage(partial)
    assert base.output_tokens == 10 and base.input_tokens == 0
    splice = Splice(partial, base)
    splice.feed(cont(["y" * 40], usage=ir.Usage(30, 12)))
    # the broken attempt's input: the continuation's, less the partial it was given back
    assert (splice.usage.input_tokens, splice.usage.output_tokens) == (30 + 20, 10 + 12)


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80), st.integers(1, 5))
def test_an_exact_continuation_loses_and_adds_nothing(head, rest, n):
    """Law: a continuation that goes on exactly after what the model was
    given (the partial without its trailing whitespace) reaches the client
    as partial + rest, whatever the chunking, unless rest itself begins by
    repeating the partial (then it is read as an overlap)."""
    sent = head.rstrip()
    gap = head[len(sent):]
    rest = gap + rest                         # the model re-emits the whitespace it was not given
    partial = Partial.of(stream(pieces(head, n)))
    out = Splice(partial, ir.Usage()).feed(cont(pieces(rest, n)))
    k = overlap(head, rest)
    assert head + spliced_text(out, 0) == head + rest[k:]
    if not rest[:1].isspace() and len(sent) < 8:
        assert k == 0


@given(st.text(min_size=8, max_size=60).filter(lambda s: len(s.strip()) >= 8), st.text(max_size=60))
def test_a_restart_from_the_beginning_is_trimmed_whole(head, rest):
    partial = Partial.of(stream(pieces(head)))
    out = Splice(partial, ir.Usage()).feed(cont(pieces(head + rest)))
    assert head + spliced_text(out, 0) == head + rest


def test_text_is_held_only_until_the_overlap_is_decided():
    partial = Partial.of(stream(["The quick brown fox "]))
    splice = Splice(partial, ir.Usage())
    out = splice.feed(cont(["jumps"])[:3])
    assert spliced_text(out, 0) == ""                      # held: could still restate the partial
    out = splice.feed([ir.TextDelta(0, " over the lazy dog, and on " + "x" * HOLD_CHARS)])
    assert spliced_text(out, 0).startswith("jumps over")
