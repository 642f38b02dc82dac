"""ADR 0013's reasoning-store cost per request (pure, no I/O): what a Chat Completions client's
translated request pays.  Median of 5 runs x N, µs per call.

Usage: python bench/bench_reasoning_store.py [N]
"""
import sys

from busbar import ir
from busbar.reasoning_store import ReasoningStore, StreamCapture

import microbench  # bench/microbench.py: the shared timing loop



def measure(label, fn, n):
    return microbench.measure(label, fn, n, width=58)


def main(n):
    store = ReasoningStore()
    plain = [ir.Text("hello " * 50)]
    signed = [ir.Reasoning("think " * 200, "S" * 400, "anthropic"), ir.ToolCall("toolu_x", "f", {"a": 1})]
    history = ir.Request(messages=[ir.Message(ir.USER if i % 2 == 0 else ir.ASSISTANT, [ir.Text("turn %d" % i)])
                                   for i in range(10)])
    store.keep(signed)
    with_call = ir.Request(messages=history.messages + [
        ir.Message(ir.ASSISTANT, [ir.ToolCall("toolu_x", "f", {"a": 1})]),
        ir.Message(ir.USER, [ir.ToolResult("toolu_x", [ir.Text("ok")])])])
    events = ([ir.MessageStart("m", "x"), ir.BlockStart(0, ir.Text(""))] + [ir.TextDelta(0, "word ")] * 200
              + [ir.BlockStop(0), ir.MessageStop(ir.StopReason.END_TURN)])

    measure("keep: an answer without tool calls (the common case)", lambda: store.keep(plain), n)
    measure("keep: signed reasoning + a tool call", lambda: store.keep(signed), n)
    measure("restore: 10-turn history, nothing to restore", lambda: store.restore(history), n)
    measure("restore: 12-turn history, one turn restored", lambda: store.restore(with_call), n)

    def capture():
        c = StreamCapture()
        c.feed(events)
        c.parts()
    measure("stream capture: 204 events of text", capture, max(1, n // 10))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
