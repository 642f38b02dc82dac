"""The pipeline's `deadline` (ADR 0003, ADR 0014 session 8): it bounds the
whole request from its plan on, whatever it waits on, and it ends the request
in the client's protocol — a 504 before anything was sent, the stream's error
event after — while the connection goes on.  Over real sockets, the official
SDKs as clients."""
from __future__ import annotations

import anthropic
import openai
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with, last_record, sdk

pytestmark = pytest.mark.sdk

ONE_VENDOR = {
    "providers": {"v": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-v"},
                  "claude": {"protocol": "anthropic", "base_url": "{b}", "key": "sk-c"}},
    "pools": {"smart": {"members": [{"provider": "v", "model": "m"}]},
              "claude": {"members": [{"provider": "claude", "model": "c"}]}},
}


def _with_deadline(seconds: float) -> dict:
    # the upstream bounds are far larger: only the deadline can end these requests early
    return {**ONE_VENDOR, "pipelines": {"default": {"deadline": seconds,
                                                    "timeouts": {"first_byte": 30, "idle": 30}}}}


async def test_a_buffered_request_past_the_deadline_is_a_504_and_the_connection_goes_on():
    vendor = MockVendor(reply="late")
    vendor.fail_next({"stall": 10})
    async with gateway_with(_with_deadline(0.5), a=vendor, b=MockVendor()) as gw:
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)

        def ask():
            return client.chat.completions.create(model="smart", messages=[{"role": "user", "content": "x"}])
        start = trio.current_time()
        with pytest.raises(openai.APIStatusError) as failed:
            await sdk(ask)
        took = trio.current_time() - start
        record = await last_record(gw)
        again = await sdk(ask)            # the same client (its kept-alive connection), the stall used up
    assert failed.value.status_code == 504 and "gateway deadline of 0.5s" in failed.value.message
    assert 0.5 <= took < 5                # at the deadline, not when the 10 s stall ends
    assert record["status"] == 504
    assert again.choices[0].message.content == "late"


async def test_a_stream_past_the_deadline_ends_with_the_clients_error_event():
    """Content went out; the deadline passes mid-stream: the Anthropic SDK
    sees its protocol's error event and raises, at the deadline."""
    vendor = MockVendor(reply=" ".join(f"w{i}" for i in range(60)), chunk_delay=0.1)
    async with gateway_with(_with_deadline(0.8), a=MockVendor(), b=vendor) as gw:
        client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
        got = []

        def run():
            with client.messages.stream(model="claude", max_tokens=500,
                                        messages=[{"role": "user", "content": "x"}]) as stream:
                for text in stream.text_stream:
                    got.append(text)
        start = trio.current_time()
        with pytest.raises(anthropic.APIError, match="deadline"):
            await sdk(run)
        took = trio.current_time() - start
    assert got and len("".join(got).split()) < 60        # some content, not all of it
    assert 0.8 <= took < 4
