"""Socket.IO on the relay: the platform's frontend, written for a Socket.IO gateway, listens unchanged.

    const socket = io("http://127.0.0.1:3101", { auth: { token }, transports: ["websocket"] });
    socket.on("analysis:progress", ({ ticker, progress }) => ...);     // data as the old gateway sent it
    socket.on("asset:updated", (data, meta) => ...);                    // meta: {id, seq, ts, job}

The protocol is python-socketio's (`socketio.AsyncServer`, aiohttp mode) at `/socket.io/`, so
socket.io-client 4 connects as to any Socket.IO server. Every event is emitted under its own
name with the envelope's `data` as the first argument and `{id, seq, ts, job}` as the second,
which destructuring handlers never look at.

Handshake (`auth`, all optional but the token when one is set):
    token     the relay's token (B3JOBS_TOKEN); refused ("unauthorized") when wrong or missing.
              Without a token, a page of another origin is refused (engine.io's same-origin check).
    events    event-name patterns as on `/ws` (default `["*"]`: every event, as the old gateway);
    where     the `/ws` filter (`{"ticker": "PETR4"}`);
    lastId    the `id` (meta.id) of the last event received: resume on any node (see bus.relay, Resume);
    seen      the ids received last (at most 1,000): events of the resume overlap that are in it are
              not sent again, so handlers see each event once.
Events the relay cannot replay are announced with `relay:gap` (`{after, oldest, latest}`): reload.
After connecting, `socket.emit("subscribe", {events, where}, ack)` narrows (the first one replaces
the default `*`), `socket.emit("unsubscribe", {events}, ack)` removes patterns; the ack is the
`/ws` reply (`{op: "subscribed", ...}` or `{op: "error", code, message}`); the `/ws` limits
apply (filters held, `where` sizes, 20 messages at once then 2 per second).

Delivery shares the relay's path: each connection is a relay `Client` with a `SocketIOWire`. Per
flush the relay builds one byte string per distinct subscription, here the websocket frames of
the Socket.IO packets (`42["event",data,meta]`, each event's packet encoded once and cached), and
a websocket client gets them in one write, as a `/ws` client gets its frame. Slow clients are
bounded as on `/ws` (coalesced, then closed with 4408, after which socket.io-client reconnects
and resumes). A client still on HTTP long-polling gets the same packets through engine.io's queue.

Engine.IO's websocket is its aiohttp one, made without compression (frames are shared bytes) and
with writes that never wait: then engine.io's writer sends what it takes from its queue at once,
and a frame of ours written when that queue is empty cannot overtake one of its packets (the
connect reply, an ack): one order on the wire.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import struct
from collections.abc import AsyncIterator, Sequence
from typing import Any

import msgspec
import socketio
from aiohttp import WSCloseCode, web
from engineio import packet as eio_packet
from socketio.exceptions import ConnectionRefusedError as Refused

from bus.envelope import decode
from bus.relay import (
    MAX_INBOUND_BYTES,
    MESSAGE_BURST,
    MESSAGES_PER_S,
    BadMessage,
    Client,
    Codec,
    Held,
    Relay,
    Subscribe,
    Unsubscribe,
)

log = logging.getLogger(__name__)

DEFAULT_EVENTS = ["*"]
# Packets in a long-polling client's engine.io queue: a poll answers with all of them, and
# python-engineio's own client refuses an answer of more than 16.
ENGINEIO_QUEUE_MAX = 12
CACHE_SIZE = 20_000  # encoded packets kept (by seq); the relay holds 10,000 events
RATE_LIMITED = {
    "op": "error",
    "code": "rate_limited",
    "message": "more than %d messages at once or %g per second; this one was not acted on"
    % (MESSAGE_BURST, MESSAGES_PER_S),
}


# ---------------------------------------------------------------- websocket frames


def ws_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One unmasked, final websocket frame (server to client), as aiohttp's writer makes it."""
    length = len(payload)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, length)
    elif length < 65536:
        header = struct.pack("!BBH", 0x80 | opcode, 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, length)
    return header + payload


def ws_payloads(data: bytes) -> list[bytes]:
    """The payloads of frames made by ws_frame, in order (for a client that is not on the websocket)."""
    payloads, at = [], 0
    while at < len(data):
        length, at = data[at + 1] & 0x7F, at + 2
        if length == 126:
            (length,), at = struct.unpack_from("!H", data, at), at + 2
        elif length == 127:
            (length,), at = struct.unpack_from("!Q", data, at), at + 8
        payloads.append(data[at : at + length])
        at += length
    return payloads


class SocketIOCodec:
    """Events as Socket.IO EVENT packets in websocket frames: `42["name",data,{"id","seq","ts","job"}]`."""

    def __init__(self) -> None:
        self._frames: dict[int, bytes] = {}

    def events(self, items: Sequence[Held]) -> bytes:
        return b"".join([self.frame(item) for item in items])

    def frame(self, item: Held) -> bytes:
        frame = self._frames.get(item.seq)
        if frame is None:
            envelope = decode(item.raw)
            meta = {"id": envelope.id, "seq": envelope.seq, "ts": envelope.ts, "job": envelope.job}
            frame = ws_frame(b"42" + msgspec.json.encode([envelope.event, envelope.data, meta]))
            if len(self._frames) >= CACHE_SIZE:
                self._frames = dict(list(self._frames.items())[CACHE_SIZE // 2 :])
            self._frames[item.seq] = frame
        return frame

    def control(self, message: dict[str, Any]) -> bytes:
        """A relay control message as an event of its own: `gap` is emitted as `relay:gap`."""
        body = {k: v for k, v in message.items() if k != "op"}
        return ws_frame(b"42" + msgspec.json.encode(["relay:%s" % message["op"], body]))


# ---------------------------------------------------------------- engine.io's websocket, ours


class RawWebSocket:
    """engine.io's aiohttp websocket wrapper (engineio.async_drivers.aiohttp.WebSocket), with two changes:
    no permessage-deflate (our frames are bytes shared by many clients), and send() writes at once
    without waiting for the socket to drain, so engine.io's writer never pauses between packets."""

    def __init__(self, owner: SocketIO, handler: Any, server: Any) -> None:
        self.owner = owner
        self.handler = handler
        self.server = server
        self.sock: web.WebSocketResponse | None = None
        self.request: web.Request | None = None

    async def __call__(self, environ: dict[str, Any]) -> web.WebSocketResponse:
        request: web.Request = environ["aiohttp.request"]
        self.request = request
        self.sock = web.WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self.sock.prepare(request)
        eio_sid = self.handler.__self__.sid
        self.owner.websockets[eio_sid] = self
        try:
            await self.handler(self)
        finally:
            if self.owner.websockets.get(eio_sid) is self:
                del self.owner.websockets[eio_sid]
        return self.sock

    def write(self, data: bytes) -> None:
        transport = self.request.transport if self.request is not None else None
        if transport is None or transport.is_closing():
            raise ConnectionResetError("socket.io websocket closed")
        transport.write(data)

    async def drain(self) -> None:
        """Wait while the socket's send buffer is over its high-water mark (aiohttp's own drain)."""
        protocol: Any = self.request.protocol if self.request is not None else None
        if protocol is not None and protocol.writing_paused:
            await protocol._drain_helper()

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.write(ws_frame(message.encode()))
        else:
            self.write(ws_frame(message, 0x2))

    async def wait(self) -> str | bytes:
        assert self.sock is not None
        msg = await self.sock.receive()
        if not isinstance(msg.data, (bytes, str)):
            raise OSError()
        return msg.data

    async def close(self, code: int = WSCloseCode.OK, message: bytes = b"") -> None:
        if self.sock is not None:
            await self.sock.close(code=code, message=message)


class SocketIOWire:
    """How the relay's Client reaches one Socket.IO connection: its websocket when it is on one, else engine.io."""

    def __init__(self, owner: SocketIO, eio_sid: str, peer: str) -> None:
        self.owner = owner
        self.codec: Codec = owner.codec
        self.eio_sid = eio_sid
        self.peer = peer

    def _socket(self) -> Any:
        socket = self.owner.sio.eio.sockets.get(self.eio_sid)
        if socket is None or socket.closed or socket.closing:
            raise ConnectionResetError("socket.io connection %s is gone" % self.eio_sid)
        return socket

    async def write(self, frame: bytes, items: tuple[Held, ...] | None) -> None:
        socket = self._socket()
        websocket = self.owner.websockets.get(self.eio_sid)
        if websocket is not None and socket.upgraded and socket.queue.empty():
            websocket.write(frame)
            await websocket.drain()
            return
        # Long-polling, or engine.io still has packets of its own queued: go behind them.
        for payload in ws_payloads(frame):
            while socket.queue.qsize() >= ENGINEIO_QUEUE_MAX:
                await asyncio.sleep(0.01)
                socket = self._socket()
            await socket.send(eio_packet.Packet(eio_packet.MESSAGE, payload[1:].decode()))

    async def close(self, code: int, reason: str) -> None:
        websocket = self.owner.websockets.get(self.eio_sid)
        if websocket is not None:
            await websocket.close(code, reason.encode())  # socket.io-client reconnects on a transport close
        elif self.eio_sid in self.owner.sio.eio.sockets:
            await self.owner.sio.eio.disconnect(self.eio_sid)

    def abort(self) -> None:
        websocket = self.owner.websockets.get(self.eio_sid)
        transport = websocket.request.transport if websocket is not None and websocket.request else None
        if transport is not None:
            transport.abort()


# ---------------------------------------------------------------- the server


class SocketIO:
    """The Socket.IO endpoint of a web process, fed by its relay."""

    def __init__(self, relay: Relay, *, ping_interval_s: float = 25.0, ping_timeout_s: float = 20.0) -> None:
        self.relay = relay
        self.codec = SocketIOCodec()
        self.sio = socketio.AsyncServer(
            async_mode="aiohttp",
            # With a token the token is the guard and the platform's pages may live on another origin;
            # without one only this server's own pages may connect (engine.io's same-origin check).
            cors_allowed_origins="*" if relay.token_required else None,
            max_http_buffer_size=MAX_INBOUND_BYTES,
            ping_interval=ping_interval_s,
            ping_timeout=ping_timeout_s,
            logger=False,
            engineio_logger=False,
        )
        # engine.io builds its websocket wrapper from this table (a private one; pinned in constraints.txt).
        self.sio.eio._async = {**self.sio.eio._async, "websocket": functools.partial(RawWebSocket, self)}
        self.websockets: dict[str, RawWebSocket] = {}  # engine.io sid -> its websocket
        self.clients: dict[str, Client] = {}  # socket.io sid -> the relay's client
        self._default: set[str] = set()  # sids still on the implicit `*` subscription
        self._tasks: set[asyncio.Task[None]] = set()
        self.sio.on("connect", self._connect)
        self.sio.on("disconnect", self._disconnect)
        self.sio.on("subscribe", self._subscribe)
        self.sio.on("unsubscribe", self._unsubscribe)

    def setup(self, app: web.Application, path: str = "socket.io") -> None:
        """`/socket.io/` on the app, and the shutdown of its background tasks."""
        self.sio.attach(app, socketio_path=path)
        app.cleanup_ctx.append(self.context)

    async def context(self, app: web.Application) -> AsyncIterator[None]:
        yield
        await self.sio.shutdown()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- handlers

    async def _connect(self, sid: str, environ: dict[str, Any], auth: Any) -> None:
        auth = auth if isinstance(auth, dict) else {}
        token = auth.get("token")
        if self.relay.token_required and not (isinstance(token, str) and self.relay.token_ok(token)):
            raise Refused("unauthorized")
        try:
            message = subscription(auth)
        except BadMessage as exc:
            raise Refused(exc.code, exc.message) from None
        request: web.Request = environ["aiohttp.request"]
        eio_sid = self.sio.manager.eio_sid_from_sid(sid, "/")
        client = self.relay.attach(SocketIOWire(self, eio_sid, request.remote or "?"))
        self.clients[sid] = client
        if "events" not in auth:
            self._default.add(sid)
        self._spawn(self._start(sid, client, message))

    async def _start(self, sid: str, client: Client, message: Subscribe) -> None:
        """The handshake's subscription, once the connect reply is queued (so events never precede it)."""
        try:
            _reply, replay, gap = await self.relay.subscribe(client, message)
        except BadMessage as exc:  # checked at connect; only a relay limit can refuse it here
            log.warning("socket.io %s: subscription refused: %s", client.peer, exc.message)
            return
        if self.clients.get(sid) is not client:
            return  # gone while the relay waited for `lastId`
        client.send_replay(replay)
        if gap is not None:
            client.send_control(gap)
        self.relay.regroup(client)

    async def _disconnect(self, sid: str, reason: Any = None) -> None:
        self._default.discard(sid)
        client = self.clients.pop(sid, None)
        if client is not None:
            self.relay.detach(client)

    async def _subscribe(self, sid: str, data: Any) -> dict[str, Any]:
        client = self.clients.get(sid)
        if client is None:
            return {"op": "error", "code": "not_connected", "message": "connect first"}
        if not client.may_send_message():
            return RATE_LIMITED
        try:
            message = subscription(data if isinstance(data, dict) else {"events": data}, required=True)
            if sid in self._default:
                self._default.discard(sid)
                self.relay.unsubscribe(client, Unsubscribe(op="unsubscribe", events=DEFAULT_EVENTS))
            reply, replay, gap = await self.relay.subscribe(client, message)
        except BadMessage as exc:
            return {"op": "error", "code": exc.code, "message": exc.message}
        client.send_replay(replay)
        if gap is not None:
            client.send_control(gap)
        self.relay.regroup(client)
        return reply

    async def _unsubscribe(self, sid: str, data: Any) -> dict[str, Any]:
        client = self.clients.get(sid)
        if client is None:
            return {"op": "error", "code": "not_connected", "message": "connect first"}
        if not client.may_send_message():
            return RATE_LIMITED
        events = data.get("events") if isinstance(data, dict) else data
        if not isinstance(events, list) or not all(isinstance(e, str) for e in events):
            return {"op": "error", "code": "bad_message", "message": "unsubscribe takes {events: [patterns]}"}
        self._default.discard(sid)
        return self.relay.unsubscribe(client, Unsubscribe(op="unsubscribe", events=events))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def subscription(fields: dict[str, Any], *, required: bool = False) -> Subscribe:
    """A relay Subscribe from handshake `auth` or a `subscribe` event's data; BadMessage when malformed."""
    if required and "events" not in fields:
        raise BadMessage("bad_subscription", "subscribe takes {events: [patterns], where?: {...}}")
    wanted = {
        "op": "subscribe",
        "events": fields.get("events", DEFAULT_EVENTS),
        "where": fields.get("where"),
        "after": fields.get("lastId"),
        "seen": fields.get("seen"),
    }
    try:
        return msgspec.convert({k: v for k, v in wanted.items() if v is not None}, Subscribe)
    except msgspec.ValidationError as exc:
        raise BadMessage("bad_subscription", "%s (takes: events, where, lastId, seen)" % exc) from None
