"""The OpenAI Conversations API, served by the gateway (ADR 0030): `POST /v1/conversations`,
`GET`/`POST`/`DELETE /v1/conversations/{id}`, and its items (`POST`/`GET .../items`,
`GET`/`DELETE .../items/{item_id}`), in openai-python's shapes (`Conversation`,
`ConversationDeletedResource`, `ConversationItemList`, `ConversationItem`), so
`client.conversations.*` and `responses.create(conversation=...)` work against a pool of
any protocol (`Exchange._join_conversation` puts the items back before the input and
`Exchange.keep_for_next_turn` appends the turn's input and output).

Kept in the one item store (`busbar.item_store`), per caller scope like the turns
(`busbar.stored_responses.scopes`), with its bounds and TTL, and in the cluster copy when
that is on.  A conversation is a small header (created_at, metadata, the numbers of its
chunks) and immutable chunks, each the items one call added: appending writes one chunk
and the header, O(new items); deleting an item writes its chunk again under a new number.
Every use (a listing, a response) starts the TTL of the header and its chunks over.

`page` and `stored_items` are I/O-free; `serve` authenticates, looks up and answers.
"""
from __future__ import annotations

import logging
import re
import secrets
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

import orjson

from busbar.faults import ClientError
from busbar.item_store import CONVERSATION, DELETED
from busbar.protocols.base import JSON_CT
from busbar.protocols.responses import (ITEM_ID_PREFIX, conversation_of, dialect as responses, item_list,  # noqa: F401
                                       list_page, listed_item)      # (conversation_of: here too)
from busbar.server import HttpRequest

if TYPE_CHECKING:
    from busbar.gateway import Gateway

log = logging.getLogger("busbar.conversations")
UNGUARDED = object()                 # `save` without a compare: a new conversation

MAX_CREATE_ITEMS = 20                # OpenAI's limit on `items` per create / add call
MAX_RACES = 8                        # re-reads of a header another call changed meanwhile (then a 409)
MAX_CHUNKS = 10_000                  # calls that may add to one conversation (a guard; the bytes bound the rest)
MAX_METADATA = 16
_PATH = re.compile(rb"^/(?:v1/)?conversations(?:/(?P<id>[^/]+)(?:/items(?P<items>(?:/[^/]+)?))?)?$")


def header_key(scope: str, conversation_id: str) -> str:
    """A conversation's key: its own namespace, never an item's or a turn's."""
    return f"{scope}/conversation/{conversation_id}"


def chunk_key(scope: str, conversation_id: str, n: int) -> str:
    return f"{scope}/conversation/{conversation_id}/{n}"


def new_id(prefix: str = "conv") -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def match(path: bytes) -> tuple[str | None, str | None, bool] | None:
    """(conversation id, item id, whether it names the items) for a Conversations path, or None."""
    m = _PATH.match(path)
    if m is None:
        return None
    conv = unquote(m["id"].decode("latin-1")) if m["id"] else None
    items = m["items"]
    item = unquote(items[1:].decode("latin-1")) if items else None
    return conv, item, items is not None


def stored_items(items: list, minted_ids: list | None = None) -> list[dict]:
    """Items as a conversation keeps and lists them: each typed, with an id (the client's,
    the one its answer showed (`minted_ids`), else one minted), a message's text content as
    parts and its status."""
    out = []
    for k, item in enumerate(items):
        if not isinstance(item, dict):
            raise ClientError(400, f"Invalid 'items[{k}]': must be an item object.", param=f"items[{k}]")
        item = listed_item(item)
        kind = item["type"]
        if kind == "item_reference":
            raise ClientError(400, f"Invalid 'items[{k}]': an item_reference cannot be added to a conversation; "
                                   "send the item.", param=f"items[{k}]")
        if kind == "message":
            item.setdefault("status", "completed")
        shown = minted_ids[k] if minted_ids is not None and k < len(minted_ids) else None
        item_id = item.get("id") or shown
        if not isinstance(item_id, str) or not item_id:
            item_id = new_id(ITEM_ID_PREFIX.get(kind, "item"))
        out.append({"id": item_id, **{key: v for key, v in item.items() if key != "id"}})
    return out


def page(items: list[dict], query: dict[str, list[str]], conversation_id: str) -> dict:
    """One page of a conversation's items (`order`, `limit`, `after`: `list_page`)."""
    return list_page(items, query, f"item '{{after}}' in conversation '{conversation_id}'")


def conversation_object(conversation_id: str, header: dict) -> dict:
    return {"id": conversation_id, "object": "conversation", "created_at": header.get("created_at", 0),
            "metadata": header.get("metadata") or {}}


def checked_metadata(metadata) -> dict:
    """`metadata` as OpenAI allows it: up to 16 string pairs, keys to 64 and values to 512 characters."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()):
        raise ClientError(400, "Invalid 'metadata': must be an object of up to 16 string pairs, keys up to 64 and "
                               "values up to 512 characters.", param="metadata")
    return metadata


def not_found(conversation_id: str, param: str | None = None) -> ClientError:
    # OpenAI's 404 for a conversation it does not hold (invalid_request_error)
    return ClientError(404, f"Conversation with id '{conversation_id}' not found.", "invalid_request", param=param)


def _decode(data: bytes | None):
    if data is None or data[:1] != CONVERSATION:
        return None
    try:
        return orjson.loads(data[1:])
    except orjson.JSONDecodeError:
        return None


# ---------------------------------------------------------------------------
# the store (this replica's copy, then the cluster's)


async def lookup(gw: "Gateway", scopes: tuple[str, ...], conversation_id: str) -> tuple[str, dict, bytes | None] | None:
    """(scope, header, seen) of a kept conversation; with the cluster copy on, its header is
    read there every time (another replica may have added to it, or deleted it), and `seen`
    is the bytes Redis held (None: none), which a change writes over only if still there."""
    store, shared = gw.item_store, gw.shared_items
    for scope in scopes:
        key = header_key(scope, conversation_id)
        data = store.get(key)
        remote = None
        if shared is not None:
            remote = (await shared.get_many([key])).get(key)
            if remote is not None:
                store.put(key, remote)
                data = remote
        header = _decode(data)
        if isinstance(header, dict):
            return scope, header, remote
    return None


async def load_items(gw: "Gateway", scope: str, conversation_id: str, header: dict) -> list[dict]:
    """Every item of the conversation, oldest first (chunks are immutable: a copy held here
    is good); its TTL, and its chunks', start over here and in the cluster copy."""
    store, shared = gw.item_store, gw.shared_items
    keys = [chunk_key(scope, conversation_id, n) for n in header.get("chunks", ())]
    held = {key: store.get(key) for key in keys}
    missing = [key for key, data in held.items() if data is None]
    if missing and shared is not None:
        for key, data in (await shared.get_many(missing)).items():
            held[key] = store.take_in(key, data)
    items: list[dict] = []
    for key in keys:
        chunk = _decode(held[key])
        if not isinstance(chunk, list):
            raise ClientError(404, f"Conversation with id '{conversation_id}' is no longer wholly kept: part of it "
                                   "was evicted from the gateway's item store (it is bounded); start a new one.",
                              "invalid_request")
        items += chunk
    head = header_key(scope, conversation_id)
    store.touch(head)
    for key in keys:
        store.touch(key)
    if shared is not None:
        await shared.put_many([], store.ttl_s, (head, *keys))
    return items


async def save(gw: "Gateway", scope: str, conversation_id: str, header: dict, added: list[dict] | None = None,
               replaced: tuple[int, list[dict]] | None = None, seen: bytes | None | object = UNGUARDED) -> dict | None:
    """Write the header, with one new chunk of `added` items (or the chunk `replaced`
    names written again under a new number); returns the header written.  With `seen` (the
    header's bytes `lookup` found in the cluster copy) the write is done only if Redis still
    holds them, else None and nothing is written (`update` reads again)."""
    store = gw.item_store
    header = dict(header)
    chunks = list(header.get("chunks", ()))
    entries = []
    new_items = added if added is not None else (replaced[1] if replaced is not None else None)
    if new_items is not None:
        if replaced is None and len(chunks) >= MAX_CHUNKS:
            raise ClientError(400, f"Conversation '{conversation_id}' has had {MAX_CHUNKS} additions, the most the "
                                   "gateway keeps for one; start a new conversation.", param="conversation")
        n = header.get("next", 0)
        data = CONVERSATION + orjson.dumps(new_items)
        if len(data) > store.max_turn_bytes:
            raise ClientError(400, f"The items added to conversation '{conversation_id}' are {len(data)} bytes, over "
                                   f"the gateway's limit of {store.max_turn_bytes} per addition.", param="items")
        if replaced is not None:
            at = chunks.index(replaced[0])
            if new_items:
                chunks[at] = n
            else:
                del chunks[at]
        else:
            chunks.append(n)
        if new_items or replaced is None:
            entries.append((chunk_key(scope, conversation_id, n), data))
            header["next"] = n + 1
    header["chunks"] = chunks
    head = header_key(scope, conversation_id)
    entries.append((head, CONVERSATION + orjson.dumps(header)))
    shared = gw.shared_items
    if shared is not None:
        touch = tuple(chunk_key(scope, conversation_id, c) for c in chunks)
        if seen is UNGUARDED:
            await shared.put_many(entries, store.ttl_s, touch)
        elif await shared.put_many_if(head, seen, entries, store.ttl_s, touch) is False:
            return None         # another call changed it since `seen` (Redis away: this replica's copy, as before)
    for key, data in entries:
        store.put(key, data)
    return header


async def update(gw: "Gateway", scope: str, conversation_id: str, header: dict, seen: bytes | None,
                 edit) -> dict:
    """`edit(header)` (the header to write and `save`'s `added`/`replaced`; None: nothing to
    change) written over the header read; when another call changed it in the cluster copy
    meanwhile (two appends at once through two replicas), read again and edited again, so
    both land.  Without the cluster copy nothing awaits between the read and the write."""
    for _ in range(MAX_RACES):
        change = edit(header)
        if change is None:
            return header
        new_header, kw = change
        written = await save(gw, scope, conversation_id, new_header, seen=seen, **kw)
        if written is not None:
            return written
        found = await lookup(gw, (scope,), conversation_id)
        if found is None:
            raise not_found(conversation_id)
        _, header, seen = found
    raise ClientError(409, f"Conversation '{conversation_id}' is being changed by other requests at the same "
                           "time; retry.", "conflict")


async def append(gw: "Gateway", scope: str, conversation_id: str, items: list[dict]) -> None:
    """A response's input and output items added at the end of its conversation (read
    again first: another call may have added since the request began)."""
    found = await lookup(gw, (scope,), conversation_id)
    if found is None or not items:
        return
    try:
        await update(gw, scope, conversation_id, found[1], found[2], lambda header: (header, {"added": items}))
    except ClientError as err:          # the answer was shown: its turn is not kept, and the log says why
        log.warning("conversation %s: a response's items were not added: %s", conversation_id, err.message)


# ---------------------------------------------------------------------------
# the endpoints


async def serve(gw: "Gateway", request: HttpRequest, responder) -> bool:
    """Answer a Conversations request; False when the path is not one."""
    found = match(request.path)
    if found is None:
        return False
    try:
        status, body = await _answer(gw, request, *found)
    except ClientError as err:
        await responder.send(*responses.render_error(err))
    else:
        await responder.send(status, [JSON_CT], orjson.dumps(body))
    return True


def _body(request: HttpRequest) -> dict:
    if not request.body:
        return {}
    try:
        obj = orjson.loads(request.body)
    except orjson.JSONDecodeError:
        raise ClientError(400, "The request body is not valid JSON.") from None
    if not isinstance(obj, dict):
        raise ClientError(400, "The request body must be a JSON object.")
    return obj


def _items_of(obj: dict, required: bool) -> list:
    items = obj.get("items")
    if items is None and not required:
        return []
    if not isinstance(items, list) or (required and not items):
        raise ClientError(400, "Invalid 'items': must be an array of items.", param="items")
    if len(items) > MAX_CREATE_ITEMS:
        raise ClientError(400, f"Invalid 'items': {len(items)} items, at most {MAX_CREATE_ITEMS} per call.",
                          param="items")
    return items


def _refuse_method(request: HttpRequest, allowed: tuple[bytes, ...]) -> None:
    if request.method not in allowed:
        raise ClientError(405, f"Method {request.method.decode('latin-1')} not allowed on this path; use "
                               f"{' or '.join(m.decode() for m in allowed)}.")


async def _answer(gw: "Gateway", request: HttpRequest, conversation_id: str | None, item_id: str | None,
                  listing: bool) -> tuple[int, dict]:
    from busbar.stored_responses import scopes as caller_scopes
    allowed = caller_scopes(gw, request)
    if conversation_id is None:                              # POST /v1/conversations
        _refuse_method(request, (b"POST",))
        obj = _body(request)
        metadata = checked_metadata(obj.get("metadata"))
        items = stored_items(_items_of(obj, False))
        conversation_id = new_id()
        header = {"created_at": int(time.time()), "metadata": metadata, "chunks": [], "next": 0}
        header = await save(gw, allowed[0], conversation_id, header, added=items or None)
        return 200, conversation_object(conversation_id, header)
    _refuse_method(request, (b"GET", b"POST", b"DELETE") if not listing or item_id else (b"GET", b"POST"))
    found = await lookup(gw, allowed, conversation_id)
    if found is None:
        raise not_found(conversation_id)
    scope, header, seen = found
    query = parse_qs(request.query.decode("latin-1"), keep_blank_values=True)
    if not listing:
        if request.method == b"GET":
            return 200, conversation_object(conversation_id, header)
        if request.method == b"POST":                        # update: metadata
            obj = _body(request)
            if "metadata" not in obj:
                raise ClientError(400, "Missing required parameter: 'metadata'.", param="metadata")
            metadata = checked_metadata(obj["metadata"])
            header = await update(gw, scope, conversation_id, header, seen,
                                  lambda header: ({**header, "metadata": metadata}, {}))
            return 200, conversation_object(conversation_id, header)
        keys = [header_key(scope, conversation_id)] + [chunk_key(scope, conversation_id, n)
                                                       for n in header.get("chunks", ())]
        gw.item_store.forget(keys)
        if gw.shared_items is not None:
            await gw.shared_items.put_many([(key, DELETED) for key in keys], gw.item_store.ttl_s)
        return 200, {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
    if item_id is None:
        if request.method == b"POST":                        # add items
            items = stored_items(_items_of(_body(request), True))
            await update(gw, scope, conversation_id, header, seen, lambda header: (header, {"added": items}))
            return 200, item_list(items)
        return 200, page(await load_items(gw, scope, conversation_id, header), query, conversation_id)
    if request.method == b"POST":
        raise ClientError(405, "Method POST not allowed on this path; use GET or DELETE.")
    items = await load_items(gw, scope, conversation_id, header)
    item = next((i for i in items if i.get("id") == item_id), None)
    if item is None:
        raise ClientError(404, f"Item with id '{item_id}' not found in conversation '{conversation_id}'.",
                          "invalid_request")
    if request.method == b"GET":
        return 200, item
    # DELETE: the chunk that holds it written again without it (chunks are immutable, and
    # `load_items` just brought every one of them here)
    def without_item(header: dict):
        for n in header.get("chunks", ()):
            chunk = _decode(gw.item_store.get(chunk_key(scope, conversation_id, n)))
            if isinstance(chunk, list) and any(i.get("id") == item_id for i in chunk):
                return header, {"replaced": (n, [i for i in chunk if i.get("id") != item_id])}
        return None
    header = await update(gw, scope, conversation_id, header, seen, without_item)
    return 200, conversation_object(conversation_id, header)
