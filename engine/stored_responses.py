"""The responses the gateway kept, given back (ADR 0025): `GET /v1/responses/{id}`,
`DELETE /v1/responses/{id}` and `GET /v1/responses/{id}/input_items`, in OpenAI's shapes
(openai-python's `Response`, its delete's `{"id", "object": "response", "deleted": true}`,
`ResponseItemList`), so `client.responses.retrieve`, `.delete` and `.input_items.list` work
against a pool of any protocol.

What is given back is the turn `busbar.item_store` keeps for `previous_response_id`
(ADR 0024): its input items, its output items (with the ids and statuses shown) and what the
answer object showed around them (model, created_at, status, incomplete_details, usage).
Per caller scope, as the turns are kept: another key's id is the same 404 as an unknown one.
A turn this replica lacks is looked up in the cluster copy; with Redis on, every lookup reads
it, so a response deleted through another replica is gone here too.

A response a Responses vendor minted and the gateway passed through (ADR 0027) is not kept
here: its id is remembered with the provider and key that made it (`busbar.affinity`), and
the call is forwarded there with that key (`forward`), the vendor's answer passed back as it
sent it.  The same scope rule: another caller's id is never forwarded.

`response_object` and `input_item_list` are I/O-free; `serve` authenticates, looks up and answers.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, quote

import orjson
import trio

from busbar.affinity import Pin, affinity_key
from busbar.background import effective, pending
from busbar.faults import ClientError
from busbar.item_store import DELETED, Turn, decode_turn, deleted, key_of, turn_key
from busbar.protocols.base import JSON_CT
from busbar.protocols.responses import (ITEM_ID_PREFIX, dialect as responses, echo_shown, list_page, listed_item,
                                       query_value)
from busbar.protocols.routes import match_stored_response
from busbar.server import HttpRequest
from busbar.upstream import SlotTimeout, UpstreamError
from busbar.state.shared import deletion_message

if TYPE_CHECKING:
    from busbar.gateway import Gateway

MAX_FORWARDED_BODY = 64 * 1024 * 1024


def response_object(response_id: str, turn: Turn, now: float | None = None) -> dict:
    """The kept turn as the Response object its answer showed: each output item with its
    id and status back; the request's fields it echoes as its answer showed them (the turn
    keeps those the request set, `responses.kept_echo`).  A background response's (ADR 0026) status and `error` as
    they stand at wall-clock time `now` (`busbar.background.effective`)."""
    shown = turn.shown or {}
    if now is not None and shown.get("background"):
        shown = effective(shown, now)
    ids = shown.get("ids") if isinstance(shown.get("ids"), list) else []
    output = []
    for i, item in enumerate(turn.output):
        pair = ids[i] if i < len(ids) and isinstance(ids[i], list) and len(ids[i]) == 2 else (None, None)
        if isinstance(item, dict):
            item = {**({"id": pair[0]} if pair[0] else {}), **item}
            if pair[1]:
                item["status"] = pair[1]
        output.append(item)
    return {"id": response_id, "object": "response", "created_at": shown.get("created_at", 0),
            "status": shown.get("status", "completed"), "error": shown.get("error"),
            "incomplete_details": shown.get("incomplete_details"), "model": shown.get("model", ""),
            "output": output, **echo_shown(shown.get("echo"), turn.previous, bool(shown.get("background"))),
            "usage": shown.get("usage")}


def input_items(response_id: str, turn: Turn) -> list[dict]:
    """The turn's own input items as OpenAI lists them: each a typed item with an id (the
    client's own when it sent one, else one minted from the response id and the item's
    place, stable across calls so `after` pages), a message's text content as parts."""
    out, seen = [], set()
    for k, item in enumerate(turn.input):
        if not isinstance(item, dict):
            continue
        item = listed_item(item)
        item_id = item.get("id")
        if not isinstance(item_id, str) or not item_id or item_id in seen:
            item_id = f"{ITEM_ID_PREFIX.get(item['type'], 'item')}_{response_id}_input_{k}"
        seen.add(item_id)
        out.append({"id": item_id, **{key: v for key, v in item.items() if key != "id"}})
    return out


def input_item_list(response_id: str, turn: Turn, query: dict[str, list[str]]) -> dict:
    """One page of `input_items` (`order`, `limit`, `after`: `list_page`)."""
    return list_page(input_items(response_id, turn), query, f"input item '{{after}}' in response '{response_id}'")


def scopes(gw: "Gateway", request: HttpRequest) -> tuple[str, ...]:
    """Whose kept turns the caller may name, as POST keeps them (`Exchange._recall`): its
    key's id; `-` without client keys, or for the open pools' (`auth: false`) turns,
    which any caller of those pools may continue too.  A 401 for a wrong key."""
    tenancy = gw.tenancy
    if tenancy is None or not tenancy.required:
        return ("-",)
    secret = responses.inbound_key(request.headers, request.query)
    if not secret and gw.open_pools:
        return ("-",)
    key = tenancy.authenticate(secret)
    return (key.id, "-") if gw.open_pools else (key.id,)


async def _lookup(gw: "Gateway", scopes: tuple[str, ...], response_id: str) -> tuple[str, Turn] | None:
    """(scope, turn) of a kept response: this replica's copy, checked against the cluster's
    (a tombstone there: deleted through another replica)."""
    store, shared = gw.item_store, gw.shared_items
    for scope in scopes:
        key = turn_key(scope, response_id)
        data = store.get(key)
        if shared is not None:
            remote = (await shared.get_many([key])).get(key)
            if remote is not None and (data is None or deleted(remote) or pending(data)):
                store.put(key, remote)         # a tombstone too: continuing it here is refused as well
                data = remote
        turn = decode_turn(data) if data is not None else None
        if turn is not None:
            if turn.dropped:
                raise ClientError(404, f"Response with id '{response_id}' not found: its turn was {turn.dropped} "
                                       f"bytes, over the gateway's limit of {store.max_turn_bytes} per "
                                       "response, and was not kept.", param=None)
            return scope, turn
    return None


def _not_found(gw: "Gateway", response_id: str) -> ClientError:
    # OpenAI's 404 for a response it does not hold: invalid_request_error, no param
    return ClientError(404, f"Response with id '{response_id}' not found. The gateway keeps the responses it "
                            f"answered for this caller (not those made with `store: false`, nor deleted ones) "
                            f"for {gw.item_store.ttl_s / 3600:g} h after their conversation was last continued.",
                       "invalid_request")


async def serve(gw: "Gateway", request: HttpRequest, responder) -> bool:
    """Answer a stored-response request; False when the path is not one."""
    found = match_stored_response(request.path)
    if found is None:
        return False
    response_id, listing = found
    query = parse_qs(request.query.decode("latin-1"), keep_blank_values=True)
    streamed = not listing and request.method == b"GET" and (query_value(query, "stream") or "false").lower() != "false"
    if streamed and gw.background is not None:       # resuming a background stream (ADR 0026)
        await gw.background.serve_resume(gw, request, responder, response_id, query)
        return True
    try:
        body = await _answer(gw, request, response_id, listing, query, streamed)
        if type(body) is Pin:      # a vendor's own response: its answer, as it sent it
            return await forward(gw, request, responder, body, response_id, "/input_items" if listing else "")
    except ClientError as err:
        await responder.send(*responses.render_error(err))
    else:
        await responder.send(200, [JSON_CT], orjson.dumps(body))
    return True


async def pinned(gw: "Gateway", scopes: tuple[str, ...], response_id: str) -> Pin | None:
    """Where a vendor-minted response that passed through for one of `scopes` lives (ADR 0027):
    this replica's entry, else the cluster copy's."""
    affinity, shared = gw.affinity, gw.shared_items
    for scope in scopes:
        key = affinity_key(scope, response_id)
        pin = affinity.get(key)
        if pin is None and shared is not None:
            data = (await shared.get_many([key])).get(key)
            pin = affinity.take_in(key, data) if data is not None else None
        if pin is not None:
            return pin
    return None


async def forward(gw: "Gateway", request: HttpRequest, responder, pin: Pin, response_id: str, tail: str) -> bool:
    """The call, forwarded to the provider that made the response with the key that made it
    (`tail`: "", "/input_items", "/cancel"; the query as the client sent it); the vendor's
    status and body passed back (a 404 too: the vendor's own), secrets scrubbed.  The key not
    configured any more, or the vendor unreachable, is an error in OpenAI's shape saying so."""
    provider = gw.providers.get(pin.provider)
    ring = gw.router.providers.get(pin.provider)
    key = ring.keys.holding(pin.key_id) if ring is not None else None
    if provider is None or key is None:
        raise ClientError(404, f"Response with id '{response_id}' not found here: it was made with key "
                               f"{pin.key_id} of provider '{pin.provider}', which the gateway no longer has, "
                               "and only that key's project holds it.", "invalid_request")
    path, _, query = provider.endpoint.path("", False).partition("?")
    path += "/" + quote(response_id, safe="") + tail
    query = "&".join(q for q in (query, request.query.decode("latin-1")) if q)
    target = (path + ("?" + query if query else "")).encode("latin-1")
    headers = [(b"accept", b"application/json")]
    if request.body:
        headers.append((b"content-type", next((v for k, v in request.headers if k == b"content-type"),
                                              b"application/json")))
    headers += provider.endpoint.auth(key.secret) + provider.extra_headers
    if provider.signer is not None:
        headers.extend(provider.signer(path, headers, request.body))
    timeouts = gw.router.pipelines["default"].timeouts
    pool = gw.upstream.pool(provider.origin, provider.max_connections, provider.transport)
    try:
        response = await pool.request(request.method, target, headers, request.body,
                                      connect_timeout=timeouts.connect, response_timeout=timeouts.first_byte,
                                      slot_wait=gw.slot_wait)
        try:
            with trio.fail_after(timeouts.idle):
                body = await response.read(MAX_FORWARDED_BODY)
        finally:
            await response.aclose()
    except SlotTimeout:
        raise ClientError(503, f"The provider '{pin.provider}' that holds response '{response_id}' has no free "
                               "connection now; retry shortly.", "overloaded", retry_after=1) from None
    except (UpstreamError, trio.TooSlowError) as exc:
        raise ClientError(502, f"The provider '{pin.provider}' that holds response '{response_id}' did not "
                               f"answer: {gw.scrub(str(exc))}", "upstream") from None
    gw.affinity.forwarded += 1
    kept = (b"content-type", b"retry-after", b"x-request-id")
    head = [(k, v) for k, v in response.headers if k in kept] or [JSON_CT]
    head.append((b"x-busbar-member", pin.member.encode("utf-8", "replace")))
    await responder.send(response.status, head, gw.scrub_bytes(body))
    return True


async def _answer(gw: "Gateway", request: HttpRequest, response_id: str, listing: bool,
                  query: dict[str, list[str]], streamed: bool) -> dict | Pin:
    allowed = (b"GET",) if listing else (b"GET", b"DELETE")
    if request.method not in allowed:
        raise ClientError(405, f"Method {request.method.decode('latin-1')} not allowed on this path; use "
                               f"{' or '.join(m.decode() for m in allowed)}.")
    if streamed:            # no background runs here (a gateway without its App): nothing streams again
        raise ClientError(400, "Streaming a stored response is not supported by this gateway without background "
                               "mode; retrieve it without `stream`.", param="stream")
    allowed_scopes = scopes(gw, request)
    found = await _lookup(gw, allowed_scopes, response_id)
    if found is None:
        pin = await pinned(gw, allowed_scopes, response_id)
        if pin is not None:
            return pin
        raise _not_found(gw, response_id)
    scope, turn = found
    if listing:
        return input_item_list(response_id, turn, query)
    if request.method == b"GET":
        return response_object(response_id, turn, time.time())
    await _delete(gw, scope, response_id, turn)
    return {"id": response_id, "object": "response", "deleted": True}


async def _delete(gw: "Gateway", scope: str, response_id: str, turn: Turn) -> None:
    """The turn and its output items (an `item_reference` to one no longer resolves), here
    and in the cluster copy, where each leaves a tombstone and one script publishes the
    deletion, so every replica drops its own copies at once (`ResponseDeletions`)."""
    store = gw.item_store
    ids = (turn.shown or {}).get("ids") or []
    item_ids = tuple(pair[0] for pair in ids if isinstance(pair, list) and pair and isinstance(pair[0], str)
                     and pair[0])
    keys = (turn_key(scope, response_id),) + tuple(key_of(scope, i) for i in item_ids)
    deletions = getattr(getattr(gw, "app", None), "deletions", None)
    if deletions is not None:
        # published, or kept to replay while Redis is unreachable from here (the others serve their
        # copies until then); refused only when too many already wait, and then nothing is deleted
        if not await deletions.delete(keys, deletion_message(scope, response_id, item_ids)):
            raise ClientError(503, "The response was not deleted: the gateway cannot reach its other replicas "
                                   "now and already holds as many deletions waiting for them as it keeps; "
                                   "retry later.", "overloaded", retry_after=5)
        store.forget(keys)
        return
    store.forget(keys)
    if gw.shared_items is not None:
        with trio.CancelScope(shield=True):     # bounded by the backend's timeout
            await gw.shared_items.drop(keys, DELETED, store.ttl_s, deletion_message(scope, response_id, item_ids))
