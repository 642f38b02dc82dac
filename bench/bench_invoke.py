"""What the bedrock-invoke dialect (Claude's InvokeModel body, ADR 0021) costs
next to the Anthropic one it wraps: the same IR work plus Bedrock's envelope
(`anthropic_version`, `anthropic_beta`, no `model`/`stream`) on bodies, and
one eventstream `chunk` frame (base64 of the event's JSON, a CRC32 per frame)
per Messages stream event.  Pure, no I/O.

    python bench/bench_invoke.py      # µs, median (min..max) of 7 runs, anthropic vs bedrock-invoke

Rows: a Claude Code-shaped request (~2.5 KB: system, tools, a tool turn)
parsed from bytes and rendered from its IR; a buffered answer rendered and
parsed; a streamed answer of 60 text deltas encoded and decoded (µs per
stream and per event), with Bedrock's Converse stream beside it (the same
eventstream framing, its own events) for scale.
"""
import statistics
import time

import orjson

from busbar import ir
from busbar.protocols import get_dialect

RUNS = 7
AN, INV = get_dialect("anthropic"), get_dialect("bedrock-invoke")

TOOLS = [{"name": f"tool_{i}", "description": "Run a command in the project and return its output. " * 3,
          "input_schema": {"type": "object", "properties": {"command": {"type": "string"},
                                                            "timeout": {"type": "integer"}}, "required": ["command"]}}
         for i in range(6)]
MESSAGES = [
    {"role": "user", "content": [{"type": "text", "text": "List the files and explain the layout. " * 4,
                                  "cache_control": {"type": "ephemeral"}}]},
    {"role": "assistant", "content": [{"type": "text", "text": "I'll look."},
                                      {"type": "tool_use", "id": "toolu_01", "name": "tool_0", "input": {"command": "ls"}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "a.py\nb.py\nREADME.md"}]},
]
COMMON = {"max_tokens": 32000, "system": [{"type": "text", "text": "You are Claude Code. " * 20,
                                           "cache_control": {"type": "ephemeral"}}],
          "messages": MESSAGES, "tools": TOOLS, "temperature": 1}
BODIES = {
    "anthropic": orjson.dumps({"model": "claude-sonnet-4-5", "stream": True, **COMMON}),
    "bedrock-invoke": orjson.dumps({"anthropic_version": "bedrock-2023-05-31",
                                    "anthropic_beta": ["claude-code-20250219"], **COMMON}),
}
PARAMS = {"anthropic": {}, "bedrock-invoke": {"model": "smart", "action": "invoke-with-response-stream"}}


def answer() -> ir.Response:
    return ir.Response("msg_1", "m", [ir.Text("Here is the layout: " * 10),
                                      ir.ToolCall("toolu_02", "tool_1", {"command": "cat README.md"})],
                       ir.StopReason.TOOL_USE, None, ir.Usage(2400, 85, cached_tokens=2048))


def stream_events() -> list:
    events = [ir.MessageStart("msg_1", "m", ir.Usage(2400)), ir.BlockStart(0, ir.Text(""))]
    events += [ir.TextDelta(0, "word%02d " % i) for i in range(60)]
    return events + [ir.BlockStop(0), ir.UsageEvent(ir.Usage(2400, 85)), ir.MessageStop(ir.StopReason.END_TURN)]


def timed(fn, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def row(label: str, fns: dict, n: int, per: int = 1) -> None:
    out = []
    for proto in ("anthropic", "bedrock-invoke", "bedrock"):
        if proto not in fns:
            continue
        runs = [timed(fns[proto], n) / per for _ in range(RUNS)]
        out.append(f"{statistics.median(runs):7.2f} ({min(runs):.2f}..{max(runs):.2f})")
    print(f"  {label:<30} " + "".join(f"{o:<25}" for o in out))


def main():
    print(f"µs, median (min..max) over {RUNS} runs   anthropic                bedrock-invoke           "
          "bedrock (Converse, streams)")
    reqs = {p: get_dialect(p).parse_request(orjson.loads(b), PARAMS[p]) for p, b in BODIES.items()}
    row("request bytes -> IR", {p: (lambda p=p: get_dialect(p).parse_request(orjson.loads(BODIES[p]), PARAMS[p]))
                                for p in BODIES}, 3000)
    row("IR -> request bytes", {p: (lambda p=p: get_dialect(p).render_request(reqs[p], "claude")) for p in BODIES},
        3000)
    resp = answer()
    bodies = {p: get_dialect(p).render_response(resp, "claude") for p in BODIES}
    row("IR -> answer bytes", {p: (lambda p=p: get_dialect(p).render_response(resp, "claude")) for p in BODIES},
        10000)
    row("answer bytes -> IR", {p: (lambda p=p: get_dialect(p).parse_response(orjson.loads(bodies[p])))
                               for p in BODIES}, 10000)
    events = stream_events()

    def encode(p):
        enc = get_dialect(p).stream_encoder("claude")
        return b"".join(enc.encode(e) for e in events) + enc.finish()
    wires = {p: encode(p) for p in (*BODIES, "bedrock")}

    def decode(p):
        dec = get_dialect(p).stream_decoder()
        return dec.feed(wires[p]) + dec.close()
    assert [type(e) for e in decode("bedrock-invoke")] == [type(e) for e in decode("anthropic")]
    streams = (*BODIES, "bedrock")
    row("stream encode (65 events)", {p: (lambda p=p: encode(p)) for p in streams}, 500)
    row("  per event", {p: (lambda p=p: encode(p)) for p in streams}, 500, per=len(events))
    row("stream decode (65 events)", {p: (lambda p=p: decode(p)) for p in streams}, 500)
    row("  per event", {p: (lambda p=p: decode(p)) for p in streams}, 500, per=len(events))
    print(f"  wire bytes: request {len(BODIES['anthropic'])} / {len(BODIES['bedrock-invoke'])}, "
          f"stream {len(wires['anthropic'])} / {len(wires['bedrock-invoke'])}")


if __name__ == "__main__":
    main()
