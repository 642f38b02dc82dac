"""The simulated vendors behave like the real ones where the gateway depends on it."""
from __future__ import annotations

import httpx
import orjson
import pytest
import trio

from busbar.mock import MockVendor

pytestmark = pytest.mark.integration


def _chunks(body: bytes) -> list[dict]:
    return [orjson.loads(line[6:]) for line in body.split(b"\n")
            if line.startswith(b"data: ") and line != b"data: [DONE]"]


@pytest.mark.parametrize("options,usage_chunks", [(None, 0), ({"include_usage": False}, 0),
                                                  ({"include_usage": True}, 1)])
async def test_openai_stream_sends_usage_only_when_asked(options, usage_chunks):
    vendor = MockVendor(reply="one two three")
    async with trio.open_nursery() as nursery:
        await nursery.start(vendor.serve, "127.0.0.1", 0)
        body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
        if options is not None:
            body["stream_options"] = options
        async with httpx.AsyncClient(timeout=30) as http:
            r = await http.post(vendor.url + "/v1/chat/completions", json=body)
        nursery.cancel_scope.cancel()
    chunks = _chunks(r.content)
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "one two three"
    with_usage = [c for c in chunks if c.get("usage")]
    assert len(with_usage) == usage_chunks
    if usage_chunks:
        assert with_usage[0]["choices"] == [] and with_usage[0]["usage"]["completion_tokens"] >= 1
