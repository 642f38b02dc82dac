"""One request's journey, driven by its lifecycle.

    received ──route──▶ routed ──dispatch──▶ dispatched ──first_byte──▶ streaming ──complete──▶ done
                                              │      ▲
                                        fault │      │ dispatch
                                              ▼      │
                                            failing_over          (any) ──rejected/broken/cancelled──▶ failed

`Exchange.run` reads top-down as that journey: while the request is not
finished, it runs the step its state names (`STEPS`); every move goes
through `Lifecycle.fire`, which refuses what the table does not allow.

* `received`: `_receive`: admission (`busbar.admission`: the envelope, the
  client's key), then routing starts a plan for the pool -> `routed`.
* `routed`, when the pool keeps a response cache (`busbar.cache`): a hit is
  replayed in the client's protocol (`_from_cache`, lifecycle `hit`) and no
  upstream is called; a miss is stored once it is answered (`settle`).
* `routed` / `failing_over`: `_dispatch` asks the plan for the next step:
  wait, give up (-> `failed`, the error in the client's protocol), or one
  attempt.  The attempt is translated (or passed through) for that member's
  protocol, sent, and relayed (`busbar.relay`); it returns an `Outcome` and
  never raises for an upstream fault.
* `settle` is the one funnel for every outcome: router report, lifecycle
  event, attempt record, the operator alert line.  Before the commit a fault
  fails over or goes to the client as the pipeline says; after it the stream
  is ended honestly with the client protocol's error event.

The whole journey after admission runs under the pipeline's deadline; the
server's cancel scope (the client going away) cancels everything it started.

Insertion points for what is not here yet:
* tenancy admission (auth + limits before routing): `busbar.admission.admit`,
  called by `_receive` before `router.start`;
* per-request tracing spans: `Gateway.handle` around `Exchange.run`;
  per-attempt spans and hedging: `_attempt` (one upstream call; hedges are
  more `_attempt`s in a request nursery, each settled through `settle`);
* stream resume (pipeline `streaming.resume`, ADR 0015): `settle` on a
  `Broken` outcome goes `streaming -> failing_over` (`_resume`) and the loop
  dispatches the continuation (busbar.resume), spliced into the open stream;
* secret redaction on every error path: `settle` (the only place an upstream
  error reaches the client) and `Gateway.handle` (our own errors);
* a bounded pre-commit buffer: `busbar.relay.relay_stream` (`held`).
"""
from __future__ import annotations

import dataclasses

import logging
import time
from typing import TYPE_CHECKING

import orjson
import trio

from busbar import admission, conversations, ir, lifecycle, resume, tenancy, truncation
from busbar.affinity import Pin, affinity_key
from busbar.background import PENDING, Rerun, unfinished
from busbar.protocols import expressible
from busbar.cache.entry import Assembler, response_events, replay_id
from busbar.faults import ClientError, Fault, FaultClass
from busbar.item_store import MAX_CHAIN, decode, decode_turn, deleted, key_of, shown_of, stripped, turn_key
from busbar.limits import DIRECT_ROUTES
from busbar.outcome import Answered, Broken, Failed, Inexpressible, Lost, Outcome, Saturated
from busbar.protocols.base import JSON_CT, Headers
from busbar.records import AttemptRecord, RequestRecord
from busbar.relay import read_answer, relay_buffered, relay_stream
from busbar.routing import Attempt, Exhausted, Pinned, Wait
from busbar.server import ClientGone, HttpRequest, Responder
from busbar.upstream import SlotTimeout, UpstreamError

if TYPE_CHECKING:
    from busbar.gateway import Gateway
    from busbar.providers import Provider

log = logging.getLogger("busbar.gateway")
alert_log = logging.getLogger("busbar.alert")

MAX_UPSTREAM_ERROR_BODY = 1024 * 1024


class Exchange:
    """The state one request's steps share (the IR parsed once for all
    attempts, the plan, the warnings of the attempt that answered)."""

    def __init__(self, gateway: "Gateway", request: HttpRequest, responder: Responder, dialect, params: dict,
                 record: RequestRecord):
        self.gw = gateway
        self.request = request
        self.responder = responder
        self.client = dialect
        carried = dialect.header_params(request.headers)     # request headers that are part of the request
        self.params = {**params, **carried} if carried else params
        self.record = record
        self.lifecycle: lifecycle.Lifecycle = record.lifecycle
        self.obj: dict = {}
        self.sent: dict = {}
        self.model = ""
        self.stream = False
        self.plan = None
        self._ir = None
        self._inexpressible: ClientError | None = None   # the last member render that refused the request
        self.stops: list[str] | None = None   # stop strings the gateway emulates for this attempt's member
        self._warnings: list[str] = []   # fields translation dropped for the member that answers
        self._deadline: trio.CancelScope | None = None    # the pipeline's deadline, once routed
        self.span = None                 # the request's trace span (busbar.telemetry), None when tracing is off
        self.traceparent: bytes | None = None   # the current attempt's, sent upstream
        self.tenancy_admission = None       # what busbar.tenancy took for this request, settled at the end
        self.resume_policy = None           # the pipeline's streaming.resume, for a stream; None: off
        self.resuming: resume.Resumption | None = None   # a broken stream being continued elsewhere
        self.cache_lookup = None            # busbar.cache.Lookup when the pool keeps a cache
        self.cache_response: ir.Response | None = None   # a buffered miss's answer, to store
        self.cache_assembler: Assembler | None = None    # a streamed miss's answer, folded as it is relayed
        # where signed reasoning this client cannot carry is kept for its next turn (None: not needed)
        self.reasoning = None
        self._restored = False              # the parsed request got its kept reasoning back
        # where a Responses client's translated answers keep their output items (busbar.item_store)
        self.items = None
        self.item_scope = "-"               # whose items: the caller's key id
        self.minted_refs = False            # it named items or turns the gateway minted: always translated
        self.ir_obj: dict | None = None     # the body the IR is parsed from, when it differs from `obj`
        self.keep_vendor_items = False      # a same-protocol member's own items are kept too (mixed pool)
        self.unresolved: list[tuple[str, str]] = []   # (client path, id) of references nobody here knows
        self.stored = True                  # the client lets its answer be kept (Responses `store`)
        self.own_items = 0                  # how many input items the client sent (its turn's own)
        self.previous: str | None = None    # the answer it continues (`previous_response_id`, ADR 0024)
        self.conversation: str | None = None    # the gateway-kept conversation it takes part in (ADR 0030)
        self.unknown_previous: tuple[str, str, int] | None = None   # (that id, the missing link, its size if dropped)
        self.chain_keys: tuple[str, ...] = ()   # the kept turns it continued: their TTL starts over with its own
        self.recalled = b""                 # what earlier turns and items put back weigh, for routing's estimate
        self.pin: Pinned | None = None      # the provider and key that hold the response it continues (ADR 0027)
        self._pin_fetched = False           # the cluster copy was asked for the pin already (with the turn)
        self._pin_wanted = False            # it continues a vendor's id: no turn here, or only the vendor's turns
        self._pin_key: str | None = None    # the pin it continued, renewed in the cluster copy with its answer's
        self.hedging = None                 # the pool's busbar.routing.hedge.HedgeState; None: hedging off
        self._race: Race | None = None      # the attempts racing now (a hedge started)
        self.share: str | None = None       # the pool whose concurrency share this request holds
        self.background = None              # a background response's run (busbar.background.Run); None: inline

    # ---- the journey -----------------------------------------------------
    async def run(self) -> None:
        life = self.lifecycle
        try:
            await self._drive(until_planned=True)
            if self.background is not None and not life.finished:
                await self.gw.background.detach(self)    # admitted and routed: off the client's connection
            if not life.finished:
                # the pipeline's deadline runs from the plan on (its own scope:
                # the request ends in a 504, the connection goes on)
                self._deadline = trio.CancelScope(deadline=trio.current_time() + self.plan.pipeline.deadline)
                with self._deadline:
                    await self._drive(until_planned=False)
        except ClientError as err:
            if not self.responder.started or life.finished:
                raise
            # a resumed stream's continuation could not be built: the open
            # stream ends with the error event
            life.fail(err.message[:120])
            self.record.error = err.message
            await self.end_stream_with_error(err, self._stream_encoder())
        finally:
            if self.share is not None:
                self.gw.shares.leave(self.share)
            if self.tenancy_admission is not None:
                await self._settle_tenancy()
        if self._deadline is not None and self._deadline.cancelled_caught and not life.finished:
            err = ClientError(504, f"The request exceeded the gateway deadline of {self.plan.pipeline.deadline:g}s.",
                              "timeout")
            if not self.responder.started:
                raise err
            life.fail("deadline")
            await self.end_stream_with_error(err, self._stream_encoder())

    async def _drive(self, until_planned: bool) -> None:
        """Run the step the request's state names until it is finished (or,
        `until_planned`, until it has a routing plan)."""
        life = self.lifecycle
        while not life.finished and not (until_planned and self.plan is not None):
            step = STEPS.get(life.state)
            if step is None:
                raise lifecycle.LifecycleError(life.state, "(no driver step)")
            await step(self)

    async def _receive(self) -> None:
        """`received`: admit the request, then route it to its pool's plan."""
        admitted = admission.admit(self.gw, self.request, self.client, self.params, self.record)
        self.obj, self.model, self.stream = admitted.obj, admitted.model, admitted.stream
        # the body as the client sent it (a continuation and references rewrite `obj`): what
        # its answer object echoes (a background run's, `background` included)
        self.sent = self.obj if self.background is None else self.background.sent
        self.client = self.client.for_body(self.obj)    # a body-shaped protocol (Bedrock invoke) says which
        if self.client.runs_in_background and self.background is None and self.gw.background is not None:
            flag = self.obj.get("background")
            if flag is not None and flag is not False:
                raise Rerun(self.obj)    # busbar.background: started again, detached once routed (ADR 0026)
        if self.gw.tenancy is not None and (admitted.secret is not None or admitted.key_id is not None):
            # limits and budgets before routing: a refused request never reaches a member
            try:
                self.tenancy_admission = await self.gw.tenancy.admit(
                    admitted.secret, self.model, tenancy.estimate_tokens(self.request.body, self.obj),
                    known_pool=self.model in self.gw.router.pool_names(),
                    billing_status=self.client.kind_status["billing"],
                    key=self.gw.tenancy.by_id(admitted.key_id) if admitted.key_id is not None else None)
            except ClientError as refused:     # metrics count refusals by key id and reason
                self.record.tenant = getattr(refused, "key_id", None)
                self.record.limited = getattr(refused, "reason", None)
                raise
            self.model = self.tenancy_admission.pool     # over_budget downgrade
            self.record.tenant = self.tenancy_admission.key.id
            self.record.team = self.tenancy_admission.key.team
        if self.client.mints_items or self.client.continues:
            await self._recall()          # before routing: what members can say depends on what it names
        try:
            # a key's own `direct` decides provider/model routes (permitted above), else server.direct_routes
            direct = self.tenancy_admission.key.direct if self.tenancy_admission is not None else None
            needs = self.client.needs(self.request.body + self.recalled, self.obj)
            refused = self._expressible(direct)
            if refused:
                needs = dataclasses.replace(needs, refused=refused)
            if self.pin is not None:
                needs = dataclasses.replace(needs, pin=self.pin)
            if self.client.truncates(self.obj):
                needs = self._truncatable(needs, direct)
            self.plan = self.gw.router.start(self.model, needs, trio.current_time(), direct=direct)
        except KeyError:
            provider, sep, _ = self.model.partition("/")
            if sep and provider in self.gw.providers:
                raise ClientError(404, f"The model `{self.model}` names a provider/model route, and those are off "
                                       "(server.direct_routes: false; a client key may allow them with "
                                       "`direct: true`).", "not_found", param="model",
                                  code="model_not_found") from None
            raise ClientError(404, f"The model `{self.model}` does not exist: it is neither a pool "
                                   f"({', '.join(self.gw.router.pool_names()) or 'none configured'}) nor "
                                   "provider/model.", "not_found", param="model", code="model_not_found") from None
        shares = self.gw.shares
        if shares is not None:
            # one pool's flood cannot take every slot of the gateway: shed past its share
            share = self.model if self.model in self.gw.router.pools else DIRECT_ROUTES
            if not shares.enter(share):
                raise ClientError(503, f"The pool `{self.model}` is at its share of the gateway's concurrency "
                                       f"({shares.cap} requests in flight); retry shortly.", "overloaded",
                                  retry_after=1)
            self.share = share
        if self.stream:
            self.resume_policy = self.plan.pipeline.streaming.resume
        if not self.client.carries_signed_reasoning and self.model not in self.gw.no_reasoning_store:
            self.reasoning = self.gw.reasoning_store
        self.hedging = self.gw.hedging.get(self.model)
        if self.hedging is not None:
            self.hedging.credit()            # each request earns the pool its share of hedges
        note = self.model
        if self.record.filtered:
            note += "; skipped (cannot express it): " + ", ".join(
                f"{f['member']} ({f['protocol']}: {f['field']})" for f in self.record.filtered)
        self.lifecycle.fire("route", note[:300])

    def _expressible(self, direct: bool | None) -> frozenset[str]:
        """The member protocols that cannot say this request
        (busbar.protocols.expressible), for routing to skip; each skipped
        member goes on the request's record.  When no member of the route
        can say it, the request is refused here, naming the field, in the
        client's protocol (a pool with `unsupported: drop` prefers the
        members that can and otherwise sends it with the drops).  Free when
        every member speaks the client's protocol (passthrough says anything)."""
        try:
            members = self.gw.router.members(self.model, direct)
        except KeyError:
            return frozenset()          # no such route: `start` says so
        client = self.client.name
        foreign = {m.protocol for m in members if m.protocol != client}
        if not foreign:
            return frozenset()
        req = self._request_ir()
        if req is None:
            return frozenset()
        policy = self.gw.pool_policies.get(self.model, "degrade")
        features = expressible.required(req, policy)
        if not features:
            return frozenset()
        why = {}
        for protocol in foreign:
            refusal = expressible.refusal(features, protocol)
            if refusal is not None:
                why[protocol] = refusal
        if not why:
            return frozenset()
        skipped = [m for m in members if m.protocol in why]
        if len(skipped) == len(members) and policy == "drop":
            return frozenset()          # nobody can: sent anyway, with the drops in warnings
        self.record.filtered = [{"member": m.id, "protocol": m.protocol, "field": why[m.protocol][0],
                                 "reason": why[m.protocol][1]} for m in skipped]
        if len(skipped) == len(members):
            first = skipped[0]
            field, reason = why[first.protocol]
            raise self.client.client_error(ClientError(
                400, f"Field '{field}' cannot be translated to the {first.protocol} protocol: {reason}; "
                     f"no member of `{self.model}` can express it ("
                + ", ".join(f"{m.id}: {m.protocol}" for m in skipped) + ").", param=field),
                self.obj if self.ir_obj is None else self.ir_obj)
        return frozenset(why)

    def _truncatable(self, needs, direct: bool | None):
        """Responses `truncation: "auto"` (ADR 0028): what routing needs to let the
        members of other protocols take the request shortened: the embedded
        estimate, the user turns that may go and the estimate without them.  A
        pool of only the client's own protocol passes the field to its vendor."""
        try:
            members = self.gw.router.members(self.model, direct)
        except KeyError:
            return needs
        if all(m.protocol == self.client.name for m in members):
            return needs
        req = self._request_ir()
        if req is None:
            return needs
        turns, least = truncation.floor(req)
        return dataclasses.replace(needs, tokens=truncation.estimate(req), droppable=turns, least_tokens=least)

    def _request_ir(self):
        """The client's request as chat IR, parsed once for every attempt; None
        when it is another operation or does not parse (a passthrough member
        may still take it; a translated one refuses it at its render)."""
        if self._ir is None:
            try:
                self._ir = self._parse()
            except ClientError:
                return None
        return self._ir if type(self._ir) is ir.Request else None

    async def _recall(self) -> None:
        """What a Responses request names from earlier turns, put back before routing:
        the conversation its `previous_response_id` continues (`_continue`), then the
        items it sends back as `item_reference`s (`_resolve_references`).  What nobody
        here knows is the vendor's: left for a member of the client's own protocol, and
        refused at once when the pool has none."""
        client = self.client
        self.item_scope = self.record.tenant or self.record.client_key_id or "-"
        protocols = self.gw.pool_protocols.get(self.model, ())
        if client.mints_items:
            self.items = self.gw.item_store
            # (a background response is kept whoever answers it: it is retrieved by its id)
            self.keep_vendor_items = client.name in protocols and (len(protocols) > 1 or self.background is not None)
            self.stored = client.stores(self.obj)
        refs = client.references(self.obj) if client.mints_items and client.reference_marker in self.request.body \
            else None
        if client.continues:
            await self._continue()
        if refs:
            await self._resolve_references(refs)
        if self._pin_wanted and not self.minted_refs:
            await self._pin_previous()
        if (self.unresolved or self.unknown_previous) and protocols and client.name not in protocols:
            raise self._unknown(protocols)

    async def _continue(self) -> None:
        """`previous_response_id` naming a turn the gateway kept (busbar.item_store):
        the chain's items (each turn's input, then its output, oldest first) go before
        this request's own input.  A chain of only a Responses vendor's own turns still
        goes to that vendor byte for byte (it holds them); one with a turn answered here
        is translated for every member."""
        previous = self.client.previous_of(self.obj)
        self.own_items = len(self.client.input_items(self.obj))
        if previous is None:
            conversation_id = self.client.conversation_of(self.obj)
            if conversation_id is not None:
                await self._join_conversation(conversation_id)
            return
        self.previous = previous
        store, scope, shared = self.gw.item_store, self.item_scope, self.gw.shared_items
        chain = []
        seen = set()
        link: str | None = previous
        while link is not None:
            key = turn_key(scope, link)
            data = store.get(key)
            if data is None and shared is not None:
                wanted = [key]
                if link == previous:      # where a vendor's id lives (ADR 0027), in the same round trip
                    wanted.append(affinity_key(scope, previous))
                    self._pin_fetched = True
                got = await shared.get_many(wanted)
                data = got.get(key)
                if data is not None:
                    data = store.take_in(key, data)
                if len(wanted) > 1 and wanted[1] in got:
                    self.gw.affinity.take_in(wanted[1], got[wanted[1]])
            if data is None and link == previous:
                self._pin_wanted = True     # kept nowhere here: the vendor's own id, perhaps (ADR 0027)
            turn = decode_turn(data) if data is not None else None
            if link == previous and turn is not None and (turn.shown or {}).get("status") in PENDING:
                turn = await self._unless_unfinished(key, turn)
            if turn is None or turn.dropped or link in seen or len(chain) >= MAX_CHAIN:
                self.unknown_previous = (previous, link, turn.dropped if turn is not None else 0)
                return
            seen.add(link)
            chain.append((key, turn, data))
            link = turn.previous
        if store.doubtful:       # only after a missed stretch of deletions (busbar.state.shared.ResponseDeletions)
            gone = await self._recheck([key for key, _, _ in chain])
            if gone:             # the newest of them, by its id
                newest = next(key for key, _, _ in chain if key in gone)
                self.unknown_previous = (previous, newest[len(turn_key(scope, "")):], 0)
                return
        chain.reverse()
        history: list = []
        for key, turn, _ in chain:
            history += turn.input
            history += turn.output
            store.touch(key)
        self.chain_keys = tuple(key for key, _, _ in chain)
        self.recalled += b"".join(data for _, _, data in chain)
        store.continued += 1
        continued = self.client.with_history(self.obj, history)
        if all(turn.vendor for _, turn, _ in chain):
            self.ir_obj = continued         # the vendor's own chain: its member still gets the bytes
            self._pin_wanted = True
        else:
            self.obj, self.minted_refs = continued, True

    async def _join_conversation(self, conversation_id: str) -> None:
        """`conversation` naming one the gateway keeps (busbar.conversations, ADR 0030): its
        items go before this request's own input, for every member (a Responses one too: the
        vendor never saw it); the turn is appended after the answer (`keep_for_next_turn`)."""
        found = await conversations.lookup(self.gw, (self.item_scope,), conversation_id)
        if found is None:
            raise conversations.not_found(conversation_id, "conversation")
        scope, header, _ = found
        items = await conversations.load_items(self.gw, scope, conversation_id, header)
        self.conversation = conversation_id
        history = stripped(items)
        self.recalled += orjson.dumps(history)
        self.obj, self.minted_refs = self.client.with_history(self.obj, history), True

    async def _pin_previous(self) -> None:
        """The response it continues, when a Responses vendor minted it here (busbar.affinity):
        routing sends it only to that provider, on that key (`Needs.pin`), the one project
        that holds it.  Not for a conversation with a turn answered here (translated for
        every member, a Responses one included, as it says everything itself)."""
        affinity, key = self.gw.affinity, affinity_key(self.item_scope, self.previous)
        pin = affinity.get(key)
        if pin is None and self.gw.shared_items is not None and not self._pin_fetched:
            data = (await self.gw.shared_items.get_many([key])).get(key)
            pin = affinity.take_in(key, data) if data is not None else None
        if pin is None:
            return
        affinity.touch(key)
        affinity.pinned += 1
        self._pin_key = key                 # its cluster copy's TTL starts over with the answer's own entry
        self.pin = Pinned(self.client.name, pin.provider, pin.key_id, self.previous)

    async def remember_minted(self, attempt: Attempt, response_id) -> None:
        """A Responses vendor's own answer passed through: where its id lives (busbar.affinity),
        here and in the cluster copy, before the client sees it (its next turn, or a retrieve,
        may reach another replica).  Not with `store: false` (the vendor keeps nothing), nor
        for a background run (the client sees the id the gateway minted, ADR 0026)."""
        if not self.stored or self.background is not None or type(response_id) is not str or not response_id:
            return
        kept = self.gw.affinity.remember(self.item_scope, response_id,
                                         Pin(attempt.provider, attempt.key_id, attempt.member_id))
        if self.gw.shared_items is not None:
            with trio.CancelScope(shield=True):
                await self.gw.shared_items.put_many([kept], self.gw.affinity.ttl_s,
                                                    (self._pin_key,) if self._pin_key is not None else ())

    async def _unless_unfinished(self, key: str, turn):
        """The turn a request continues, when it is a background response's marker: read
        again from the cluster copy (the run may have ended on another replica), and
        refused, before any member is called, while it is still queued or in progress."""
        shared = self.gw.shared_items
        if shared is not None:
            fresh = (await shared.get_many([key])).get(key)
            if fresh is not None:
                turn = decode_turn(self.gw.item_store.take_in(key, fresh))
        wall = self.gw.background.wall() if self.gw.background is not None else time.time()
        refusal = unfinished(self.previous, turn.shown if turn is not None else None, wall)
        if refusal is not None:
            raise refusal
        return turn

    async def _resolve_references(self, refs: list[tuple[str, str]]) -> None:
        """Earlier items the request sends back by id (Responses `item_reference`,
        busbar.item_store) put back in their place: the ones this replica holds, then
        the cluster's.  One of them found: every member gets the request translated
        (a vendor never saw the gateway's ids).  One nobody here knows stays as it is,
        for a member of the client's own protocol (its vendor's id); `_build` refuses
        it to any other."""
        store, scope = self.gw.item_store, self.item_scope
        if store.doubtful:       # the gone ones now hold the tombstone: the pass below finds them missing
            await self._recheck([key_of(scope, item_id) for _, item_id in refs])
        found: dict[str, tuple[bytes, bool]] = {}
        missing = []
        for path, item_id in refs:
            data = store.get(key_of(scope, item_id))
            item = decode(data) if data is not None else None
            if item is None:
                missing.append((path, item_id))
            else:
                found[item_id] = item
        if missing and self.gw.shared_items is not None:
            got = await self.gw.shared_items.get_many(list(dict.fromkeys(key_of(scope, i) for _, i in missing)))
            for key, data in got.items():
                got[key] = store.take_in(key, data)
            still = []
            for path, item_id in missing:
                data = got.get(key_of(scope, item_id))
                item = decode(data) if data is not None else None
                if item is None:
                    still.append((path, item_id))
                else:
                    found[item_id] = item
            missing = still
        self.unresolved = missing
        if not found:
            return
        store.resolved += len(refs) - len(missing)
        self.recalled += b"".join(data for data, _ in found.values())
        # into the continued request when there is one (`_continue`), else the client's own
        resolved = self.client.with_references(self.obj if self.ir_obj is None else self.ir_obj,
                                               {item_id: data for item_id, (data, _) in found.items()})
        if any(not vendor for _, vendor in found.values()):
            self.obj, self.ir_obj, self.minted_refs = resolved, None, True
        else:        # only the vendor's own: its member still gets the bytes; the others, the items
            self.ir_obj = resolved

    async def _recheck(self, keys: list[str]) -> set[str]:
        """Of `keys`, the doubtful copies held here (`ItemStore.doubtful`) checked against
        the cluster copy in one MGET: the ones deleted meanwhile take the tombstone in and
        are returned; the others are trusted from now on.  Redis away: trusted for this
        request, still doubtful."""
        store, shared = self.gw.item_store, self.gw.shared_items
        doubtful = [key for key in dict.fromkeys(keys) if key in store.doubtful]
        if not doubtful or shared is None:
            return set()
        got = await shared.get_many(doubtful)
        if shared.down:
            return set()
        store.rechecked += len(doubtful)
        gone = {key for key in doubtful if deleted(got.get(key))}
        store.forget(gone)
        store.doubtful.difference_update(doubtful)
        return gone

    def _unknown(self, protocols) -> ClientError:
        """What a member of `protocols` is told about an id only the vendor that minted it knows."""
        if self.unresolved:
            return self._unknown_item(self.unresolved[0], protocols)
        previous, link, dropped = self.unknown_previous
        if dropped:
            why = (f"the response '{link}' in its conversation was not kept: its turn is {dropped} bytes, over the "
                   f"gateway's limit of {self.gw.item_store.max_turn_bytes} per response")
        elif link != previous:
            why = f"an earlier response in its conversation, '{link}', is no longer kept"
        else:
            why = (f"the gateway continues only the responses it answered for this caller in the last "
                   f"{self.gw.item_store.ttl_s / 3600:g} h (none made with `store: false`, none deleted)")
        return ClientError(400, f"Previous response with id '{previous}' not found: {why}, and a "
                                f"{' or '.join(sorted(protocols))} member cannot resolve it.",
                           param="previous_response_id", code="previous_response_not_found")

    def _unknown_item(self, ref: tuple[str, str], protocols) -> ClientError:
        path, item_id = ref
        return ClientError(400, f"Item with id '{item_id}' not found: the gateway resolves only the ids it issued "
                                f"in its own answers to this caller, for {self.items.ttl_s / 3600:g} h, and a "
                                f"{' or '.join(sorted(protocols))} member cannot resolve it.", param=path)

    def _passthrough(self, up) -> bool:
        """Whether this attempt's member gets the client's own bytes."""
        return up is self.client and self.resuming is None and not self.minted_refs

    async def _fetch_reasoning(self) -> None:
        """A tool-result turn whose calls this replica did not answer: their kept
        reasoning from the cluster (busbar.state.shared), before `_build` restores it."""
        if self._ir is None:
            self._ir = self._parse()
        keys = self.reasoning.missing(self._ir)
        if keys:
            for key, data in (await self.gw.shared_reasoning.get_many(keys)).items():
                self.reasoning.put_encoded(key, data)

    def _parse(self):
        return self.client.parse_request(self.obj if self.ir_obj is None else self.ir_obj, self.params)

    async def keep_for_next_turn(self, shown: dict | None, reasoning_keys, vendor: bool = False) -> None:
        """What the client may name on its next turn: the answer `shown` (Responses: its
        output items, and the turn under its id, unless `store: false`) and its kept
        reasoning, written to the cluster too, before the client sees the answer end
        (its next turn may reach another replica); the turns it continued start their
        TTL over there in the same call.  Bounded by the backend's timeout; never fails
        the answer.  In a conversation (ADR 0030), its own input and output items are
        appended to it when it answered (completed or incomplete), `store` or not."""
        if self.conversation is not None and shown:
            await self.append_to_conversation(shown)
        if shown and self.stored:
            output = shown.get("output")
            output = output if isinstance(output, list) else []
            response_id, fields = shown.get("id"), shown_of(shown)
            if self.background is not None:     # kept as answered here, under the id the POST showed
                response_id, vendor = self.background.response_id or response_id, False
                fields["background"] = True
                if self.background.stream:      # its events can be streamed again (busbar.background.resume_refusal)
                    fields["stream"] = True
            kept = self.items.keep(self.item_scope, output, vendor)
            if isinstance(response_id, str) and response_id:
                kept.append(self.items.keep_turn(self.item_scope, response_id, self.previous,
                                                 self._own_input(), output, vendor, fields))
            if kept and self.gw.shared_items is not None:
                with trio.CancelScope(shield=True):
                    await self.gw.shared_items.put_many(kept, self.items.ttl_s, self.chain_keys)
        if reasoning_keys and self.gw.shared_reasoning is not None:
            entries = [(key, self.reasoning.encoded(key)) for key in reasoning_keys]
            with trio.CancelScope(shield=True):
                await self.gw.shared_reasoning.put_many([e for e in entries if e[1] is not None],
                                                        self.reasoning.ttl_s)

    async def append_to_conversation(self, shown: dict) -> None:
        """This turn's own input and the output `shown`, at the end of its conversation,
        when it answered (ADR 0030: a failed response adds nothing)."""
        if shown.get("status") not in ("completed", "incomplete"):
            return
        output = shown.get("output")
        try:
            items = conversations.stored_items(self._own_input() + (output if isinstance(output, list) else []))
        except ClientError:         # an item a conversation cannot hold: the answer still stands
            return
        with trio.CancelScope(shield=True):
            await conversations.append(self.gw, self.item_scope, self.conversation, items)

    def _own_input(self) -> list:
        """This request's own input items, as its turn keeps them: references resolved
        (the last of the continued request's input, which `with_history` and
        `with_references` keep in place)."""
        if not self.own_items:
            return []
        items = self.client.input_items(self.obj if self.ir_obj is None else self.ir_obj)
        return items[-self.own_items:]

    async def _dispatch(self) -> None:
        """`routed` / `failing_over`: the plan says what comes next (after the
        response cache, when the pool keeps one and holds this answer)."""
        if self.lifecycle.state == "routed" and self.model in self.gw.cache.policies and await self._from_cache():
            return
        now = trio.current_time()
        if self.resuming is not None and now >= self.resuming.deadline:
            return await self._reject(ClientError(502, "Upstream stream failed after content was sent, and no "
                                                       "continuation started within streaming.resume.max_added_ms: "
                                                       f"{self.resuming.fault.message}", "upstream"),
                                      "resume: max_added_ms passed")
        step = self.plan.next(now)
        if isinstance(step, Wait):
            if self.resuming is not None:       # no longer than the resume may still add
                return await trio.sleep(min(step.seconds, max(0.0, self.resuming.deadline - now)))
            await trio.sleep(step.seconds)
        elif isinstance(step, Exhausted):
            await self._reject(self._exhausted_error(step), step.reason[:120])
        else:
            if step.candidates and not await self._reserve(step):
                return       # no room on those keys across the replicas: the plan is asked again
            if self.hedging is None or self.resuming is not None or self.responder.started:
                return await self._leg(step)
            await self._hedged(step)

    async def _leg(self, step: Attempt, race: "Race | None" = None) -> None:
        """One attempt and its settlement (with its trace span when tracing);
        in a race, a leg the winner cancelled settles as `Lost`."""
        t0 = trio.current_time()
        rec = AttemptRecord(step.member_id, step.key_id, hedge=step.kind == "hedge")
        self.record.attempts.append(rec)
        span = None
        if self.span is not None:
            span, self.traceparent = self.gw.telemetry.start_attempt(self.span, step.member_id, step.protocol,
                                                                     step.model)
        try:
            if race is None:
                outcome = await self._attempt(step, rec, t0)
            else:
                outcome = None
                try:
                    with race.enter(rec) as scope:
                        outcome = await self._attempt(step, rec, t0)
                except trio.Cancelled:
                    # the request's own scope was cancelled too (it ended while this leg,
                    # already beaten, was still unwinding): it lost all the same
                    if race.winner is not None and race.winner is not rec:
                        self._lost(rec, rec.usage)
                    raise
                if outcome is None and scope.cancelled_caught:
                    outcome = Lost(rec.usage)
                race.leave(rec)
            await self.settle(step, rec, outcome, t0)
        finally:
            if span is not None:
                self.gw.telemetry.end_attempt(span, rec, self.record.usage,
                                              retried=self.lifecycle.state == "failing_over")

    async def _hedged(self, first: Attempt) -> None:
        """`dispatch.hedge`: the first attempt, and after the hedge delay
        without first content, up to `max` more members racing it in this
        request's nursery; the first to commit wins and cancels the others
        (`commit` -> `Race.claim`).  Never once content went out."""
        state = self.hedging
        race = self._race = Race()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._leg, first, race)
                for _ in range(state.policy.max):
                    delay = state.delay()
                    if delay is None:
                        break
                    with trio.move_on_after(delay):
                        await race.changed.wait()
                    if race.winner is not None or not race.live or self.responder.started or self.plan.done:
                        break
                    if not state.take():
                        break                  # the pool's hedge budget is spent
                    step = self.plan.hedge(trio.current_time())
                    if step is None:
                        state.tokens += 1.0     # nobody to hedge with: the token stays
                        state.started -= 1
                        break
                    race.changed = trio.Event()
                    nursery.start_soon(self._leg, step, race)
        finally:
            self._race = None

    async def _reserve(self, attempt: Attempt) -> bool:
        """Keys whose quota other replicas share: one atomic take in the cluster
        backend, which may place the request on another candidate key or on
        none (then False).  Bounded by the backend's timeout; degraded, the
        local counts stand."""
        asks = self.plan.quota_asks(attempt, trio.current_time())
        try:
            taken = await self.gw.state.take_quota(asks)
        except BaseException:
            self.plan.release(attempt, trio.current_time())
            raise
        return self.plan.cluster_answer(attempt, asks, taken, trio.current_time())

    # ---- the response cache ----------------------------------------------
    async def _from_cache(self) -> bool:
        """Replay the cached answer (True), or prepare to store this one."""
        cache = self.gw.cache
        if self._ir is None:
            try:
                self._ir = self._parse()
            except ClientError:
                self._ir = None       # passthrough may still serve it; the cache can't key it
        if self._ir is not None and type(self._ir) is not ir.Request:
            return False              # embeddings, rerank, counting: answered upstream every time
        scope = self.record.tenant or self.record.client_key_id or "-"
        lookup = self.cache_lookup = cache.decide(self.model, self.request.headers, self._ir, scope,
                                                  self.client.varying_headers)
        entry = await cache.get(lookup)
        if entry is None and lookup.text is not None:
            # semantic: the last user text embedded by the embedding pool (bounded; a failure is a miss)
            policy = lookup.policy
            t0 = trio.current_time()
            vector = await self.gw.embed(policy.embed_pool, lookup.text, policy.embed_timeout_ms / 1000)
            entry = await cache.nearest(lookup, vector, trio.current_time() - t0)
        self.record.cache = lookup.status
        if entry is None:
            return False
        await self._replay(entry)
        return True

    async def _replay(self, entry) -> None:
        """A hit, as the client asked for it: buffered, or a stream through its
        protocol's encoder (at once, or paced by `replay_delay_ms`)."""
        policy = self.cache_lookup.policy
        self.lifecycle.fire("hit", f"cache {policy.mode}")
        response = dataclasses.replace(entry.response, id=replay_id())
        model = response.model or self.model
        self.record.ttfb_ms = 0.0
        self.record.status = 200
        self.record.usage = ir.Usage()          # nothing went upstream
        head = self.cache_headers() + [(b"x-busbar-cache-age", b"%d" % max(0, self.gw.cache.caches.wall()
                                                                            - entry.created))]
        client = self.client
        if not self.stream:
            if self.items is not None:       # fresh ids: kept like any answer's, for the next turn
                body, shown = client.render_response_shown(response, model, self._ir, self.sent)
                await self.keep_for_next_turn(shown, None)
            else:
                body = client.render_response(response, model, self._ir, self.sent)
            await self.responder.send(200, [JSON_CT] + head, body)
            sent = len(body)
        else:
            encoder = client.stream_encoder(model, **client.stream_encoder_options(self.sent))
            delay = policy.replay_delay_ms / 1000
            events = response_events(response, chunk_chars=24 if delay else 0)
            head = [(b"content-type", client.stream_content_type), (b"cache-control", b"no-cache")] + head
            if not delay:
                body = b"".join(encoder.encode(e) for e in events) + encoder.finish()
                if self.items is not None:
                    await self.keep_for_next_turn(encoder.shown_response(), None)
                await self.responder.start(200, head, body)
                sent = len(body)
            else:
                first = next((i for i, e in enumerate(events) if ir.is_content(e)), len(events))
                data = b"".join(encoder.encode(e) for e in events[:first + 1])
                await self.responder.start(200, head, data)
                sent = len(data)
                for event in events[first + 1:]:
                    data = encoder.encode(event)
                    if type(event) is ir.MessageStop and self.items is not None:
                        await self.keep_for_next_turn(encoder.shown_response(), None)
                    if data:
                        if ir.is_content(event):
                            await trio.sleep(delay)
                        await self.responder.write(data)
                        sent += len(data)
                data = encoder.finish()
                await self.responder.write(data)
                sent += len(data)
            await self.responder.end()
        self.lifecycle.fire("complete")
        self.gw.cache.count_hit(self.cache_lookup, entry, sent, self.gw.prices.get(entry.member))

    def cache_headers(self) -> Headers:
        lookup = self.cache_lookup
        head = [(b"x-busbar-pool", self.model.encode("utf-8", "replace")), (b"x-busbar-cache", lookup.status.encode())]
        if lookup.similarity is not None:
            head.append((b"x-busbar-cache-similarity", b"%.4f" % lookup.similarity))
        return head

    async def _store_answer(self, attempt: Attempt) -> None:
        """After a miss was answered: keep it (never fails the request)."""
        if self.record.resumed:
            return          # continued on another member: the spliced answer is no one member's
        response = self.cache_assembler.response() if self.stream else self.cache_response
        try:
            with trio.CancelScope(shield=True):
                await self.gw.cache.put(self.cache_lookup, response, attempt.member_id)
        except Exception:
            log.exception("request %s: storing the answer in the cache failed", self.record.id)

    # ---- one attempt -----------------------------------------------------
    async def _attempt(self, attempt: Attempt, rec: AttemptRecord, t0: float) -> Outcome:
        """One upstream call, `dispatched` until its outcome.  Upstream faults
        come back as values; a cancellation (client gone, deadline) or a bug
        of ours frees the attempt (in-flight slot, breaker probe) unblamed."""
        provider = self.gw.providers[attempt.provider]
        # a hedge joins the attempt already dispatched (dispatched -> dispatched)
        self.lifecycle.fire("hedge" if attempt.kind == "hedge" else "dispatch", attempt.member_id)
        timeouts = self.plan.pipeline.timeouts
        try:
            up = self.client.peer(provider, attempt.model)   # the member's dialect for this call
            if up is None:       # its protocol has no endpoint for it (token counting: an estimate)
                return await self._answer_locally(attempt, rec, provider, t0)
            if (not self._restored and self.reasoning is not None and self.gw.shared_reasoning is not None
                    and not self._passthrough(up)):
                await self._fetch_reasoning()
            if up.inputs_per_call is not None and up is not self.client:
                parts = up.split(self._parsed())
                if len(parts) > 1:      # more inputs than the member takes per call (Titan)
                    return await self._fan_out(attempt, rec, provider, up, parts, t0)
            try:
                target, headers, body = self._build(attempt, provider, up, rec=rec)
            except ClientError as err:
                if up is self.client or not self._restored:
                    raise               # the client's request itself (it does not parse), not this member
                return Inexpressible(err)
            stops, warnings = self.stops, self._warnings     # this attempt's (a hedge builds its own)
            pool = self._pool(provider)
            try:
                wait = timeouts.first_byte
                if self.resuming is not None:
                    wait = max(0.0, min(wait, self.resuming.deadline - trio.current_time()))
                response = await pool.request(b"POST", target, headers, body, connect_timeout=timeouts.connect,
                                              response_timeout=wait, slot_wait=self.gw.slot_wait)
                attempt.vendor_quota = provider.dialect.rate_limits(response.headers)   # corrects the key's counts
                rec.upstream_request_id = provider.dialect.upstream_request_id(response.headers)
            except SlotTimeout as exc:
                return Saturated(exc.waited)
            except UpstreamError as exc:
                return Failed(Fault(FaultClass.SERVER, 0, str(exc)))
            try:
                if not 200 <= response.status < 400:
                    return await self._read_error(provider, response)
                relay = relay_stream if self.stream else relay_buffered
                return await relay(self, attempt, rec, up, response, t0, stops, warnings)
            except UpstreamError as exc:
                # a relay lets nothing through after its commit; this is before it
                return Failed(Fault(FaultClass.SERVER, response.status, str(exc)))
            finally:
                await response.aclose()
        except BaseException:
            if rec.outcome == "pending":
                rec.outcome = "cancelled"
                rec.ms = (trio.current_time() - t0) * 1000
            if any(a is attempt for a in self.plan.outstanding):
                self.plan.release(attempt, trio.current_time())
            raise

    async def _answer_locally(self, attempt: Attempt, rec: AttemptRecord, provider: "Provider", t0: float) -> Outcome:
        """A member whose protocol has no endpoint for this call: the client's
        dialect answers instead (an estimate, marked in a header) or refuses
        (a ClientError naming the member's protocol)."""
        resp = self.client.local_answer(self._parsed(), provider.protocol)
        body = self.client.render_response(resp, attempt.model, self._ir, self.sent)
        ttfb = trio.current_time() - t0
        self.commit(rec, 200, ttfb)
        await self.responder.send(200, [JSON_CT] + self.answer_headers(attempt) + self.client.local_headers(), body)
        return Answered(200, ttfb)

    def _pool(self, provider: "Provider"):
        """The member's connection pool: its origin through its transport (TLS
        trust, egress proxy), the one place an attempt's calls get it from."""
        return self.gw.upstream.pool(provider.origin, provider.max_connections, provider.transport)

    def _parsed(self):
        """The client's request as IR (parsed once, on first need)."""
        if self._ir is None:
            self._ir = self._parse()
        return self._ir

    async def _fan_out(self, attempt: Attempt, rec: AttemptRecord, provider: "Provider", up, parts: list,
                       t0: float) -> Outcome:
        """A member that takes fewer inputs per call than the request has
        (Amazon Titan embeds one text): one upstream call per part, at most
        `up.parallel_calls` at a time, answered as one in input order with
        the usage summed.  The attempt is all its calls: the first failure
        cancels the rest and is the attempt's outcome, so the batch fails
        over whole and nothing reaches the client before every part is in."""
        timeouts = self.plan.pipeline.timeouts
        pool = self._pool(provider)
        calls = [self._build(attempt, provider, up, part) for part in parts]   # signed now, sent soon
        warnings = self._warnings
        limiter = trio.CapacityLimiter(up.parallel_calls)
        answers: list = [None] * len(calls)
        failed: list[Outcome] = []

        async def call(i: int, target: bytes, headers: Headers, body: bytes) -> None:
            async with limiter:
                try:
                    response = await pool.request(b"POST", target, headers, body, connect_timeout=timeouts.connect,
                                                  response_timeout=timeouts.first_byte, slot_wait=self.gw.slot_wait)
                except SlotTimeout as exc:
                    outcome: Outcome = Saturated(exc.waited)
                except UpstreamError as exc:
                    outcome = Failed(Fault(FaultClass.SERVER, 0, str(exc)))
                else:
                    try:
                        attempt.vendor_quota = provider.dialect.rate_limits(response.headers)
                        if rec.upstream_request_id is None:     # the first call's stands for the batch
                            rec.upstream_request_id = provider.dialect.upstream_request_id(response.headers)
                        if 200 <= response.status < 400:
                            answer = await read_answer(self, up, response)
                            if not isinstance(answer, Failed):
                                answers[i] = answer
                                return
                            outcome = answer
                        else:
                            outcome = await self._read_error(provider, response)
                    finally:
                        await response.aclose()
            failed.append(outcome)
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            for i, (target, headers, body) in enumerate(calls):
                nursery.start_soon(call, i, target, headers, body)
        if failed:
            return failed[0]
        resp = up.join(answers)
        self.record.usage = resp.usage
        self.cache_response = resp
        out = self.client.render_response(resp, resp.model or attempt.model, self._ir, self.sent)
        ttfb = trio.current_time() - t0
        self.commit(rec, 200, ttfb, warnings)
        await self.responder.send(200, [JSON_CT] + self.answer_headers(attempt), out)
        return Answered(200, ttfb)

    def _build(self, attempt: Attempt, provider: "Provider", up, part=None, rec: AttemptRecord | None = None
               ) -> tuple[bytes, Headers, bytes]:
        """The upstream request for `up` (the member's dialect for this call):
        passthrough (only `model` rewritten) or translated; `part`: one of
        `up.split`'s requests instead of the whole (`_fan_out`); the earliest
        turns dropped when the plan says so (`attempt.shrink`, ADR 0028)."""
        same = part is None and self._passthrough(up)
        carried: Headers = []
        if same:
            body = up.passthrough_body(self.request.body, self.obj, attempt.model)
            self._warnings = []
        else:
            if self._ir is None or not self._restored:
                if self._ir is None:
                    self._ir = self._parse()
                if self.reasoning is not None and not self._restored:   # earlier turns' signed reasoning
                    self._ir = self.reasoning.restore(self._ir)
                self._restored = True
                if self.resuming is not None:
                    self.resuming.request = resume.continuation(self._ir, self.resuming.partial)
            if (self.unresolved or self.unknown_previous) and up is not self.client:
                # only the vendor that minted it can resolve it: this member is passed over (Inexpressible)
                raise self._unknown((provider.protocol,))
            policy = self.gw.pool_policies.get(self.model, "degrade")
            req, self.stops = self._ir if self.resuming is None else self.resuming.request, None
            if part is not None:
                req = part
            if up.stop_emulated and req.stop:     # the member has no stop: the relay cuts the answer
                req, self.stops = dataclasses.replace(req, stop=None), req.stop
            shortened = None
            if self.plan.needs.droppable and part is None:     # truncation: "auto" (ADR 0028)
                attempt.dropped = 0
                if attempt.shrink is not None:
                    shortened = truncation.fit(req, attempt.shrink.budget, at_least=attempt.shrink.at_least)
                    req, attempt.dropped = shortened.request, shortened.turns
            try:
                body, warnings = up.render_request(req, attempt.model,
                                                   max_tokens_default=attempt.max_tokens, unsupported=policy)
            except ClientError as err:      # named in the client's terms, not the IR's
                raise self.client.client_error(err, self.obj if self.ir_obj is None else self.ir_obj) from None
            carried = up.request_headers(req)       # what the member's protocol says in headers (beta flags)
            if shortened is not None and shortened.messages:
                if rec is not None:
                    rec.dropped = shortened.messages
                warnings = warnings + [f"degraded 'truncation': the conversation's earliest {shortened.messages} "
                                       f"message(s) dropped to fit {attempt.member_id}'s context "
                                       f"(~{shortened.tokens} of {attempt.shrink.budget} tokens)"]
            self._warnings = warnings
            if warnings:
                log.warning("request %s: dropped fields not expressible in %s: %s", self.record.id, up.name,
                            ", ".join(warnings))
        path = provider.endpoint.path(attempt.model, self.stream, None if up is provider.dialect else up)
        fixed = provider.fixed_heads
        if fixed is not None:       # content type, accept, extra_headers: rendered once for the provider
            headers: Headers = [fixed[1 if self.stream else 0]]
        else:
            headers = [JSON_CT, (b"accept", b"text/event-stream" if self.stream else b"application/json")]
        auth = provider.endpoint.auth(attempt.key_secret)
        if same and up.forward_headers:
            forwarded = [(k, v) for k, v in self.request.headers if k in up.forward_headers]
            names = {k for k, _ in forwarded}
            headers.extend(h for h in auth if h[0] not in names)
            headers.extend(forwarded)
        else:
            headers.extend(auth)
            headers.extend(carried)
        if fixed is None:
            headers.extend(provider.extra_headers)
        if self.traceparent is not None:     # W3C trace context: this attempt's span is the parent upstream
            headers.append((b"traceparent", self.traceparent))
        if provider.signer is not None:
            headers.extend(provider.signer(path, headers, body))
        return path.encode(), headers, body

    async def _read_error(self, provider: "Provider", response) -> Failed:
        with trio.move_on_after(self.plan.pipeline.timeouts.idle):
            body = await response.read(MAX_UPSTREAM_ERROR_BODY)
            return Failed(self._classify(provider, response.status, response.headers, body),
                          response.status, response.headers, body)
        return Failed(Fault(FaultClass.SERVER, response.status, "upstream error body timed out"))

    def _classify(self, provider: "Provider", status: int, headers: Headers, body: bytes) -> Fault:
        fault = provider.dialect.classify(status, headers, body)
        if provider.error_rules:
            text = body.decode("utf-8", "replace")
            for pattern, rule_status, cls in provider.error_rules:
                if (rule_status is None or rule_status == status) and pattern.search(text):
                    fault = dataclasses.replace(fault, cls=cls, status=status)
                    break
        return self.redact(fault)

    def redact(self, fault: Fault) -> Fault:
        """`fault` without any configured secret a vendor echoed in its message."""
        scrubbed = self.gw.scrub(fault.message)
        if scrubbed != fault.message:
            fault = dataclasses.replace(fault, message=scrubbed)
        return fault

    def commit(self, rec: AttemptRecord, status: int, ttfb: float, warnings=None) -> None:
        """The relay's commit point: from here the client sees this answer
        (in a race, the other attempts are cancelled here, before any byte)."""
        if self._race is not None:
            self._race.claim(rec)
        if warnings is not None:
            self._warnings = warnings
        rec.outcome = "ok"
        rec.status = status
        self.record.ttfb_ms = ttfb * 1000
        self.record.status = 200
        self.lifecycle.fire("first_byte", rec.member)

    def commit_continuation(self, rec: AttemptRecord, status: int, ttfb: float, splice: resume.Splice) -> None:
        """A continuation's commit: its content joins the client's open stream."""
        rec.outcome = "ok"
        rec.status = status
        r, self.resuming = self.resuming, None
        self.record.resumed[-1].update(to=rec.member, trimmed=splice.trimmed,
                                       added_ms=round((trio.current_time() - r.since) * 1000, 3))
        self.lifecycle.fire("first_byte", rec.member)

    async def _settle_tenancy(self) -> None:
        """Give back / charge what tenancy admitted, on the real usage (streams
        included), priced at the member that answered."""
        answered = next((a for a in reversed(self.record.attempts) if a.outcome == "ok"), None)
        price = self.gw.prices.get(answered.member) if answered is not None else None
        with trio.CancelScope(shield=True):
            try:
                self.record.cost_usd = await self.gw.tenancy.settle(self.tenancy_admission, self.record.usage, price)
                self.record.alerts = tuple(self.tenancy_admission.alerts)
            except Exception:
                log.exception("request %s: tenancy settle failed", self.record.id)

    # ---- the funnel ------------------------------------------------------
    @staticmethod
    def _lost(rec: AttemptRecord, usage: ir.Usage | None) -> None:
        """A leg another attempt beat to the commit: released unblamed by
        `_attempt`; what it was billed is hedge waste.  Never checkpoints
        (it also runs while the leg's cancellation unwinds)."""
        rec.outcome = "hedge_lost"
        rec.waste_tokens = usage.input_tokens + usage.output_tokens if usage is not None else 0

    async def settle(self, attempt: Attempt, rec: AttemptRecord, outcome: Outcome, t0: float) -> None:
        """Every attempt's outcome, in one place: report to the router, move
        the lifecycle, fill the attempt record, log the alert line."""
        now = trio.current_time()
        rec.ms = (now - t0) * 1000
        kind = type(outcome)
        if kind is Lost:
            return self._lost(rec, outcome.usage)
        if kind is Answered:
            if self.hedging is not None:
                self.hedging.observe(outcome.ttfb)
                if rec.hedge:
                    self.hedging.won += 1
            # reported at the end, so in-flight counts cover the whole answer;
            # and complete before a stream's last write (its held last content
            # and closing chunk): the member answered whole, so a client that
            # hangs up during that write is no failure of the member's
            usage = self.record.usage
            tokens = usage.input_tokens + usage.output_tokens if usage is not None else None
            self.plan.report(attempt, None, now, ttfb=outcome.ttfb, tokens=tokens)
            self.lifecycle.fire("complete")
            if outcome.chunked:
                await self.responder.end(self._trailers())
            if attempt.shared is not None and tokens is not None and attempt.shared[0].tpm is not None:
                # the cluster counted the estimate; the answer is out, now correct it
                await self.gw.state.settle_quota(*attempt.shared, tokens)
            if self.cache_lookup is not None:
                await self._store_answer(attempt)
            return
        if kind is Saturated:
            # busy, not broken: this member sits the request out, unblamed
            self.plan.saturated(attempt, now)
            rec.outcome = "saturated"
            rec.message = f"no connection slot within {outcome.waited:g}s"
            self.lifecycle.fire("fault", f"{attempt.member_id}: saturated")
            return
        if kind is Inexpressible:
            # its render refused what routing's check let through: another member may say it
            err = self._inexpressible = outcome.error
            self.plan.inexpressible(attempt, now)
            rec.outcome = "inexpressible"
            rec.message = err.message[:200]
            self.record.filtered.append({"member": attempt.member_id, "protocol": attempt.protocol,
                                         "field": err.param, "reason": err.message[:200]})
            log.info("request %s: %s cannot express it: %s", self.record.id, attempt.member_id, err.message)
            if self._race is None or not self._race.live:
                self.lifecycle.fire("fault", f"{attempt.member_id}: inexpressible")
            return
        fault = outcome.fault
        consequence = self.plan.report(attempt, fault, now)
        if consequence.alert:
            alert_log.warning("request %s: %s", self.record.id, consequence.alert)
        if kind is Broken:
            rec.outcome = fault.cls.value      # it had committed ("ok"); the member broke its stream (resumed or not)
            rec.message = fault.message[:200]
            if consequence.retry and self._resume(attempt, rec, outcome, now):
                return
            self.record.error = fault.message
            self.lifecycle.fire("broken", fault.message[:120])
            if outcome.encoder is None:
                await self.responder.end()
            else:
                await self.end_stream_with_error(ClientError(
                    502, f"Upstream stream failed after content was sent: {fault.message}", "upstream"),
                    outcome.encoder)
            return
        rec.outcome = fault.cls.value
        rec.status = fault.status
        rec.message = fault.message[:200]
        note = f"{attempt.member_id}: {fault.cls.value}"
        race = self._race
        if consequence.retry:
            if race is not None and race.live:
                return                  # another attempt still races: the request waits for it
            self.lifecycle.fire("fault", note)
            return
        if race is not None:
            race.cancel_all()           # the request ends with this error
        # not retried: the client gets this error in its own protocol; same
        # protocol and an HTTP error: the vendor's own body, untouched
        self.lifecycle.fire("rejected", note)
        self.record.error = fault.message
        if self.responder.started:       # a resumed stream's continuation was refused: end the open stream
            return await self.end_stream_with_error(ClientError(
                502, f"Upstream stream failed after content was sent; its continuation failed: {fault.message}",
                "upstream"), self._stream_encoder())
        if outcome.body is not None and self.gw.providers[attempt.provider].protocol == self.client.name:
            kept = (b"content-type", b"retry-after") + self.client.error_headers_kept
            headers = [(k, v) for k, v in outcome.headers if k in kept]
            self.record.status = outcome.status
            await self.responder.send(outcome.status, headers or [JSON_CT], self.gw.scrub_bytes(outcome.body))
        else:
            status, headers, body = self.client.render_error(self.client.fault_to_client_error(fault))
            self.record.status = status
            await self.responder.send(status, headers, body)

    async def _reject(self, err: ClientError, note: str) -> None:
        """End the request before any answer with `err` in the client's protocol
        (or, while a broken stream is being resumed, its open stream)."""
        self.lifecycle.fire("rejected", note)
        self.record.error = err.message
        if self.responder.started:
            return await self.end_stream_with_error(err, self._stream_encoder())
        self.record.status = err.status
        status, headers, body = self.client.render_error(err)
        await self.responder.send(status, headers, body)

    def _exhausted_error(self, step: Exhausted) -> ClientError:
        fault = step.last_fault
        if fault is None and self._inexpressible is not None:
            return self._inexpressible        # no member left that can say it: the render's own 400
        if step.kind == "incapable" and fault is None and self.plan.needs.pin is not None:
            # the one provider and key that hold the response it continues are gone (ADR 0027)
            return ClientError(400, f"Previous response with id '{self.previous}' not found here: "
                                    f"{step.reason}.", param="previous_response_id",
                               code="previous_response_not_found")
        if step.kind == "incapable" and fault is None:
            # no member is large (or able) enough: the request's problem, not a backend's
            return ClientError(400, step.reason[:1].upper() + step.reason[1:] + ".", "invalid_request", param="messages",
                               code="context_length_exceeded" if "context" in step.reason or "token" in step.reason
                               else None)
        if fault is not None and fault.cls in (FaultClass.CLIENT, FaultClass.CONTEXT):
            err = self.client.fault_to_client_error(fault)
        elif step.retry_after is not None:
            err = ClientError(429, f"All members of `{self.model}` are cooling down or unavailable "
                                   f"({step.reason}); retry after {step.retry_after:.0f}s.", "rate_limit",
                              retry_after=step.retry_after)
        elif fault is not None:
            err = self.client.fault_to_client_error(fault)
            err.message = f"All members of `{self.model}` failed; last error: {fault.message}"
        elif step.kind == "saturated":
            err = ClientError(503, f"Every member of `{self.model}` is busy ({step.reason}); retry shortly.",
                              "overloaded", retry_after=1)
        else:
            err = ClientError(503, f"No member of `{self.model}` can take this request: {step.reason}.", "overloaded")
        return err

    def answer_headers(self, attempt: Attempt) -> Headers:
        """Headers of an answer: which pool and member answered (the body's
        `model` is the model that answered, on every path), and the warnings."""
        head = [(b"x-busbar-pool", self.model.encode("utf-8", "replace")),
                (b"x-busbar-member", attempt.member_id.encode("utf-8", "replace"))] + self.warning_headers()
        if self.cache_lookup is not None:
            head.append((b"x-busbar-cache", self.cache_lookup.status.encode()))
        return head

    def warning_headers(self) -> Headers:
        """`x-busbar-warning` names what translation dropped (pool policy
        `unsupported: drop`, hints, degraded features), so a client can see it
        without the logs: each field as the client sent it (`Dialect.client_warnings`)."""
        if not self._warnings:
            return []
        # renders name the IR's fields; the client reads them by its own body's paths
        messages = len(self._ir.messages) if type(self._ir) is ir.Request else None
        named = self.client.client_warnings(self._warnings, self.obj if self.ir_obj is None else self.ir_obj, messages)
        text = "; ".join(named).encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")
        return [(b"x-busbar-warning", text[:2000])]

    # ---- stream resume -----------------------------------------------------
    def _resume(self, attempt: Attempt, rec: AttemptRecord, outcome: Broken, now: float) -> bool:
        """Continue a stream broken after the commit on another member, when
        the pipeline resumes streams and what the client holds can be
        continued (busbar.resume); else False: the stream ends honestly."""
        policy = self.resume_policy
        if policy is None or outcome.journal is None or outcome.encoder is None:
            return False
        if sum(1 for r in self.record.resumed if "after_chars" in r) >= policy.max:
            return False
        partial = resume.Partial.of(outcome.journal)
        why = partial.refusal()
        if why is not None:
            log.info("request %s: stream not resumed: %s", self.record.id, why)
            self.record.resumed.append({"from": attempt.member_id, "refused": why})
            return False
        if not outcome.synced:     # passthrough: the client's bytes were the vendor's
            resume.replay(outcome.encoder, outcome.journal)
        request = resume.continuation(self._ir, partial) if self._ir is not None else None
        self.resuming = resume.Resumption(outcome.encoder, outcome.journal, partial, resume.broken_usage(partial),
                                          request, now, now + policy.max_added_ms / 1000, outcome.fault)
        self.record.resumed.append({"from": attempt.member_id, "after_chars": len(partial.text),
                                    "fault": outcome.fault.message[:200]})
        self.lifecycle.fire("resume", outcome.fault.message[:120])
        return True

    def _stream_encoder(self):
        """The encoder of the client's open stream (a resume in progress keeps
        its own, whose state matches what the client saw)."""
        return self.resuming.encoder if self.resuming is not None else None

    def _trailers(self) -> Headers | None:
        if not self.record.resumed or not any("to" in r for r in self.record.resumed):
            return None
        return [(b"x-busbar-resumed", b"%d" % sum(1 for r in self.record.resumed if "to" in r))]

    async def end_stream_with_error(self, err: ClientError, encoder=None) -> None:
        """End a committed stream with the client protocol's error event, so
        its SDK raises instead of taking a truncated answer as complete."""
        if encoder is None:
            encoder = self.client.stream_encoder(self.model)
        try:
            await self.responder.write(encoder.error(err.kind, err.message))
            await self.responder.end()
        except ClientGone:
            pass


class Race:
    """The attempts of one request racing after a hedge: each runs in its
    own cancel scope; the first to commit (`claim`) cancels the others
    before any byte goes out; `changed` wakes the hedge timer when an
    attempt commits or ends."""

    __slots__ = ("scopes", "winner", "changed")

    def __init__(self):
        self.scopes: dict[int, trio.CancelScope] = {}
        self.winner: AttemptRecord | None = None
        self.changed = trio.Event()

    @property
    def live(self) -> int:
        return len(self.scopes)

    def enter(self, rec: AttemptRecord) -> trio.CancelScope:
        scope = self.scopes[id(rec)] = trio.CancelScope()
        return scope

    def leave(self, rec: AttemptRecord) -> None:
        self.scopes.pop(id(rec), None)
        self.changed.set()

    def claim(self, rec: AttemptRecord) -> None:
        self.winner = rec
        for key, scope in self.scopes.items():
            if key != id(rec):
                scope.cancel()
        self.changed.set()

    def cancel_all(self) -> None:
        for scope in self.scopes.values():
            scope.cancel()


# The driver step for each state the request can be in between steps; the
# others (`dispatched`, `streaming`) are inside one attempt.
STEPS = {"received": Exchange._receive, "routed": Exchange._dispatch, "failing_over": Exchange._dispatch}
