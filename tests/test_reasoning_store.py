"""The gateway-side store of signed reasoning for clients that cannot carry it (issue 19)."""
from __future__ import annotations

import pytest

from busbar import ir
from busbar.reasoning_store import ReasoningStore, StreamCapture

pytestmark = pytest.mark.pure

SIGNED = ir.Reasoning("think", "SIG", "anthropic")
CALL = ir.ToolCall("toolu_1", "f", {"x": 1})


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def _turn(*assistant):
    return ir.Request(messages=[ir.Message(ir.USER, [ir.Text("go")]), ir.Message(ir.ASSISTANT, list(assistant)),
                                ir.Message(ir.USER, [ir.ToolResult("toolu_1", [ir.Text("ok")])])])


def test_restore_puts_the_signed_block_before_the_call_replacing_an_unsigned_replay():
    store = ReasoningStore()
    assert store.keep([SIGNED, ir.Text("calling"), CALL], shown_id=lambda i: "shown-" + i)
    replay = ir.Reasoning("think", None, "openai")          # what a Chat client's reasoning_content gives back
    for call_id in ("toolu_1", "shown-toolu_1"):
        request = _turn(ir.Text("calling"), replay, ir.ToolCall(call_id, "f", {"x": 1}))
        restored = store.restore(request)
        assert restored.messages[1].content[:2] == [ir.Text("calling"), SIGNED]
        assert replay not in restored.messages[1].content
    assert store.restore(_turn(ir.ToolCall("other", "f", {}))).messages[1].content == [ir.ToolCall("other", "f", {})]


def test_tool_call_extras_come_back_and_answers_without_calls_or_signatures_are_not_kept():
    store = ReasoningStore()
    call = ir.ToolCall("c1", "f", {}, extras={"gemini": {"thoughtSignature": "TS"}})
    assert store.keep([call])
    back = store.restore(_turn(ir.ToolCall("c1", "f", {})))
    assert back.messages[1].content == [call]
    assert not store.keep([SIGNED, ir.Text("no call")])
    assert not store.keep([ir.Reasoning("unsigned", None, "openai"), CALL])
    assert not store.keep([ir.Text("x"), ir.ToolCall("c2", "f", {})])


def test_bounded_by_entries_size_and_ttl():
    clock = Clock()
    store = ReasoningStore(max_entries=2, ttl_s=10, max_entry_chars=100, now=clock)
    for i in range(3):
        store.keep([SIGNED, ir.ToolCall(f"c{i}", "f", {})])
    assert len(store) == 2        # the oldest went out
    assert store.restore(_turn(ir.ToolCall("c0", "f", {}))).messages[1].content == [ir.ToolCall("c0", "f", {})]
    assert not store.keep([ir.Reasoning("x" * 200, "S", "anthropic"), ir.ToolCall("big", "f", {})])
    clock.t = 11.0
    assert store.restore(_turn(ir.ToolCall("c2", "f", {}))).messages[1].content == [ir.ToolCall("c2", "f", {})]


def test_stream_capture_rebuilds_the_parts_from_events():
    capture = StreamCapture(max_chars=50)
    capture.feed([ir.MessageStart("m", "x"), ir.BlockStart(0, ir.Reasoning("", None, "anthropic")),
                  ir.ReasoningDelta(0, "thi"), ir.ReasoningDelta(0, "nk"), ir.SignatureDelta(0, "SIG"),
                  ir.BlockStop(0), ir.BlockStart(1, ir.Text("")), ir.TextDelta(1, "calling"), ir.BlockStop(1),
                  ir.BlockStart(2, CALL), ir.ToolArgsDelta(2, "{}"), ir.BlockStop(2)])
    assert capture.parts() == [SIGNED, CALL]
    capture.feed([ir.BlockStart(3, ir.Reasoning("", None, "anthropic")), ir.ReasoningDelta(3, "y" * 60)])
    assert capture.overflow and capture.parts() == []


def test_an_entry_travels_encoded_to_another_store_and_restores_the_same():
    one, two = ReasoningStore(), ReasoningStore()
    call = ir.ToolCall("c9", "f", {}, extras={"gemini": {"thoughtSignature": "TS"}})
    keys = one.keep([SIGNED, ir.RedactedReasoning("DATA", "anthropic"), call], shown_id=lambda i: "shown-" + i)
    assert keys == ["c9", "shown-c9"]
    request = _turn(ir.ToolCall("shown-c9", "f", {}))
    assert two.missing(request) == ["shown-c9"]
    assert two.put_encoded("shown-c9", one.encoded("shown-c9"))
    assert two.missing(request) == []
    assert two.restore(request) == one.restore(request)
    assert not two.put_encoded("x", b"not an entry")
