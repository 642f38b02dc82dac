"""The exact response cache over real sockets with the official SDKs (issue
18, ADR 0016): a hit from another client protocol than the one that filled
it, streamed and buffered replay accepted by every SDK, TTL expiry, per-key
isolation, the bypass header, and what /metrics counts."""
from __future__ import annotations

import copy

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from clients import CLIENTS
from harness import gateway_with, last_record, sdk

pytestmark = pytest.mark.sdk

PRICE = {"input": 2.5, "output": 10.0}


def config(cache: dict | None = None, **extra) -> dict:
    return {"providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
            "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o", "price": PRICE}],
                                "cache": cache or {"mode": "exact", "ttl": 3600, "max_entries": 100}}},
            **extra}


def openai_ask(url, text, key="client-key", **kw):
    import openai
    client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(
        model="smart", max_tokens=64, messages=[{"role": "user", "content": text}], **kw)
    return raw.parse().choices[0].message.content, raw.headers.get("x-busbar-cache")


def anthropic_ask(url, text, key="client-key", **kw):
    import anthropic
    client = anthropic.Anthropic(base_url=url, api_key=key, max_retries=0)
    raw = client.messages.with_raw_response.create(model="smart", max_tokens=64,
                                                   messages=[{"role": "user", "content": text}], **kw)
    message = raw.parse()
    return "".join(b.text for b in message.content if b.type == "text"), raw.headers.get("x-busbar-cache")


async def test_a_hit_from_another_client_protocol_than_the_one_that_filled_it():
    vendor = MockVendor()           # echoes the question: a wrong entry would show
    async with gateway_with(config(), a=vendor) as gw:
        text, verdict = await sdk(lambda: openai_ask(gw.url, "What is the capital of France?"))
        assert (text, verdict) == ("What is the capital of France?", "miss")
        text, verdict = await sdk(lambda: anthropic_ask(gw.url, "What is the capital of France?"))
        assert (text, verdict) == ("What is the capital of France?", "hit")
        record = await last_record(gw)
        assert record["cache"] == "hit" and record["attempts"] == []
        assert [s["state"] for s in record["path"]] == ["received", "routed", "streaming", "done"]
        # another question is another entry
        text, verdict = await sdk(lambda: anthropic_ask(gw.url, "And of Spain?"))
        assert (text, verdict) == ("And of Spain?", "miss")
    assert len(vendor.received) == 2                      # the hit never went upstream


@pytest.mark.slow
async def test_streamed_and_buffered_replay_is_accepted_by_every_sdk():
    vendor = MockVendor()
    cfg = config(auth={"aws_credentials": [{"access_key_id": "AKIDGATEWAY", "secret_access_key": "gateway-secret"}]})
    async with gateway_with(cfg, a=vendor) as gw:
        for n, (protocol, ask) in enumerate(CLIENTS.items()):
            question = f"Question {n} from {protocol}, answered once"
            # a streamed miss is stored from the stream as it was relayed
            assert await sdk(lambda: ask(gw.url, "smart", question, stream=True)) == question
            assert (await last_record(gw))["cache"] == "miss"
            # replayed as a stream in the client's protocol, then buffered
            assert await sdk(lambda: ask(gw.url, "smart", question, stream=True)) == question, protocol
            assert (await last_record(gw))["cache"] == "hit"
            assert await sdk(lambda: ask(gw.url, "smart", question)) == question, protocol
            assert (await last_record(gw))["cache"] == "hit"
            assert len(vendor.received) == n + 1, protocol


async def test_a_paced_stream_replay_is_still_whole():
    vendor = MockVendor()
    async with gateway_with(config({"mode": "exact", "replay_delay_ms": 5}), a=vendor) as gw:
        words = "one two three four five six seven eight nine ten eleven twelve thirteen"
        assert await sdk(lambda: CLIENTS["anthropic"](gw.url, "smart", words, stream=True)) == words
        assert await sdk(lambda: CLIENTS["anthropic"](gw.url, "smart", words, stream=True)) == words
        assert (await last_record(gw))["cache"] == "hit"
    assert len(vendor.received) == 1


async def test_entries_expire_after_their_ttl():
    vendor = MockVendor()
    async with gateway_with(config({"mode": "exact", "ttl": 0.3}), a=vendor) as gw:
        assert (await sdk(lambda: openai_ask(gw.url, "expiring")))[1] == "miss"
        assert (await sdk(lambda: openai_ask(gw.url, "expiring")))[1] == "hit"
        await trio.sleep(0.5)
        assert (await sdk(lambda: openai_ask(gw.url, "expiring")))[1] == "miss"
    assert len(vendor.received) == 2


async def test_client_keys_never_share_entries_unless_the_pool_says_shared():
    keys = {"auth": {"keys": [{"id": "alice", "key": "sk-alice-key"}, {"id": "bob", "key": "sk-bob-key"}]}}
    vendor = MockVendor()
    async with gateway_with(config(**keys), a=vendor) as gw:
        assert (await sdk(lambda: openai_ask(gw.url, "private", key="sk-alice-key")))[1] == "miss"
        assert (await sdk(lambda: openai_ask(gw.url, "private", key="sk-bob-key")))[1] == "miss"
        assert (await sdk(lambda: openai_ask(gw.url, "private", key="sk-alice-key")))[1] == "hit"
        assert (await sdk(lambda: anthropic_ask(gw.url, "private", key="sk-bob-key")))[1] == "hit"
    assert len(vendor.received) == 2
    vendor = MockVendor()
    async with gateway_with(config({"mode": "exact", "shared": True}, **keys), a=vendor) as gw:
        assert (await sdk(lambda: openai_ask(gw.url, "public", key="sk-alice-key")))[1] == "miss"
        assert (await sdk(lambda: openai_ask(gw.url, "public", key="sk-bob-key")))[1] == "hit"
    assert len(vendor.received) == 1


async def test_request_headers_bypass_or_refresh_and_temperature_skips():
    vendor = MockVendor()
    async with gateway_with(config(), a=vendor) as gw:
        assert (await sdk(lambda: openai_ask(gw.url, "q")))[1] == "miss"
        bypass = {"extra_headers": {"x-busbar-cache": "bypass"}}
        assert (await sdk(lambda: openai_ask(gw.url, "q", **bypass)))[1] == "bypass"
        assert (await sdk(lambda: openai_ask(gw.url, "q", extra_headers={"cache-control": "no-store"})))[1] == "bypass"
        assert (await sdk(lambda: anthropic_ask(gw.url, "q", extra_headers={"cache-control": "no-cache"})))[1] \
            == "refresh"
        assert (await sdk(lambda: openai_ask(gw.url, "q")))[1] == "hit"
        assert len(vendor.received) == 4
        # asking for variety is not cached (the pool's max_temperature is 0)
        assert (await sdk(lambda: openai_ask(gw.url, "q", temperature=0.7)))[1] == "skip"
        assert (await sdk(lambda: openai_ask(gw.url, "q", temperature=0.7)))[1] == "skip"
        assert (await sdk(lambda: openai_ask(gw.url, "q", temperature=0)))[1] == "miss"
        assert len(vendor.received) == 7
    async with gateway_with(config({"mode": "exact", "max_temperature": 1.0}), a=MockVendor()) as gw:
        assert (await sdk(lambda: openai_ask(gw.url, "q", temperature=0.7)))[1] == "miss"
        assert (await sdk(lambda: openai_ask(gw.url, "q", temperature=0.7)))[1] == "hit"


async def test_metrics_count_hits_misses_bytes_and_saved_tokens_and_spend():
    vendor = MockVendor()
    async with gateway_with(config(), a=vendor) as gw:
        for _ in range(3):
            await sdk(lambda: openai_ask(gw.url, "count me"))
        await sdk(lambda: openai_ask(gw.url, "count me", extra_headers={"x-busbar-cache": "bypass"}))
        async with httpx.AsyncClient() as client:
            text = (await client.get(gw.url + "/metrics")).text
    metrics = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("busbar_cache_")}
    assert metrics['busbar_cache_lookups_total{pool="smart",result="hit"}'] == 2
    assert metrics['busbar_cache_lookups_total{pool="smart",result="miss"}'] == 1
    assert metrics['busbar_cache_lookups_total{pool="smart",result="bypass"}'] == 1
    assert metrics['busbar_cache_stores_total{pool="smart"}'] == 1
    assert metrics['busbar_cache_entries{pool="smart"}'] == 1
    assert metrics['busbar_cache_hit_bytes_total{pool="smart"}'] > 100
    # the mock's usage: input = request bytes / 4, output = len(text) // 4, both spent once per hit
    stored = gw.gateway.cache.stores["smart"]
    usage = next(iter(stored._entries.values()))[2].response.usage
    assert metrics['busbar_cache_saved_tokens_total{kind="input",pool="smart"}'] == 2 * usage.input_tokens
    assert metrics['busbar_cache_saved_tokens_total{kind="output",pool="smart"}'] == 2 * usage.output_tokens
    spend = 2 * (usage.input_tokens * 2.5 + usage.output_tokens * 10.0) / 1e6
    assert metrics['busbar_cache_saved_usd_total{pool="smart"}'] == pytest.approx(spend)


async def test_entries_and_counters_survive_a_config_reload():
    vendor = MockVendor()
    async with gateway_with(config(), a=vendor) as gw:
        assert (await sdk(lambda: openai_ask(gw.url, "kept")))[1] == "miss"
        before = gw.gateway
        gw.app.reload(copy.deepcopy(gw.gateway.config.raw))
        assert gw.gateway is not before
        assert (await sdk(lambda: openai_ask(gw.url, "kept")))[1] == "hit"
        assert gw.gateway.cache.stats["smart"].misses == 1
    assert len(vendor.received) == 1


async def test_embeddings_through_a_cached_pool_are_not_cached_and_not_broken():
    vendor = MockVendor()
    cfg = {"providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
           "pools": {"emb": {"members": [{"provider": "oai", "model": "text-embedding-3-small"}],
                             "cache": {"mode": "exact"}}}}
    async with gateway_with(cfg, a=vendor) as gw:
        import openai
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="k", max_retries=0)
        for _ in range(2):
            result = await sdk(lambda: client.embeddings.create(model="emb", input=["the cat sat"]))
            assert len(result.data) == 1 and result.data[0].embedding
        assert (await last_record(gw)).get("cache") is None
    assert len(vendor.received) == 2


async def test_max_bytes_bounds_a_pool_and_the_admin_api_invalidates_it():
    vendor = MockVendor()
    cfg = config({"mode": "exact", "max_bytes": 1500}, admin={"key": "admin-secret", "enabled": True})
    async with gateway_with(cfg, a=vendor) as gw:
        for n in range(6):
            assert (await sdk(lambda: openai_ask(gw.url, f"question number {n}")))[1] == "miss"
        held = gw.gateway.cache.bytes_held("smart")
        assert 0 < held <= 1500 and gw.gateway.cache.entries("smart") < 6     # the oldest went
        assert (await sdk(lambda: openai_ask(gw.url, "question number 5")))[1] == "hit"
        assert (await sdk(lambda: openai_ask(gw.url, "question number 0")))[1] == "miss"
        admin = {"authorization": "Bearer admin-secret"}
        async with httpx.AsyncClient(base_url=gw.url) as client:
            assert (await client.delete("/admin/cache")).status_code == 401            # the key is required
            state = (await client.get("/admin/cache", headers=admin)).json()["pools"]["smart"]
            assert state["bytes"] == gw.gateway.cache.bytes_held("smart") and state["max_bytes"] == 1500
            unknown = await client.delete("/admin/cache", params={"pool": "nope"}, headers=admin)
            assert unknown.status_code == 404 and "smart" in unknown.json()["error"]
            cleared = await client.delete("/admin/cache", params={"pool": "smart"}, headers=admin)
            assert cleared.status_code == 200 and cleared.json()["cleared"]["smart"] >= 1
        assert gw.gateway.cache.entries("smart") == 0
        assert (await sdk(lambda: openai_ask(gw.url, "question number 5")))[1] == "miss"


async def test_invalidating_the_cache_needs_an_admin_key_configured():
    async with gateway_with(config(admin={"enabled": True}), a=MockVendor()) as gw:
        await sdk(lambda: openai_ask(gw.url, "kept"))
        async with httpx.AsyncClient(base_url=gw.url) as client:
            refused = await client.delete("/admin/cache")
            assert refused.status_code == 403 and "admin.key" in refused.json()["error"]
            assert (await client.get("/admin/cache")).json()["pools"]["smart"]["entries"] == 1
        assert (await sdk(lambda: openai_ask(gw.url, "kept")))[1] == "hit"
