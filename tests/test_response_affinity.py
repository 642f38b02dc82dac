"""Response affinity (ADR 0027): a response id a Responses vendor minted goes back to the provider
and key that minted it.  Over sockets with the openai SDK as the client, against simulated
Responses vendors that keep each answer per key (`MockVendor(holds_responses=True)`: a key is a
project, as at OpenAI: another key's id is `previous_response_not_found` / 404)."""
from __future__ import annotations

import httpx
import openai
import orjson
import pytest
import trio

from busbar.affinity import Pin, ResponseAffinity, affinity_key, decode, encode
from busbar.item_store import decode as decode_item, decode_turn
from busbar.mock import MockVendor
from busbar.routing import Exhausted, Needs, Pinned, Router
from harness import gateway_with, sdk
from test_previous_response import client, create

KEYS = ["sk-project-a", "sk-project-b"]


def two_projects(auth: bool = False, extra_member: dict | None = None) -> dict:
    """Pool `smart`: one Responses provider rotating two keys of two projects (round robin)."""
    config = {"providers": {"oai": {"protocol": "responses", "base_url": "{a}/v1", "keys": list(KEYS)}},
              "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}}}
    if extra_member is not None:
        config["providers"]["other"] = extra_member["provider"]
        config["pools"]["smart"]["members"].append(extra_member["member"])
    if auth:
        config["auth"] = {"keys": [{"key": "sk-alice-key", "id": "alice"}, {"key": "sk-bob-key", "id": "bob"}]}
    return config


def posts(vendor: MockVendor) -> list[dict]:
    return [r for r in vendor.received if r.get("method") is None]


# ---------------------------------------------------------------------------
# pure


@pytest.mark.pure
def test_an_entry_is_the_key_id_never_the_secret_and_no_item_or_turn_reads_it():
    store = ResponseAffinity(max_entries=2, ttl_s=10, now=lambda: 0.0)
    key, data = store.remember("alice", "resp_1", Pin("oai", "oai#1:9f86d081", "smart/oai/gpt-4o"))
    assert key == affinity_key("alice", "resp_1") == "alice/affinity/resp_1"
    assert b"sk-" not in data and decode(data) == Pin("oai", "oai#1:9f86d081", "smart/oai/gpt-4o")
    assert decode_item(data) is None and decode_turn(data) is None      # an item_reference / turn lookup
    assert store.get(affinity_key("bob", "resp_1")) is None            # another caller's scope
    for bad in (b"", b"a", b"a\n\n", b"{}", b"r{}", b"x", encode(Pin("a", "b", "c"))[:-2] + b"\n"):
        assert decode(bad) is None
    store.remember("alice", "resp_2", Pin("oai", "k", "m"))
    store.remember("alice", "resp_3", Pin("oai", "k", "m"))
    assert len(store) == 2 and store.get(key) is None                  # bounded: oldest out


def _router(extra: dict | None = None) -> Router:
    config = {"providers": {"oai": {"protocol": "responses", "base_url": "http://x/v1", "keys": list(KEYS)},
                            "oai2": {"protocol": "responses", "base_url": "http://y/v1", "key": "sk-other"},
                            "claude": {"protocol": "anthropic", "base_url": "http://z", "key": "sk-ant"}},
              "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"},
                                              {"provider": "oai2", "model": "gpt-4o"},
                                              {"provider": "claude", "model": "claude", "max_tokens": 100}]}}}
    import random
    return Router.from_config(config, rng=random.Random(7))


@pytest.mark.pure
def test_a_pinned_plan_goes_only_to_that_provider_and_key_and_others_of_other_protocols():
    router = _router()
    key_b = router.providers["oai"].keys.keys[1]
    pin = Pinned("responses", "oai", key_b.id, "resp_1")
    for _ in range(20):
        plan = router.start("smart", Needs(pin=pin), 0.0)
        step = plan.next(0.0)
        assert step.provider in ("oai", "claude")
        if step.provider == "oai":
            assert step.key is key_b
        plan.release(step, 0.0)
    # the pinned key cooling: no rotation to the other key; Claude (another protocol) may still go
    key_b.cool(None, 30, 0.0)
    plan = router.start("smart", Needs(pin=pin, refused=frozenset({"anthropic"})), 0.0)
    step = plan.next(0.0)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(30)
    assert "resp_1" in step.reason and key_b.id in step.reason and "recovers in 30" in step.reason
    # the pinned member circuit-open (its key fine): no other Responses member, a Retry-After
    key_b.cooling_until = 0.0
    router.targets[("oai", "gpt-4o")].breaker.apply_open(20.0, 20.0)
    step = router.start("smart", Needs(pin=pin, refused=frozenset({"anthropic"})), 0.0).next(0.0)
    assert isinstance(step, Exhausted) and step.retry_after == pytest.approx(20, abs=1) and "resp_1" in step.reason
    # ... and a request without a pin still goes to the other vendor
    assert router.start("smart", Needs(refused=frozenset({"anthropic"})), 0.0).next(0.0).provider == "oai2"
    # a key the config no longer has: no member can take it, and the plan says why
    lost = router.start("smart", Needs(pin=Pinned("responses", "oai", "oai#7:deadbeef", "resp_9"),
                                       refused=frozenset({"anthropic"})), 0.0).next(0.0)
    assert lost.kind == "incapable" and "no longer has" in lost.reason and "resp_9" in lost.reason
    # a reload that moved the key to another index: the same secret still holds the response
    router = _router()
    key_b = router.providers["oai"].keys.keys[1]
    moved = key_b.id.replace("#1:", "#5:")
    assert moved != key_b.id
    for _ in range(10):
        plan = router.start("smart", Needs(pin=Pinned("responses", "oai", moved, "resp_1"),
                                           refused=frozenset({"anthropic"})), 0.0)
        step = plan.next(0.0)
        assert step.provider == "oai" and step.key is key_b
        plan.release(step, 0.0)


# ---------------------------------------------------------------------------
# over sockets


@pytest.mark.sdk
@pytest.mark.parametrize("stream", [False, True])
async def test_every_continuation_of_a_ten_turn_loop_lands_on_the_minting_key(stream):
    vendor = MockVendor(holds_responses=True, reply="noted")
    async with gateway_with(two_projects(), a=vendor) as gw:
        c = client(gw)
        first = await sdk(lambda: create(c, stream, input="turn 0"))
        ids = [first.id]
        for turn in range(1, 10):
            r = await sdk(lambda: create(c, stream, input=f"turn {turn}", previous_response_id=ids[-1]))
            ids.append(r.id)
        assert gw.gateway.affinity.pinned == 9
    sent = posts(vendor)
    assert len(sent) == 10                       # no failure, no retry
    assert {r["key"] for r in sent} == {sent[0]["key"]}     # round robin would alternate
    assert all(r["body"].get("previous_response_id") == ids[i] for i, r in enumerate(sent[1:]))
    assert all(vendor.held[i][0] == sent[0]["key"] for i in ids)


@pytest.mark.sdk
async def test_retrieve_delete_input_items_and_cancel_are_forwarded_with_the_minting_key():
    vendor = MockVendor(holds_responses=True, reply="forwarded")
    async with gateway_with(two_projects(), a=vendor) as gw:
        c = client(gw)
        made = [await sdk(lambda: create(c, False, input=f"hello {i}")) for i in range(2)]
        keys = {vendor.held[r.id][0] for r in made}
        assert len(keys) == 2                    # one response in each project
        for r in made:
            got = await sdk(lambda: c.responses.retrieve(r.id, include=["message.output_text.logprobs"]))
            assert got.id == r.id and got.output_text == "forwarded"
            items = await sdk(lambda: c.responses.input_items.list(r.id))
            assert [i.content[0].text for i in items.data] == [f"hello {made.index(r)}"]
            with pytest.raises(openai.BadRequestError) as cancel:       # the vendor's own answer
                await sdk(lambda: c.responses.cancel(r.id))
            assert "Cannot cancel a synchronous response" in str(cancel.value)
        await sdk(lambda: c.responses.delete(made[0].id))
        with pytest.raises(openai.NotFoundError) as gone:              # the vendor's 404, as it sent it
            await sdk(lambda: c.responses.retrieve(made[0].id))
        assert gone.value.body["message"] == f"Response with id '{made[0].id}' not found."
        assert gw.gateway.affinity.forwarded == 8
        metrics = (await sdk(lambda: httpx.get(gw.url + "/metrics"))).text
        assert "busbar_response_affinity_forwarded_total 8.0" in metrics
        assert "busbar_response_affinity_remembered_total 2.0" in metrics
        assert "busbar_response_affinity_entries 2.0" in metrics
    calls = [r for r in vendor.received if r.get("method") is not None]
    assert [(r["method"], r["path"].rsplit("/", 1)[-1]) for r in calls[:3]] == [
        ("GET", made[0].id), ("GET", "input_items"), ("POST", "cancel")]
    assert all(r["key"] == vendor.held.get(r["response_id"], (keyed(calls, r["response_id"]),))[0] for r in calls)
    assert "include%5B%5D=message.output_text.logprobs" in calls[0]["query"] or \
        "include[]=message.output_text.logprobs" in calls[0]["query"]


def keyed(calls: list[dict], response_id: str) -> str:
    return next(r["key"] for r in calls if r["response_id"] == response_id)


@pytest.mark.sdk
async def test_another_callers_id_is_a_404_without_a_vendor_call_and_an_unknown_id_too():
    vendor = MockVendor(holds_responses=True)
    async with gateway_with(two_projects(auth=True), a=vendor) as gw:
        alice, bob = client(gw, "sk-alice-key"), client(gw, "sk-bob-key")
        r = await sdk(lambda: create(alice, False, input="alice's secret plan"))
        before = len(vendor.received)
        for call in (lambda: bob.responses.retrieve(r.id), lambda: bob.responses.delete(r.id),
                     lambda: bob.responses.input_items.list(r.id), lambda: bob.responses.cancel(r.id),
                     lambda: alice.responses.retrieve("resp_nobody_made_this")):
            with pytest.raises(openai.NotFoundError) as refused:
                await sdk(call)
            assert "not found" in str(refused.value)
        assert len(vendor.received) == before          # none of them reached the vendor
        assert (await sdk(lambda: alice.responses.retrieve(r.id))).id == r.id
        # bob's continuation of alice's id is not pinned: the balancer's key, as before
        assert gw.gateway.affinity.pinned == 0


@pytest.mark.sdk
async def test_store_false_is_not_remembered_and_a_pinned_key_cooling_is_a_429_saying_why():
    vendor = MockVendor(holds_responses=True)
    async with gateway_with(two_projects(), a=vendor) as gw:
        c = client(gw)
        unstored = await sdk(lambda: create(c, False, input="x", store=False))
        assert gw.gateway.affinity.remembered == 0
        with pytest.raises(openai.NotFoundError):
            await sdk(lambda: c.responses.retrieve(unstored.id))
        r = await sdk(lambda: create(c, False, input="y"))
        minted_by = vendor.held[r.id][0]
        ring = gw.gateway.router.providers["oai"].keys
        key = next(k for k in ring.keys if k.secret == minted_by)
        key.cool(None, 60, trio.current_time())
        with pytest.raises(openai.RateLimitError) as limited:
            await sdk(lambda: create(c, False, input="z", previous_response_id=r.id))
        assert r.id in str(limited.value) and key.id in str(limited.value) and "sk-project" not in str(limited.value)
        assert limited.value.response.headers.get("retry-after")
        assert len(posts(vendor)) == 2            # the other key was not tried


@pytest.mark.sdk
async def test_a_mixed_pool_still_fails_over_to_another_protocol_with_the_kept_turns():
    vendor, claude = MockVendor(holds_responses=True, reply="from openai"), MockVendor(reply="from claude")
    extra = {"provider": {"protocol": "anthropic", "base_url": "{b}", "key": "sk-ant"},
             "member": {"provider": "other", "model": "claude", "max_tokens": 256, "priority": 1}}
    config = two_projects(extra_member=extra)
    config["pools"]["smart"]["strategy"] = "ordered"
    async with gateway_with(config, a=vendor, b=claude) as gw:
        c = client(gw)
        first = await sdk(lambda: create(c, False, input="I am Ada"))
        minted_by = vendor.held[first.id][0]
        again = await sdk(lambda: create(c, False, input="again", previous_response_id=first.id))
        assert vendor.held[again.id][0] == minted_by          # pinned, with the vendor's chain kept too
        vendor.always = {"error": "server"}
        r = await sdk(lambda: create(c, False, input="who am I?", previous_response_id=again.id))
        assert r.output_text == "from claude"
    users = [m for m in claude.received[-1]["body"]["messages"] if m["role"] == "user"]
    assert len(users) == 3                                    # the whole conversation went to Claude


@pytest.mark.sdk
async def test_two_responses_vendors_in_one_pool_each_continuation_goes_back_to_its_vendor():
    a, b = MockVendor(holds_responses=True, reply="from a"), MockVendor(holds_responses=True, reply="from b")
    config = {"providers": {"va": {"protocol": "responses", "base_url": "{a}/v1", "key": "sk-vendor-a"},
                            "vb": {"protocol": "responses", "base_url": "{b}/v1", "key": "sk-vendor-b"}},
              "pools": {"smart": {"strategy": "round_robin",
                                  "members": [{"provider": "va", "model": "gpt-4o"}, {"provider": "vb", "model": "gpt-4o"}]}},
              "admin": {"enabled": True}}
    async with gateway_with(config, a=a, b=b) as gw:
        c = client(gw)
        starts = [await sdk(lambda: create(c, False, input="start")) for _ in range(2)]
        assert {s.output_text for s in starts} == {"from a", "from b"}
        for start in starts:
            last = start
            for turn in range(4):
                last = await sdk(lambda: create(c, True, input=f"turn {turn}", previous_response_id=last.id))
                assert last.output_text == start.output_text            # the same vendor every time
        async with httpx.AsyncClient() as http:
            state = (await http.get(gw.url + "/admin/api/state")).json()["response_affinity"]
    assert state["remembered"] == 10 and state["pinned"] == 8 and state["entries"] == 10
    assert "sk-" not in orjson.dumps(state).decode()
    assert all(r["key"] == "sk-vendor-a" for r in a.received) and all(r["key"] == "sk-vendor-b" for r in b.received)
    assert len(a.received) == len(b.received) == 5
