"""busbar.cluster.RoutingSync against a real redis-server, in one process: the snapshot a late
replica loads, ranks (a shorter bench never overwrites a longer one), garbage on the channel,
and the probe lease (one grant among replicas asking at once)."""
import pytest
import trio

from busbar.cluster import RoutingSync
from busbar.routing import Router
from busbar.routing.shared import KeyBench, ProbeWanted
from busbar.state.resp import RespConnection
from redis_support import needs_redis, redis_server  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, needs_redis]

CONFIG = {"providers": {"p": {"protocol": "openai", "base_url": "http://127.0.0.1:9/v1", "keys": ["k1", "k2"]}},
          "pools": {"smart": {"members": [{"provider": "p", "model": "m", "id": "m1"}]}}}


def replica(server, prefix="s"):
    router = Router.from_config(CONFIG)
    sync = RoutingSync(server.url, prefix, timeout_s=2.0)
    sync.attach(router)
    return router, sync


async def until(check):
    with trio.fail_after(20):
        while not check():
            await trio.sleep(0.005)


async def test_changes_travel_ranks_hold_and_a_late_replica_loads_the_snapshot(redis_server):
    (a, sa), (b, sb) = replica(redis_server), replica(redis_server)
    key = a.providers["p"].keys.keys[0]
    async with trio.open_nursery() as nursery:
        await nursery.start(sa.run)
        await nursery.start(sb.run)
        assert sa.connected and sb.connected
        now = trio.current_time()
        sa.emit(KeyBench(key.id, "disable", now + 300, reason="billing 402"))
        b_key = b.providers["p"].keys.keys[0]
        await until(lambda: b_key.disabled_until > now + 299)
        assert b_key.disabled_reason == "billing 402"
        sb.emit(KeyBench(key.id, "disable", now + 10, reason="auth 401"))   # shorter: loses
        await until(lambda: sb.published_total == 1)
        conn = await RespConnection.open("127.0.0.1", redis_server.port)
        await conn.call("PUBLISH", "s:routing", b"garbage")                # ignored, the sync lives on
        await conn.call("PUBLISH", "s:routing", b"x\n[\"cool\"]\n1\nnot json")
        a.set_drained("m1", True)
        await until(lambda: b.targets[("p", "m")].drained)
        (c, sc) = replica(redis_server)
        await nursery.start(sc.run)                                        # loads the hash before serving
        c_key = c.providers["p"].keys.keys[0]
        assert c.targets[("p", "m")].drained
        assert c_key.disabled_until > trio.current_time() + 250 and c_key.disabled_reason == "billing 402"
        stored = await conn.call("HGET", "s:routing", f'["disable","{key.id}"]')
        assert b"billing 402" in stored and b"auth 401" not in stored     # the longer bench kept its place
        nursery.cancel_scope.cancel()
    await conn.aclose()


async def test_one_probe_grant_among_replicas_asking_at_once(redis_server):
    replicas = [replica(redis_server, "g") for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for _, sync in replicas:
            await nursery.start(sync.run)
        for _, sync in replicas:
            sync.emit(ProbeWanted("p", "m"))
        await until(lambda: all(not s._pending for _, s in replicas))
        grants = [r.targets[("p", "m")].breaker.grant_until > trio.current_time() for r, _ in replicas]
        assert grants.count(True) == 1 and sum(s.grants_total for _, s in replicas) == 1
        nursery.cancel_scope.cancel()


async def test_without_redis_probes_are_granted_locally_at_once(redis_server):
    redis_server.stop()
    router, sync = replica(redis_server)
    async with trio.open_nursery() as nursery:
        await nursery.start(sync.run)
        assert not sync.connected and sync.status()["outages_total"] == 1
        sync.emit(ProbeWanted("p", "m"))
        assert router.targets[("p", "m")].breaker.grant_until > trio.current_time()
        assert sync.local_grants_total == 1
        nursery.cancel_scope.cancel()
