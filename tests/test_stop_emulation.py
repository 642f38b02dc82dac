"""Stop sequences emulated for members without them (issue 19): any chunking
of the text, stop strings spanning chunk boundaries."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busbar import ir
from busbar.protocols.stops import StopCutter, StopEmulation, cut_response, first_match

pytestmark = pytest.mark.pure
ALPHABET = "abc\n"       # a small alphabet makes matches and near-matches common
texts = st.text(ALPHABET, max_size=60)
stops_st = st.lists(st.text(ALPHABET, min_size=1, max_size=5), min_size=1, max_size=3)


@st.composite
def chunked(draw, text):
    cuts = sorted(draw(st.lists(st.integers(0, len(text)), max_size=12)))
    bounds = [0, *cuts, len(text)]
    return [text[a:b] for a, b in zip(bounds, bounds[1:])]


def expected(text, stops):
    """The text up to the stop that completes first (what a vendor scanning its output does)."""
    for end in range(len(text) + 1):
        starts = [end - len(s) for s in stops if text[:end].endswith(s)]
        if starts:
            return text[:min(starts)]
    return text


@settings(max_examples=400, deadline=None)
@given(st.data(), texts, stops_st)
def test_cutter_emits_the_text_up_to_the_first_match_under_any_chunking(data, text, stops):
    chunks = data.draw(chunked(text))
    cutter = StopCutter(stops)
    out = []
    longest = max(map(len, stops))
    sent = ""
    for chunk in chunks:
        piece = cutter.feed(chunk)
        out.append(piece)
        sent += chunk
        assert len(cutter.held) <= longest - 1               # never holds back more than that
        if cutter.matched is None:
            assert "".join(out) + cutter.held == sent         # nothing lost, nothing invented
    if cutter.matched is None:
        out.append(cutter.flush())
    assert "".join(out) == expected(text, stops)
    assert (cutter.matched is not None) == any(s in text for s in stops)


@settings(max_examples=200, deadline=None)
@given(st.data(), texts, stops_st)
def test_stream_filter_ends_with_the_stop_sequence(data, text, stops):
    chunks = [c for c in data.draw(chunked(text)) if c]
    events = [ir.MessageStart("r", "m"), ir.BlockStart(0, ir.Text(""))]
    events += [ir.TextDelta(0, c) for c in chunks]
    events += [ir.BlockStop(0), ir.UsageEvent(ir.Usage(1, 2)), ir.MessageStop(ir.StopReason.END_TURN)]
    emu = StopEmulation(stops)
    split = data.draw(st.integers(0, len(events)))      # events arrive in two feeds
    out = emu.filter(events[:split]) + emu.filter(events[split:])
    assert "".join(e.text for e in out if type(e) is ir.TextDelta) == expected(text, stops)
    last = out[-1]
    assert type(last) is ir.MessageStop
    if any(s in text for s in stops):
        assert emu.done and last.stop_reason is ir.StopReason.STOP_SEQUENCE and last.stop_sequence in stops
        assert type(out[-2]) is ir.BlockStop                 # the open text block is closed first
    else:
        assert last.stop_reason is ir.StopReason.END_TURN


def test_buffered_cut():
    resp = ir.Response("r", "m", [ir.Text("one two\nthree"), ir.ToolCall("c", "f", {})])
    cut_response(resp, ["\n", "zzz"])
    assert [p.text for p in resp.content] == ["one two"]
    assert (resp.stop_reason, resp.stop_sequence) == (ir.StopReason.STOP_SEQUENCE, "\n")
    assert first_match("abcabc", ["ca", "bc"]) == (1, "bc")
    assert first_match("aba", ["aba", "b"]) == (1, "b")
