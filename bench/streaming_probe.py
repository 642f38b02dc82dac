"""Stream timing and memory probes for bench_gateway.py (trio, raw sockets,
so the client adds as little as possible of its own)."""
from __future__ import annotations

import base64
import json
import sys
import time

import trio

# 64 words: the paced vendor echoes them back as 64 chunks, one word each
WORDS = " ".join(f"w{i:02d}" for i in range(64))
BODY = {"model": "bench", "stream": True, "messages": [{"role": "user", "content": WORDS}]}
FIRST_CONTENT = b"w00"


def _base64_needles(needle: bytes) -> list[bytes]:
    """`needle` as it shows inside base64 at each of the three alignments (the
    characters that depend on it alone): Bedrock InvokeModel streams carry each
    event's JSON base64-encoded in an eventstream `chunk` frame."""
    out = []
    for a in range(3):
        encoded = base64.b64encode(b"\0" * a + needle + b"\0\0\0")
        out.append(encoded[-(-a * 8 // 6):(a + len(needle)) * 8 // 6])
    return out


FIRST_ENCODED = _base64_needles(b'"text":"' + FIRST_CONTENT)


def request_bytes(path: str, body: dict, extra: str = "") -> bytes:
    data = json.dumps(body).encode()
    return (f"POST {path} HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n{extra}"
            f"content-length: {len(data)}\r\n\r\n").encode() + data


async def timed_stream(port: int, path: str, body: dict, extra: str = "") -> tuple[float, list[float]]:
    """(time to first content — the first word of the answer, not the
    preamble a vendor sends before it — and gaps between chunk arrivals
    after it) in ms."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    t0 = time.perf_counter()
    await stream.send_all(request_bytes(path, body, extra))
    arrivals = []
    buf = b""
    head_done = False
    seen_content = False
    while True:
        data = await stream.receive_some(65536)
        now = time.perf_counter()
        if not data:
            break
        buf += data
        if not head_done:
            if b"\r\n\r\n" not in buf:
                continue
            head_done = True
            buf = buf.split(b"\r\n\r\n", 1)[1]
            if not buf:
                continue
        if not seen_content:
            seen_content = FIRST_CONTENT in buf or any(n in buf for n in FIRST_ENCODED)
        if seen_content:
            arrivals.append(now)
        if buf.endswith(b"0\r\n\r\n"):
            break
        buf = buf[-5:] if seen_content else buf
    await stream.aclose()
    ttfb = (arrivals[0] - t0) * 1000 if arrivals else float("nan")
    gaps = [(b - a) * 1000 for a, b in zip(arrivals, arrivals[1:])]
    return ttfb, gaps


async def timing(port: int, path: str, n: int, body: dict, extra: str) -> dict:
    ttfbs, gaps = [], []
    for _ in range(n):
        ttfb, g = await timed_stream(port, path, body, extra)
        ttfbs.append(ttfb)
        gaps.extend(g)
    return {"ttfb": ttfbs, "gaps": gaps}


async def hold_open(port: int, path: str, count: int, seconds: float, report, model: str = "bench") -> None:
    """Open `count` concurrent streams, keep them reading for `seconds`."""
    opened = 0

    async def one():
        nonlocal opened
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(request_bytes(path, {**BODY, "model": model}))
        opened += 1
        with trio.move_on_after(seconds):
            while await stream.receive_some(65536):
                pass
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
            await trio.sleep(0.001)
        await trio.sleep(seconds / 2)
        report(opened)


def main():
    mode, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if mode == "timing":
        n = int(sys.argv[4])
        body = json.loads(sys.argv[5]) if len(sys.argv) > 5 else BODY
        extra = sys.argv[6] if len(sys.argv) > 6 else ""
        print(json.dumps(trio.run(timing, port, path, n, body, extra)))
    else:
        count, seconds, model = int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
        trio.run(hold_open, port, path, count, seconds,
                 lambda opened: print(json.dumps({"opened": opened}), flush=True), model)


if __name__ == "__main__":
    main()
