"""ADR 0022's expressibility check per request (pure, no I/O): what routing pays to
skip the members whose protocol cannot say a request.  Median of 5 runs x N, µs per call.

The IR parse is shown apart: a request to a pool with a member of another protocol
is parsed for that member's render anyway (the check parses it first, once); it is
extra only when a same-protocol (passthrough) member of a mixed pool answers.  The
check adds `required` once and `refusal` once per distinct member protocol.  A pool whose members all speak the
client's protocol pays nothing (the check is skipped).

Usage: python bench/bench_expressible.py [N]
"""
import sys
import time

import orjson

from busbar.protocols import PROTOCOLS, expressible, get_dialect

import microbench  # bench/microbench.py: the shared timing loop



def measure(label, fn, n):
    return microbench.measure(label, fn, n, width=62)


# ~1 KB OpenAI request (the one docs/translation.md's render figures use): system
# prompt, a tool, a tool call and result, two user turns, a named tool choice
OPENAI = {"model": "pool", "messages": [
    {"role": "system", "content": "You are a helpful assistant. " * 4},
    {"role": "user", "content": "What is the weather in Paris and in Berlin today?"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_abc123", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_abc123", "content": "Sunny, 21 C, light wind from the west."},
    {"role": "user", "content": [{"type": "text", "text": "And tomorrow? Please answer briefly."},
                                 {"type": "image_url", "image_url": {"url": "https://example.com/map.png"}}]}],
    "tools": [{"type": "function", "function": {"name": "weather", "description": "Current weather for a city",
                                                "parameters": {"type": "object", "properties": {
                                                    "city": {"type": "string"}}, "required": ["city"]}}}],
    "tool_choice": {"type": "function", "function": {"name": "weather"}}, "temperature": 0.3}


def main(n):
    for p in PROTOCOLS:
        expressible.cannot(p)          # compiled once per protocol (at the gateway's config load)
    t = time.perf_counter()
    expressible.cannot.cache_clear()
    for p in PROTOCOLS:
        expressible.cannot(p)
    label = f"compile the {len(PROTOCOLS)} protocols' tables (once, at config load)"
    print(f"{label:62s} {(time.perf_counter() - t) * 1e3:7.2f} ms")
    req = get_dialect("openai").parse_request(OPENAI)
    print(f"request: {len(orjson.dumps(OPENAI))} B, features {sorted(expressible.required(req))}")
    measure("required(req): the features, once per request", lambda: expressible.required(req), n)
    features = expressible.required(req)
    measure("refusal(features, 'cohere') (refused: tool_choice)", lambda: expressible.refusal(features, "cohere"), n)
    measure("refusal(features, 'anthropic') (can say it all)", lambda: expressible.refusal(features, "anthropic"), n)

    def two_member_pool():
        f = expressible.required(req)
        expressible.refusal(f, "cohere")
        expressible.refusal(f, "anthropic")
    measure("a pool of two other protocols: required + 2 x refusal", two_member_pool, n)
    openai = get_dialect("openai")
    obj = orjson.loads(orjson.dumps(OPENAI))
    measure("parse_request (paid extra only when a passthrough member answers)",
            lambda: openai.parse_request(obj), n)
    small = get_dialect("anthropic").parse_request({"model": "m", "max_tokens": 9,
                                                    "messages": [{"role": "user", "content": "say hi"}]})
    measure("a one-turn text request: required + 2 x refusal",
            lambda: (expressible.refusal(expressible.required(small), "openai"),
                     expressible.refusal(expressible.required(small), "gemini")), n)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000)
