"""RedisState against a real redis-server: the MemoryState laws, exactness across two
processes hammering one counter and one bucket, and the degraded mode (killed, flushed)."""

import json
import logging
import math
import os
import subprocess
import sys
import time

import pytest
import trio

from busbar.state import StateBackend, build_state
from busbar.state.redis import RedisState
from busbar.state.resp import RespConnection
from redis_support import needs_redis, redis_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, needs_redis]


def state_for(server, **kw) -> RedisState:
    # generous timeout: a busy 2-core CI box must not trip the degraded mode by accident
    return RedisState(server.url, prefix="t", timeout_s=kw.pop("timeout_s", 2.0), **kw)


async def test_counter_laws_and_expiry(redis_server):
    state = state_for(redis_server)
    assert isinstance(state, StateBackend)
    assert (await state.take_counter("c", 3, 5, ttl_s=60)).ok
    refused = await state.take_counter("c", 3, 5, ttl_s=60)
    assert not refused.ok and refused.level == 3 and 0 < refused.retry_after <= 60
    assert (await state.take_counter("c", 2, 5, ttl_s=60)).level == 5
    assert await state.add_counter("c", -1.5, ttl_s=60) == 3.5
    assert await state.get_counter("c") == 3.5
    assert (await state.take_counter("u", 1e9, None, ttl_s=60)).ok
    assert (await state.take_counter("short", 1, None, ttl_s=0.2)).ok
    await trio.sleep(0.4)
    assert await state.get_counter("short") == 0.0
    assert await state.get_counter("never") == 0.0
    await state.aclose()


async def test_bucket_laws(redis_server):
    state = state_for(redis_server)
    for _ in range(5):
        assert (await state.take_bucket("b", 1, rate=0.001, burst=5)).ok
    refused = await state.take_bucket("b", 1, rate=0.001, burst=5)
    assert not refused.ok and refused.level < 1 and refused.retry_after > 100
    assert (await state.take_bucket("b", 6, rate=1, burst=5)).retry_after == math.inf
    assert await state.settle_bucket("b", 2, rate=0.001, burst=5) < -1.9   # a debt
    assert await state.settle_bucket("b", -100, rate=0.001, burst=5) == 5  # refunds cap at burst
    await state.aclose()


HAMMER = """
import json, sys, trio
from busbar.state.redis import RedisState
async def main(url, n):
    state = RedisState(url, prefix="t", timeout_s=5.0)
    admitted = {"counter": 0, "bucket": 0}
    await state.get_counter("warm")          # connected before the start line
    print("ready", flush=True)
    await trio.to_thread.run_sync(sys.stdin.readline)
    async def one():
        if (await state.take_counter("rpm", 1, 50, ttl_s=60)).ok:
            admitted["counter"] += 1
        if (await state.take_bucket("rps", 1, rate=0.01, burst=40)).ok:
            admitted["bucket"] += 1
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    print(json.dumps(admitted))
trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def test_two_processes_hammering_admit_exactly_the_limit(redis_server):
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, redis_server.url, "120"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:                          # both start together
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(r["counter"] for r in results) == 50   # the bound while Redis answers: 0 overshoot
    # 40 burst + at most 0.01/s x the run's few seconds of refill
    assert 40 <= sum(r["bucket"] for r in results) <= 41
    assert all(r["counter"] > 0 for r in results)      # both really competed


async def test_flushed_redis_reloads_its_scripts(redis_server):
    state = state_for(redis_server)
    assert (await state.take_counter("f", 1, 10, 60)).ok
    conn = await RespConnection.open("127.0.0.1", redis_server.port)
    await conn.call("FLUSHALL")
    await conn.call("SCRIPT", "FLUSH")
    await conn.aclose()
    taken = await state.take_counter("f", 1, 10, 60)
    assert taken.ok and taken.level == 1      # flushed: counts restart, scripts reloaded
    assert not state.degraded
    await state.aclose()


async def test_killed_redis_fails_open_fast_logs_once_and_reconciles(redis_server, caplog):
    caplog.set_level(logging.WARNING, "busbar.state")
    state = RedisState(redis_server.url, prefix="t", timeout_s=0.5, retry_every_s=0.2)
    assert (await state.take_counter("spend", 2, None, 3600)).ok
    redis_server.stop()
    started = time.monotonic()
    for _ in range(20):
        assert (await state.take_counter("spend", 1, 2, 3600)).ok   # open: admitted past the limit
        assert (await state.take_bucket("rps", 1, rate=1, burst=1)).ok
    # one connect attempt fails, the rest answer at once until retry_every_s
    assert time.monotonic() - started < 5
    assert state.degraded and state.status()["degraded"] and state.status()["outages_total"] == 1
    await state.add_counter("spend", 0.5, 3600)
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1

    redis_server.start()              # same port, empty (no persistence)
    await trio.sleep(0.3)
    await state.get_counter("spend")  # first op after retry_every_s reconnects and replays
    assert not state.degraded
    assert await state.get_counter("spend") == 20.5   # what was spent during the outage
    assert any("back after" in r.getMessage() for r in caplog.records)
    await state.aclose()


async def test_unavailable_policies(redis_server):
    redis_server.stop()
    closed = RedisState(redis_server.url, timeout_s=0.2, on_unavailable="closed")
    refused = await closed.take_counter("x", 1, 10, 60)
    assert not refused.ok and refused.retry_after == 1.0
    local = RedisState(redis_server.url, timeout_s=0.2, on_unavailable="local")
    assert [(await local.take_counter("x", 1, 2, 60)).ok for _ in range(3)] == [True, True, False]
    with pytest.raises(ValueError, match="on_unavailable"):
        RedisState(redis_server.url, on_unavailable="maybe")


def test_build_state_from_the_config_section():
    assert type(build_state(None)).__name__ == "MemoryState"
    redis = build_state({"backend": "redis", "url": "redis://10.0.0.1:6380/2", "prefix": "gw1", "timeout_ms": 3})
    assert (redis.host, redis.port, redis.db, redis.prefix, redis.timeout_s) == ("10.0.0.1", 6380, 2, "gw1", 0.003)
    assert os.environ.get("NO_SUCH") is None
