"""The two relays: how an upstream's 2xx answer reaches the client.

Each returns an `Outcome` (busbar.outcome) and never raises for an upstream
fault.  Before the commit (the first content), anything wrong is `Failed` and
the request can fail over; the commit itself goes through `Exchange.commit`
(lifecycle `first_byte`, the response head); after it, a fault is `Broken`.

Same protocol: the client gets the upstream's own bytes (whole SSE events at
a time).  Otherwise the upstream's answer is parsed into the IR and rendered
(buffered) or decoded and re-encoded event by event (streams).

Insertion points: a bounded pre-commit buffer limits `held` in
`relay_stream`; stream resume starts from the `Broken` outcome in
`Exchange.settle`, not here.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import orjson
import trio

from busbar import ir
from busbar.cache.entry import Assembler
from busbar.faults import ClientError, Fault, FaultClass
from busbar.limits import PrecommitBound
from busbar.outcome import Answered, Broken, Failed, Outcome
from busbar.protocols.base import StreamError
from busbar.protocols.stops import StopEmulation, cut_response
from busbar.resume import Journal, replay
from busbar.reasoning_store import StreamCapture
from busbar.upstream import ReadBound, UpstreamError

if TYPE_CHECKING:
    from busbar.exchange import Exchange

MAX_UPSTREAM_BODY = 64 * 1024 * 1024


def _server(message: str, status: int = 0) -> Failed:
    return Failed(Fault(FaultClass.SERVER, status, message))


async def _read_body(x: "Exchange", response) -> bytes | Failed:
    """A buffered answer's whole body, or `Failed` (the member's fault, nothing
    having gone to the client): stalled past the idle/first-byte bound, or
    broken off after the head."""
    try:
        data = response.read_now(MAX_UPSTREAM_BODY)   # came with the head: nothing to wait for, no timeout
        if data is None:
            timeouts = x.plan.pipeline.timeouts
            with response.read_bound as bound:
                bound.arm(trio.current_time() + max(timeouts.idle, timeouts.first_byte))
                try:
                    data = await response.read(MAX_UPSTREAM_BODY)
                finally:
                    bound.until = math.inf
                if bound.expired:        # the sweeper closed it as the body came: a stall all the same
                    return _server("upstream response stalled")
    except UpstreamError as exc:
        if response.read_bound.expired:
            return _server("upstream response stalled")
        return _server(f"upstream response broke off: {exc}", response.status)
    return data


async def relay_buffered(x: "Exchange", attempt, rec, up, response, t0: float, stops=None, warnings=()) -> Outcome:
    """`up` is the member's dialect for this call (`Dialect.peer`); `stops`
    the stop strings the gateway emulates for it, `warnings` what its
    translation dropped (per attempt: hedged attempts run side by side)."""
    data = await _read_body(x, response)
    if type(data) is Failed:
        return data
    if up is x.client:
        # the bytes go out untouched, but only if they are JSON at all: a
        # garbage 200 is the member's fault and fails over (~2 µs to check)
        try:
            obj = orjson.loads(data)
        except orjson.JSONDecodeError:
            return _server("upstream sent a response that is not JSON", response.status)
        out = data
        content_type = response.header(b"content-type") or b"application/json"
        if x.items is not None and type(obj) is dict:
            await x.remember_minted(attempt, obj.get("id"))     # the vendor's id goes back to it (ADR 0027)
        if x.keep_vendor_items and isinstance(obj, dict) and isinstance(obj.get("output"), list):
            # the vendor's own items and turn, for a next turn that fails over to a member of another protocol
            await x.keep_for_next_turn(obj, None, vendor=True)
        elif x.conversation is not None and isinstance(obj, dict):     # a gateway-kept conversation (ADR 0030)
            await x.append_to_conversation(obj)
        if x.cache_lookup is not None:       # the cache keeps the answer's IR
            try:
                resp_ir = up.parse_response(obj)
                x.record.usage = resp_ir.usage
                x.cache_response = resp_ir
            except Exception:
                pass
        elif x.gw.listeners:       # usage accounting alone: read the usage, no IR
            try:
                x.record.usage = up.response_usage(obj)
            except Exception:
                pass
    else:
        try:
            resp_ir = up.parse_response(orjson.loads(data))
            x.record.usage = resp_ir.usage
            if stops:
                cut_response(resp_ir, stops)
            x.cache_response = resp_ir
            # the model that answered; the request says what the answer looks like
            model = resp_ir.model or attempt.model
            if x.items is not None:   # its items and turn, under the ids minted here, for the next turn
                out, shown = x.client.render_response_shown(resp_ir, model, x._ir, x.sent)
            else:
                out, shown = x.client.render_response(resp_ir, model, x._ir, x.sent), None
            # what the client's protocol cannot carry, for its next turn
            kept = x.reasoning.keep(resp_ir.content, x.client.shown_call_id) if x.reasoning is not None else None
        except ClientError:
            raise
        except Exception as exc:  # upstream garbage: the member's fault
            return _server(f"unparseable upstream response: {type(exc).__name__}", response.status)
        content_type = b"application/json"
        if shown or kept:
            await x.keep_for_next_turn(shown, kept)
    ttfb = trio.current_time() - t0
    x.commit(rec, response.status, ttfb, warnings)
    await x.responder.send(200, [(b"content-type", content_type)] + x.answer_headers(attempt), out)
    return Answered(response.status, ttfb)


async def read_answer(x: "Exchange", up, response):
    """One buffered 2xx answer of `up`'s, read and parsed to its IR (the
    calls of a split batch, `Exchange._fan_out`), or `Failed`: the member's
    fault, nothing having gone to the client."""
    data = await _read_body(x, response)
    if type(data) is Failed:
        return data
    try:
        return up.parse_response(orjson.loads(data))
    except Exception as exc:  # upstream garbage
        return _server(f"unparseable upstream response: {type(exc).__name__}", response.status)


async def relay_stream(x: "Exchange", attempt, rec, up, response, t0: float, stops=None, warnings=()) -> Outcome:
    """Hold the upstream's events until the first content-bearing one, then
    commit: send the head and what was held, and relay the rest as it comes.

    The upstream stream is always decoded (constant memory) to find the
    commit point, errors, garbage and usage.  With resume on, the events the
    client was sent are journaled (busbar.resume) and a vendor's mid-stream
    error event is withheld, since the stream may go on elsewhere.  A
    continuation of a broken stream (`x.resuming`) is spliced into the
    client's open stream: its commit writes no head, only content."""
    client = x.client
    resume = x.resuming
    same = up is client and resume is None
    timeouts = x.plan.pipeline.timeouts
    reads = response.aiter_reads()
    decoder = up.stream_decoder()
    if resume is None:
        encoder = client.stream_encoder(attempt.model, **client.stream_encoder_options(x.sent))
        journal = Journal() if x.resume_policy is not None else None
        splice = None
        first_by = None
    else:
        encoder, journal, splice = resume.encoder, resume.journal, resume.splice()
        first_by = resume.deadline       # the silence a resume may add
    relay = PassthroughRelay(up.stream_content_type, decoder) if same else None
    stops = StopEmulation(stops) if stops and not same else None
    # a miss the response cache will store: the answer is folded as it goes out (per attempt;
    # the request's own once this attempt wins the commit, so a racing hedge cannot replace it)
    kept = Assembler() if x.cache_lookup is not None else None
    # only answers with tool calls are kept, and only a request offering tools gets them
    capture = StreamCapture() if x.reasoning is not None and not same and x._ir is not None and x._ir.tools else None
    # translated for a Responses client: its output items are kept once the answer ends (passed
    # through in a mixed pool: the vendor's own items, marked as such)
    keeping = (x.items is not None or capture is not None) if not same else \
        x.keep_vendor_items or x.conversation is not None
    source = decoder if same else encoder        # who knows the output items
    remembers = same and x.items is not None     # a Responses vendor's own id passes: remembered at the commit
    minted = None                                # ... the id its `response.created` showed
    ended = False                                # the answer's stop went by before the commit
    held: list = []          # raw bytes (same protocol) or IR events, until the commit
    pending: list = []       # with a journal: the held IR events, journaled at the commit
    bound = PrecommitBound()  # what `held` may grow to: past it, the member's fault
    upstream_done = False
    committed = False
    ttfb = 0.0
    rest: list = []           # the pieces of the last read not yet relayed
    # The connection's ReadBound bounds every read of this stream (first_byte
    # before the commit, idle after it): `_next_read` arms it around each read
    # alone (past it the upstream client's sweeper closes the connection), so
    # writes to the client never run under it.  Every path inside returns;
    # leaving it otherwise (its ReadTimeout) means a read timed out.
    with response.read_bound as read_bound:
        while not committed:
            try:
                if rest:
                    chunk = rest.pop(0)
                else:
                    deadline = trio.current_time() + timeouts.first_byte
                    rest = await _next_read(reads, read_bound, deadline if first_by is None else min(deadline, first_by))
                    chunk = rest.pop(0) if rest is not None else None
                if chunk is None:
                    try:
                        events = decoder.close()
                    except StreamError as exc:
                        return _server(f"upstream stream: {exc}")
                    upstream_done = True
                    chunk = b""
                else:
                    events = decoder.feed(chunk)
            except UpstreamError as exc:
                return _server(str(exc))
            except StreamError as exc:
                return _server(f"malformed upstream stream: {exc}")
            if stops is not None:
                events = stops.filter(events)
                upstream_done = upstream_done or stops.done     # cut: the upstream is not read further
            if splice is not None:
                events = splice.feed(events)
            if kept is not None:
                kept.feed(events)
            for event in events:
                if type(event) is ir.ErrorEvent:
                    # an error before any content: the decoder classified it;
                    # it fails over or goes to the client as the pipeline says
                    return Failed(x.redact(_fault_of(up, event)))
                if ir.is_content(event):
                    committed = True
                if type(event) is ir.UsageEvent:
                    rec.usage = event.usage       # the request's once committed (a hedge may lose)
                elif type(event) is ir.MessageStart:
                    if event.usage is not None and splice is None:
                        rec.usage = event.usage   # what the vendor bills already (a lost hedge's waste)
                    if remembers:
                        minted = event.id         # `response.created`'s id (ADR 0027)
            if keeping and not ended:
                ended = _ends(events)
            if same:
                held.append(relay.take(chunk))
                if journal is not None:
                    pending.extend(events)
            else:
                held.extend(events)
                if capture is not None:
                    capture.feed(events)
            too_much = bound.add(len(chunk), len(events))
            if too_much is not None:
                return Failed(too_much)
            if upstream_done:
                break
        # commit: from here the client sees bytes and there is no failover
        committed = True
        ttfb = trio.current_time() - t0
        if journal is not None:
            journal.extend(pending if same else held)
        if rec.usage is not None:
            x.record.usage = rec.usage
        if resume is None:
            x.commit(rec, response.status, ttfb, warnings)
            x.cache_assembler = kept
            # head and held content in one write: one send, and the client's first
            # read has content in it
            first = b"".join(held) if same else b"".join(encoder.encode(e) for e in held)
            if keeping and ended:
                keeping = await _keep(x, source, capture, same)
            if remembers:
                await x.remember_minted(attempt, minted)
            head = [(b"content-type", client.stream_content_type), (b"cache-control", b"no-cache")]
            if journal is not None:     # resume on: the trailer says whether the stream was resumed
                head.append((b"trailer", b"x-busbar-resumed"))
            await x.responder.start(200, head + x.answer_headers(attempt), first)
        else:
            x.commit_continuation(rec, response.status, ttfb, splice)
            x.cache_assembler = kept
            out = b"".join(encoder.encode(e) for e in held)
            if keeping and ended:
                keeping = await _keep(x, source, capture, same)
            await x.responder.write(out)
        try:
            while not upstream_done:
                if rest:              # what came with the commit's read after its first content
                    read, rest = rest, None
                else:
                    read = await _next_read(reads, read_bound, trio.current_time() + timeouts.idle)
                    if read is None:
                        break
                outs = []             # one write per read, however many pieces it carried
                for chunk in read:
                    events = decoder.feed(chunk)
                    if stops is not None:
                        events = stops.filter(events)
                        upstream_done = stops.done
                    if splice is not None:
                        events = splice.feed(events)
                    if kept is not None:
                        kept.feed(events)
                    broken = None
                    for event in events:
                        kind = type(event)
                        if kind is ir.UsageEvent:
                            x.record.usage = event.usage
                        elif kind is ir.ErrorEvent:
                            broken = event
                    if journal is not None:
                        if broken is not None:
                            # resume on: the vendor's error event stays here (the
                            # stream may go on elsewhere); what came before it goes out
                            events = [e for e in events if type(e) is not ir.ErrorEvent]
                            if same:
                                replay(encoder, journal)       # the client's stream so far, in encoder state
                            journal.extend(events)
                            outs.append(b"".join(encoder.encode(e) for e in events))
                            await x.responder.write(b"".join(outs))
                            fault = _fault_of(up, broken)
                            return Broken(x.redact(Fault(fault.cls, fault.status,
                                                         f"upstream error mid-stream: {fault.message}",
                                                         fault.retry_after, fault.code)), ttfb, encoder, journal)
                        journal.extend(events)
                        if journal.full:       # past its bound: no longer resumable
                            journal = None
                    out = relay.take(chunk) if same else b"".join(encoder.encode(e) for e in events)
                    if capture is not None:
                        capture.feed(events)
                    if keeping and _ends(events):     # before the client sees the end: its next turn may follow at once
                        keeping = await _keep(x, source, capture, same)
                    if broken is not None:
                        # passthrough: the vendor's own error event goes out (a vendor error event may echo the key)
                        outs.append(x.gw.scrub_bytes(out))
                        await x.responder.write(b"".join(outs))
                        fault = _fault_of(up, broken)
                        return Broken(x.redact(Fault(fault.cls, fault.status, f"upstream error mid-stream: {fault.message}",
                                                     fault.retry_after, fault.code)), ttfb, None if same else encoder)
                    outs.append(out)
                    if upstream_done:     # cut by an emulated stop: the rest is not relayed
                        break
                out = outs[0] if len(outs) == 1 else b"".join(outs)
                if response.ended or upstream_done:
                    x.responder.hold(out)        # the last content: it goes out with the stream's end
                else:
                    await x.responder.write(out)
            if not upstream_done:
                tail = decoder.close()
                if stops is not None:
                    tail = stops.filter(tail)
                if splice is not None:
                    tail = splice.feed(tail)
                for event in tail:
                    if type(event) is ir.UsageEvent:
                        x.record.usage = event.usage
                if kept is not None:
                    kept.feed(tail)
                if capture is not None:
                    capture.feed(tail)
                if not same:
                    out = b"".join(encoder.encode(e) for e in tail)
                    if keeping and _ends(tail):
                        keeping = await _keep(x, source, capture, same)
                    x.responder.hold(out)
            if not same:
                out = encoder.finish()
                if keeping:
                    keeping = await _keep(x, source, capture, same)
                x.responder.hold(out)
            elif keeping:
                keeping = await _keep(x, source, capture, same)
        except (UpstreamError, StreamError) as exc:
            return Broken(Fault(FaultClass.SERVER, 0, str(exc)), ttfb, encoder, journal, not same)
        return Answered(response.status, ttfb, chunked=True)
    # a read's bound passed (the `with read_bound` ended at its ReadTimeout)
    if not committed:
        return _server("no first byte before timeout")
    return Broken(Fault(FaultClass.SERVER, 0, "upstream stream stalled"), ttfb, encoder, journal, not same)


async def _next_read(reads, bound: ReadBound, deadline: float) -> list[bytes] | None:
    """The pieces of the upstream body's next network read (None at its end),
    with `deadline` as the connection's bound; disarmed again once the read
    returns, so nothing else runs under it.  A read past its bound raises
    ReadTimeout (the `with bound` around the stream ends there).  Two
    attribute stores and a comparison per read, where a fresh `fail_after`
    per chunk (a scope, its status object, a generator context manager), then
    a deadline moved to and from each read, cost far more (ADR 0014;
    `ReadBounds`)."""
    bound.arm(deadline)
    try:
        pieces = await reads.__anext__()
    except StopAsyncIteration:
        pieces = None
    except UpstreamError:
        bound.disarm()          # ReadTimeout when the sweeper closed the connection
        raise
    bound.disarm()
    return pieces


def _ends(events: list) -> bool:
    return any(type(e) is ir.MessageStop for e in events)


async def _keep(x: "Exchange", source, capture, vendor: bool) -> bool:
    """A stream's answer is whole (its stop encoded or decoded, not yet sent): keep
    what its client may send back by id (busbar.item_store, busbar.reasoning_store);
    `source` is the client's encoder, or on passthrough the vendor's decoder (`vendor`).
    Returns False: done, not again."""
    shown = source.shown_response() if x.items is not None else None
    keys = x.reasoning.keep(capture.parts(), x.client.shown_call_id) if capture is not None else None
    if vendor and not x.keep_vendor_items:      # kept only for its conversation (ADR 0030)
        if shown:
            await x.append_to_conversation(shown)
    elif shown or keys:
        await x.keep_for_next_turn(shown, keys, vendor)
    return False


def _fault_of(dialect, event: ir.ErrorEvent) -> Fault:
    """The fault a decoder attached (`streaming.error_event`); an ErrorEvent
    made without one is classified by its status."""
    if event.fault is not None:
        return event.fault
    return dialect.classify(event.status, [], event.raw or orjson.dumps({"message": event.message}))


class PassthroughRelay:
    """Same-protocol stream relay: forwards the upstream's bytes untouched,
    whole SSE events at a time (an incomplete event waits for its end, so an
    error event we append, or a resumed stream's continuation, can never
    land inside one).  Binary framings (Bedrock's eventstream: each frame
    starts with its total length) go out whole frames at a time too.

    An SSE stream is split once, by the decoder the relay reads it with
    (`SSEDecoder.unfinished` says how much of what it was fed is an event
    still arriving); `take(chunk)` is called after the decoder was fed it."""

    __slots__ = ("_decoder", "_held")

    def __init__(self, content_type: bytes, decoder):
        self._decoder = decoder if content_type == b"text/event-stream" else None
        self._held = b""          # the start of an event (or binary frame) still arriving

    def take(self, chunk: bytes) -> bytes:
        if not chunk:
            return chunk
        if self._decoder is None:
            return self._whole_frames(chunk)
        unfinished = self._decoder.unfinished
        if not unfinished and not self._held:
            return chunk                      # the common case: whole events, as received
        data = self._held + chunk if self._held else chunk
        end = len(data) - unfinished
        self._held = data[end:]
        return data[:end]

    def _whole_frames(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        end, size = 0, len(data)
        while size - end >= 4:
            n = int.from_bytes(data[end:end + 4], "big")
            if n < 4 or size - end < n:
                break
            end += n
        if end == size:
            self._held = b""
            return data
        self._held = data[end:]
        return data[:end]
