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
from busbar.state.shared import Deletion, ResponseDeletions, deletion_message, deletions_channel, read_deletion

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
