"""The response cache's pure layer (ADR 0016): the canonical request form,
the stored entry, the stream replay and its inverse, the LRU + TTL store on
an injected clock, and the lookup decisions."""
from __future__ import annotations

import dataclasses
import re

import pytest
from hypothesis import HealthCheck, given, settings

from busbar import ir
from busbar.cache import CachePolicy, Caches, ResponseCache
from busbar.cache.canonical import request_digest, semantic_split
from busbar.cache.entry import Assembler, Entry, decode, encode, response_events
from busbar.cache.store import MemoryStore
from busbar.protocols import get_dialect
from tests import strategies as S

pytestmark = pytest.mark.pure

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# one question, as each client protocol's SDK sends it
WIRE = {
    "openai": ({"model": "smart", "max_tokens": 64, "messages": [{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": "Capital of France?"}],
                "stream": True, "stream_options": {"include_usage": True}, "user": "u-1"}, {}),
    "responses": ({"model": "smart", "max_output_tokens": 64, "instructions": "Be brief.",
                   "input": "Capital of France?"}, {}),
    "anthropic": ({"model": "smart", "max_tokens": 64, "system": "Be brief.",
                   "messages": [{"role": "user", "content": [{"type": "text", "text": "Capital of France?"}]}],
                   "metadata": {"user_id": "u-2"}}, {}),
    "gemini": ({"systemInstruction": {"parts": [{"text": "Be brief."}]},
                "contents": [{"role": "user", "parts": [{"text": "Capital of France?"}]}],
                "generationConfig": {"maxOutputTokens": 64}}, {"model": "smart", "action": "generateContent"}),
    "bedrock": ({"system": [{"text": "Be brief."}],
                 "messages": [{"role": "user", "content": [{"text": "Capital of France?"}]}],
                 "inferenceConfig": {"maxTokens": 64}}, {"model": "smart", "action": "converse"}),
    "cohere": ({"model": "smart", "max_tokens": 64, "messages": [{"role": "system", "content": "Be brief."},
                                                                 {"role": "user", "content": "Capital of France?"}]},
               {}),
}


def parsed(protocol: str) -> ir.Request:
    obj, params = WIRE[protocol]
    return get_dialect(protocol).parse_request(obj, params)


def test_the_same_question_has_one_key_through_every_client_protocol():
    digests = {p: request_digest(parsed(p)) for p in WIRE}
    assert len(set(digests.values())) == 1, digests


def test_what_decides_the_answer_is_in_the_key_and_attribution_is_not():
    base = parsed("openai")
    key = request_digest(base)
    same = [dataclasses.replace(base, stream=False), dataclasses.replace(base, user="someone else"),
            dataclasses.replace(base, metadata={"trace": "x"}), dataclasses.replace(base, temperature=0.0),
            dataclasses.replace(base, extras={"openai": {"$max_tokens_key": "max_completion_tokens"}})]
    assert request_digest(same[3]) == request_digest(dataclasses.replace(base, temperature=0))
    other = [dataclasses.replace(base, max_tokens=65), dataclasses.replace(base, system=[ir.Text("Be long.")]),
             dataclasses.replace(base, tools=[ir.Tool("f", {"type": "object"})]),
             dataclasses.replace(base, response_format=ir.ResponseFormat("json_object")),
             dataclasses.replace(base, messages=[ir.Message("user", [ir.Text("Capital of Spain?")])]),
             dataclasses.replace(base, extras={"openai": {"logprobs": True}}),
             dataclasses.replace(base, temperature=0.5)]
    assert all(request_digest(r) == key for r in same[:3] + same[4:])
    assert len({request_digest(r) for r in other} | {key}) == len(other) + 1


def test_the_semantic_partition_separates_everything_but_the_last_user_text():
    base = parsed("anthropic")
    reworded = dataclasses.replace(base, messages=[ir.Message("user", [ir.Text("France's capital city?")])])
    (part, text), (part2, text2) = semantic_split(base), semantic_split(reworded)
    assert part == part2 and (text, text2) == ("Capital of France?", "France's capital city?")
    # every protocol's spelling of the same question is in one partition
    assert len({semantic_split(parsed(p))[0] for p in WIRE}) == 1
    two_turns = [ir.Message("user", [ir.Text("Hi")]), ir.Message("assistant", [ir.Text("Hello")])]
    for changed in (dataclasses.replace(base, tools=[ir.Tool("f", None)]),
                    dataclasses.replace(base, system=[ir.Text("Be verbose.")]),
                    dataclasses.replace(base, response_format=ir.ResponseFormat("json_object")),
                    dataclasses.replace(base, max_tokens=65),
                    dataclasses.replace(base, temperature=0.5),
                    dataclasses.replace(base, messages=two_turns + base.messages)):
        assert semantic_split(changed)[0] != part
    # an earlier turn's wording is part of the partition, not of the embedded text
    other_history = [ir.Message("user", [ir.Text("Hey")]), ir.Message("assistant", [ir.Text("Hello")])]
    assert semantic_split(dataclasses.replace(base, messages=two_turns + base.messages))[0] != \
        semantic_split(dataclasses.replace(base, messages=other_history + base.messages))[0]
    # only cached exactly: a last turn that is not the user's text
    with_image = dataclasses.replace(base, messages=[ir.Message("user", [ir.Image(url="https://x/y.png")])])
    assistant_last = dataclasses.replace(base, messages=base.messages + [ir.Message("assistant", [ir.Text("P")])])
    assert semantic_split(with_image) is None and semantic_split(assistant_last) is None
    assert semantic_split(dataclasses.replace(base, messages=[ir.Message("user", [ir.Text("  ")])])) is None


@given(S.ir_response(S.CAPS["anthropic"]))
@SETTINGS
def test_an_entry_round_trips_through_its_stored_bytes(response):
    entry = Entry(response, "smart/oai/gpt-4o", 1234.5)
    assert decode(encode(entry)) == entry


def test_bytes_of_another_format_are_a_miss_not_an_error():
    assert decode(b"not json") is None
    assert decode(b'{"v": 99}') is None
    assert decode(b'{"v": 1, "id": 3}') is None


def _without_extras(response: ir.Response) -> ir.Response:
    content = []
    for part in response.content:
        if hasattr(part, "extras"):
            part = dataclasses.replace(part, extras=None)
        content.append(part)
    return dataclasses.replace(response, content=content, extras=None)


@given(S.ir_response(S.CAPS["anthropic"]))
@SETTINGS
def test_replayed_events_fold_back_into_the_same_response(response):
    response = _without_extras(response)
    for chunk in (0, 3):
        folded = Assembler()
        folded.feed(response_events(response, chunk_chars=chunk))
        assert folded.response() == response


@pytest.mark.parametrize("protocol", list(WIRE))
def test_every_stream_encoder_accepts_a_replay(protocol):
    response = ir.Response("r1", "gpt-4o", [ir.Text("Paris, of course."), ir.ToolCall("call_1", "f", {"a": [1]})],
                           ir.StopReason.TOOL_USE, usage=ir.Usage(10, 5))
    dialect = get_dialect(protocol)
    encoder = dialect.stream_encoder("gpt-4o")
    wire = b"".join(encoder.encode(e) for e in response_events(response, 4)) + encoder.finish()
    decoder = dialect.stream_decoder()
    folded = Assembler()
    folded.feed(decoder.feed(wire) + decoder.close())
    back = folded.response()
    assert back.content[0].text == "Paris, of course." and back.content[1].arguments == {"a": [1]}
    assert back.stop_reason is ir.StopReason.TOOL_USE


def test_an_unfinished_or_failed_stream_is_never_stored():
    events = response_events(ir.Response("r", "m", [ir.Text("half")]))
    cut = Assembler()
    cut.feed(events[:-1])
    assert cut.response() is None
    failed = Assembler()
    failed.feed(events[:3] + [ir.ErrorEvent(529, "overloaded")] + events[3:])
    assert failed.response() is None


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def entry(text: str) -> Entry:
    return Entry(ir.Response("r", "m", [ir.Text(text)]), "member", 0.0)


def test_the_memory_store_expires_entries_after_their_ttl():
    clock = Clock()
    store = MemoryStore(clock)
    store.put_now("k", entry("a"), ttl=10, max_entries=5, size=3)
    clock.t += 9.99
    assert store.get_now("k").response.content[0].text == "a"
    clock.t += 0.01
    assert store.get_now("k") is None and len(store) == 0 and store.bytes == 0


def test_the_memory_store_drops_the_least_recently_used_past_max_entries():
    clock = Clock()
    store = MemoryStore(clock)
    for name in "abc":
        store.put_now(name, entry(name), ttl=60, max_entries=3, size=1)
        clock.t += 1
    assert store.get_now("a") is not None          # a is now the most recent use
    store.put_now("d", entry("d"), ttl=60, max_entries=3, size=1)
    assert store.get_now("b") is None and {k for k in "acd" if store.get_now(k)} == set("acd")
    store.put_now("a", entry("a2"), ttl=60, max_entries=3, size=1)     # replacing is no growth
    assert len(store) == 3 and store.bytes == 3 and store.get_now("a").response.content[0].text == "a2"
    clock.t += 61
    assert store.sweep() == 3 and store.bytes == 0


def test_the_memory_store_keeps_max_bytes_least_recently_used_first():
    store = MemoryStore(Clock())
    for name in "abc":
        assert store.put_now(name, entry(name), ttl=60, max_entries=10, size=40, max_bytes=100)
    assert {k for k in "abc" if store.get_now(k)} == set("bc") and store.bytes == 80
    assert store.get_now("b") is not None                       # c is now the oldest use
    assert store.put_now("d", entry("d"), ttl=60, max_entries=10, size=60, max_bytes=100)
    assert {k for k in "bcd" if store.get_now(k)} == {"b", "d"} and store.bytes == 100     # c went
    assert not store.put_now("e", entry("e"), ttl=60, max_entries=10, size=101, max_bytes=100)   # too big alone
    assert store.get_now("e") is None and store.get_now("d") is not None
    assert store.clear() == 2 and len(store) == 0 and store.bytes == 0


async def test_clearing_a_pool_empties_its_store_and_semantic_index():
    cache = ResponseCache.from_config({"smart": {"cache": {"mode": "semantic", "embed_pool": "emb"}},
                                       "other": {"cache": {"mode": "exact"}}}, Caches())
    for pool in ("smart", "other"):
        lookup = cache.decide(pool, [], parsed("openai"), "-")
        if lookup.text is not None:
            await cache.nearest(lookup, _vec((0, 1.0)))
        assert await cache.put(lookup, ir.Response("r", "m", [ir.Text("Paris")]), "m")
    assert len(cache.indexes["smart"]) == 1 and cache.bytes_held("smart") > 0
    assert await cache.clear("smart") == {"smart": 1}
    assert cache.entries("smart") == 0 and len(cache.indexes["smart"]) == 0 and cache.entries("other") == 1
    assert await cache.clear() == {"smart": 0, "other": 1}


def _cache(**policy) -> ResponseCache:
    return ResponseCache({"smart": CachePolicy("smart", **policy)}, Caches(now=Clock(), wall=Clock()))


def test_decisions_from_headers_temperature_and_scope():
    cache = _cache()
    req = parsed("openai")
    assert cache.decide("other", [], req, "alice") is None            # no cache on that pool
    assert cache.decide("smart", [], req, "alice").action == "lookup"
    assert cache.decide("smart", [(b"x-busbar-cache", b"bypass")], req, "alice").action == "bypass"
    assert cache.decide("smart", [(b"x-busbar-cache", b"Refresh")], req, "alice").action == "refresh"
    assert cache.decide("smart", [(b"cache-control", b"max-age=0, no-store")], req, "alice").action == "bypass"
    assert cache.decide("smart", [(b"cache-control", b"no-cache")], req, "alice").action == "refresh"
    assert cache.decide("smart", [], dataclasses.replace(req, temperature=0.2), "alice").action == "skip"
    assert cache.decide("smart", [], None, "alice").action == "skip"      # the IR could not hold it
    assert cache.decide("smart", [], req, "alice").key != cache.decide("smart", [], req, "bob").key
    shared = _cache(shared=True)
    assert shared.decide("smart", [], req, "alice").key == shared.decide("smart", [], req, "bob").key
    beta = [(b"anthropic-beta", b"some-feature")]
    assert cache.decide("smart", beta, req, "a", (b"anthropic-beta",)).key != cache.decide("smart", [], req, "a").key
    assert cache.decide("smart", beta, req, "a").key == cache.decide("smart", [], req, "a").key
    warm = _cache(max_temperature=1.0)
    assert warm.decide("smart", [], dataclasses.replace(req, temperature=0.7), "a").action == "lookup"


async def test_only_complete_answers_are_stored():
    cache = _cache()
    lookup = cache.decide("smart", [], parsed("openai"), "alice")
    assert not await cache.put(lookup, None, "m")
    assert not await cache.put(lookup, ir.Response("r", "m", [], ir.StopReason.CONTENT_FILTER), "m")
    assert await cache.put(lookup, ir.Response("r", "m", [ir.Text("ok")]), "m")
    hit = await cache.get(cache.decide("smart", [], parsed("anthropic"), "alice"))
    assert hit.response.content == [ir.Text("ok")]
    stats = cache.stats["smart"]
    assert (stats.hits, stats.stored, stats.skipped) == (1, 1, 2)


@pytest.mark.parametrize("cache, message", [
    ({"mode": "exactly"}, "pools.smart.cache.mode: 'exactly' is not allowed; allowed: exact, semantic"),
    ({"mode": "exact", "ttl": 0}, "pools.smart.cache.ttl: 0 is less than or equal to the minimum of 0"),
    ({"mode": "exact", "max_entry": 3}, "pools.smart.cache: unknown key(s) 'max_entry'"),
    ({"mode": "semantic"}, "pools.smart.cache: 'embed_pool' is a required property"),
])
def test_a_bad_cache_section_names_its_yaml_path(cache, message):
    from busbar.config import ConfigError, parse_config
    config = {"providers": {"o": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "key": "k"}},
              "pools": {"smart": {"members": [{"provider": "o", "model": "m"}], "cache": cache}}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(config, "t")


SEMANTIC_PROVIDERS = {"o": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "key": "k"},
                      "a": {"protocol": "anthropic", "base_url": "http://127.0.0.1:9", "key": "k"}}


@pytest.mark.parametrize("embed_pool, members, message", [
    ("nope", [], "pools.smart.cache.embed_pool: unknown pool 'nope'; defined: smart, emb"),
    ("smart", [], "pools.smart.cache.embed_pool: a pool cannot embed its own prompts"),
    ("emb", [{"provider": "o", "model": "gpt-4o"}],
     "pools.smart.cache.embed_pool: pool 'emb': member o/gpt-4o is not an embedding model"),
    ("emb", [{"provider": "a", "model": "claude-embed"}],
     "pools.smart.cache.embed_pool: pool 'emb': member a/claude-embed speaks anthropic, which has no embeddings"),
])
def test_a_semantic_cache_needs_a_pool_of_embedding_models(embed_pool, members, message):
    from busbar.config import ConfigError, parse_config
    config = {"providers": SEMANTIC_PROVIDERS,
              "pools": {"smart": {"members": [{"provider": "o", "model": "gpt-4o"}],
                                  "cache": {"mode": "semantic", "embed_pool": embed_pool}},
                        "emb": {"members": members or [{"provider": "o", "model": "text-embedding-3-small"}]}}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(config, "t")


@pytest.mark.parametrize("threshold, message", [
    (0, "pools.smart.cache.threshold: 0 is less than or equal to the minimum of 0"),
    (1.5, "pools.smart.cache.threshold: 1.5 is greater than the maximum of 1"),
])
def test_a_semantic_threshold_is_in_zero_to_one(threshold, message):
    from busbar.config import ConfigError, parse_config
    config = {"providers": SEMANTIC_PROVIDERS,
              "pools": {"smart": {"members": [{"provider": "o", "model": "gpt-4o"}],
                                  "cache": {"mode": "semantic", "embed_pool": "emb", "threshold": threshold}},
                        "emb": {"members": [{"provider": "o", "model": "text-embedding-3-small"}]}}}
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config(config, "t")


def test_a_valid_semantic_cache_has_no_advisory():
    from busbar.config import advisories, parse_config
    config = {"providers": SEMANTIC_PROVIDERS,
              "pools": {"smart": {"members": [{"provider": "o", "model": "gpt-4o"}],
                                  "cache": {"mode": "semantic", "embed_pool": "emb", "threshold": 1}},
                        # a self-hosted model whose name does not say embed declares its dimensions
                        "emb": {"members": [{"provider": "o", "model": "bge-small-en", "dimensions": 384}]}}}
    assert advisories(parse_config(config, "t")) == []


def _vec(*hot, dims=8):
    v = [0.0] * dims
    for i, x in hot:
        v[i] = x
    return v


def test_the_index_finds_the_nearest_prompt_of_its_own_partition_only():
    from busbar.cache.semantic import SemanticIndex
    index = SemanticIndex()
    index.add("p1", "k-a", _vec((0, 1.0)))
    index.add("p1", "k-b", _vec((1, 1.0)))
    index.add("p2", "k-c", _vec((0, 1.0)))
    key, score = index.search("p1", _vec((0, 1.0), (1, 0.1)), 0.95)     # not normalised: the index does
    assert key == "k-a" and 0.99 < score <= 1.0
    assert index.search("p1", _vec((0, 1.0), (1, 1.0)), 0.95) is None     # cosine 0.707: below
    assert index.search("p1", _vec((0, 1.0), (1, 1.0)), 0.7)[0] in ("k-a", "k-b")
    assert index.search("p3", _vec((0, 1.0)), 0.5) is None                # another partition: nothing
    assert index.search("p1", [0.0] * 8, 0.5) is None and index.search("p1", [1.0] * 3, 0.5) is None
    index.discard("k-a")
    assert index.search("p1", _vec((0, 1.0)), 0.5) is None and len(index) == 2
    index.discard("k-c")
    assert "p2" not in index.parts


def test_the_index_grows_reuses_rows_and_keeps_max_entries():
    from busbar.cache.semantic import SemanticIndex
    index = SemanticIndex(max_entries=50)
    for i in range(60):
        index.add("p", f"k{i}", _vec((i % 8, 1.0), (8 + i % 24, 2.0), dims=32))
    assert len(index) == 50 and "k0" not in index.where and "k59" in index.where     # oldest first
    assert index.search("p", _vec((59 % 8, 1.0), (8 + 59 % 24, 2.0), dims=32), 0.999)[0] in ("k35", "k59")
    for i in range(10, 60):
        index.discard(f"k{i}")
    assert len(index) == 0 and not index.parts
    index.add("p", "again", _vec((0, 1.0), dims=32))
    index.add("p", "again", _vec((1, 1.0), dims=32))                 # a key is indexed once
    assert len(index) == 1 and index.search("p", _vec((1, 1.0), dims=32), 0.9)[0] == "again"


async def test_a_semantic_lookup_serves_the_nearest_cached_answer_above_the_threshold():
    cache = ResponseCache.from_config({"smart": {"cache": {"mode": "semantic", "embed_pool": "emb",
                                                           "threshold": 0.9}}}, Caches())
    first = cache.decide("smart", [], parsed("openai"), "alice")
    assert first.text == "Capital of France?" and first.partition
    assert await cache.get(first) is None
    assert await cache.nearest(first, _vec((0, 1.0))) is None
    assert await cache.put(first, ir.Response("r", "m", [ir.Text("Paris")]), "m")
    other = dataclasses.replace(parsed("anthropic"), messages=[ir.Message("user", [ir.Text("France's capital?")])])
    near = cache.decide("smart", [], other, "alice")
    assert near.partition == first.partition and await cache.get(near) is None
    hit = await cache.nearest(near, _vec((0, 1.0), (1, 0.2)))
    assert hit.response.content == [ir.Text("Paris")] and near.status == "hit" and near.similarity > 0.9
    far = cache.decide("smart", [], other, "alice")
    assert await cache.nearest(far, _vec((0, 1.0), (1, 1.0))) is None and far.status == "miss"
    # never across client keys or system prompts, however close
    for request, scope in ((other, "bob"), (dataclasses.replace(other, system=[ir.Text("Be long.")]), "alice")):
        lookup = cache.decide("smart", [], request, scope)
        assert await cache.nearest(lookup, _vec((0, 1.0))) is None
    # the embedding pool failed: a miss
    down = cache.decide("smart", [], other, "alice")
    assert await cache.nearest(down, None) is None
    st = cache.stats["smart"]
    assert (st.semantic_hits, st.semantic_misses, st.semantic_unavailable, st.hits, st.misses) == (1, 4, 1, 1, 5)


async def test_an_evicted_entry_leaves_the_semantic_index():
    cache = ResponseCache.from_config({"smart": {"cache": {"mode": "semantic", "embed_pool": "emb",
                                                           "max_entries": 1}}}, Caches())
    for n, text in enumerate(("one", "two")):
        req = dataclasses.replace(parsed("openai"), messages=[ir.Message("user", [ir.Text(text)])])
        lookup = cache.decide("smart", [], req, "-")
        await cache.nearest(lookup, _vec((n, 1.0)))
        await cache.put(lookup, ir.Response("r", "m", [ir.Text(text)]), "m")
    assert len(cache.indexes["smart"]) == 1 and len(cache.stores["smart"]) == 1
