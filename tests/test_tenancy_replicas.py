"""A client key's rpm across replicas: two gateways (each its own App and
Redis connection) sharing one real redis-server admit exactly the limit
when hammered concurrently (issue 15's limits, issue 14's backend)."""
from __future__ import annotations

import httpx
import pytest
import trio

from busbar.mock import MockVendor
from harness import gateway_with
from redis_support import redis_server  # noqa: F401  (fixture)


@pytest.mark.integration
async def test_rpm_is_exact_across_two_replicas_sharing_redis(redis_server):
    config = {
        "providers": {"oai": {"protocol": "openai", "base_url": "{a}/v1", "key": "sk-upstream"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
        "auth": {"keys": [{"id": "metered", "key": "sk-metered", "limits": {"rpm": 10}}]},
        "state": {"backend": "redis", "url": redis_server.url, "prefix": "replicas", "timeout_ms": 1000},
    }
    vendor = MockVendor(reply="ok")
    statuses = []
    async with gateway_with(config, a=vendor) as one, gateway_with(config, a=vendor) as two:
        assert one.app.state is not two.app.state          # two backends, one Redis

        async def fire(url):
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(15):
                    r = await client.post(url + "/v1/chat/completions",
                                          headers={"authorization": "Bearer sk-metered"},
                                          json={"model": "smart", "messages": [{"role": "user", "content": "hi"}]})
                    statuses.append(r.status_code)
                    if r.status_code == 429:
                        assert int(r.headers["retry-after"]) >= 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fire, one.url)
            nursery.start_soon(fire, two.url)
    assert statuses.count(200) == 10 and statuses.count(429) == 20
    assert len(vendor.received) == 10                      # refused requests never went upstream


ADMIN = {"authorization": "Bearer admin-secret"}


def minted_config(redis_url: str, vendor_url: str, prefix: str) -> dict:
    return {
        "providers": {"oai": {"protocol": "openai", "base_url": vendor_url + "/v1", "key": "sk-upstream"}},
        "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o"}]}},
        "admin": {"enabled": True, "key": "admin-secret", "usage_db": "off"},
        # a generous timeout: a loaded 2-core box must not trip the degraded mode by accident
        "state": {"backend": "redis", "url": redis_url, "prefix": prefix, "timeout_ms": 1000},
    }


async def _minted_ids(url: str) -> dict:
    async with httpx.AsyncClient(timeout=30) as client:
        keys = (await client.get(url + "/admin/keys", headers=ADMIN)).json()["keys"]
    return {k["id"]: k for k in keys if k["source"] == "minted"}


@pytest.mark.sdk
@pytest.mark.slow
async def test_a_key_minted_on_one_serve_process_works_on_another_without_a_redis_lookup_per_request(
        tmp_path, redis_server):
    """Two `busbar serve` processes, one redis-server: a key minted on A is
    taken by B from the pub/sub message (B lists it, the SDK works on B); B's
    requests with it send Redis nothing; a revocation on A is refused by B
    once the message arrived."""
    import openai

    from cluster_support import Replica, eventually, start_all
    from redis_support import command_counts, delta
    vendor = MockVendor(reply="hi")
    async with trio.open_nursery() as nursery:
        await nursery.start(vendor.serve)
        config = minted_config(redis_server.url, vendor.url, "mk")
        a, b = Replica(tmp_path, "A", config), Replica(tmp_path, "B", config)
        try:
            await start_all(a, b)
            async with httpx.AsyncClient(timeout=30) as client:
                r = await client.post(a.url + "/admin/keys", headers=ADMIN, json={"id": "app-1", "pools": ["smart"]})
            assert r.status_code == 201, r.text
            secret = r.json()["key"]

            async def listed_on_b():
                return "app-1" in await _minted_ids(b.url)
            await eventually(listed_on_b, "B receives the minted key")
            sdk_b = openai.OpenAI(base_url=b.url + "/v1", api_key=secret, max_retries=0)

            def chat():
                return sdk_b.chat.completions.create(
                    model="smart", messages=[{"role": "user", "content": "x"}]).choices[0].message.content
            assert await trio.to_thread.run_sync(chat) == "hi"

            before = await command_counts(redis_server.url)
            for _ in range(20):
                assert await trio.to_thread.run_sync(chat) == "hi"
            served = delta(before, await command_counts(redis_server.url), ignore=("info", "get", "ping"))
            # nothing per request (a reconcile's one GET of the revision, or a PING on an idle
            # subscription, may fall in the window: neither is per request)
            assert served == {}, served

            async with httpx.AsyncClient(timeout=30) as client:
                assert (await client.delete(a.url + "/admin/keys/app-1", headers=ADMIN)).status_code == 200

            async def refused_on_b():
                try:
                    await trio.to_thread.run_sync(chat)
                except openai.AuthenticationError:
                    return True
                return False
            await eventually(refused_on_b, "B refuses the key revoked on A")
            assert (await _minted_ids(b.url))["app-1"]["revoked"]
            async with httpx.AsyncClient(timeout=30) as client:
                state = (await client.get(b.url + "/admin/api/state", headers=ADMIN)).json()
            assert state["minted_keys"]["subscribed"] and state["minted_keys"]["applied_total"] >= 2
        finally:
            logs = [r.stop() for r in (a, b) if r.proc is not None]
            nursery.cancel_scope.cancel()
    for log in logs:
        assert "Traceback" not in log and secret not in log, log


@pytest.mark.sdk
async def test_a_key_whose_message_has_not_arrived_is_refused_without_asking_redis(tmp_path, redis_server):
    """The window between a mint on another replica and its message here: the
    key is unknown, so 401 (the SDK's AuthenticationError) with no Redis round
    trip; the reconcile (the safety net for a message never received) then
    takes it from the store."""
    import openai

    from busbar.state.resp import RespConnection
    from busbar.tenancy import hash_secret
    from busbar.tenancy.minted import _WRITE_LUA
    from clients import openai_chat
    from harness import sdk
    from redis_support import command_counts, delta
    config = minted_config(redis_server.url, "{a}", "window")
    config["auth"] = {"keys": [{"id": "cfg", "key": "config-key-1"}]}     # client keys required
    async with gateway_with(config, a=MockVendor(reply="hi")) as gw:
        minted = gw.app.minted
        assert minted.followed
        with trio.fail_after(30):     # the reload the start-up subscription asks for is done (it would take the record in)
            while minted.reloads_total < 2:
                await trio.sleep(0.01)
        # a record written the way another replica writes it, published on a channel nobody hears
        secret = "bb-written-elsewhere-0123456789"
        record = {"id": "elsewhere", "key_sha256": hash_secret(secret), "created": 1.0, "revoked": None}
        conn = await RespConnection.open("127.0.0.1", redis_server.port)
        await conn.call("EVAL", _WRITE_LUA, 3, "window:client_keys", "window:client_keys:live",
                        "window:client_keys:rev", "elsewhere", record["key_sha256"],
                        __import__("orjson").dumps(record), "nobody-listens", "insert")
        await conn.aclose()
        before = await command_counts(redis_server.url)
        for _ in range(3):
            with pytest.raises(openai.AuthenticationError):
                await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret))
        assert delta(before, await command_counts(redis_server.url), ignore=("info", "get", "ping")) == {}
        minted.reconcile_every = 0.05         # the reconcile sees the revision moved, and reloads
        minted._reload.set()                  # (wake the sleeping loop so the new period applies)
        with trio.fail_after(30):
            while "elsewhere" not in minted.records:
                await trio.sleep(0.02)
        assert await sdk(lambda: openai_chat(gw.url, "smart", "x", api_key=secret)) == "hi"


@pytest.mark.sdk
@pytest.mark.slow
async def test_a_key_and_team_limit_stack_is_one_script_per_admit_across_two_serve_processes(tmp_path, redis_server):
    """Two `busbar serve` processes, one redis-server, a key with rpm N (plus tpm, parallel and a
    USD budget, in a team with all four): the official OpenAI SDK sends 20 requests through
    both at once.  The limit holds across the two (N admitted, not 2 x N), and Redis evaluates
    one script per admit and one per settle (ADR 0010, 2026-12-02: one script per batch)."""
    import time

    import openai

    from cluster_support import Replica, eventually, start_all
    from redis_support import command_counts, delta
    n = 6
    vendor = MockVendor(reply="hi")
    async with trio.open_nursery() as nursery:
        await nursery.start(vendor.serve)
        config = {
            "providers": {"oai": {"protocol": "openai", "base_url": vendor.url + "/v1", "key": "sk-upstream"}},
            "pools": {"smart": {"members": [{"provider": "oai", "model": "gpt-4o",
                                             "price": {"input": 1.0, "output": 2.0}}]}},
            "auth": {"teams": {"eng": {"limits": {"rpm": 1000, "tpm": 10**7, "parallel": 100},
                                       "budget": {"usd": 1000, "period": "day"}}},
                     "keys": [{"id": "metered", "key": "sk-metered", "team": "eng",
                               "limits": {"rpm": n, "tpm": 10**7, "parallel": 50},
                               "budget": {"usd": 100, "period": "day"}},
                              {"id": "warm", "key": "sk-warm-key", "limits": {"rpm": 1000}}]},
            "admin": {"usage_db": "off"},
            # a generous timeout: a loaded 2-core box must not trip the degraded mode by accident
            "state": {"backend": "redis", "url": redis_server.url, "prefix": "stack", "timeout_ms": 1000},
        }
        a, b = Replica(tmp_path, "A", config), Replica(tmp_path, "B", config)
        try:
            await start_all(a, b)

            def chat(url, key):
                client = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
                try:
                    return client.chat.completions.create(
                        model="smart", messages=[{"role": "user", "content": "x"}]).choices[0].message.content
                except openai.RateLimitError as refused:
                    assert refused.response.headers.get("retry-after")
                    return 429
            assert await trio.to_thread.run_sync(chat, a.url, "sk-warm-key") == "hi"     # loads the script
            assert await trio.to_thread.run_sync(chat, b.url, "sk-warm-key") == "hi"
            warm = len(vendor.received)
            await trio.sleep(0.3)                   # the warm requests' settles are in
            before = await command_counts(redis_server.url)
            answers = []

            async def fire(url):
                for _ in range(5):
                    answers.append(await trio.to_thread.run_sync(chat, url, "sk-metered"))
            started = time.monotonic()
            async with trio.open_nursery() as clients:
                for url in (a.url, b.url, a.url, b.url):
                    clients.start_soon(fire, url)
            elapsed = time.monotonic() - started
            admitted, refused = answers.count("hi"), answers.count(429)
            assert admitted + refused == 20
            # the bucket is shared: N, plus what it refilled (N/60 per second) while the test ran
            assert n <= admitted <= n + int(elapsed * n / 60), (admitted, elapsed)
            assert len(vendor.received) - warm == admitted          # refused ones never went upstream

            expected = 2 * admitted + refused       # one admit each, one settle per admitted request

            async def all_settled():
                served = delta(before, await command_counts(redis_server.url))
                return served if served.get("evalsha") == expected else None
            served = await eventually(all_settled, f"{expected} script evaluations")
            await trio.sleep(0.3)
            served = delta(before, await command_counts(redis_server.url))
            assert served["evalsha"] == expected, served            # and no more after
            assert "eval" not in served and "mget" not in served, served   # loaded once; reads in the script
        finally:
            logs = [r.stop() for r in (a, b) if r.proc is not None]
            nursery.cancel_scope.cancel()
    for log in logs:
        assert "Traceback" not in log and "sk-metered" not in log, log
