"""Replicas act as one gateway (issue 14): two `busbar serve` processes on different ports (and
`--workers 2` on one port) share routing state through one real redis-server.  The simulated
vendors' logs say which replica sent what, with which key."""
from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from busbar.mock import MockVendor
from cluster_support import CHAT, Replica, chat_body, eventually, key_state, member, start_all
from redis_support import needs_redis, redis_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.slow, needs_redis]

PRIMARY, BACKUP = "primary", "backup"


def cluster_config(redis_url: str, a: MockVendor, b: MockVendor, **pipeline) -> dict:
    return {
        "providers": {
            "oai": {"protocol": "openai", "base_url": a.url + "/v1", "keys": ["sk-one", "sk-two"]},
            "spare": {"protocol": "openai", "base_url": b.url + "/v1", "key": "sk-spare"},
        },
        "pools": {"smart": {"strategy": "ordered", "members": [
            {"provider": "oai", "model": "gpt-4o", "id": PRIMARY},
            {"provider": "spare", "model": "gpt-4o", "id": BACKUP, "priority": 1}]}},
        "pipelines": {"default": pipeline} if pipeline else {},
        # a generous timeout: a loaded 2-core box must not trip the degraded mode by accident
        "state": {"backend": "redis", "url": redis_url, "prefix": "cl", "timeout_ms": 1000},
    }


@asynccontextmanager
async def vendors():
    a, b = MockVendor(name="a", reply="from a"), MockVendor(name="b", reply="from b")
    async with trio.open_nursery() as nursery:
        await nursery.start(a.serve)
        await nursery.start(b.serve)
        try:
            yield a, b
        finally:
            nursery.cancel_scope.cancel()


@asynccontextmanager
async def replicas(tmp_path, config: dict, *names: str, workers: int = 1):
    running = [Replica(tmp_path, name, config, workers=workers) for name in names]
    try:
        await start_all(*running)
        yield running
    finally:
        logs = [r.stop() for r in running]
        for log in logs:
            assert "Traceback" not in log, log


async def send(replica: Replica, n: int = 1) -> list[int]:
    return [(await replica.post(CHAT, chat_body())).status_code for _ in range(n)]


async def test_a_key_benched_for_billing_and_a_drain_on_one_replica_hold_on_the_other(tmp_path, redis_server):
    async with vendors() as (a, b), replicas(tmp_path, cluster_config(redis_server.url, a, b), "A", "B") as (ra, rb):
        a.fail_next({"status": 402, "key": "sk-one"})             # out of credit
        assert await send(ra) == [200]
        assert [r["key"] for r in a.received] == ["sk-one", "sk-two"]   # A rotated past the billing fault

        async def benched_on_b():
            return key_state(await rb.state(), "oai", 0)["state"] == "disabled"
        await eventually(benched_on_b, "B learns that sk-one is disabled")
        a.received.clear()
        assert await send(rb, 6) == [200] * 6
        assert [r["key"] for r in a.received] == ["sk-two"] * 6       # B never sent with the benched key

        # a drain through A's admin API: B sends nothing new to that member
        assert (await ra.post(f"/admin/members/{PRIMARY}/drain")).status_code == 200

        async def drained_on_b():
            return member(await rb.state(), PRIMARY)["drained"]
        await eventually(drained_on_b, "B learns the drain")
        a.received.clear(), b.received.clear()
        assert await send(rb, 4) == [200] * 4
        assert not a.received and len(b.received) == 4
        # undrained through B: A routes to it again
        assert (await rb.post(f"/admin/members/{PRIMARY}/undrain")).status_code == 200

        async def undrained_on_a():
            return not member(await ra.state(), PRIMARY)["drained"]
        await eventually(undrained_on_a, "A learns the undrain")
        assert await send(ra, 2) == [200] * 2 and len(a.received) == 2
        for state in (await ra.state(), await rb.state()):
            assert state["cluster"]["connected"] and state["cluster"]["dropped_total"] == 0


async def test_a_breaker_opened_on_one_replica_is_open_on_the_other_and_one_probe_runs(tmp_path, redis_server):
    open_for, stall = 4.0, 1.5
    async with vendors() as (a, b):
        config = cluster_config(redis_server.url, a, b, breaker={"failures": 2, "open_for": open_for})
        async with replicas(tmp_path, config, "A", "B") as (ra, rb):
            a.always = {"status": 500}
            opened_before = trio.current_time()   # the breaker opens after this: its open period ends later
            assert await send(ra, 2) == [200, 200]                    # failed over to the backup member
            assert member(await ra.state(), PRIMARY)["breaker"]["state"] == "open"

            async def open_on_b():
                return member(await rb.state(), PRIMARY)["breaker"]["state"] == "open"
            await eventually(open_on_b, "B learns the open breaker")
            a.always = None
            a.received.clear()
            assert await send(rb, 4) == [200] * 4
            # nothing reached the open member while its open period certainly lasted
            assert not [r for r in a.received if r["at"] < opened_before + open_for]

            # past due: both replicas hammered at once; the probe is held for `stall` seconds
            await trio.sleep_until(opened_before + open_for + 0.3)
            a.received.clear()
            a.fail_next({"stall": stall})
            statuses = []

            async def hammer(replica):
                for _ in range(4):
                    statuses.append((await replica.post(CHAT, chat_body())).status_code)

            async with trio.open_nursery() as nursery:
                for replica in (ra, rb, ra, rb):
                    nursery.start_soon(hammer, replica)
            assert statuses == [200] * 16
            probe = a.received[0]["at"]
            assert len([r for r in a.received if r["at"] < probe + stall]) == 1   # one probe cluster-wide

            async def closed_on_both():
                states = [member(await r.state(), PRIMARY)["breaker"]["state"] for r in (ra, rb)]
                return states == ["closed", "closed"]
            await eventually(closed_on_both, "the probe's success closes the breaker on both")
            grants = [(await r.state())["cluster"]["probe_grants_total"] for r in (ra, rb)]
            assert sum(grants) >= 1


async def test_killing_redis_loses_no_request_and_its_restart_reconciles(tmp_path, redis_server):
    import httpx

    async with vendors() as (a, b), replicas(tmp_path, cluster_config(redis_server.url, a, b), "A", "B") as (ra, rb):
        a.fail_next({"status": 402, "key": "sk-one"})
        assert await send(ra) == [200]                               # sk-one benched, shared before the outage
        served = {"A": [], "B": []}
        stop = trio.Event()

        async def traffic(replica):
            async with httpx.AsyncClient(timeout=60) as client:
                while not stop.is_set():
                    served[replica.name].append((await client.post(replica.url + CHAT, json=chat_body())).status_code)

        def count():
            return sum(map(len, served.values()))

        async def connected(*rs, up=True):
            return all([(await r.state())["cluster"]["connected"] is up for r in rs])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(traffic, ra)
            nursery.start_soon(traffic, rb)
            await eventually(lambda: _true(count() >= 10), "traffic flows")
            redis_server.stop()
            await eventually(lambda: connected(ra, rb, up=False), "both notice Redis is gone")
            before = {name: len(s) for name, s in served.items()}
            # a drain while Redis is away stays on A ...
            assert (await ra.post(f"/admin/members/{PRIMARY}/drain")).status_code == 200
            assert not member(await rb.state(), PRIMARY)["drained"]
            await eventually(lambda: _true(all(len(served[n]) >= before[n] + 10 for n in served)),
                             "both keep serving without Redis")
            redis_server.start()                                     # same port, empty
            # ... and reaches B once Redis is back
            await eventually(lambda: connected(ra, rb), "both reconnect")

            async def drained_on_b():
                return member(await rb.state(), PRIMARY)["drained"]
            await eventually(drained_on_b, "the drain made during the outage reaches B")
            stop.set()
        assert all(status == 200 for s in served.values() for status in s), served   # no request lost
        # the restarted (empty) Redis was rebuilt from the replicas: a new replica loads it all
        async with replicas(tmp_path, cluster_config(redis_server.url, a, b), "C") as (rc,):
            state = await rc.state()
            assert member(state, PRIMARY)["drained"] and key_state(state, "oai", 0)["state"] == "disabled"


async def _true(value):
    return value


async def test_workers_2_on_one_port_share_routing_state(tmp_path, redis_server):
    """`busbar serve --workers 2`: the workers share the port and, through Redis, their routing state."""
    async with vendors() as (a, b), replicas(tmp_path, cluster_config(redis_server.url, a, b), "W",
                                             workers=2) as (rw,):
        async def every_worker(check):
            """`check(state)` holds on both workers (fresh connections land on either)."""
            seen = {}
            async def poll():
                state = await rw.state()
                seen[state["cluster"]["node"]] = check(state)
                return len(seen) == 2 and all(seen.values())
            return poll

        await eventually(await every_worker(lambda s: s["cluster"]["connected"]), "both workers up and connected")
        a.fail_next({"status": 402, "key": "sk-one"})
        assert await send(rw) == [200]
        assert [r["key"] for r in a.received] == ["sk-one", "sk-two"]
        await eventually(await every_worker(lambda s: key_state(s, "oai", 0)["state"] == "disabled"),
                         "both workers know sk-one is disabled")
        a.received.clear()
        assert await send(rw, 16) == [200] * 16                  # new connections: spread over both workers
        assert {r["key"] for r in a.received} == {"sk-two"}
        served = {}

        async def both_served():
            state = await rw.state()
            served[state["cluster"]["node"]] = state["totals"]["requests"]
            return len(served) == 2
        await eventually(both_served, "both workers answer")
        assert all(n >= 1 for n in served.values()), served

        assert (await rw.post(f"/admin/members/{PRIMARY}/drain")).status_code == 200   # lands on one worker
        await eventually(await every_worker(lambda s: member(s, PRIMARY)["drained"]), "both workers drained it")
        a.received.clear(), b.received.clear()
        assert await send(rw, 8) == [200] * 8
        assert not a.received and len(b.received) == 8


async def test_workers_2_one_breaker_and_one_probe_across_both(tmp_path, redis_server):
    """`--workers 2`: a breaker opened in one worker is open in the other, and one probe runs."""
    open_for, stall = 4.0, 1.5
    async with vendors() as (a, b):
        config = cluster_config(redis_server.url, a, b, breaker={"failures": 2, "open_for": open_for})
        async with replicas(tmp_path, config, "W", workers=2) as (rw,):
            async def on_every_worker(check):
                seen = {}

                async def poll():
                    state = await rw.state()
                    seen[state["cluster"]["node"]] = check(state)
                    return len(seen) == 2 and all(seen.values())
                return poll

            await eventually(await on_every_worker(lambda s: s["cluster"]["connected"]), "both workers synced")
            a.always = {"status": 500}
            opened_before = trio.current_time()

            async def opened_somewhere():                # consecutive failures are counted per worker
                assert await send(rw) == [200]
                return member(await rw.state(), PRIMARY)["breaker"]["state"] == "open"
            await eventually(opened_somewhere, "a worker opens the breaker")
            await eventually(await on_every_worker(lambda s: member(s, PRIMARY)["breaker"]["state"] == "open"),
                             "both workers have it open")
            a.always = None
            a.received.clear()
            assert await send(rw, 6) == [200] * 6
            assert not [r for r in a.received if r["at"] < opened_before + open_for]

            await trio.sleep_until(trio.current_time() + open_for + 0.3)   # past due wherever it opened
            a.received.clear()
            a.fail_next({"stall": stall})
            statuses = []

            async def hammer():
                for _ in range(4):
                    statuses.append((await rw.post(CHAT, chat_body())).status_code)   # fresh connections
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(hammer)
            assert statuses == [200] * 16
            probe = a.received[0]["at"]
            assert len([r for r in a.received if r["at"] < probe + stall]) == 1
            await eventually(await on_every_worker(lambda s: member(s, PRIMARY)["breaker"]["state"] == "closed"),
                             "the probe's success closes it in both workers")
