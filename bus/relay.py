"""The websocket relay: fans event envelopes out to browsers and scripts over `/ws`.

Protocol (v1)
=============

One websocket, JSON text frames. Client messages are JSON objects with an `op`; server control
messages also carry an `op` and never an `event`; everything else the server sends is events.

Connecting
----------
Without a token, the web app's middleware refuses an upgrade whose `Origin` is not the server's
own (a page on another site must not read the events; see SECURITY.md). When the relay has a
token (`B3JOBS_TOKEN`), a connection must prove it, either with the header
`Authorization: Bearer <token>` on the upgrade request (scripts) or, for browsers, which cannot
set headers on a websocket, with a first message `{"op": "auth", "token": "<token>"}` within
5 s (answered `{"op": "authenticated"}`). Anything else is closed with code **4401**
"unauthorized". A token is never taken from the URL: URLs end up in logs.

Client → server
---------------
    {"op": "subscribe", "events": ["job:*", "asset:updated"], "where": {"ticker": "PETR4"}, "after": "9f2c…"}
    {"op": "subscribe", "events": ["job:*"], "since": 41}
    {"op": "unsubscribe", "events": ["job:*"]}
    {"op": "auth", "token": "..."}

- `events`: event-name patterns, `*` and `?` as in shell globs (`job:*`, `*:progress`, `*`).
- `where` (optional): every key must equal the event's `data` field of that name; the key `job`
  matches the job name (`envelope.job.name`, or `data.job` for events without a job, such as
  `queue:paused`). A list value means "any of": `{"ticker": ["PETR4", "VALE3"]}`. Values are
  JSON scalars.
- `after` (optional): the `id` of the last event the client saw, on this node or any other; with
  `seen` (optional, at most 1,000): the ids it received last. See Resume.
- `since` (optional): the last `seq` the client saw from this same process; see Resume.
- Each `subscribe` adds its patterns, each with its own `where`, to the connection's subscription;
  an event is sent once when any of them matches. `unsubscribe` removes the patterns named
  (whatever their `where`).

Every client message gets exactly one reply, in order:
`{"op": "subscribed", "events": [...], "seq": S, "last_id": I, "oldest": O, "replay": R}` (see Resume),
`{"op": "unsubscribed", "events": [...removed]}`, `{"op": "authenticated"}`, or
`{"op": "error", "code": "bad_json" | "bad_message" | "unknown_op" | "bad_subscription" | "rate_limited",
"message": "..."}`
(the connection stays open after an error).

Limits
------
What one connection may ask is bounded, so that no client can make events cost more for the
others: at most 32 (pattern, `where`) filters held at once, patterns of at most 100 characters,
a `where` of at most 4 fields, 64 values and 256 value combinations (field names up to 64
characters, string values up to 256), 256 `where` values and 4 distinct sets of `where` fields
held in all, and messages nested at most 32 levels deep. A message
over a bound gets `{"op": "error", "code": "bad_subscription" | "bad_json", ...}`. A connection
may send 20 messages at once and then 2 per second; past that each gets
`{"op": "error", "code": "rate_limited"}` and is not acted on. Matching costs a dictionary lookup
per field of the event plus the filters that really match (`bus.matching`), however many
filters other connections hold.

Server → client: events
-----------------------
Every event is an envelope `{"id", "seq", "event", "ts", "job": {"id", "name"} | null, "data"}`
(see `bus.envelope`). Events are batched: an event waits 10 ms (`flush_interval_s`) for others to
join it (longer only while the previous round of writes is still going out), then one flush sends
each client at most one frame: a single envelope object when one event is due for it, else a
JSON array of envelopes in `seq` order. The frame is built once per distinct subscription and
shared by every client that has it. A client that fell behind may get one array covering several
flushes (up to 1,000 events per frame).
So a reader does: `msg = JSON.parse(frame); if (Array.isArray(msg)) ...each envelope...;
else if ("op" in msg) ...control...; else ...one envelope...`.

`seq` rises by 1 per event received by this relay process (starting at 1); a client sees a
subset (its filters), so gaps in the `seq` it sees are normal.

Resume
------
`subscribed.seq` (S) is the relay's position when the subscription took effect: every matching
event with `seq > S` arrives live; `last_id` (I) is the id of the event at S (null before any),
a resume point for a client that has received nothing yet. `oldest` is the oldest `seq` still held
in the replay buffer (the last 10,000 events by default), or null.

By id, on any web node (`after`): ids are global (every node receives every event with the same
id), `seq` is not. If this node holds the event `after` (it waits up to 2 s for it to arrive: the
node may be a little behind the one the client left), the R matching events held after it are sent
right after `subscribed`, in this node's order, then live events follow. Ahead of them come the
matching events that arrived here less than 2 s (`overlap_s`) before it: two nodes' queues may
interleave two publishers' concurrent messages differently, so an event this node got just before
`after` may have reached the old node just after it, and the client never saw it. No id listed in
`seen` is sent again; a client that sends no `seen` drops the ids it already has. "Still held"
means: this node was already receiving events when `after` was published, and `after` is among the
last 10,000 it received. If not, the relay sends `{"op": "gap", "after": ID, "oldest": O,
"latest": S}` and goes live: the client reloads its state over HTTP.

By seq, on the same process (`since: N`): if every event with `seq > N` is still held, the R
matching ones with `N < seq <= S` are sent right after `subscribed`, in order, then live events
follow: no gap and no duplicate (events this connection already received through an earlier
subscription are not sent again). If they are not all held (the buffer moved on, or the relay
restarted and `N` is beyond its `seq`), the relay sends `{"op": "gap", "since": N, "oldest": O,
"latest": S}` and goes live. `seq` is per relay process: use `after` to resume on another node.

Slow clients
------------
Each client has its own queue and writer, so a slow socket never delays the others. When more
than 5,000 live events wait for one client, the relay first coalesces `*:progress` events (only
the newest per job and event name is kept); if still over, it closes the socket with code
**4408** "too slow: N events pending" (reconnect and resume with `after`). Heartbeat pings every
20 s drop dead sockets. Shutdown closes every socket with 1001 (going away).

Wiring
------
    relay = Relay(token=settings.token)
    relay.setup(app)          # GET /ws, the flush task (cleanup_ctx), GOING_AWAY on shutdown
    # from the Kombu consumer thread:
    loop.call_soon_threadsafe(relay.ingest_many, envelopes)   # a batch, decoded once by bus.bridge

A second transport (`bus.socketio`) authenticates its connections with `relay.token_ok`, makes a
`Client` for each with `relay.attach(wire)` (its Wire says how bytes are built and written), and
uses `relay.subscribe`/`regroup`/`unsubscribe`/`detach`: the same filters, replay, encode-once
flushes (one frame per flush per distinct (codec, subscription)) and slow-client bounds.

`setup` is `app.router.add_get("/ws", relay.handle)`, `app.cleanup_ctx.append(relay.context)`
and `app.on_shutdown.append(relay.shutdown)`. The last matters: aiohttp waits for running
handlers (up to its shutdown timeout, 60 s) before it runs the cleanup contexts, and a websocket
handler runs until its socket closes; `context` closes whatever is still open at cleanup.
`bus.client.RelayClient` is a Python client with resume built in.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Protocol

import msgspec
from aiohttp import WSCloseCode, WSMsgType, web

from bus import json_limits
from bus.envelope import Envelope, decode, decode_batch, encode
from bus.matching import FilterKey, Matcher, any_matches, combinations, filter_matches, where_key
from bus.tokens import bearer, token_matches

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSE_TOO_SLOW = 4408
MAX_INBOUND_BYTES = 64 * 1024
MAX_EVENTS_PER_FRAME = 1000
MAX_SEEN_IDS = 1000
MAX_ID_CHARS = 64
CLOSE_TIMEOUT_S = 5.0

# What one connection may ask for (see "Limits" above).
MAX_FILTERS = 32  # (pattern, where) pairs held at once
MAX_PATTERN_CHARS = 100
MAX_WHERE_KEYS = 4  # fields in one `where`
MAX_WHERE_VALUES = 64  # values in one `where`, all fields together
MAX_WHERE_COMBINATIONS = 256  # value tuples one `where` stands for ({a: [1, 2], b: [3, 4]}: 4)
MAX_WHERE_VALUES_HELD = 256  # values in all the `where`s a connection holds
MAX_WHERE_SHAPES = 4  # distinct sets of `where` fields a connection holds
MAX_NAME_CHARS = 64  # a `where` field's name
MAX_VALUE_CHARS = 256  # a `where` string value
MESSAGE_BURST = 20  # client messages answered at once ...
MESSAGES_PER_S = 2.0  # ... and then this many per second

Scalar = str | int | float | bool | None


# ---------------------------------------------------------------- client messages


class Subscribe(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    events: list[str]
    where: dict[str, Scalar | list[Scalar]] | None = None
    since: Annotated[int, msgspec.Meta(ge=0)] | None = None
    after: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS)] | None = None
    seen: (
        Annotated[list[Annotated[str, msgspec.Meta(max_length=MAX_ID_CHARS)]], msgspec.Meta(max_length=MAX_SEEN_IDS)]
        | None
    ) = None


class Unsubscribe(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    events: list[str]


class Auth(msgspec.Struct, forbid_unknown_fields=True):
    op: str
    token: str


MESSAGES: dict[str, type[Subscribe] | type[Unsubscribe] | type[Auth]] = {
    "subscribe": Subscribe,
    "unsubscribe": Unsubscribe,
    "auth": Auth,
}


class BadMessage(Exception):
    """A client message the relay refuses; answered with an `op: error`, the socket stays open."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_message(raw: str | bytes) -> Subscribe | Unsubscribe | Auth:
    """Decode one client message, or raise BadMessage saying what was wrong."""
    try:
        obj = json_limits.decode(raw)
    except json_limits.BadJson as exc:
        raise BadMessage("bad_json", "message is not valid JSON: %s" % exc) from None
    if not isinstance(obj, dict):
        raise BadMessage("bad_message", "message must be a JSON object, got %s" % type(obj).__name__)
    kind = MESSAGES.get(obj.get("op"))  # type: ignore[arg-type]
    if kind is None:
        raise BadMessage("unknown_op", "op must be one of %s, got %r" % (", ".join(MESSAGES), obj.get("op")))
    try:
        return msgspec.convert(obj, kind)
    except msgspec.ValidationError as exc:
        keys = ", ".join(f.name for f in msgspec.structs.fields(kind))
        raise BadMessage("bad_message", "%s: %s (%s takes: %s)" % (obj["op"], exc, obj["op"], keys)) from exc


def check_patterns(patterns: list[str]) -> None:
    if not patterns:
        raise BadMessage("bad_subscription", "events must name at least one event or pattern")
    if len(patterns) > MAX_FILTERS:
        message = "at most %d patterns per connection, got %d" % (MAX_FILTERS, len(patterns))
        raise BadMessage("bad_subscription", message)
    for pattern in patterns:
        if not pattern or len(pattern) > MAX_PATTERN_CHARS:
            message = "event pattern must be 1-%d characters, got %.120r" % (MAX_PATTERN_CHARS, pattern)
            raise BadMessage("bad_subscription", message)


def check_where(where: dict[str, Any] | None) -> int:
    """How many values `where` holds; BadMessage when it asks more than one subscription may."""
    if not where:
        return 0
    if len(where) > MAX_WHERE_KEYS:
        raise BadMessage("bad_subscription", "where: at most %d fields, got %d" % (MAX_WHERE_KEYS, len(where)))
    count = 0
    for name, value in where.items():
        values = value if isinstance(value, list) else [value]
        if not values:
            raise BadMessage("bad_subscription", "where.%.64s: an empty list matches nothing" % name)
        if not 1 <= len(name) <= MAX_NAME_CHARS:
            raise BadMessage("bad_subscription", "where: field names must be 1-%d characters" % MAX_NAME_CHARS)
        if any(isinstance(v, str) and len(v) > MAX_VALUE_CHARS for v in values):
            message = "where.%s: string values must be at most %d characters" % (name, MAX_VALUE_CHARS)
            raise BadMessage("bad_subscription", message)
        count += len(values)
    if count > MAX_WHERE_VALUES:
        raise BadMessage("bad_subscription", "where: at most %d values in all, got %d" % (MAX_WHERE_VALUES, count))
    combos = combinations(where_key(where))
    if combos > MAX_WHERE_COMBINATIONS:
        message = "where: at most %d combinations of values, got %d" % (MAX_WHERE_COMBINATIONS, combos)
        raise BadMessage("bad_subscription", message)
    return count


# ---------------------------------------------------------------- events held by the relay


class Held(msgspec.Struct, frozen=True, gc=False):
    """One received event as the relay keeps it: `seq`, its bytes (encoded once), its coalescing key,
    its `id` and when it arrived here (`at`, monotonic seconds: the resume overlap is measured with it).

    Only atoms, and untracked by the cyclic GC (`gc=False`): with 1,000 sockets a full collection
    already pauses the loop for 30-50 ms, and 10,000 held envelopes (40,000 objects) made those
    pauses longer and more frequent. The envelope is decoded again from `raw` in the rare replay.
    """

    seq: int
    raw: bytes
    progress_key: tuple[str, str] | None
    id: str = ""
    at: float = 0.0


def hold(envelope: Envelope) -> Held:
    job, name = envelope.job, envelope.event
    progress_key = (job.id, name) if job is not None and name.endswith(":progress") else None
    return Held(envelope.seq, encode(envelope), progress_key, envelope.id, time.monotonic())


def build_frame(items: Sequence[Held]) -> bytes:
    """One envelope as itself, several as a JSON array: the bytes are joined, never re-encoded."""
    if len(items) == 1:
        return items[0].raw
    return b"[" + b",".join(item.raw for item in items) + b"]"


def batches(items: Sequence[Held], size: int = MAX_EVENTS_PER_FRAME) -> Iterator[tuple[Held, ...]]:
    for start in range(0, len(items), size):
        yield tuple(items[start : start + size])


# ---------------------------------------------------------------- transports


class Codec(Protocol):
    """How one transport puts events and control messages into bytes; one per transport, shared by its clients.

    Frames are built once per flush per distinct (codec, subscription) and handed to every client in it.
    """

    def events(self, items: Sequence[Held]) -> bytes: ...

    def control(self, message: dict[str, Any]) -> bytes: ...


class JsonCodec:
    """`/ws`: one envelope as itself, several as a JSON array; control messages as JSON objects."""

    def events(self, items: Sequence[Held]) -> bytes:
        return build_frame(items)

    def control(self, message: dict[str, Any]) -> bytes:
        return msgspec.json.encode(message)


JSON = JsonCodec()


class Wire(Protocol):
    """One connection as the relay's Client drives it: its codec, and how its bytes leave."""

    codec: Codec
    peer: str

    async def write(self, frame: bytes, items: tuple[Held, ...] | None) -> None:
        """Send one frame; `items` are the events in it (None: a control message). Raises ConnectionResetError."""

    async def close(self, code: int, reason: str) -> None: ...

    def abort(self) -> None: ...


class WsWire:
    """A `/ws` websocket."""

    codec: Codec = JSON

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.peer = request.remote or "?"

    async def write(self, frame: bytes, items: tuple[Held, ...] | None) -> None:
        await self.ws.send_frame(frame, WSMsgType.TEXT)

    async def close(self, code: int, reason: str) -> None:
        await self.ws.close(code=code, message=reason.encode())

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


# ---------------------------------------------------------------- groups


class Group:
    """The clients with one distinct subscription: each flush builds its frame once for all of them."""

    __slots__ = ("clients", "codec", "keys")

    def __init__(self, keys: frozenset[FilterKey], codec: Codec) -> None:
        self.keys = keys
        self.codec = codec
        self.clients: set[Client] = set()


# ---------------------------------------------------------------- one connection


@dataclass
class Counters:
    """What `Relay.stats()` reports besides the live counts; `events_sent` counts deliveries."""

    events_ingested: int = 0
    undecodable: int = 0
    frames_sent: int = 0
    events_sent: int = 0
    coalesced: int = 0
    slow_disconnects: int = 0


class Chunk(msgspec.Struct, frozen=True, gc=False):
    """A frame waiting in a client's queue; `items` is None for a control message.

    Untracked by the cyclic GC, like `Held`: a flush makes one per client, and those that live
    through two young collections otherwise end up triggering full ones.
    """

    frame: bytes
    items: tuple[Held, ...] | None
    live: bool = False


class Client:
    """One connection (a `/ws` websocket, a Socket.IO socket): its subscription, its bounded queue of
    frames and the task that writes them through its Wire."""

    def __init__(self, wire: Wire, counters: Counters, max_pending: int) -> None:
        self.wire = wire
        self.codec = wire.codec
        self.peer = wire.peer
        self.filters: dict[FilterKey, int] = {}  # filter -> the seq after which it has had every event
        self.group: Group | None = None
        self.closing = False
        self._allowance = float(MESSAGE_BURST)
        self._allowance_at = time.monotonic()
        self._counters = counters
        self._max_pending = max_pending
        self._pending: collections.deque[Chunk] = collections.deque()
        self._pending_live = 0
        self._waiter: asyncio.Future[None] | None = None
        self.writer = asyncio.get_running_loop().create_task(self._write_forever())

    def may_send_message(self) -> bool:
        """Spend one of the client's message allowance (MESSAGE_BURST, refilled at MESSAGES_PER_S)."""
        now = time.monotonic()
        self._allowance = min(float(MESSAGE_BURST), self._allowance + (now - self._allowance_at) * MESSAGES_PER_S)
        self._allowance_at = now
        if self._allowance < 1:
            return False
        self._allowance -= 1
        return True

    # -- queueing (on the loop, never awaits)

    def send_control(self, message: dict[str, Any]) -> None:
        self._enqueue(Chunk(self.codec.control(message), None))

    def send_replay(self, items: Sequence[Held]) -> None:
        for part in batches(items):
            self._enqueue(Chunk(self.codec.events(part), part))

    def push(self, frame: bytes, items: tuple[Held, ...]) -> None:
        """Queue one flush's frame; returns at once whatever the socket does."""
        if self.closing:
            return
        self._pending_live += len(items)
        self._enqueue(Chunk(frame, items, live=True))
        if self._pending_live > self._max_pending:
            self._counters.coalesced += self._coalesce()

    @property
    def over_limit(self) -> bool:
        return self._pending_live > self._max_pending

    @property
    def pending_live(self) -> int:
        return self._pending_live

    def _enqueue(self, chunk: Chunk) -> None:
        if self.closing:
            return
        self._pending.append(chunk)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _coalesce(self) -> int:
        """Keep only the newest pending `*:progress` per job and event; returns how many were dropped."""
        newest = {item.progress_key: item.seq for chunk in self._live_chunks() for item in chunk.items or ()}
        kept: collections.deque[Chunk] = collections.deque()
        dropped = 0
        for chunk in self._pending:
            if not chunk.live or chunk.items is None:
                kept.append(chunk)
                continue
            items = tuple(i for i in chunk.items if i.progress_key is None or newest[i.progress_key] == i.seq)
            dropped += len(chunk.items) - len(items)
            if items:
                kept.append(
                    chunk if len(items) == len(chunk.items) else Chunk(self.codec.events(items), items, live=True)
                )
        self._pending = kept
        self._pending_live -= dropped
        return dropped

    def _live_chunks(self) -> Iterator[Chunk]:
        return (chunk for chunk in self._pending if chunk.live)

    # -- writing (its own task)

    async def _write_forever(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while not self.closing:
                if self._pending:
                    await self._write_pending()
                    continue
                # The wait is inline, not in a helper coroutine: it lasts a flush cycle, once per client
                # per flush, and objects alive that long end up in the GC's oldest generation (see Held).
                self._waiter = loop.create_future()
                await self._waiter
                self._waiter = None
        except ConnectionResetError:
            pass  # the socket went away; the handler's receive loop sees it and unregisters us

    async def _write_pending(self) -> None:
        """Send what is queued: usually one frame shared with the group, else a backlog merged."""
        if len(self._pending) == 1:
            chunk = self._pending.popleft()
            self._pending_live = 0
            await self.wire.write(chunk.frame, chunk.items)
            self._sent(len(chunk.items) if chunk.items else 0)
            return
        for frame, items in frames_of(self._take_all(), self.codec):
            await self.wire.write(frame, items)
            self._sent(len(items) if items else 0)

    def _sent(self, events: int) -> None:
        self._counters.frames_sent += 1
        self._counters.events_sent += events

    def _take_all(self) -> list[Chunk]:
        """Everything queued (a lagging client): merged into few frames by frames_of."""
        chunks = list(self._pending)
        self._pending.clear()
        self._pending_live = 0
        return chunks

    def discard(self) -> None:
        """Stop queueing; the writer is left alone, as it may share aiohttp's drain future with a close."""
        self.closing = True
        self._pending.clear()
        self._pending_live = 0
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stop(self) -> None:
        """The socket is gone: end the writer."""
        self.discard()
        self.writer.cancel()


def frames_of(chunks: Iterable[Chunk], codec: Codec) -> Iterator[tuple[bytes, tuple[Held, ...] | None]]:
    """(frame, events in it): control frames as they are (None), runs of event frames merged."""
    run: list[Chunk] = []
    for chunk in chunks:
        if chunk.items is None:
            yield from merged(run, codec)
            run = []
            yield chunk.frame, None
        else:
            run.append(chunk)
    yield from merged(run, codec)


def merged(run: list[Chunk], codec: Codec) -> Iterator[tuple[bytes, tuple[Held, ...]]]:
    if len(run) == 1:
        yield run[0].frame, run[0].items or ()
        return
    items = [item for chunk in run for item in chunk.items or ()]
    for part in batches(items):
        yield codec.events(part), part


# ---------------------------------------------------------------- the relay


class Relay:
    """Numbers incoming envelopes, keeps the last `replay_size`, and fans them out to `/ws` clients
    (and to those of a second transport that attaches its own Wire: `bus.socketio`)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        replay_size: int = 10_000,
        max_pending: int = 5_000,
        flush_interval_s: float = 0.01,
        auth_timeout_s: float = 5.0,
        heartbeat_s: float = 20.0,
        overlap_s: float = 2.0,
        resume_wait_s: float = 2.0,
    ) -> None:
        self._token = token.encode() if token else None
        self._overlap_s = overlap_s
        self._resume_wait_s = resume_wait_s
        self._max_pending = max_pending
        self._flush_interval_s = flush_interval_s
        self._auth_timeout_s = auth_timeout_s
        self._heartbeat_s = heartbeat_s
        self._seq = 0
        self._flushed_seq = 0  # every event up to here has been handed to the subscribed clients
        self._replay_size = replay_size
        self._replay: collections.deque[Held] = collections.deque()
        self._seq_of_id: dict[str, int] = {}  # id -> seq of every held event
        self._due: list[tuple[Held, Envelope]] = []  # received, not flushed yet
        self._due_event: asyncio.Event | None = None
        self._clients: set[Client] = set()
        self._groups: dict[tuple[Codec, frozenset[FilterKey]], Group] = {}
        self._matcher = Matcher()
        self._tasks: set[asyncio.Task[None]] = set()
        self._counters = Counters()

    # -- wiring

    def setup(self, app: web.Application, path: str = "/ws") -> None:
        """Route, flush task and shutdown hook in one call."""
        app.router.add_get(path, self.handle)
        app.cleanup_ctx.append(self.context)
        app.on_shutdown.append(self.shutdown)

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: runs the flush task; on exit closes every socket with GOING_AWAY."""
        self._due_event = asyncio.Event()
        if self._due:
            self._due_event.set()
        flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        yield
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
        await self.shutdown(app)
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def shutdown(self, app: web.Application | None = None) -> None:
        """on_shutdown: close every socket with GOING_AWAY, so aiohttp need not wait for the handlers."""
        clients = list(self._clients)
        for client in clients:
            client.discard()
        await asyncio.gather(*(self._close(c, WSCloseCode.GOING_AWAY, "server shutdown") for c in clients))

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def stats(self) -> dict[str, int]:
        live = {"clients": len(self._clients), "subscriptions": len(self._groups), "seq": self._seq}
        return {**live, **asdict(self._counters)}

    # -- input (on the event loop)

    def ingest(self, envelope: Envelope) -> None:
        """Number one envelope, encode it once, hold it for replay and queue it for the next flush."""
        self._seq += 1
        envelope = msgspec.structs.replace(envelope, seq=self._seq)
        held = hold(envelope)
        if len(self._replay) >= self._replay_size:
            oldest = self._replay.popleft()
            if self._seq_of_id.get(oldest.id) == oldest.seq:
                del self._seq_of_id[oldest.id]
        self._replay.append(held)
        self._seq_of_id[held.id] = held.seq
        self._due.append((held, envelope))
        self._counters.events_ingested += 1
        if len(self._due) == 1 and self._due_event is not None:
            self._due_event.set()

    def ingest_many(self, envelopes: Sequence[Envelope]) -> None:
        """ingest() for a batch off the bus (decoded once, by the bridge), in order."""
        for envelope in envelopes:
            self.ingest(envelope)

    def ingest_raw(self, raw: bytes) -> None:
        """ingest_many() for one bus message's bytes; undecodable input is counted and logged, never raised."""
        try:
            envelopes = decode_batch(raw)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self._counters.undecodable += 1
            if self._counters.undecodable <= 10 or self._counters.undecodable % 1000 == 0:
                log.warning("undecodable event dropped (%d so far): %s: %.120r", self._counters.undecodable, exc, raw)
            return
        self.ingest_many(envelopes)

    # -- fan-out

    async def _flush_forever(self) -> None:
        assert self._due_event is not None
        while True:
            await self._due_event.wait()
            # Counted from when the loop gets to the first pending event, so under load the interval
            # starts after the round of writes in progress: fewer, fuller frames. Counting it from the
            # event's arrival instead cost 20-40% more CPU (more frames) and gave no lower latency
            # in benchmarks/RESULTS-fanout.md.
            await asyncio.sleep(self._flush_interval_s)
            self._due_event.clear()
            try:
                self._flush()
            except Exception:  # a bug here must not stop delivery for good
                log.exception("relay flush failed")

    def _flush(self) -> None:
        due, self._due = self._due, []
        if not due:
            return
        self._flushed_seq = due[-1][0].seq
        picked: dict[Group, list[Held]] = {}
        holders = self._matcher.holders
        for held, envelope in due:
            for group in holders(envelope):
                items = picked.get(group)
                if items is None:
                    picked[group] = [held]
                else:
                    items.append(held)
        for group, held_items in picked.items():
            batch = tuple(held_items)
            self._deliver(group, group.codec.events(batch), batch)

    def _deliver(self, group: Group, frame: bytes, items: tuple[Held, ...]) -> None:
        for client in list(group.clients):
            client.push(frame, items)
            if client.over_limit:
                self._disconnect_slow(client)

    def _disconnect_slow(self, client: Client) -> None:
        pending = client.pending_live
        self._counters.slow_disconnects += 1
        log.warning("relay: closing %s: too slow, %d events pending", client.peer, pending)
        self._unregister(client)
        client.discard()
        self._spawn(self._close(client, CLOSE_TOO_SLOW, "too slow: %d events pending" % pending))

    # -- connections

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """GET /ws: authenticate, then serve the connection's messages until it closes."""
        ws = web.WebSocketResponse(compress=False, heartbeat=self._heartbeat_s, max_msg_size=MAX_INBOUND_BYTES)
        await ws.prepare(request)
        how = await self._authenticate(request, ws)
        if how is None:
            await ws.close(code=CLOSE_UNAUTHORIZED, message=b"unauthorized")
            return ws
        client = self.attach(WsWire(ws, request))
        if how == "message":
            client.send_control({"op": "authenticated"})
        try:
            await self._serve(client, ws)
        finally:
            self.detach(client)
        return ws

    def attach(self, wire: Wire) -> Client:
        """A new connection of any transport, authenticated by its caller; subscribe() it, detach() it when gone."""
        client = Client(wire, self._counters, self._max_pending)
        self._clients.add(client)
        return client

    def detach(self, client: Client) -> None:
        """The connection is gone: no more events for it, its writer ends."""
        self._unregister(client)
        client.stop()

    async def _authenticate(self, request: web.Request, ws: web.WebSocketResponse) -> str | None:
        """How the connection proved the token ("open" when there is none, "header", "message"), or None."""
        if self._token is None:
            return "open"
        header = request.headers.get("Authorization")
        if header is not None:
            token = bearer(header)
            return "header" if token is not None and self._token_ok(token) else None
        try:
            msg = await ws.receive(timeout=self._auth_timeout_s)
        except TimeoutError:
            return None
        return "message" if msg.type is WSMsgType.TEXT and self._auth_message_ok(msg.data) else None

    def _auth_message_ok(self, data: str) -> bool:
        try:
            message = parse_message(data)
        except BadMessage:
            return False
        return isinstance(message, Auth) and self._token_ok(message.token)

    def token_ok(self, token: str) -> bool:
        """Whether `token` is the relay's (always, when it has none): the check every transport applies."""
        return self._token_ok(token)

    def _token_ok(self, token: str) -> bool:
        """Constant-time comparison; with no token configured every token is fine."""
        if self._token is None:
            return True
        return token_matches(token, self._token)

    async def _serve(self, client: Client, ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                await self._on_text(client, msg.data)
            elif msg.type is WSMsgType.BINARY:
                self._reply_error(client, BadMessage("bad_message", "binary frames are not accepted; send JSON text"))

    async def _on_text(self, client: Client, data: str) -> None:
        if not client.may_send_message():
            reason = "more than %d messages at once or %g per second; this one was not acted on" % (
                MESSAGE_BURST,
                MESSAGES_PER_S,
            )
            self._reply_error(client, BadMessage("rate_limited", reason))
            return
        try:
            message = parse_message(data)
            if isinstance(message, Subscribe):
                reply, replay, gap = await self.subscribe(client, message)
                client.send_control(reply)
                client.send_replay(replay)
                if gap is not None:
                    client.send_control(gap)
                self._regroup(client)
            elif isinstance(message, Unsubscribe):
                client.send_control(self.unsubscribe(client, message))
            elif self._token_ok(message.token):
                client.send_control({"op": "authenticated"})
            else:
                self._refuse(client)
        except BadMessage as exc:
            self._reply_error(client, exc)

    def _refuse(self, client: Client) -> None:
        """A wrong token on an open connection: close it as unauthorized."""
        self._unregister(client)
        client.discard()
        self._spawn(self._close(client, CLOSE_UNAUTHORIZED, "unauthorized"))

    def _reply_error(self, client: Client, exc: BadMessage) -> None:
        client.send_control({"op": "error", "code": exc.code, "message": exc.message})

    # -- subscriptions

    async def subscribe(
        self, client: Client, message: Subscribe
    ) -> tuple[dict[str, Any], list[Held], dict[str, Any] | None]:
        """Add the message's filters: (the `subscribed` reply, the events to replay, a `gap` message or None).

        The caller sends them in that order, then calls `_regroup` (through `regroup`) so live events
        follow; nothing awaits in between. Raises BadMessage. With `after`, waits up to resume_wait_s
        for that event to arrive (this node may be a little behind the one the client left).
        """
        new = self._new_filters(client, message)
        if message.after is not None:
            await self._wait_for(message.after)
        live, oldest = self._flushed_seq, self._oldest()
        replay: list[Held] = []
        if message.after is not None:
            start = self._after_point(message.after)
            if start is not None:
                seen = frozenset(message.seen or ())
                after = [item for item in self._replay_for(client, new, start) if item.id not in seen]
                replay = self._overlap(client, new, start, seen) + after
        else:
            start = self._resume_point(message.since)
            if start is not None:
                replay = self._replay_for(client, new, start)
        reply = {
            "op": "subscribed",
            "events": message.events,
            "seq": live,
            "last_id": self._id_at(live),
            "oldest": oldest,
            "replay": len(replay),
        }
        gap = None
        if start is None and message.after is not None:
            gap = {"op": "gap", "after": message.after, "oldest": oldest, "latest": live}
        elif start is None and message.since is not None:
            gap = {"op": "gap", "since": message.since, "oldest": oldest, "latest": live}
        for key in new:
            client.filters[key] = live if start is None else start
        return reply, replay, gap

    def regroup(self, client: Client) -> None:
        """Start live delivery of the client's filters as they now are (after subscribe()'s replay was queued)."""
        self._regroup(client)

    def unsubscribe(self, client: Client, message: Unsubscribe) -> dict[str, Any]:
        """Remove the patterns named; returns the `unsubscribed` reply."""
        patterns = set(message.events)
        removed = [key for key in client.filters if key[0] in patterns]
        for key in removed:
            del client.filters[key]
        self._regroup(client)
        return {"op": "unsubscribed", "events": sorted({key[0] for key in removed})}

    def _new_filters(self, client: Client, message: Subscribe) -> list[FilterKey]:
        check_patterns(message.events)
        check_where(message.where)
        wkey = where_key(message.where)
        new = [(pattern, wkey) for pattern in dict.fromkeys(message.events) if (pattern, wkey) not in client.filters]
        total = len(client.filters) + len(new)
        if total > MAX_FILTERS:
            raise BadMessage("bad_subscription", "at most %d patterns per connection, got %d" % (MAX_FILTERS, total))
        wheres = {key[1] for key in client.filters} | ({wkey} if new else set())
        held = sum(len(allowed) for where in wheres for _, allowed in where)
        if held > MAX_WHERE_VALUES_HELD:
            message_ = "at most %d where values per connection, got %d" % (MAX_WHERE_VALUES_HELD, held)
            raise BadMessage("bad_subscription", message_)
        shapes = {tuple(name for name, _ in where) for where in wheres if where}
        if len(shapes) > MAX_WHERE_SHAPES:
            message_ = "at most %d distinct sets of where fields per connection, got %d" % (
                MAX_WHERE_SHAPES,
                len(shapes),
            )
            raise BadMessage("bad_subscription", message_)
        return new

    def _oldest(self) -> int | None:
        return self._replay[0].seq if self._replay else None

    def _id_at(self, seq: int) -> str | None:
        """The id of the held event numbered `seq`, or None."""
        if not self._replay or not self._replay[0].seq <= seq <= self._replay[-1].seq:
            return None
        return self._replay[seq - self._replay[0].seq].id

    async def _wait_for(self, event_id: str) -> None:
        """Until the event `event_id` is held and flushed here, or resume_wait_s has passed."""
        deadline = time.monotonic() + self._resume_wait_s
        while time.monotonic() < deadline:
            seq = self._seq_of_id.get(event_id)
            if seq is not None and seq <= self._flushed_seq:
                return
            await asyncio.sleep(min(0.02, self._flush_interval_s * 2))

    def _after_point(self, event_id: str) -> int | None:
        """The seq of the held, flushed event `event_id`: every event this node received after it is held."""
        seq = self._seq_of_id.get(event_id)
        return seq if seq is not None and seq <= self._flushed_seq else None

    def _overlap(self, client: Client, new: list[FilterKey], start: int, seen: frozenset[str]) -> list[Held]:
        """Matching events that arrived here less than overlap_s before the event at `start`, less `seen`.

        Every web node has its own queue on the bus, and a broker may interleave two publishers'
        concurrent messages differently in two queues: an event this node received just before
        `start` may have reached the node the client left just after it, so the client never got it.
        Those are sent again, in order, ahead of the replay; the client drops ids it already has.
        """
        first = self._replay[0].seq
        index = start - first
        since_at = self._replay[index].at - self._overlap_s
        items: list[Held] = []
        while index > 0 and self._replay[index - 1].at >= since_at:
            index -= 1
            item = self._replay[index]
            if item.id in seen:
                continue
            envelope = decode(item.raw)
            if any_matches(new, envelope) and not self._already_sent(client, envelope):
                items.append(item)
        items.reverse()
        return items

    def _resume_point(self, since: int | None) -> int | None:
        """`since` when every event after it up to the live position is still held, else None."""
        if since is None or since > self._seq:
            return None
        if since >= self._flushed_seq:
            return since
        oldest = self._oldest()
        return since if oldest is not None and oldest <= since + 1 else None

    def _replay_for(self, client: Client, new: list[FilterKey], since: int) -> list[Held]:
        """Held events in (since, live] matching the new filters that no earlier filter already sent."""
        skip = max(0, since + 1 - self._replay[0].seq) if self._replay else 0
        items = []
        for item in itertools.islice(self._replay, skip, None):
            if item.seq > self._flushed_seq:
                break
            envelope = decode(item.raw)
            if any_matches(new, envelope) and not self._already_sent(client, envelope):
                items.append(item)
        return items

    def _already_sent(self, client: Client, envelope: Envelope) -> bool:
        return any(envelope.seq > start and filter_matches(key, envelope) for key, start in client.filters.items())

    def _regroup(self, client: Client) -> None:
        self._leave_group(client)
        if not client.filters:
            return
        keys = frozenset(client.filters)
        group = self._groups.get((client.codec, keys))
        if group is None:
            group = self._groups[(client.codec, keys)] = Group(keys, client.codec)
            for key in keys:
                self._matcher.add(key, group)
        group.clients.add(client)
        client.group = group

    def _leave_group(self, client: Client) -> None:
        group, client.group = client.group, None
        if group is None:
            return
        group.clients.discard(client)
        if not group.clients:
            del self._groups[(group.codec, group.keys)]
            for key in group.keys:
                self._matcher.discard(key, group)

    def _unregister(self, client: Client) -> None:
        self._clients.discard(client)
        self._leave_group(client)

    # -- closing

    async def _close(self, client: Client, code: int, reason: str) -> None:
        """Close with a code; a peer that does not take the close frame within 5 s is cut off."""
        try:
            await asyncio.wait_for(client.wire.close(code, reason), CLOSE_TIMEOUT_S)
        except (TimeoutError, ConnectionError):
            client.wire.abort()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
