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
    async def worker():
        for _ in range(n):
            if (await state.take_counter("rpm", 1, 450, ttl_s=60)).ok:
                admitted["counter"] += 1
            if (await state.take_bucket("rps", 1, rate=0.01, burst=450)).ok:
                admitted["bucket"] += 1
    async with trio.open_nursery() as nursery:
        for _ in range(4):                   # 4 connections per process
            nursery.start_soon(worker)
    print(json.dumps(admitted))
trio.run(main, sys.argv[1], int(sys.argv[2]))
"""


def test_two_processes_hammering_admit_exactly_the_limit(redis_server):
    procs = [subprocess.Popen([sys.executable, "-c", HAMMER, redis_server.url, "75"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:                          # both start together
        p.stdin.write("go\n")
        p.stdin.flush()
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # 300 takes of each kind per process, 600 in all, for a limit of 450 / a burst of 450:
    # more than one process can take alone, so the limit holds only if both count in one place
    assert sum(r["counter"] for r in results) == 450  # the bound while Redis answers: 0 overshoot
    # 450 burst + at most 0.01/s x the run's few seconds of refill
    assert 450 <= sum(r["bucket"] for r in results) <= 451
    # both competed for the same limit: whatever the scheduling (one process may run far ahead
    # of the other on a loaded box), each was admitted at least what the other left, 450 - 300
    for kind in ("counter", "bucket"):
        assert all(r[kind] >= 150 for r in results), results


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


async def test_gateway_shows_the_state_backend_in_admin_and_metrics(redis_server, monkeypatch):
    """Over sockets: /admin/api/state and /metrics say which backend and whether it is degraded."""
    import httpx

    from busbar.mock import MockVendor
    from harness import gateway_with
    from test_admin_api import AUTH, CONFIG, chat
    from test_metrics import samples, value

    monkeypatch.setenv("BUSBAR_USAGE_DB", "off")
    config = dict(CONFIG, state={"backend": "redis", "url": redis_server.url, "prefix": "gw", "timeout_ms": 1000})
    async with gateway_with(config, a=MockVendor(), b=MockVendor()) as gw:
        backend = gw.app.state
        assert isinstance(backend, RedisState) and backend.prefix == "gw"
        assert (await backend.take_counter("probe", 1, 5, 60)).ok
        async with httpx.AsyncClient() as client:
            assert (await chat(client, gw.url)).status_code == 200
            admin = (await client.get(gw.url + "/admin/api/state", headers=AUTH)).json()
            assert admin["state"]["backend"] == "redis" and admin["state"]["degraded"] is False
            redis_server.stop()
            backend.timeout_s = 0.2
            assert (await backend.take_counter("probe", 1, 5, 60)).ok      # fail open
            assert (await chat(client, gw.url)).status_code == 200          # requests still served
            s = samples((await client.get(gw.url + "/metrics", headers=AUTH)).text)
            assert value(s, "busbar_state_degraded", backend="redis") == 1
            assert value(s, "busbar_state_outages_total") == 1
            admin = (await client.get(gw.url + "/admin/api/state", headers=AUTH)).json()
            assert admin["state"]["degraded"] is True


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["memory", "redis"])
def test_serve_workers_says_once_when_each_worker_limits_alone(backend, tmp_path, redis_server):
    """`busbar serve --workers 2`: with memory state the parent says so once; with redis it does not."""
    import signal

    import yaml

    from harness import free_port, wait_port

    port = free_port()
    state = {"backend": backend, "url": redis_server.url}
    config = {"providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "key": "sk-x"}},
              "pools": {"smart": {"members": [{"provider": "p", "model": "m"}]}},
              "admin": {"listen": "public"}, "state": state}
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, BUSBAR_USAGE_DB="off")
    proc = subprocess.Popen([sys.executable, "-m", "busbar.cli", "serve", "--config", str(path), "--workers", "2",
                             "--port", str(port)], stderr=subprocess.PIPE, text=True, env=env)
    try:
        wait_port(port, timeout=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    notices = [line for line in err.splitlines() if "workers routes and limits alone" in line]
    assert len(notices) == (1 if backend == "memory" else 0), err
    assert all("previous_response_id" in line for line in notices), notices    # what else is per worker
