"""OpenAI Responses background mode (ADR 0026): `POST /v1/responses` with `background: true`
answered at once with a `queued` Response, the exchange run detached from the client's
connection, `GET /v1/responses/{id}` polling it, `POST /v1/responses/{id}/cancel`.

The exchange is the ordinary one (admission, tenancy, limits, routing, failover, the
pipeline's deadline, the settle funnel, records).  It sees `background` once it has read the
body (a dict lookup, `Exchange._receive`) and raises `Rerun` before any limit is taken; the
gateway then hands the request to `BackgroundRuns.create`, which starts it again with
`nursery.start` in this module's gateway-level nursery, so until it is admitted and routed
it runs under the client's connection (a refusal is the POST's own answer, in the client's
protocol); once routed the exchange calls `detach` (`Exchange.run`), which keeps an
`in_progress` marker as the response's turn (here and in the cluster copy) and hands the
task over to the nursery: the POST answers `queued`, the client's connection no longer
cancels it.  Its answer goes to a `CapturedResponder`; the exchange keeps the turn under the
id the POST showed (`Exchange.keep_for_next_turn`), as ADR 0024/0025 keep any turn; a
failure, a cancel or a shutdown replaces the marker with the final status here.

`background` with `stream: true`: the POST streams as usual through a `DetachedResponder`,
whose writes stop (and are dropped) once the client is gone, so the generation goes on, is
kept under the id its stream showed and can be retrieved.  From its first bytes (before the
client sees them) it has the same `in_progress` marker under the id its `response.created`
shows, so `retrieve` and `cancel` reach it while it runs; a cancelled one's still-connected
client gets a last `response.completed`-shaped event with `status: "cancelled"`.  Its events,
as its client was sent them, are kept in a `StreamLog` (bounded), so
`GET /v1/responses/{id}?stream=true&starting_after=N` (`serve_resume`) replays those after N
and follows the live rest; a reader never slows the run.  With Redis the events are relayed
(`_relay`, `RelayedLog`) so any replica can serve the resume.

The decisions are I/O-free (`requested`, `pending_shown`, `final_shown`, `error_of`,
`effective`, `cancellable`, `read_cancel`), the clock injected where one is read.
"""
from __future__ import annotations

import bisect
import dataclasses
import logging
import time
import uuid
from typing import TYPE_CHECKING, Callable

import orjson
import trio

from busbar.faults import ClientError
from busbar.item_store import decode_turn, turn_key
from busbar.protocols.base import JSON_CT
from busbar.protocols.sse import SSESplitter
from busbar.protocols.responses import ERRORS, dialect as responses, echoed, kept_echo, query_value
from busbar.protocols.routes import match_response_cancel
from busbar.server import CapturedResponder, ClientGone, HttpRequest, Responder
from busbar.state.redis import RedisUnavailable
from busbar.state.resp import RespError

if TYPE_CHECKING:
    from busbar.exchange import Exchange
    from busbar.gateway import Gateway

log = logging.getLogger("busbar.background")

QUEUED, IN_PROGRESS = "queued", "in_progress"
PENDING = frozenset({QUEUED, IN_PROGRESS})
CANCEL_WAIT_S = 5.0          # how long a cancel waits for the run to end (here or on another replica)
CANCEL_POLL_S = 0.05         # ... polling the cluster copy, when another replica runs it
CANCEL_CHANNEL = "responses:cancel"
RESUME_KEEP_S = 300.0        # a finished stream's events stay resumable this long (OpenAI: 5 minutes)
MAX_LOG_BYTES = 8 << 20      # one stream's kept events; beyond it its oldest events go
MAX_FINISHED_BYTES = 64 << 20    # all finished streams' kept events; beyond it the longest finished go
CATCH_UP_BYTES = 256 << 10   # what a resumed reader is sent in one write while it catches up
RELAY_BATCH = 1000           # ... and at most this many events (one Redis push of the relay)
RELAY_EVERY_S = 0.05         # the relay pushes a running stream's new events to Redis at most this often
RELAY_POLL_S = 0.05          # a reader on another replica polls the relayed events this often
RELAY_FIRST_WAIT_S = 1.0     # ... and waits this long for a just-started stream's first push
RELAY_END, RELAY_CUT = b"", b"-"     # relayed after the last event: the stream ended; the relay stopped short
RELAY_CHANNEL = "responses:events"
RELAY_LUA = "redis.call('RPUSH', KEYS[1], unpack(ARGV, 2)) redis.call('PEXPIRE', KEYS[1], ARGV[1]) return 1"
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


# ---------------------------------------------------------------------------
# the decisions (I/O-free)

def requested(obj) -> bool:
    """Whether a Responses request asks for background mode; a 400 naming what is
    allowed when `background` is not a boolean, or comes with `store: false` (a background
    response is retrieved by its id, so it must be kept: OpenAI refuses it the same way)."""
    if not isinstance(obj, dict):
        return False
    flag = obj.get("background")
    if flag is None or flag is False:
        return False
    if flag is not True:
        raise ClientError(400, f"Invalid type for 'background': expected a boolean, but got "
                               f"{type(flag).__name__}.", param="background", code="invalid_type")
    if obj.get("store") is False:
        raise ClientError(400, "Background mode requires store=true: a background response is retrieved and "
                               "cancelled by its id, so it must be kept; send `store: true` (the default) or "
                               "drop `background`.", param="store")
    return True


def pending_shown(model: str, created_at: int, expires_at: float, stream: bool = False,
                  echo: dict | None = None) -> dict:
    """What a running response's marker shows: `in_progress`, the pool as its model, and
    the wall-clock time by which its run ends (the pipeline's deadline), past which a
    marker nobody replaced is read as failed (`effective`); `stream`: it was created with
    `stream: true` (its events can be resumed, `resume_refusal`); `echo`: the request's
    fields its object echoes, as a turn keeps them (`responses.kept_echo`)."""
    shown = {"status": IN_PROGRESS, "model": model, "created_at": created_at, "background": True,
             "expires_at": expires_at, "ids": []}
    if echo:
        shown["echo"] = echo
    if stream:
        shown["stream"] = True
    return shown


def final_shown(pending: dict, status: str, error: dict | None = None) -> dict:
    """The marker's fields with a final status (`failed` with its `error`, `cancelled`)."""
    shown = {k: v for k, v in pending.items() if k != "expires_at"}
    shown["status"] = status
    if error is not None:
        shown["error"] = error
    return shown


def error_of(status: int, body: bytes) -> dict:
    """A failed run's `error` in OpenAI's Response shape (`{"code", "message"}`) from the
    error the exchange answered (rendered in the Responses protocol): its message, and the
    code a failed Responses stream carries for that kind of error (`ERRORS`, one table)."""
    message = f"The background response failed with HTTP status {status}."
    code = None
    try:
        err = orjson.loads(body).get("error")
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            code = err.get("code")
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if code not in ERRORS.read:
        kind = next((k for k, row in ERRORS.rows.items() if row.status == status), "api_error")
        code = ERRORS.row(kind, "api_error").event
    return {"code": code, "message": message}


def effective(shown: dict | None, now: float) -> dict | None:
    """The shown fields as a client should see them: a pending marker past the time its
    run had to end by (its replica stopped before replacing it) is a failed response."""
    if not shown or shown.get("status") not in PENDING or now <= float(shown.get("expires_at") or float("inf")):
        return shown
    return final_shown(shown, "failed", {"code": "server_error", "message":
                                         "The background response did not finish: the gateway replica running "
                                         "it stopped before its deadline."})


def pending(data: bytes | None) -> bool:
    """Whether a stored value is a running background response's marker (a replica holding
    one reads the cluster copy again: the run may have ended on another)."""
    turn = decode_turn(data) if data is not None else None
    return turn is not None and (turn.shown or {}).get("status") in PENDING


def unfinished(response_id: str, shown: dict | None, now: float) -> ClientError | None:
    """The refusal of a request continuing (`previous_response_id`) a background response
    still `queued` or `in_progress` at wall-clock time `now`: it has no answer yet to
    continue from, and OpenAI refuses it too; None once it is final (a marker past its
    deadline reads as failed, `effective`)."""
    status = (effective(shown, now) or {}).get("status")
    if status not in PENDING:
        return None
    return ClientError(400, f"Previous response with id '{response_id}' is still {status}: a response can be "
                            "continued only once it has completed. Poll it with GET /v1/responses/"
                            f"{response_id} until its status is final, then send this request again.",
                       param="previous_response_id")


def cancellable(shown: dict | None, response_id: str) -> bool:
    """Whether cancel has a run to stop: True while pending; False for a final background
    response (cancel answers it as it is: idempotent, as OpenAI documents); a 400 for a
    response not made in background mode."""
    if not (shown or {}).get("background"):
        raise ClientError(400, f"Cannot cancel a synchronous response: '{response_id}' was not created with "
                               "`background: true`; only background responses can be cancelled.")
    return shown.get("status") in PENDING


def starting_after_of(raw: str | None) -> int:
    """`starting_after` of a resume: the sequence number after which events are sent; -1
    (every event) when absent.  A 400 naming it when it is not an integer."""
    if raw is None or raw == "":
        return -1
    try:
        return max(-1, int(raw))
    except ValueError:
        raise ClientError(400, f"Invalid 'starting_after': '{raw}'. Expected an integer, the `sequence_number` "
                               "of the last event received.", param="starting_after", code="invalid_type") from None


def resume_refusal(shown: dict | None, response_id: str) -> ClientError:
    """Why a kept response's stream cannot be resumed here (this replica holds no events of
    it): not a background response, one created without `stream: true`, one running on
    another replica, or one finished longer ago than its events are kept."""
    shown = shown or {}
    if not shown.get("background"):
        return ClientError(400, f"Response '{response_id}' cannot be streamed: it was not created with "
                                "`background: true`; only background responses created with `stream: true` can "
                                "be streamed again. Retrieve it without `stream`.", param="stream")
    if not shown.get("stream"):
        return ClientError(400, f"Response '{response_id}' cannot be streamed: it was created without "
                                "`stream: true`; retrieve it without `stream` and poll while its status is "
                                "queued or in_progress.", param="stream")
    if shown.get("status") in PENDING:
        return ClientError(400, f"Response '{response_id}' is streamed by another gateway replica (the one running "
                                "it) and its events did not reach this one (the replicas' Redis is unreachable): "
                                "retry, or retrieve it without `stream` and poll.", param="stream")
    return ClientError(400, f"This response can no longer be streamed: a background stream's events are kept "
                            f"{RESUME_KEEP_S:g} s after it ends, by the gateway replica that ran it. Retrieve "
                            f"'{response_id}' without `stream` for the whole response.", param="stream")


def cancel_message(scope: str, response_id: str) -> bytes:
    """What a replica publishes for the one running `response_id`: ids only."""
    return orjson.dumps({"scope": scope, "response": response_id})


def read_cancel(data: bytes) -> str | None:
    """The turn key a published cancel names, None for anything else."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("scope"), str) or not isinstance(obj.get("response"), str):
        return None
    return turn_key(obj["scope"], obj["response"])


class Rerun(Exception):
    """Raised by the exchange once it read a body asking for background mode (a dict
    lookup: nothing on the path of any other request); the gateway starts the request
    again through `BackgroundRuns.create`, which can detach it."""

    def __init__(self, obj: dict):
        super().__init__("background")
        self.obj = obj


# ---------------------------------------------------------------------------
# the runs

@dataclasses.dataclass(eq=False)
class Run:
    """One background response: the id the POST showed, and what its marker holds."""
    response_id: str | None          # None for a stream: its turn is kept under the id the stream shows
    created_at: int
    stream: bool = False
    scope: trio.CancelScope = dataclasses.field(default_factory=trio.CancelScope)
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    task_status: object = None
    detached: bool = False
    key: str | None = None           # its turn's key, once detached
    item_scope: str = "-"
    previous: str | None = None
    input: list = dataclasses.field(default_factory=list)
    shown: dict | None = None        # the marker's shown fields
    model: str = ""                  # the pool (a stream's marker, kept at its first event)
    expires_in: float = 0.0          # the pipeline's deadline + CANCEL_WAIT_S (a stream's marker)
    log: StreamLog | None = None     # a stream's events, for resumed readers (kept from its first bytes)
    sent: dict = dataclasses.field(default_factory=dict)   # the POST's body as sent: what its object echoes
    echo: dict | None = None         # of which the marker keeps what it set (`responses.kept_echo`)


def stream_id(first: bytes) -> str | None:
    """The response id a Responses stream's first bytes show (its `response.created`
    event: translated by our encoder or a Responses member's own, passed through)."""
    for line in first.split(b"\n"):
        if line.startswith(b"data:"):
            try:
                obj = orjson.loads(line[5:])
            except orjson.JSONDecodeError:
                return None
            response = obj.get("response") if isinstance(obj, dict) else None
            rid = response.get("id") if isinstance(response, dict) else None
            return rid if isinstance(rid, str) and rid else None
    return None


def last_sequence(data: bytes, seq: int) -> int:
    """The last `sequence_number` in written stream bytes (`seq` when there is none)."""
    i = data.rfind(b'"sequence_number":')
    if i < 0:
        return seq
    j = i + 18
    while j < len(data) and data[j:j + 1] == b" ":
        j += 1
    k = j
    while k < len(data) and data[k:k + 1].isdigit():
        k += 1
    return int(data[j:k]) if k > j else seq


def cancelled_event(response: dict, seq: int) -> bytes:
    """The terminal event a cancelled background stream's still-connected client gets:
    shaped as `response.completed` (openai-python has no `response.cancelled` event), its
    response's final `status: "cancelled"` (ADR 0026)."""
    body = {"type": "response.completed", "sequence_number": seq + 1, "response": response}
    return b"event: response.completed\ndata: " + orjson.dumps(body) + b"\n\n"


FELL_BEHIND = ("This reader fell too far behind the background stream: the events after its position are no "
               "longer kept. Retrieve the response without `stream`.")


class FellBehind(Exception):
    """A resumed reader whose next event is no longer to be had: the log dropped it
    (`MAX_LOG_BYTES`), or the relay from another replica stopped short."""

    def __init__(self, message: str = FELL_BEHIND):
        super().__init__(message)
        self.message = message


def fell_behind_event(next_sequence: int, message: str = FELL_BEHIND) -> bytes:
    """The last event a reader that cannot go on gets, in the Responses stream's own `error`
    shape: where to resume from is gone, the whole response can be retrieved."""
    body = {"type": "error", "code": "stream_events_expired", "param": "starting_after",
            "sequence_number": next_sequence, "message": message}
    return b"event: error\ndata: " + orjson.dumps(body) + b"\n\n"


class StreamLog:
    """A background stream's events as its client was sent them (the Responses SSE bytes,
    one whole event each, with its `sequence_number`), for readers that resume it.

    Only the run appends (`feed`: never waits, wakes every reader at once); each reader
    follows at its own pace from its own position (`read`), so a slow one slows nobody.
    Bounded by `MAX_LOG_BYTES`: beyond it the oldest events go, and a reader whose next
    event went with them falls behind (`FellBehind`).  Positions count every event ever
    kept, so they stay valid as the oldest go.  I/O-free but for the wake-up."""

    __slots__ = ("events", "seqs", "head", "cut", "size", "done", "ended_at", "_changed", "_split")

    def __init__(self):
        self.events: list[bytes] = []
        self.seqs: list[int] = []
        self.head = 0                    # the oldest kept event's index in `events` (those before it went)
        self.cut = 0                     # events compacted out of the lists (positions before `events[0]`)
        self.size = 0
        self.done = False
        self.ended_at: float | None = None
        self._changed = trio.Event()
        self._split = SSESplitter()

    @property
    def dropped(self) -> int:
        """How many of the oldest events the bound removed (the first kept one's position)."""
        return self.cut + self.head

    @property
    def last(self) -> int:
        """The last sequence number kept (-1 before any)."""
        return self.seqs[-1] if len(self.seqs) > self.head else -1

    def feed(self, data: bytes) -> None:
        """Written stream bytes (any chunking); events without a sequence number (comments) are not kept."""
        try:
            events = self._split.feed(data)
        except ValueError:              # an event over the splitter's cap: nothing more is kept
            events = []
        added = False
        for event in events:
            seq = last_sequence(event.raw, -1)
            if seq <= self.last:
                continue
            self.events.append(event.raw)
            self.seqs.append(seq)
            self.size += len(event.raw)
            added = True
        while self.size > MAX_LOG_BYTES and len(self.events) - self.head > 1:
            self.size -= len(self.events[self.head])
            self.events[self.head] = b""
            self.head += 1
        if self.head > 1024 and self.head * 2 > len(self.events):
            del self.events[:self.head], self.seqs[:self.head]
            self.cut, self.head = self.cut + self.head, 0
        if added:
            self._wake()

    def close(self, now: float) -> None:
        self.done, self.ended_at = True, now
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def start(self, starting_after: int) -> int:
        """The position of the first event after `starting_after`; a 400 naming it when it
        is past the last event (no reader can have seen one not yet written) or when events
        after it are no longer kept."""
        if starting_after > self.last:
            raise ClientError(400, f"Invalid 'starting_after': {starting_after} is past this stream's last event "
                                   f"({self.last}).", param="starting_after")
        at = bisect.bisect_right(self.seqs, starting_after, self.head)
        if at == self.head and self.dropped and starting_after < self.seqs[self.head] - 1:
            first = self.seqs[self.head] - 1
            raise ClientError(400, f"Invalid 'starting_after': the events up to {first} of this stream are no "
                                   f"longer kept (the gateway keeps the last {MAX_LOG_BYTES >> 20} MiB of a "
                                   f"stream); resume after {first} or later, or retrieve the response without "
                                   "`stream`.", param="starting_after")
        return self.cut + at

    async def read(self, position: int) -> tuple[list[bytes], int]:
        """The kept events from `position` on (several, up to `CATCH_UP_BYTES` and
        `RELAY_BATCH` events, while a reader catches up), waiting for the next one when it
        has them all, and the position after them; [] once the stream ended.  `FellBehind`
        when the event at `position` is no longer kept."""
        while True:
            if position < self.dropped:
                raise FellBehind()
            at, events = position - self.cut, self.events
            if at < len(events):
                end, size, most = at, 0, at + RELAY_BATCH
                while end < len(events) and size < CATCH_UP_BYTES and end < most:
                    size += len(events[end])
                    end += 1
                return events[at:end], position + end - at
            if self.done:
                return [], position
            await self._changed.wait()


class RelayedLog:
    """A background stream another replica runs, read from the events its relay pushed to
    Redis (`BackgroundRuns._relay`): `start` and `read` as a `StreamLog`'s, for one reader,
    polling every `RELAY_POLL_S` (the relay pushes at most every `RELAY_EVERY_S`).  `pending`:
    async () -> whether the run is still pending (a relay that went quiet on a finished or
    vanished run will push nothing more)."""

    def __init__(self, command, name: str, items: list[bytes], pending):
        self.command, self.name, self.items, self.pending = command, name, list(items), pending
        self.after = -1

    def _events(self) -> list[bytes]:
        return [raw for raw in self.items if raw not in (RELAY_END, RELAY_CUT)]

    def start(self, starting_after: int) -> int:
        events = self._events()
        last = last_sequence(events[-1], -1) if events else -1
        ended = self.items[-1] if self.items and self.items[-1] in (RELAY_END, RELAY_CUT) else None
        if ended == RELAY_END and starting_after > last:
            raise ClientError(400, f"Invalid 'starting_after': {starting_after} is past this stream's last event "
                              f"({last}).", param="starting_after")
        if ended == RELAY_CUT and starting_after >= last:
            raise ClientError(400, "Invalid 'starting_after': the events after it are no longer kept (the gateway "
                                   f"keeps the first {MAX_LOG_BYTES >> 20} MiB of a stream for other replicas); "
                                   "retrieve the response without `stream`.", param="starting_after")
        self.after = starting_after
        return next((i for i, raw in enumerate(self.items) if raw in (RELAY_END, RELAY_CUT)
                     or last_sequence(raw, -1) > starting_after), len(self.items))

    async def read(self, position: int) -> tuple[list[bytes], int]:
        quiet = 0
        while True:
            out = []
            while position < len(self.items) and len(out) < RELAY_BATCH:
                raw = self.items[position]
                if raw == RELAY_END:
                    return out, position
                if raw == RELAY_CUT:
                    if out:
                        return out, position
                    raise FellBehind("This background stream's events after this point were not kept for other "
                                     f"gateway replicas (its first {MAX_LOG_BYTES >> 20} MiB are); retrieve the "
                                     "response without `stream`.")
                position += 1
                if last_sequence(raw, -1) > self.after:
                    out.append(raw)
            if out:
                return out, position
            await trio.sleep(RELAY_POLL_S)
            try:
                more = await self.command("LRANGE", self.name, len(self.items), len(self.items) + RELAY_BATCH - 1)
            except (RedisUnavailable, RespError) as error:
                raise FellBehind("The gateway lost its connection to its other replicas while relaying this "
                                 "background stream; retrieve the response without `stream`.") from error
            self.items.extend(more or ())
            quiet = 0 if more else quiet + 1
            if quiet and quiet % 40 == 0 and not await self.pending():
                raise FellBehind("The gateway replica running this background stream stopped relaying it "
                                 "before its end; retrieve the response without `stream`.")


class DetachedResponder(Responder):
    """The client's own responder for a background stream: writes go to it until the
    client is gone, then are dropped, so the exchange runs to its end.  At the stream's
    first bytes (`start`) the run's marker is kept under the id they show, before the
    client sees it, so `retrieve` and `cancel` reach the running stream (`on_start`)."""

    __slots__ = ("inner", "on_start", "seq", "log")

    def __init__(self, inner: Responder, on_start=None):
        super().__init__(None)
        self.inner = inner
        self.extra_headers = inner.extra_headers
        self.on_start = on_start         # async (status, first bytes) -> None
        self.seq = -1                    # the last sequence_number written (the cancelled event's follows it)
        self.log: StreamLog | None = None    # what resumed readers follow (set by `on_start`); fed first

    @property
    def started(self) -> bool:
        return self.inner.started

    async def _call(self, name: str, *args) -> None:
        if self.inner._gone:
            return
        try:
            await getattr(self.inner, name)(*args)
        except ClientGone:
            pass

    async def send(self, status, headers, body) -> None:
        self.inner.extra_headers = self.extra_headers
        await self._call("send", status, headers, body)

    async def start(self, status, headers, first: bytes = b"") -> None:
        if self.on_start is not None:
            await self.on_start(status, first)
        self._record(first)
        self.inner.extra_headers = self.extra_headers
        await self._call("start", status, headers, first)

    async def write(self, data: bytes) -> None:
        self._record(data)
        await self._call("write", data)

    def hold(self, data: bytes) -> None:
        self._record(data)
        if not self.inner._gone:
            self.inner.hold(data)

    def _record(self, data: bytes) -> None:
        # kept before its client is sent it: a reader resuming after an event it saw finds it
        self.seq = last_sequence(data, self.seq)
        if self.log is not None and data:
            self.log.feed(data)

    async def end(self, trailers=None) -> None:
        await self._call("end", trailers)


class BackgroundRuns:
    """The background responses this replica runs, in its one nursery (`run`), kept by
    the App across reloads.  `on_count(+1/-1)`: the server's count of requests in flight
    (its concurrency limit and the shutdown's wait see a buffered background run as the
    request it is)."""

    def __init__(self, *, wall: Callable[[], float] = time.time, on_count: Callable[[int], None] | None = None):
        self.wall = wall
        self.on_count = on_count
        self.nursery: trio.Nursery | None = None
        self.runs: dict[str, Run] = {}        # turn key -> the run, while it runs here
        self.logs: dict[str, StreamLog] = {}  # turn key -> a stream's events: while it runs, then RESUME_KEEP_S
        self.finished_bytes = 0               # what the finished ones' logs hold (MAX_FINISHED_BYTES)
        self.channel: str | None = None       # the cluster's cancel channel (Redis); None: this replica alone
        self.publish = None                   # async (channel, bytes) -> None
        self.live = 0                         # runs detached now (streams included)
        self.started = self.completed = self.failed = self.cancelled = self.shut_down = 0
        self.cancels_heard = self.cancels_forwarded = 0
        self.resumed = self.readers = self.fell_behind = 0
        self.state = None                     # the cluster's RedisState: a stream's events relayed for the others
        self.relayed = self.relayed_reads = 0

    @property
    def running(self) -> int:
        return self.live

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def status(self) -> dict:
        return {"running": self.running, "started": self.started, "completed": self.completed,
                "failed": self.failed, "cancelled": self.cancelled, "shut_down": self.shut_down,
                "cancels_heard": self.cancels_heard, "cancels_forwarded": self.cancels_forwarded,
                "resumed": self.resumed, "resume_readers": self.readers, "resume_fell_behind": self.fell_behind,
                "stream_logs": len(self.logs), "stream_log_bytes": sum(log.size for log in self.logs.values())}

    # ---- the cluster's cancel channel (busbar.cluster.RoutingSync.follow) ----
    def on_message(self, data: bytes) -> None:
        key = read_cancel(data)
        run = self.runs.get(key) if key is not None else None
        if run is not None:
            self.cancels_heard += 1
            run.scope.cancel()

    def on_subscribed(self, up: bool) -> None:
        pass

    # ---- POST /v1/responses with background: true ----------------------------
    async def create(self, gw: "Gateway", request: HttpRequest, responder: Responder, protocol: str, dialect,
                     params: dict, obj: dict) -> None:
        """`obj`: the request's body, which asked for background mode (`Rerun`)."""
        try:
            background = requested(obj)
        except ClientError as err:
            return await responder.send(*dialect.render_error(err))
        # the member is sent the request without it: the gateway runs it in the background, not the vendor
        inner = dataclasses.replace(request, body=orjson.dumps({k: v for k, v in obj.items() if k != "background"}))
        if not background or self.nursery is None:      # no nursery running (an App not started): inline
            return await gw.journey(inner, responder, protocol, dialect, params)
        stream = obj.get("stream") is True
        run = Run(None if stream else f"resp_{uuid.uuid4().hex}", int(self.wall()), stream, sent=obj)
        if stream:
            async def on_start(status: int, first: bytes) -> None:
                if status == 200 and run.key is None and run.detached:
                    await self._keep_stream(gw, run, stream_id(first))
                    detached.log = run.log
            detached = DetachedResponder(responder, on_start)
            await self.nursery.start(self._run, gw, inner, detached, protocol, dialect, params, run)
            try:
                await run.done.wait()       # the client leaving cancels this wait, not the run ...
            finally:
                if run.log is None and not run.done.is_set():
                    run.scope.cancel()      # ... unless it left before the stream showed its id: none can name it
            return
        captured = CapturedResponder()
        await self.nursery.start(self._run, gw, inner, captured, protocol, dialect, params, run)
        responder.extra_headers = captured.extra_headers
        if not run.detached:            # refused before it was routed: the POST's own answer
            return await responder.send(captured.status, captured.headers, captured.body)
        from busbar.stored_responses import response_object
        body = response_object(run.response_id, decode_turn(gw.item_store.get(run.key)) or _empty_turn(run))
        body["status"] = QUEUED
        await responder.send(200, [JSON_CT, (b"x-busbar-pool", (run.shown or {}).get("model", "").encode())],
                             orjson.dumps(body))

    async def detach(self, x: "Exchange") -> None:
        """The exchange is admitted and routed (`Exchange.run`): keep its marker, then the
        task leaves the client's connection for this nursery."""
        run: Run = x.background
        run.item_scope, run.previous, run.input = x.item_scope, x.previous, x._own_input()
        run.model, run.expires_in = x.model, x.plan.pipeline.deadline + CANCEL_WAIT_S
        run.echo = kept_echo(echoed(run.sent))
        if run.response_id is not None:
            run.shown = pending_shown(x.model, run.created_at, self.wall() + run.expires_in, echo=run.echo)
            run.key = await self._keep(x.gw, run, run.shown)
            self.runs[run.key] = run
            if self.on_count is not None:
                self.on_count(1)
        run.detached = True
        self.started += 1
        self.live += 1
        run.task_status.started()

    async def _keep_stream(self, gw: "Gateway", run: Run, response_id: str | None) -> None:
        """A background stream's marker, under the id its first event shows (kept before
        the client is sent it), unless that turn is already kept as answered (a cache
        replay keeps its turn before it starts the stream); and its log, for resumed readers."""
        if response_id is None:
            return
        key = turn_key(run.item_scope, response_id)
        held = gw.item_store.get(key)
        if held is None or pending(held):
            run.response_id = response_id
            run.shown = pending_shown(run.model, run.created_at, self.wall() + run.expires_in, stream=True,
                                      echo=run.echo)
            run.key = await self._keep(gw, run, run.shown)
            self.runs[run.key] = run
        self._sweep()
        run.log = self.logs[key] = StreamLog()      # a replay's events too: its client may resume it
        if self.state is not None:
            self.nursery.start_soon(self._relay, relay_name(key), run.log, run.expires_in + RESUME_KEEP_S)

    async def _relay(self, name: str, kept: StreamLog, ttl_s: float) -> None:
        """A stream's events for readers on other replicas: read from its log like any
        reader (so a slow Redis slows nobody) and pushed to a Redis list at most every
        `RELAY_EVERY_S`, its first `MAX_LOG_BYTES`, then `RELAY_END` (or `RELAY_CUT`)
        with `RESUME_KEEP_S` to live.  Redis away: the relay stops, the run goes on."""
        position = sent = 0
        try:
            while True:
                try:
                    events, position = await kept.read(position)
                except FellBehind:
                    events = None
                sent += sum(map(len, events or ()))
                if not events or sent > MAX_LOG_BYTES:
                    mark = RELAY_END if events == [] else RELAY_CUT
                    await self.state.run_script(RELAY_LUA, (name,), int(RESUME_KEEP_S * 1000), mark)
                    return
                await self.state.run_script(RELAY_LUA, (name,), int(ttl_s * 1000), *events)
                self.relayed += len(events)
                await trio.sleep(RELAY_EVERY_S)
        except (RedisUnavailable, RespError) as error:
            log.warning("background stream %s not relayed to the other replicas (redis: %s)", name,
                        type(error).__name__)

    async def _run(self, gw: "Gateway", request: HttpRequest, responder: Responder, protocol: str, dialect,
                   params: dict, run: Run, task_status=trio.TASK_STATUS_IGNORED) -> None:
        run.task_status = task_status
        try:
            with run.scope:
                try:
                    await gw.journey(request, responder, protocol, dialect, params, background=run)
                except trio.Cancelled:
                    if not run.scope.cancel_called:       # the gateway shutting down, not a cancel
                        await self._finish(gw, run, "failed", {"code": "server_error", "message":
                                           "The gateway shut down before the background response completed."})
                        self.shut_down += 1
                    raise
                except Exception:
                    log.exception("background response %s failed inside the gateway", run.response_id)
                    await self._finish(gw, run, "failed", {"code": "server_error",
                                                           "message": "Internal gateway error."})
                    return
            if run.scope.cancelled_caught:
                await self._finish(gw, run, "cancelled")
                if isinstance(responder, DetachedResponder):
                    await self._end_cancelled_stream(gw, run, responder)
            elif isinstance(responder, CapturedResponder) and responder.status != 200:
                await self._finish(gw, run, "failed", error_of(responder.status, responder.body))
            elif run.stream and await self._finish(gw, run, "failed", {
                    "code": "server_error", "message": "The background stream ended before it completed."}):
                pass                           # its stream ended with the error event; no answer was kept
            elif run.detached:
                self.completed += 1
            if not run.detached:
                task_status.started()          # refused before routing: `create` answers the POST
        finally:
            if run.key is not None and self.runs.get(run.key) is run:
                del self.runs[run.key]
                if self.on_count is not None and not run.stream:   # a stream's connection counts itself
                    self.on_count(-1)
            if run.log is not None:
                run.log.close(self.wall())
                self.finished_bytes += run.log.size
                self._sweep()
            run.done.set()
            if run.detached:
                self.live -= 1

    async def _finish(self, gw: "Gateway", run: Run, status: str, error: dict | None = None) -> bool:
        """Replace a pending marker by the final status (a turn the exchange already kept
        as answered stays: a cancel that came too late changes nothing); whether it did."""
        if run.key is None or run.shown is None:
            return False
        held = gw.item_store.get(run.key)
        turn = decode_turn(held) if held is not None else None
        if turn is not None and (turn.shown or {}).get("status") not in PENDING:
            return False
        if status == "cancelled":
            self.cancelled += 1
        else:
            self.failed += 1
        with trio.CancelScope(shield=True):
            await self._keep(gw, run, final_shown(run.shown, status, error))
        return True

    async def _end_cancelled_stream(self, gw: "Gateway", run: Run, responder: DetachedResponder) -> None:
        """A cancelled background stream's client, if still there, gets the response with its
        final status, `cancelled`, as the stream's last event (`cancelled_event`)."""
        if not responder.inner.started or run.key is None:
            return
        from busbar.stored_responses import response_object
        held = gw.item_store.get(run.key)
        turn = decode_turn(held) if held is not None else None
        body = response_object(run.response_id, turn or _empty_turn(run))
        with trio.move_on_after(1.0):     # kept for resumed readers even when its client is gone
            await responder.write(cancelled_event(body, responder.seq))
            await responder.end()

    def _sweep(self) -> None:
        """Forget the finished streams' events past `RESUME_KEEP_S`, then the longest
        finished while they hold more than `MAX_FINISHED_BYTES`.  A reader already following
        one reads on (it holds the log); a new one is told it can no longer be streamed.
        Once per background stream's start and end: off every other path."""
        now = self.wall()
        finished = sorted((log.ended_at, key) for key, log in self.logs.items() if log.done)
        for ended_at, key in finished:
            if now - ended_at <= RESUME_KEEP_S and self.finished_bytes <= MAX_FINISHED_BYTES:
                break
            self.finished_bytes -= self.logs.pop(key).size

    async def _keep(self, gw: "Gateway", run: Run, shown: dict) -> str:
        """The run's turn with `shown` and no output, here and in the cluster copy."""
        key, data = gw.item_store.keep_turn(run.item_scope, run.response_id, run.previous, run.input, [], False, shown)
        if gw.shared_items is not None:
            with trio.CancelScope(shield=True):
                await gw.shared_items.put_many([(key, data)], gw.item_store.ttl_s)
        return key

    # ---- GET /v1/responses/{id}?stream=true[&starting_after=N] --------------------
    async def serve_resume(self, gw: "Gateway", request: HttpRequest, responder: Responder, response_id: str,
                           query: dict[str, list[str]]) -> None:
        """A background stream's events after `starting_after` (all of them without it),
        then the live rest until it ends, from the log this replica keeps of it
        (`StreamLog`); the reader leaving ends only its own reading."""
        from busbar import stored_responses as stored
        try:
            starting_after = starting_after_of(query_value(query, "starting_after"))
            found = await stored._lookup(gw, stored.scopes(gw, request), response_id)
            if found is None:
                raise stored._not_found(gw, response_id)
            scope, turn = found
            key = turn_key(scope, response_id)
            log = self.logs.get(key)
            if log is None or (log.done and self.wall() - log.ended_at > RESUME_KEEP_S):
                log = await self._relayed(gw, scope, response_id, turn.shown)
            position = log.start(starting_after)
        except ClientError as err:
            return await responder.send(*responses.render_error(err))
        self.resumed += 1
        self.readers += 1
        seq = starting_after
        try:
            await responder.start(200, SSE_HEADERS)
            while True:
                try:
                    events, position = await log.read(position)
                except FellBehind as behind:
                    self.fell_behind += 1
                    await responder.write(fell_behind_event(seq + 1, behind.message))
                    break
                if not events:
                    break
                seq = last_sequence(events[-1], seq)
                await responder.write(b"".join(events))
            await responder.end()
        except ClientGone:
            pass                # the run, its log and the other readers go on
        finally:
            self.readers -= 1

    async def _relayed(self, gw: "Gateway", scope: str, response_id: str, shown: dict | None) -> RelayedLog:
        """The events another replica relayed of a background stream it runs (or ran), or the
        400 saying why it cannot be streamed here (`resume_refusal`)."""
        if self.state is not None and (shown or {}).get("stream"):
            name = self.state.prefix + ":" + relay_name(turn_key(scope, response_id))
            from busbar import stored_responses as stored
            # a stream that just started may not have had its relay's first push yet: wait for it a little
            waited = RELAY_FIRST_WAIT_S if (shown or {}).get("status") in PENDING else 0.0
            deadline, items = trio.current_time() + waited, None
            while True:
                try:
                    items = await self.state.command("LRANGE", name, 0, RELAY_BATCH - 1)
                except (RedisUnavailable, RespError):     # as if nothing was relayed
                    break
                if items or trio.current_time() >= deadline:
                    break
                await trio.sleep(RELAY_POLL_S)
            if items:
                async def still_pending() -> bool:
                    again = await stored._lookup(gw, (scope,), response_id)
                    return again is not None and (effective(again[1].shown, self.wall()) or {}).get(
                        "status") in PENDING
                self.relayed_reads += 1
                return RelayedLog(self.state.command, name, items, still_pending)
        raise resume_refusal(shown, response_id)

    # ---- POST /v1/responses/{id}/cancel ----------------------------------------
    async def serve_cancel(self, gw: "Gateway", request: HttpRequest, responder: Responder) -> bool:
        response_id = match_response_cancel(request.path)
        if response_id is None:
            return False
        from busbar import stored_responses as stored
        try:
            if request.method != b"POST":
                raise ClientError(405, f"Method {request.method.decode('latin-1')} not allowed on this path; "
                                       "use POST.")
            scopes = stored.scopes(gw, request)
            found = await stored._lookup(gw, scopes, response_id)
            if found is None:
                pin = await stored.pinned(gw, scopes, response_id)
                if pin is not None:       # a vendor's own response: its cancel, with the key that made it (ADR 0027)
                    return await stored.forward(gw, request, responder, pin, response_id, "/cancel")
                raise stored._not_found(gw, response_id)
            scope, turn = found
            if cancellable(effective(turn.shown, self.wall()), response_id):
                key = turn_key(scope, response_id)
                run = self.runs.get(key)
                if run is not None:
                    run.scope.cancel()
                    with trio.move_on_after(CANCEL_WAIT_S):
                        await run.done.wait()
                elif self.publish is not None:
                    # another replica runs it: it hears this on the cluster's subscription
                    self.cancels_forwarded += 1
                    await self.publish(self.channel, cancel_message(scope, response_id))
                    with trio.move_on_after(CANCEL_WAIT_S):
                        while True:
                            again = await stored._lookup(gw, (scope,), response_id)
                            if again is None or (again[1].shown or {}).get("status") not in PENDING:
                                break
                            await trio.sleep(CANCEL_POLL_S)
                found = await stored._lookup(gw, (scope,), response_id) or found
            body = stored.response_object(response_id, found[1], self.wall())
        except ClientError as err:
            await responder.send(*responses.render_error(err))
        else:
            await responder.send(200, [JSON_CT], orjson.dumps(body))
        return True


def relay_name(key: str) -> str:
    """The Redis list (under the state's prefix) a stream's events are relayed in."""
    return f"{RELAY_CHANNEL}:{key}"


def _empty_turn(run: Run):
    from busbar.item_store import Turn
    return Turn(run.previous, run.input, [], False, 0, run.shown)
