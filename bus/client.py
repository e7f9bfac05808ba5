"""A small asyncio client of the relay (`/ws`) for scripts and tests, with resume built in.

    async with RelayClient("http://127.0.0.1:3101/ws", token=os.environ.get("B3JOBS_TOKEN")) as relay:
        await relay.subscribe(["job:*"], where={"job": "batch-update"})
        async for item in relay:
            if isinstance(item, Gap):      # events were lost while disconnected: reload state over HTTP
                reload()
                continue
            print(item.seq, item.event, item.data)

Iteration yields `Envelope` objects (single-object and array frames alike) and, when the relay
cannot replay what was missed, a `Gap` object: a gap is an expected event of a long-running
script, not an error, so it is yielded rather than raised and the iteration goes on.

The client remembers the `id` of the last event it has seen (`last_id`; ids are the same on every
web node, `seq` is per node). When the connection drops (network, relay restart, a 4408 "too
slow" close, a load balancer moving it to another node) it reconnects with exponential backoff
(0.25 s doubling to 10 s, with jitter) and re-sends every subscription with `after` = that id and
`seen` = the ids it received last, so the events published meanwhile arrive in order, or a `Gap`
says they cannot. The relay sends a short overlap on such a resume; the client drops any event
whose id it has among the last 10,000 it yielded, so each event is yielded once. A 4401 close
raises `Unauthorized`.

One task at a time: call `subscribe()` before iterating or from the iterating task (they share
the socket's reader).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import aiohttp
import msgspec

from bus.envelope import Envelope

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
CLOSED_TYPES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)

_envelopes = msgspec.json.Decoder(list[Envelope])
_object = msgspec.json.Decoder(dict[str, Any])


DEDUPE_IDS = 10_000  # ids remembered to drop events sent again (the resume overlap)
SEEN_IDS = 1_000  # ids sent as `seen` on a resume


@dataclass(frozen=True)
class Gap:
    """The relay no longer holds every event after `after` (or `since`): reload state, then carry on."""

    since: int | None
    oldest: int | None
    latest: int
    after: str | None = None


class RelayError(Exception):
    """The relay refused a message (`op: error`)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__("%s: %s" % (code, message))
        self.code = code


class Unauthorized(RelayError):
    """The relay closed the connection with 4401: no token, or the wrong one."""


class ConnectionLost(Exception):
    """The socket closed; `code` is the close code when there was one."""

    def __init__(self, code: int | None) -> None:
        super().__init__("connection closed (code %s)" % code)
        self.code = code


class RelayClient:
    """Subscribe to relay events and iterate over them; reconnects and resumes by itself."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        reconnect: bool = True,
        backoff_s: float = 0.25,
        max_backoff_s: float = 10.0,
        heartbeat_s: float | None = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.url = url
        self.reconnect = reconnect
        self.last_seq: int | None = None
        self.last_id: str | None = None
        self.reconnects = 0
        self.duplicates = 0  # events received again (resume overlap) and not yielded
        self._headers = {"Authorization": "Bearer %s" % token} if token else {}
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._heartbeat_s = heartbeat_s
        self._session = session
        self._own_session = session is None
        self._ws: aiohttp.ClientWebSocketResponse[bool] | None = None
        self._subscriptions: list[dict[str, Any]] = []
        self._buffer: collections.deque[Envelope | Gap] = collections.deque()
        self._replay_left = 0
        self._replay_end = 0
        self._replay_end_id: str | None = None
        self._recent: collections.deque[str] = collections.deque(maxlen=DEDUPE_IDS)
        self._recent_ids: set[str] = set()
        self._gap_seen: int | str | None = None
        self._closed = False

    # -- lifecycle

    async def __aenter__(self) -> RelayClient:
        await self.connect()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open the socket; a first failure is raised (reconnecting is for connections that worked)."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(
            self.url, headers=self._headers, heartbeat=self._heartbeat_s, max_msg_size=0, decode_text=False
        )

    async def close(self) -> None:
        self._closed = True
        if self._ws is not None:
            await self._ws.close()
        if self._own_session and self._session is not None:
            await self._session.close()

    # -- requests

    async def subscribe(self, events: list[str], where: dict[str, Any] | None = None) -> dict[str, Any]:
        """Add a subscription; returns the relay's `subscribed` reply, raises RelayError when refused."""
        message: dict[str, Any] = {"op": "subscribe", "events": list(events)}
        if where:
            message["where"] = where
        self._subscriptions.append(message)
        try:
            return await self._request(message)
        except RelayError:
            self._subscriptions.remove(message)
            raise
        except ConnectionLost as exc:
            await self._recover(exc)  # re-sends every subscription, this one included
            return {"op": "subscribed", "events": message["events"], "seq": self.last_seq}

    async def unsubscribe(self, events: list[str]) -> dict[str, Any]:
        patterns = set(events)
        for message in self._subscriptions:
            message["events"] = [e for e in message["events"] if e not in patterns]
        self._subscriptions = [m for m in self._subscriptions if m["events"]]
        try:
            return await self._request({"op": "unsubscribe", "events": list(events)})
        except ConnectionLost as exc:
            await self._recover(exc)
            return {"op": "unsubscribed", "events": sorted(patterns)}

    async def _request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one message and read until its reply; events read meanwhile wait in the buffer."""
        ws = self._socket()
        try:
            await ws.send_frame(msgspec.json.encode(message), aiohttp.WSMsgType.TEXT)
        except ConnectionError as exc:
            raise ConnectionLost(None) from exc
        while True:
            reply = await self._read()
            if reply is not None and reply["op"] in ("subscribed", "unsubscribed", "authenticated"):
                return reply
            if reply is not None and reply["op"] == "error":
                raise RelayError(reply.get("code", "error"), reply.get("message", ""))

    # -- iteration

    def __aiter__(self) -> RelayClient:
        return self

    async def __anext__(self) -> Envelope | Gap:
        while not self._buffer:
            if self._closed:
                raise StopAsyncIteration
            try:
                await self._read()
            except ConnectionLost as exc:
                if self._closed or not self.reconnect:
                    raise StopAsyncIteration from exc
                await self._recover(exc)
        return self._buffer.popleft()

    # -- reading

    def _socket(self) -> aiohttp.ClientWebSocketResponse[bool]:
        if self._ws is None:
            raise RuntimeError("RelayClient is not connected: use `async with` or call connect()")
        return self._ws

    async def _read(self) -> dict[str, Any] | None:
        """Read one frame: events go to the buffer; a control message is returned."""
        ws = self._socket()
        msg = await ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            data = msg.data if isinstance(msg.data, bytes) else msg.data.encode()
            return self._on_frame(data)
        if msg.type in CLOSED_TYPES:
            code = ws.close_code
            if code == CLOSE_UNAUTHORIZED:
                raise Unauthorized("unauthorized", "the relay refused the token (close 4401)")
            raise ConnectionLost(code)
        return None

    def _on_frame(self, data: bytes) -> dict[str, Any] | None:
        if data[:1] == b"[":
            for envelope in _envelopes.decode(data):
                self._on_envelope(envelope)
            return None
        obj = _object.decode(data)
        if "op" in obj and "event" not in obj:
            return self._on_control(obj)
        self._on_envelope(msgspec.convert(obj, Envelope))
        return None

    def _on_envelope(self, envelope: Envelope) -> None:
        if self._replay_left:
            self._replay_left -= 1
            if not self._replay_left:
                self._caught_up(self._replay_end, self._replay_end_id)
        elif self.last_seq is None or envelope.seq > self.last_seq:
            # A live event. (Replayed ones may be the overlap, older than last_id: the position moves
            # to the relay's `subscribed` one once the replay is complete.)
            self.last_seq = envelope.seq
            self.last_id = envelope.id
        if envelope.id in self._recent_ids:
            self.duplicates += 1
            return
        if len(self._recent) == self._recent.maxlen:
            self._recent_ids.discard(self._recent[0])
        self._recent.append(envelope.id)
        self._recent_ids.add(envelope.id)
        self._buffer.append(envelope)

    def _on_control(self, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["op"] == "subscribed":
            self._replay_left, self._replay_end = int(obj.get("replay", 0)), int(obj["seq"])
            self._replay_end_id = obj.get("last_id")
            if not self._replay_left:
                self._caught_up(self._replay_end, self._replay_end_id)
        elif obj["op"] == "gap":
            gap = Gap(since=obj.get("since"), oldest=obj.get("oldest"), latest=obj["latest"], after=obj.get("after"))
            self._on_gap(gap)
        return obj

    def _caught_up(self, seq: int, event_id: str | None) -> None:
        """Everything up to `seq` (the event `event_id`) that matches has arrived: resume from there next time."""
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq
            if event_id is not None:
                self.last_id = event_id

    def _on_gap(self, gap: Gap) -> None:
        self.last_seq = gap.latest  # the relay's own position: it may have restarted with a lower seq
        mark = gap.after if gap.after is not None else gap.since
        if self._gap_seen != mark:  # one Gap per resume, however many subscriptions report it
            self._gap_seen = mark
            self._buffer.append(gap)

    # -- reconnecting

    async def _recover(self, lost: ConnectionLost) -> None:
        """Reconnect with backoff and re-subscribe everything from the last seq seen."""
        if not self.reconnect:
            raise lost
        delay = self._backoff_s
        log.warning("relay connection lost (code %s); reconnecting from seq %s", lost.code, self.last_seq)
        while not self._closed:
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            try:
                await self._reopen()
                return
            except (TimeoutError, aiohttp.ClientError, ConnectionError, ConnectionLost) as exc:
                log.warning("relay reconnect failed: %s; next try in %.1fs", exc, delay)
                delay = min(delay * 2, self._max_backoff_s)

    async def _reopen(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self.connect()
        self.reconnects += 1
        self._replay_left = 0
        # One resume point for every subscription: the first one's replay moves last_id on.
        resume: dict[str, Any] = {}
        if self.last_id is not None:
            resume = {"after": self.last_id, "seen": list(self._recent)[-SEEN_IDS:]}
        elif self.last_seq is not None:
            resume = {"since": self.last_seq}
        self.last_seq = None  # seq is the new process's from here on
        for message in self._subscriptions:
            await self._request({**message, **resume})
