"""The minted-key cache's law (busbar.tenancy.minted.MintedKeys): each record
carries the store's revision and the newer one wins, so pub/sub messages,
reloads and this process's own writes agree in any order; a store whose
revision went back (a flushed Redis) is taken as it is.  I/O-free: the store
here is a list in memory."""
from __future__ import annotations

import itertools

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from busbar.tenancy import Tenancy, hash_secret
from busbar.tenancy.minted import MintedKeys
from busbar.faults import ClientError

pytestmark = pytest.mark.pure


class ListStore:
    """The store's contract (load, revision, insert, update) over a dict."""
    refresh_every = 30.0
    channel = "test:client_keys"

    def __init__(self):
        self.rows, self.rev = {}, 0

    async def load(self):
        return list(self.rows.values())

    async def revision(self):
        return self.rev

    async def insert(self, record):
        if record["id"] in self.rows:
            return None
        return self._put(record)

    async def update(self, record):
        return self._put(record)

    def _put(self, record):
        self.rev += 1
        self.rows[record["id"]] = (self.rev, dict(record))
        return self.rev


def record(key_id: str, secret: str, revoked=None, **fields) -> dict:
    return {"id": key_id, "key_sha256": hash_secret(secret), "created": 1.0, "revoked": revoked, **fields}


def message(rev: int, rec: dict) -> bytes:
    return str(rev).encode() + b"\n" + orjson.dumps(rec)


def test_a_message_takes_effect_on_the_request_path_and_an_older_one_never_undoes_it():
    keys = MintedKeys(ListStore())
    tenancy = Tenancy([], {}, None, minted=keys)
    keys.on_message(message(1, record("app", "bb-secret-1", pools=["smart"])))
    assert tenancy.authenticate("bb-secret-1").id == "app"
    keys.on_message(message(3, record("app", "bb-secret-1", revoked=2.0)))
    keys.on_message(message(2, record("app", "bb-secret-1", pools=["cheap"])))     # late, older
    with pytest.raises(ClientError) as refused:
        tenancy.authenticate("bb-secret-1")
    assert refused.value.status == 401 and keys.records["app"]["revoked"] == 2.0
    keys.on_message(b"garbage")                       # a message this version cannot read: ignored
    assert keys.applied_total == 2


@settings(max_examples=200, deadline=None)
@given(st.permutations(range(6)), st.integers(0, 6))
def test_messages_and_a_reload_in_any_order_end_at_the_newest_revision(order, reload_at):
    import trio
    store = ListStore()
    history = [record("app", "bb-s", pools=[f"p{i}"]) for i in range(5)] + [record("app", "bb-s", revoked=9.0)]
    revs = [store._put(r) for r in history]          # the store's table holds the last one
    keys = MintedKeys(store)
    for step, i in enumerate(order):
        if step == reload_at:
            trio.run(keys.load)
        keys.on_message(message(revs[i], history[i]))
    assert keys.records["app"] == history[-1] and not keys.by_hash


async def test_own_writes_and_their_echo_agree_and_a_store_that_went_back_is_taken_as_it_is():
    store = ListStore()
    keys = MintedKeys(store)
    made, secret = await keys.create({"id": "app"})
    assert keys.by_hash[hash_secret(secret)].id == "app"
    keys.on_message(message(store.rev, made))          # this process's own write, echoed
    assert keys.by_hash[hash_secret(secret)].id == "app"
    await keys.revoke("app")
    keys.on_message(message(1, made))                  # the creation's echo arriving after the revocation
    assert not keys.by_hash
    # a flushed store (revision back to 0): its (empty) table is the truth for every replica
    store.rows, store.rev = {}, 0
    await keys.load()
    assert keys.records == {} and not keys.active


async def test_ids_of_config_keys_shadow_minted_ones_also_when_they_arrive_by_message():
    keys = MintedKeys(ListStore())
    Tenancy.from_config({"keys": [{"id": "team-a", "key": "config-key-a"}]}, minted=keys)
    keys.on_message(message(1, record("team-a", "bb-other")))
    assert not keys.by_hash and "team-a" in keys.records


async def test_without_a_key_store_the_alert_marker_lives_in_the_state_backend_a_reload_does_not_refire():
    from busbar.ir import Usage
    from busbar.state import MemoryState
    state = MemoryState()
    auth = {"keys": [{"id": "k", "key": "client-secret-k", "budget": {"tokens": 200, "alert": 0.25}}]}
    fired = []
    for _ in range(2):                               # the second Tenancy is what a hot reload builds
        tenancy = Tenancy.from_config(auth, state)
        for _ in range(3):
            adm = await tenancy.admit("client-secret-k", "smart", 0)
            await tenancy.settle(adm, Usage(20, 0))
            fired.append(adm.alerts)
    assert fired == [[], [], ["k"], [], [], []]      # crossed at 60 of 200 (alert 25 %), once
