"""A deleted response heard by every replica (ADR 0025): the message the drop script publishes,
read back (anything else on the channel ignored, never raised), the store's tombstones and
doubted copies, and the follower's counter check after a (re)subscribe.  Pure; the same over
two `busbar serve` processes and a real redis-server is in tests/test_stores_replicas.py."""
from __future__ import annotations

import orjson
import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from busbar.item_store import DELETED, ItemStore, decode, decode_turn, key_of, turn_key
from busbar.state.redis import RedisUnavailable
from busbar.state.shared import (REPLAY_EVERY_S, Deletion, PendingDeletions, ResponseDeletions, deletion_message,
                                 deletions_channel, read_deletion)

pytestmark = pytest.mark.pure

USER = [{"role": "user", "content": "hi"}]
OUTPUT = [{"id": "msg_1", "type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "yo"}]}]


def held(store: ItemStore, scope: str = "k", response_id: str = "resp_1") -> tuple[str, str]:
    """A turn and its one item kept in `store`, as a Responses answer leaves them: their keys."""
    store.keep(scope, OUTPUT)
    key, _ = store.keep_turn(scope, response_id, None, USER, OUTPUT)
    return key, key_of(scope, "msg_1")


def published(epoch: int, scope: str = "k", response_id: str = "resp_1", items=("msg_1",)) -> bytes:
    """What redis-server sends subscribers for DROP_LUA's PUBLISH (the counter, a newline, the deletion)."""
    return str(epoch).encode() + b"\n" + deletion_message(scope, response_id, items)


def test_the_published_deletion_reads_back_as_the_keys_it_removes():
    got = read_deletion(published(7))
    assert got == Deletion(7, "k", "resp_1", ("msg_1",))
    assert got.keys() == (turn_key("k", "resp_1"), key_of("k", "msg_1"))
    assert read_deletion(published(1, items=())).keys() == (turn_key("k", "resp_1"),)
    assert deletions_channel("stores") == "stores:items:deleted"
    # ids only: nothing of the turn's content, nor any key material, is published
    assert set(orjson.loads(deletion_message("k", "resp_1", ["msg_1"]))) == {"scope", "response", "items"}


@pytest.mark.parametrize("data", [
    b"", b"7", b"7\n", b"\n{}", b"x\n{}", b"-1\n" + deletion_message("k", "r", []), b"1.5\n{}",
    b"9" * 20 + b"\n" + deletion_message("k", "r", []),        # past a Redis integer
    b"7\nnot json", b"7\n[]", b"7\nnull", b"7\n{}", b'7\n{"scope": "k"}', b'7\n{"scope": "", "response": "r"}',
    b'7\n{"scope": "k", "response": 3}', b'7\n{"scope": "k", "response": "r", "items": "msg_1"}',
    b'7\n{"scope": "k", "response": "r", "items": [1]}', b'7\n{"scope": "k", "response": "r", "items": [""]}',
    b"\xff\xfe\n\xff", "7\n{}", None, 7, ["message", "x"],
], ids=repr)
def test_anything_else_on_the_channel_is_not_a_deletion(data):
    assert read_deletion(data) is None


@given(st.binary(max_size=200))
def test_no_bytes_make_the_reader_raise(data):
    read_deletion(data)
    read_deletion(b"3\n" + data)


def follower(store: ItemStore, counter=0) -> tuple[ResponseDeletions, "FakeState"]:
    state = FakeState(counter)
    return ResponseDeletions(store, state), state


class FakeState:
    """The RedisState the follower reads the deletions counter from (GET), or finds away."""
    prefix = "p"

    def __init__(self, counter):
        self.counter, self.asked = counter, []

    async def command(self, *args):
        self.asked.append(args)
        if isinstance(self.counter, Exception):
            raise self.counter
        return None if self.counter is None else str(self.counter).encode()


def test_a_heard_deletion_leaves_tombstones_in_place_of_the_copies_held():
    store = ItemStore()
    turn, item = held(store)
    other_turn, _ = held(store, response_id="resp_2")
    deletions, _ = follower(store)
    deletions.on_message(published(3))
    assert store.get(turn) == DELETED and store.get(item) == DELETED
    assert decode_turn(store.get(turn)) is None and decode(store.get(item)) is None
    assert decode_turn(store.get(other_turn)) is not None                       # another response untouched
    assert (deletions.received, deletions.applied, deletions.copies_dropped, deletions.heard) == (1, 1, 2, 3)
    deletions.on_message(published(4, response_id="resp_elsewhere", items=("msg_9",)))   # none held here
    assert deletions.copies_dropped == 2 and store.get(turn_key("k", "resp_elsewhere")) == DELETED


def test_garbage_on_the_channel_is_counted_and_changes_nothing():
    store = ItemStore()
    turn, item = held(store)
    deletions, _ = follower(store)
    before = (store.get(turn), store.get(item), len(store))
    for data in (b"", b"1\n[]", b"\xff", b'2\n{"scope": "k", "response": 1}'):
        deletions.on_message(data)
    assert (store.get(turn), store.get(item), len(store)) == before
    assert (deletions.received, deletions.ignored, deletions.applied, deletions.heard) == (4, 4, 0, None)


def test_a_copy_fetched_before_the_deletion_does_not_come_back():
    """The turn's MGET was answered before the delete, but taken in after the deletion was heard."""
    store = ItemStore()
    turn, _ = held(store)
    fetched = store.get(turn)
    store.forget([turn])
    assert store.take_in(turn, fetched) == DELETED and store.get(turn) == DELETED
    fresh = turn_key("k", "resp_fresh")
    assert store.take_in(fresh, fetched) == fetched and store.get(fresh) == fetched


def test_a_resubscribe_doubts_every_copy_and_a_check_or_a_fetch_trusts_one_again():
    store = ItemStore()
    turn, item = held(store)
    deletions, _ = follower(store)
    deletions.on_subscribed(True)
    assert store.doubtful == {turn, item}
    store.take_in(item, store.get(item))             # a fresh copy from the cluster: no longer doubted
    assert store.doubtful == {turn}
    store.forget([turn])
    assert not store.doubtful


async def checked(deletions: ResponseDeletions) -> None:
    """Let `run` read the counter once after the subscribe."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deletions.run)
        for _ in range(20):               # the fake GET answers at once: a few scheduling rounds are plenty
            await trio.sleep(0)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("counter, doubted", [(5, False), (6, True), (0, True), (None, True),
                                              (RedisUnavailable("away"), True), ("garbage", True)],
                         ids=["unmoved", "moved", "went-back", "absent", "redis-away", "unreadable"])
async def test_the_counter_unmoved_since_last_heard_clears_the_doubt(counter, doubted):
    store = ItemStore()
    turn, item = held(store)
    deletions, state = follower(store, 5)
    deletions.on_subscribed(True)          # at start: nothing heard yet, so the counter is taken as it is
    await checked(deletions)
    assert deletions.heard == 5 and store.doubtful == {turn, item}     # (the copies predate the first read)
    deletions.on_subscribed(False)
    state.counter = counter
    deletions.on_subscribed(True)
    await checked(deletions)
    assert bool(store.doubtful) is doubted
    assert state.asked[-1] == ("GET", "p:items:deletions")


async def test_a_counter_read_overtaken_by_another_resubscribe_clears_nothing():
    """The first read was sent before a deletion this replica then missed (its subscription
    dropped and came back meanwhile): its stale answer must not vouch for the copies."""
    store = ItemStore()
    held(store)
    deletions, state = follower(store, 5)
    deletions.heard = 5
    answers, gate = [b"5", b"6"], trio.Event()

    async def command(*args):
        await gate.wait()
        return answers.pop(0)
    state.command = command
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deletions.run)
        deletions.on_subscribed(True)
        for _ in range(5):
            await trio.sleep(0)             # the first read is out
        deletions.on_subscribed(False)
        deletions.on_subscribed(True)       # (a deletion went by in between)
        gate.set()
        for _ in range(20):
            await trio.sleep(0)
        nursery.cancel_scope.cancel()
    assert not answers and deletions.heard == 6 and store.doubtful


# --- deletions made while Redis is unreachable from this replica: kept, then replayed ---

class DroppingState(FakeState):
    """The RedisState the drop script runs on: `up` False raises like an outage; each run recorded."""

    def __init__(self, counter=0, up=True):
        super().__init__(counter)
        self.up, self.drops = up, []

    async def run_script(self, lua, keys, *args, timeout_s=None):
        if not self.up:
            raise RedisUnavailable("away")
        self.counter = (self.counter or 0) + 1
        self.drops.append((keys, args[-1]))
        return self.counter


def deleting(store: ItemStore, counter=0, up=True, limit=10) -> tuple[ResponseDeletions, DroppingState]:
    state = DroppingState(counter, up)
    return ResponseDeletions(store, state, pending_limit=limit), state


def deletion(n: int) -> tuple[tuple[str, ...], bytes]:
    rid = f"resp_{n}"
    return (turn_key("k", rid), key_of("k", f"msg_{n}")), deletion_message("k", rid, [f"msg_{n}"])


def test_the_pending_set_keeps_order_counts_a_response_once_and_refuses_when_full():
    pending = PendingDeletions(limit=2)
    assert pending.add(*deletion(1)) and pending.add(*deletion(2)) and pending.add(*deletion(1))   # (twice: once)
    assert len(pending) == 2 and pending.added == 2
    assert not pending.add(*deletion(3))                          # full: the new one refused, none forgotten
    assert pending.refused == 1 and [keys for keys, _ in pending.due()] == [deletion(1)[0], deletion(2)[0]]
    pending.done(deletion(1)[0])
    pending.done(deletion(1)[0])                                  # (replayed twice: counted once)
    assert len(pending) == 1 and pending.replayed == 1 and pending.add(*deletion(3))


async def test_a_deletion_published_at_once_is_not_pending():
    deletions, state = deleting(ItemStore())
    assert await deletions.delete(*deletion(1))
    keys, message = state.drops[0]
    assert keys == ("items:deletions", "items:" + deletion(1)[0][0], "items:" + deletion(1)[0][1])
    assert message == deletion(1)[1]
    s = deletions.status()
    assert (s["published"], s["pending"], s["pending_added"], s["replayed"]) == (1, 0, 0, 0)


async def test_a_deletion_redis_cannot_take_is_kept_then_replayed_on_the_resubscribe():
    store = ItemStore()
    held(store)
    deletions, state = deleting(store, up=False)
    assert await deletions.delete(*deletion(1)) and await deletions.delete(*deletion(2))    # answered: kept
    assert not state.drops and deletions.status()["pending"] == 2
    await checked(deletions)                       # no resubscribe yet, Redis still away: nothing replayed
    assert len(deletions.pending) == 2
    state.up = True
    deletions.on_subscribed(True)
    await checked(deletions)
    assert [message for _, message in state.drops] == [deletion(1)[1], deletion(2)[1]]      # oldest first
    s = deletions.status()
    assert (s["pending"], s["pending_added"], s["replayed"], s["published"]) == (0, 2, 2, 0)


async def test_a_replay_stops_at_the_first_failure_and_keeps_the_rest():
    deletions, state = deleting(ItemStore(), up=False)
    for n in (1, 2, 3):
        await deletions.delete(*deletion(n))
    calls = []

    async def flaky(lua, keys, *args, timeout_s=None):
        calls.append(keys)
        if len(calls) == 2:
            raise RedisUnavailable("away again")
        return len(calls)
    state.run_script = flaky
    assert await deletions.replay() == 1
    assert [keys for keys, _ in deletions.pending.due()] == [deletion(2)[0], deletion(3)[0]]
    assert await deletions.replay() == 2 and not deletions.pending


async def test_pending_deletions_are_retried_without_a_resubscribe(autojump_clock):
    """Redis back for commands while the subscription never dropped: the retry each second."""
    deletions, state = deleting(ItemStore(), up=False)
    await deletions.delete(*deletion(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(deletions.run)
        await trio.sleep(REPLAY_EVERY_S * 2.5)
        assert deletions.pending and not state.drops
        state.up = True
        await trio.sleep(REPLAY_EVERY_S * 1.5)
        assert not deletions.pending and len(state.drops) == 1
        nursery.cancel_scope.cancel()


async def test_when_full_a_deletion_is_refused_and_counted():
    deletions, state = deleting(ItemStore(), up=False, limit=1)
    assert await deletions.delete(*deletion(1))
    assert not await deletions.delete(*deletion(2))
    s = deletions.status()
    assert (s["pending"], s["refused"], s["pending_limit"]) == (1, 1, 1)


async def test_its_own_replays_do_not_leave_the_copies_doubtful():
    """The counter moved by exactly this replica's replays since it last heard: nothing missed."""
    store = ItemStore()
    held(store)
    deletions, state = deleting(store, counter=5)
    deletions.heard = 5
    state.up = False
    await deletions.delete(*deletion(1))
    deletions.on_subscribed(False)
    state.up = True
    deletions.on_subscribed(True)
    await checked(deletions)
    assert state.counter == 6 and not deletions.pending and not store.doubtful


async def test_another_replicas_deletion_besides_the_replays_keeps_the_doubt():
    store = ItemStore()
    held(store)
    deletions, state = deleting(store, counter=5)
    deletions.heard = 5
    state.up = False
    await deletions.delete(*deletion(1))
    deletions.on_subscribed(False)
    state.up, state.counter = True, 6              # one deletion elsewhere went by while away
    deletions.on_subscribed(True)
    await checked(deletions)
    assert state.counter == 7 and store.doubtful


def test_the_deletion_counts_are_on_metrics_from_the_admin_numbers():
    from prometheus_client.parser import text_string_to_metric_families
    from busbar.admin.metrics import _deletion_families
    status = {"published": 3, "pending": 2, "pending_added": 4, "replayed": 2, "refused": 1, "applied": 5,
              "ignored": 1, "copies_dropped": 7, "doubtful": 0, "rechecked": 9}

    class Registry:
        def collect(self):
            return _deletion_families(status)
    from prometheus_client import generate_latest
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in text_string_to_metric_families(generate_latest(Registry()).decode()) for s in f.samples}
    assert got[("busbar_response_deletions_total", (("outcome", "published"),))] == 3
    assert got[("busbar_response_deletions_total", (("outcome", "pending"),))] == 4
    assert got[("busbar_response_deletions_total", (("outcome", "replayed"),))] == 2
    assert got[("busbar_response_deletions_total", (("outcome", "refused"),))] == 1
    assert got[("busbar_response_deletions_pending", ())] == 2
    assert got[("busbar_response_deletions_heard_total", (("result", "applied"),))] == 5
    assert got[("busbar_response_deletions_rechecked_total", ())] == 9
    assert got[("busbar_response_deletions_copies_dropped_total", ())] == 7


async def test_a_delete_refused_when_the_pending_set_is_full_keeps_the_response_here():
    """The DELETE path (`busbar.stored_responses._delete`): Redis away and no room to remember one
    more, the caller gets a 503 (overloaded, a Retry-After) and nothing is deleted, here or anywhere."""
    from types import SimpleNamespace

    from busbar.faults import ClientError
    from busbar.stored_responses import _delete
    store = ItemStore()
    turn, item = held(store)
    deletions, state = deleting(store, up=False, limit=1)
    await deletions.delete(*deletion(9))
    gw = SimpleNamespace(item_store=store, shared_items=None, app=SimpleNamespace(deletions=deletions))
    shown = decode_turn(store.get(turn))._replace(shown={"ids": [["msg_1", "completed"]]})
    with pytest.raises(ClientError) as refused:
        await _delete(gw, "k", "resp_1", shown)
    assert refused.value.status == 503 and refused.value.kind == "overloaded" and refused.value.retry_after
    assert decode_turn(store.get(turn)) is not None and decode(store.get(item)) is not None
    state.up = True                                   # room again (Redis back): deleted and published
    await deletions.replay()
    await _delete(gw, "k", "resp_1", shown)
    assert store.get(turn) == DELETED and store.get(item) == DELETED
    assert state.drops[-1][0] == ("items:deletions", "items:" + turn, "items:" + item)
