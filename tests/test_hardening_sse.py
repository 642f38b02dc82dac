"""Issue 12, item 4: the SSE splitter scans each byte a bounded number of
times (no quadratic rescans), caps an event's size, and one misbehaving
stream does not hold other requests; the pre-commit bound fails a member
that never sends content."""
from __future__ import annotations

import httpx
import pytest
import trio

from busbar.faults import FaultClass
from busbar.limits import PrecommitBound
from busbar.protocols import sse
from busbar.protocols.sse import SSEError, SSESplitter
from busbar.server import HttpServer
from harness import gateway_with


class _CountingPattern:
    """Wraps the splitter's blank-line regex and counts the bytes it is asked to scan."""

    def __init__(self, pattern):
        self.pattern = pattern
        self.scanned = 0

    def search(self, buf, pos=0):
        self.scanned += len(buf) - pos
        return self.pattern.search(buf, pos)

    def finditer(self, buf, pos=0):
        self.scanned += len(buf) - pos
        return self.pattern.finditer(buf, pos)


@pytest.mark.pure
@pytest.mark.parametrize("piece", [1, 7, 1024])
def test_a_large_event_fed_in_small_pieces_is_scanned_linearly(monkeypatch, piece):
    counter = _CountingPattern(sse._BLANK_LINE)
    monkeypatch.setattr(sse, "_BLANK_LINE", counter)
    payload = b"data: " + b"x" * 200_000 + b"\n\n" + b"data: tail\n\n"
    splitter = SSESplitter()
    events = []
    for i in range(0, len(payload), piece):
        events += splitter.feed(payload[i:i + piece])
    assert [len(e.data) for e in events] == [200_000, 4]
    # each byte is looked at a few times, not once per piece that followed it
    assert counter.scanned < 4 * len(payload) + 8 * (len(payload) // piece)


@pytest.mark.pure
def test_event_size_is_capped_even_when_it_never_ends():
    splitter = SSESplitter(max_event_bytes=10_000)
    splitter.feed(b"data: ")
    with pytest.raises(SSEError):
        for _ in range(100):
            splitter.feed(b"y" * 1000)


@pytest.mark.pure
def test_precommit_bound_blames_the_member():
    bound = PrecommitBound(max_bytes=100, max_events=3)
    assert bound.add(60, 1) is None and bound.add(30, 2) is None
    fault = bound.add(20)
    assert fault is not None and fault.cls is FaultClass.SERVER and "before any content" in fault.message
    assert PrecommitBound(max_bytes=10**9, max_events=2).add(1, 3).cls is FaultClass.SERVER


async def _endless_data_line(request, responder):
    """An OpenAI-shaped upstream whose stream is one `data:` line that never ends."""
    await responder.start(200, [(b"content-type", b"text/event-stream")])
    await responder.write(b"data: ")
    while True:
        await responder.write(b"z" * 16384)
        await trio.sleep(0.005)      # ~3 s to reach the 8 MiB event cap


@pytest.mark.integration
async def test_a_never_ending_event_does_not_hold_other_requests():
    config = {"providers": {"bad": {"protocol": "openai", "base_url": "{bad}/v1", "key": "k"}},
              "pools": {"bad": {"members": [{"provider": "bad", "model": "m"}]}}}
    async with trio.open_nursery() as nursery:
        upstream = HttpServer(_endless_data_line)
        addrs = await nursery.start(upstream.serve, "127.0.0.1", 0)
        bad_url = f"http://127.0.0.1:{addrs[0][1]}"
        config["providers"]["bad"]["base_url"] = bad_url + "/v1"
        async with gateway_with(config) as gw:
            async with httpx.AsyncClient(timeout=120) as client:
                async def misbehaving():
                    r = await client.post(gw.url + "/v1/chat/completions", json={
                        "model": "bad", "stream": True, "messages": [{"role": "user", "content": "x"}]})
                    results.append(r.status_code)

                results = []
                async with trio.open_nursery() as inner:
                    inner.start_soon(misbehaving)
                    # while that stream is being split, /healthz keeps answering
                    answered = 0
                    while not results and answered < 10:
                        health = await client.get(gw.url + "/healthz")
                        assert health.status_code == 200
                        answered += 1
                        await trio.sleep(0.02)
                    assert answered == 10         # all while the bad stream was still in progress
                # the oversized event ends the attempt as the member's fault (a 502, not a hang)
                assert results and results[0] >= 500
        nursery.cancel_scope.cancel()
