"""Tenancy core (I/O-free, injected clocks): keys, permissions, expiry,
limits, budgets with teams and downgrade, pricing."""

import hashlib

import pytest
import trio

from busbar.faults import ClientError
from busbar.ir import Usage
from busbar.state import MemoryState
from busbar.tenancy import Price, Tenancy

pytestmark = pytest.mark.pure


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


WALL = 1_780_000_000.0   # 2026-05-28


def make(auth, t=None):
    clock = t or Clock()
    return Tenancy.from_config(auth, MemoryState(clock), wall=lambda: WALL + clock.t), clock


def run(coro_fn, *args):
    return trio.run(coro_fn, *args)


def refusal(tenancy, *args, **kw) -> ClientError:
    async def go():
        with pytest.raises(ClientError) as info:
            await tenancy.admit(*args, **kw)
        return info.value
    return trio.run(go)


def test_plain_string_keys_and_hashes_authenticate_unknown_and_missing_do_not():
    digest = hashlib.sha256(b"hashed-secret").hexdigest()
    t, _ = make({"keys": ["plain-key", {"id": "h", "key_sha256": digest}]})
    assert t.authenticate("plain-key").id.startswith("key-")
    assert t.authenticate("hashed-secret").id == "h"
    for secret in ("nope", None, ""):
        with pytest.raises(ClientError) as info:
            t.authenticate(secret)
        assert info.value.status == 401 and info.value.kind == "authentication"
        assert "nope" not in info.value.message


def test_expired_key_gets_the_auth_error():
    t, _ = make({"keys": [{"id": "old", "key": "k1", "expires": "2020-01-01"}]})
    err = refusal(t, "k1", "smart", 10)
    assert err.status == 401 and "expired" in err.message


def test_pools_and_direct_routes():
    t, _ = make({"keys": [{"id": "a", "key": "ka", "pools": ["smart"]},
                          {"id": "d", "key": "kd", "pools": ["smart"], "direct": True}]})
    err = refusal(t, "ka", "cheap", 10)
    assert err.status == 403 and "`cheap`" in err.message and "smart" not in err.message
    assert refusal(t, "ka", "oai/gpt-4o", 10, known_pool=False).status == 403
    run(t.admit, "ka", "smart", 10)
    trio.run(lambda: t.admit("kd", "oai/gpt-4o", 10, known_pool=False))


def test_rpm_admits_exactly_the_limit_then_429_with_retry_after():
    t, clock = make({"keys": [{"id": "r", "key": "k", "limits": {"rpm": 10}}]})

    async def go():
        ok, refused = 0, []
        for _ in range(30):
            try:
                await t.admit("k", "p", 1)
                ok += 1
            except ClientError as err:
                refused.append(err)
        return ok, refused
    ok, refused = trio.run(go)
    assert ok == 10 and len(refused) == 20
    assert all(e.status == 429 and e.kind == "rate_limit" and e.retry_after > 0 for e in refused)
    assert t.limited["rpm"] == 20
    clock.t += 6.0           # one request's worth refilled
    run(t.admit, "k", "p", 1)


def test_parallel_slots_are_given_back_at_settle():
    t, _ = make({"keys": [{"id": "p", "key": "k", "limits": {"parallel": 2}}]})

    async def go():
        a = await t.admit("k", "p", 1)
        await t.admit("k", "p", 1)
        with pytest.raises(ClientError) as info:
            await t.admit("k", "p", 1)
        assert info.value.status == 429
        await t.settle(a, Usage(1, 1))
        await t.settle(a, Usage(1, 1))      # idempotent: no second slot freed
        await t.admit("k", "p", 1)
        with pytest.raises(ClientError):
            await t.admit("k", "p", 1)
    trio.run(go)


def test_tpm_admits_on_estimate_and_settles_on_real_usage():
    t, _ = make({"keys": [{"id": "t", "key": "k", "limits": {"tpm": 1000}}]})

    async def go():
        a = await t.admit("k", "p", 900)
        with pytest.raises(ClientError):
            await t.admit("k", "p", 200)
        await t.settle(a, Usage(50, 50))      # used 100 of the 900 estimated: 800 back
        await t.admit("k", "p", 800)
    trio.run(go)


def test_team_limits_apply_together_and_all_or_nothing():
    auth = {"teams": {"plat": {"limits": {"rpm": 2}}},
            "keys": [{"id": "a", "key": "ka", "team": "plat", "limits": {"rpm": 5}},
                     {"id": "b", "key": "kb", "team": "plat", "limits": {"rpm": 5}}]}
    t, _ = make(auth)
    run(t.admit, "ka", "p", 1)
    run(t.admit, "kb", "p", 1)
    err = refusal(t, "ka", "p", 1)
    assert "`plat`" in err.message
    # the refused request did not use the key's own rpm: 3 more fit once the team allows
    assert t.state._refilled("tenancy:a:rpm", 5 / 60, 5, t.state._now()) == pytest.approx(4.0)


def test_token_budget_crossing_request_completes_next_refused_with_quota_error():
    t, _ = make({"keys": [{"id": "b", "key": "k", "budget": {"tokens": 100, "period": "day"}}]})

    async def go():
        a = await t.admit("k", "p", 10)
        await t.settle(a, Usage(40, 20))
        a = await t.admit("k", "p", 10)        # 60 spent: admitted, and crosses
        await t.settle(a, Usage(40, 20))
        with pytest.raises(ClientError) as info:
            await t.admit("k", "p", 10)
        return info.value
    err = trio.run(go)
    assert err.kind == "billing" and err.code == "insufficient_quota" and err.status == 429


def test_usd_budget_downgrades_to_cheaper_pool():
    auth = {"keys": [{"id": "d", "key": "k", "budget": {"usd": 0.01, "period": "month"},
                      "over_budget": {"downgrade": "cheap"}}]}
    t, _ = make(auth)
    price = Price(2.5, 10.0)

    async def go():
        a = await t.admit("k", "smart", 10)
        assert a.pool == "smart"
        cost = await t.settle(a, Usage(2000, 1000), price)
        assert cost == pytest.approx((2000 * 2.5 + 1000 * 10) / 1e6)
        a = await t.admit("k", "smart", 10)
        assert a.pool == "cheap" and a.downgraded
    trio.run(go)


def test_price_charges_cache_reads_and_writes_once_at_their_rates():
    price = Price(input=3.0, output=15.0, cached_input=0.3, cache_write=3.75)
    usage = Usage(input_tokens=1000, output_tokens=200, cached_tokens=600, cache_creation_tokens=300)
    assert price.cost(usage) == pytest.approx((100 * 3.0 + 600 * 0.3 + 300 * 3.75 + 200 * 15.0) / 1e6)
    # no cache prices: cached input at the input rate, still counted once
    assert Price(1.0, 2.0).cost(Usage(1000, 0, cached_tokens=500)) == pytest.approx(1000 / 1e6)
    # reasoning priced apart only when given
    assert Price(1.0, 2.0, reasoning=4.0).cost(Usage(0, 100, reasoning_tokens=40)) == pytest.approx((60 * 2 + 40 * 4) / 1e6)


def test_a_keys_direct_overrides_the_server_flag_either_way():
    t, _ = make({"keys": [{"id": "on", "key": "k-on", "direct": True}, {"id": "off", "key": "k-off", "direct": False},
                          {"id": "unset", "key": "k-unset"}, "k-plain"]})
    for server_flag in (False, True):
        t.direct_routes = server_flag
        trio.run(lambda: t.admit("k-on", "oai/gpt-4o", 10, known_pool=False))
        err = refusal(t, "k-off", "oai/gpt-4o", 10, known_pool=False)
        assert err.status == 403 and "`oai/gpt-4o`" in err.message and "direct: false" in err.message
        for unset in ("k-unset", "k-plain"):
            if server_flag:
                trio.run(lambda: t.admit(unset, "oai/gpt-4o", 10, known_pool=False))
            else:
                err = refusal(t, unset, "oai/gpt-4o", 10, known_pool=False)
                assert err.status == 403 and "server.direct_routes is off" in err.message
