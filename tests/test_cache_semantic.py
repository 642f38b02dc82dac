"""The semantic cache over real sockets with the official SDKs (issue 18, ADR
0020): an exact miss is embedded by the pool's `embed_pool` (a pool of this
same gateway, called in process), and the nearest cached prompt of the same
partition answers when its cosine reaches the threshold.

The simulated vendor's embeddings are deterministic (`mock_vector`: hashed
bag of words, plus a small feature of the whole text): two phrasings with the
same words ("What is the capital of France?" / "what is the capital of
france") have cosine ~0.99; a question differing in one word of six ~0.82.
The simulated chat vendor echoes the question, so a hit shows in the answer:
it is the first phrasing's text."""
from __future__ import annotations

import httpx
import pytest

from busbar.mock import MockVendor
from busbar.mock.vendors import mock_vector
from clients import CLIENTS
from harness import gateway_with, last_record, sdk
from redis_support import redis_server  # noqa: F401  (fixture)
from test_cache_sdk import anthropic_ask, openai_ask

pytestmark = pytest.mark.sdk

FIRST = "What is the capital of France?"
REPHRASED = "what is the CAPITAL of france"
OTHER = "What is the capital of Spain?"


def config(threshold: float = 0.95, embed_url: str = "{e}/v1", **cache) -> dict:
    return {"providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"},
                          "emb": {"protocol": "openai", "base_url": embed_url, "key": "sk-embed"}},
            "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}],
                                "cache": {"mode": "semantic", "embed_pool": "embedder", "threshold": threshold,
                                          **cache}},
                      "embedder": {"members": [{"provider": "emb", "model": "text-embedding-3-small"}]}}}


def cosine(a: str, b: str) -> float:
    return sum(x * y for x, y in zip(mock_vector(a, 1536), mock_vector(b, 1536)))


def test_the_simulated_embeddings_put_rephrasings_close_and_other_questions_far():
    assert cosine(FIRST, REPHRASED) > 0.98
    assert cosine(FIRST, OTHER) < 0.9


def openai_raw(url, text, key="client-key", system=None, **kw):
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    raw = client.chat.completions.with_raw_response.create(model="smart", max_tokens=64, messages=messages, **kw)
    return raw.parse().choices[0].message.content, raw.headers


async def test_a_rephrased_question_hits_above_the_threshold_and_another_misses_below():
    chat, embed = MockVendor(), MockVendor()
    async with gateway_with(config(), a=chat, e=embed) as gw:
        assert await sdk(lambda: openai_ask(gw.url, FIRST)) == (FIRST, "miss")
        # another client protocol, other wording: the first answer, from the cache
        assert await sdk(lambda: anthropic_ask(gw.url, REPHRASED)) == (FIRST, "hit")
        record = await last_record(gw)
        assert record["cache"] == "hit" and record["attempts"] == []
        text, head = await sdk(lambda: openai_raw(gw.url, REPHRASED))
        assert text == FIRST and head["x-busbar-cache"] == "hit"
        assert float(head["x-busbar-cache-similarity"]) == pytest.approx(cosine(FIRST, REPHRASED), abs=1e-3)
        # one word in six changed: below 0.95, asked upstream
        assert await sdk(lambda: openai_ask(gw.url, OTHER)) == (OTHER, "miss")
        assert await sdk(lambda: openai_ask(gw.url, OTHER)) == (OTHER, "hit")     # the exact entry
        embeds = [r for r in gw.gateway.recent if r["pool"] == "embedder"]
        assert len(embeds) == 4 and all(r["status"] == 200 for r in embeds)     # an exact hit embeds nothing
    assert len(chat.received) == 2
    assert len(embed.received) == 4


async def test_a_lower_threshold_lets_the_other_question_hit():
    chat = MockVendor()
    async with gateway_with(config(threshold=0.8), a=chat, e=MockVendor()) as gw:
        assert await sdk(lambda: openai_ask(gw.url, FIRST)) == (FIRST, "miss")
        assert await sdk(lambda: openai_ask(gw.url, OTHER)) == (FIRST, "hit")
    assert len(chat.received) == 1


async def test_never_a_hit_across_system_prompts_tools_or_client_keys():
    chat = MockVendor()
    keys = {"auth": {"keys": [{"id": "alice", "key": "sk-alice-key"}, {"id": "bob", "key": "sk-bob-key"}]}}
    async with gateway_with({**config(), **keys}, a=chat, e=MockVendor()) as gw:
        assert (await sdk(lambda: openai_raw(gw.url, FIRST, key="sk-alice-key", system="Be brief.")))[0] == FIRST
        # the same words with another system prompt, tools, or key: each asked upstream
        text, head = await sdk(lambda: openai_raw(gw.url, REPHRASED, key="sk-alice-key", system="Be verbose."))
        assert (text, head["x-busbar-cache"]) == (REPHRASED, "miss")
        tools = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
        text, head = await sdk(lambda: openai_raw(gw.url, REPHRASED, key="sk-alice-key", system="Be brief.",
                                                  tools=tools, tool_choice="none"))
        assert head["x-busbar-cache"] == "miss"
        text, head = await sdk(lambda: openai_raw(gw.url, REPHRASED, key="sk-bob-key", system="Be brief."))
        assert (text, head["x-busbar-cache"]) == (REPHRASED, "miss")
        # the same key, system prompt and no tools: the hit
        text, head = await sdk(lambda: openai_raw(gw.url, REPHRASED, key="sk-alice-key", system="Be brief."))
        assert (text, head["x-busbar-cache"]) == (FIRST, "hit")
        # the embedding call is the gateway's own: no client key needed, none charged
        assert all(r.get("tenant") is None for r in gw.gateway.recent if r["pool"] == "embedder")
    assert len(chat.received) == 4


async def test_a_streamed_semantic_hit_in_another_protocol_than_the_fill():
    chat = MockVendor()
    async with gateway_with(config(), a=chat, e=MockVendor()) as gw:
        import anthropic
        import openai
        assert await sdk(lambda: anthropic_ask(gw.url, FIRST)) == (FIRST, "miss")       # buffered fill

        def openai_stream():
            client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
            stream = client.chat.completions.create(model="smart", max_tokens=64, stream=True,
                                                    messages=[{"role": "user", "content": REPHRASED}])
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert await sdk(openai_stream) == FIRST
        assert (await last_record(gw))["cache"] == "hit"

        def anthropic_stream(text):
            client = anthropic.Anthropic(base_url=gw.url, api_key="k", max_retries=0)
            with client.messages.stream(model="smart", max_tokens=64, messages=[{"role": "user", "content": text}]) \
                    as s:
                return s.get_final_text()
        assert await sdk(lambda: openai_ask(gw.url, OTHER)) == (OTHER, "miss")            # filled by OpenAI
        assert await sdk(lambda: anthropic_stream(OTHER.upper())) == OTHER
        assert (await last_record(gw))["cache"] == "hit"
    assert len(chat.received) == 2


@pytest.mark.slow
async def test_streamed_and_buffered_semantic_hits_through_every_sdk():
    chat = MockVendor()
    cfg = {**config(), "auth": {"aws_credentials": [{"access_key_id": "AKIDGATEWAY",
                                                     "secret_access_key": "gateway-secret"}]}}
    async with gateway_with(cfg, a=chat, e=MockVendor()) as gw:
        for n, (protocol, ask) in enumerate(CLIENTS.items()):
            question = f"Which river runs through city number {n} of {protocol}?"
            assert await sdk(lambda: ask(gw.url, "smart", question, stream=True)) == question
            assert (await last_record(gw))["cache"] == "miss"
            # other wording, replayed as a stream in the client's protocol, then buffered
            rephrased = question.lower().replace("?", "")
            assert await sdk(lambda: ask(gw.url, "smart", rephrased, stream=True)) == question, protocol
            assert (await last_record(gw))["cache"] == "hit"
            assert await sdk(lambda: ask(gw.url, "smart", rephrased + "!")) == question, protocol
            assert (await last_record(gw))["cache"] == "hit"
        assert len(chat.received) == len(CLIENTS)


async def test_an_embedding_pool_that_is_down_is_a_miss_and_the_request_succeeds():
    chat = MockVendor()
    async with gateway_with(config(embed_url="http://127.0.0.1:9/v1"), a=chat) as gw:
        assert await sdk(lambda: openai_ask(gw.url, FIRST)) == (FIRST, "miss")
        assert await sdk(lambda: anthropic_ask(gw.url, REPHRASED)) == (REPHRASED, "miss")
        assert await sdk(lambda: openai_ask(gw.url, FIRST)) == (FIRST, "hit")      # exact still works
        record = await last_record(gw)
        assert record["status"] == 200
        embeds = [r for r in gw.gateway.recent if r["pool"] == "embedder"]
        assert embeds and all(r["status"] != 200 for r in embeds)
        # the fault is the embedding member's; the chat member is not blamed
        chat_target = gw.gateway.router.targets[("oai", "gpt-4o")]
        assert chat_target.breaker.state == "closed"
        st = gw.gateway.cache.stats["smart"]
        assert (st.semantic_unavailable, st.hits, st.misses) == (2, 1, 2)


async def test_a_slow_embedding_pool_costs_at_most_the_embed_timeout():
    chat, embed = MockVendor(), MockVendor(latency=2.0)
    async with gateway_with(config(embed_timeout_ms=100), a=chat, e=embed) as gw:
        assert await sdk(lambda: openai_ask(gw.url, FIRST)) == (FIRST, "miss")
        record = await last_record(gw)
        assert record["status"] == 200
        assert gw.gateway.cache.stats["smart"].semantic_unavailable == 1
        embeds = [r for r in gw.gateway.recent if r["pool"] == "embedder"]
        assert embeds[-1]["status"] != 200


async def test_metrics_count_semantic_hits_misses_and_lookup_time():
    async with gateway_with(config(), a=MockVendor(), e=MockVendor()) as gw:
        await sdk(lambda: openai_ask(gw.url, FIRST))
        await sdk(lambda: openai_ask(gw.url, REPHRASED))
        await sdk(lambda: openai_ask(gw.url, OTHER))
        async with httpx.AsyncClient() as client:
            text = (await client.get(gw.url + "/metrics")).text
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("busbar_cache_")}
    assert metrics['busbar_cache_semantic_lookups_total{pool="smart",result="hit"}'] == 1
    assert metrics['busbar_cache_semantic_lookups_total{pool="smart",result="miss"}'] == 2
    assert metrics['busbar_cache_semantic_lookups_total{pool="smart",result="unavailable"}'] == 0
    assert metrics['busbar_cache_lookups_total{pool="smart",result="hit"}'] == 1
    assert metrics['busbar_cache_semantic_seconds_count{pool="smart",stage="embed"}'] == 3
    assert metrics['busbar_cache_semantic_seconds_sum{pool="smart",stage="embed"}'] > 0
    assert metrics['busbar_cache_semantic_seconds_count{pool="smart",stage="search"}'] == 3
    assert metrics['busbar_cache_semantic_index_entries{pool="smart"}'] == 2


async def test_two_replicas_share_semantic_hits_through_redis(redis_server):
    chat = MockVendor()
    cfg = {**config(), "state": {"backend": "redis", "url": redis_server.url, "prefix": "semantic",
                                 "timeout_ms": 1000}}
    async with gateway_with(cfg, a=chat, e=MockVendor()) as one, gateway_with(cfg, a=chat, e=MockVendor()) as two:
        assert await sdk(lambda: openai_ask(one.url, FIRST)) == (FIRST, "miss")
        # the other replica never saw this prompt: its index learns it from the Redis vector feed
        assert len(two.gateway.cache.indexes["smart"]) == 0
        assert await sdk(lambda: anthropic_ask(two.url, REPHRASED)) == (FIRST, "hit")
        assert len(two.gateway.cache.indexes["smart"]) == 1
        assert await sdk(lambda: openai_ask(two.url, OTHER)) == (OTHER, "miss")
        assert await sdk(lambda: openai_ask(one.url, OTHER.lower())) == (OTHER, "hit")
        assert one.gateway.cache.entries("smart") is None       # the entries are in Redis
        # a Redis outage: lookups are misses, requests still answered
        redis_server.stop()
        assert (await sdk(lambda: openai_ask(one.url, "What is the capital of Italy?")))[1] == "miss"
    assert len(chat.received) == 3
