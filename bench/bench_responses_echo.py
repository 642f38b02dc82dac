"""What a translated OpenAI Responses answer pays for echoing its request (ADR 0024's
"echo"): pure, no I/O.  Median of 5 runs x N, µs per call.

Run it on main and on the branch (the rows without `sent` exist on both):

    PYTHONPATH=<checkout> python bench/bench_responses_echo.py [N]

Rows: the buffered render plus what its kept turn keeps (`render_response_shown` +
`shown_of`: everything the buffered path adds to a translated answer); a short stream
through the encoder (its three response objects), plus the turn's `shown_of`; and the
bytes a kept turn adds.

Usage: python bench/bench_responses_echo.py [N]
"""
import inspect
import sys

import orjson

from busbar import ir
from busbar.item_store import ItemStore, shown_of
from busbar.protocols import get_dialect

import microbench  # bench/microbench.py: the shared timing loop

PLAIN = {"model": "p", "input": "hi"}
FULL = {"model": "p", "input": "hi", "instructions": "Answer like a pirate.", "temperature": 0.3, "top_p": 0.9,
        "max_output_tokens": 200, "metadata": {"job": "otters"}, "user": "u-1", "truncation": "auto",
        "tools": [{"type": "function", "name": "get_weather", "strict": False,
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]}


def measure(label, fn, n):
    return microbench.measure(label, fn, n, width=72)


def main(n: int) -> None:
    responses = get_dialect("responses")
    takes_sent = "sent" in inspect.signature(responses.render_response_shown).parameters
    answer = ir.Response(content=[ir.Text("Hello there, how can I help?")], stop_reason=ir.StopReason.END_TURN,
                         usage=ir.Usage(10, 8), model="m1", id="msg_1")
    req = ir.Request([ir.Message(ir.USER, [ir.Text("hi")])])
    events = [ir.MessageStart("msg_1", "m1", ir.Usage(10, 0)), ir.BlockStart(0, ir.Text("")),
              *[ir.TextDelta(0, w + " ") for w in "Hello there, how can I help?".split()],
              ir.BlockStop(0), ir.UsageEvent(ir.Usage(10, 8)), ir.MessageStop(ir.StopReason.END_TURN)]

    for name, sent in (("a request that set nothing", PLAIN), ("a request setting 9 echoed fields", FULL)):
        args = (answer, "p", req, sent) if takes_sent else (answer, "p", req)

        def buffered():
            _, shown = responses.render_response_shown(*args)
            shown_of(shown)
        measure(f"buffered: render_response_shown + shown_of, {name}", buffered, n)

        def streamed():
            encoder = responses.stream_encoder("p", **responses.stream_encoder_options(sent))
            for e in events:
                encoder.encode(e)
            encoder.finish()
            shown_of(encoder.shown_response())
        measure(f"stream (11 events, 3 response objects) + shown_of, {name}", streamed, max(200, n // 4))

        store = ItemStore()
        _, shown = responses.render_response_shown(*args)
        _, data = store.keep_turn("-", "resp_1", None, [{"role": "user", "content": "hi"}],
                                  shown["output"], False, shown_of(shown))
        print(f"{'kept turn bytes, ' + name:72s} {len(data):7d} B; answer body {len(orjson.dumps(shown))} B")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
