"""ADR 0028's Responses `truncation: "auto"` (pure, no I/O): what a request pays.
Median of 5 runs x N, µs per call.

Run it twice, on main and on the branch, for the rows every request pays (the
`truncates` question, the routing plan's cycle, a translated Responses render):

    PYTHONPATH=<checkout> python bench/bench_truncation.py [N]

The `fit` / `floor` rows are paid only by `truncation: "auto"` requests to a pool
with a member of another protocol.

Usage: python bench/bench_truncation.py [N]
"""
import random
import sys

from busbar import ir
from busbar.protocols import get_dialect
from busbar.routing import Needs, Router

import microbench  # bench/microbench.py: the shared timing loop

try:
    from busbar import truncation
except ImportError:          # main before ADR 0028
    truncation = None


def measure(label, fn, n):
    return microbench.measure(label, fn, n, width=66)


def conversation(turns: int) -> ir.Request:
    messages = []
    for n in range(turns):
        messages.append(ir.Message(ir.USER, [ir.Text(f"question {n} " * 20)]))
        messages.append(ir.Message(ir.ASSISTANT, [ir.ToolCall(f"call_{n}", "lookup", {"q": n})]))
        messages.append(ir.Message(ir.USER, [ir.ToolResult(f"call_{n}", [ir.Text("result " * 30)])]))
        messages.append(ir.Message(ir.ASSISTANT, [ir.Text(f"answer {n} " * 10)]))
    messages.append(ir.Message(ir.USER, [ir.Text("the newest question")]))
    return ir.Request(messages, system=[ir.Text("Answer briefly.")])


def main(n: int) -> None:
    openai, responses = get_dialect("openai"), get_dialect("responses")
    chat_obj = {"model": "p", "messages": [{"role": "user", "content": "hi"}]}
    resp_obj = {"model": "p", "input": "hi"}
    if hasattr(openai, "truncates"):
        measure("truncates(): a Chat Completions request (False)", lambda: openai.truncates(chat_obj), n)
        measure("truncates(): a Responses request without the field", lambda: responses.truncates(resp_obj), n)

    router = Router.from_config({
        "providers": {"a": {"protocol": "anthropic", "base_url": "http://a.test", "key": "k-a"},
                      "b": {"protocol": "openai", "base_url": "http://b.test", "key": "k-b"}},
        "pools": {"p": {"members": [{"provider": "a", "model": "m1", "context": 200000},
                                    {"provider": "b", "model": "m2", "context": 128000}]}}}, rng=random.Random(1))
    needs = Needs(tokens=500)

    def cycle():
        plan = router.start("p", needs, 0.0)
        plan.report(plan.next(0.0), None, 0.0)
    measure("routing: start + next + report, 2-member pool, no truncation", cycle, n)

    answer = ir.Response(content=[ir.Text("Hello there, how can I help?")], stop_reason=ir.StopReason.END_TURN,
                         usage=ir.Usage(10, 8), model="m1", id="msg_1")
    req = ir.Request([ir.Message(ir.USER, [ir.Text("hi")])])
    measure("responses render_response of a translated answer", lambda: responses.render_response(answer, "p", req), n)

    if truncation is not None:
        for turns in (2, 50):
            big = conversation(turns)
            measure(f"auto only: floor() on {turns} turns ({len(big.messages)} messages)",
                    lambda: truncation.floor(big), max(200, n // 20))
            measure(f"auto only: fit() to half the estimate, {turns} turns",
                    lambda: truncation.fit(big, truncation.estimate(big) // 2), max(200, n // 20))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
