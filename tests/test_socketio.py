"""Socket.IO on the relay (`bus.socketio`), driven with python-socketio's own client over real sockets.

A tiny aiohttp app serves the relay's `/ws` and `/socket.io/`; the test ingests envelopes as the
Kombu bridge would and checks what the Socket.IO handlers receive.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from bus import envelope
from bus.envelope import Envelope
from bus.relay import Relay
from bus.socketio import SocketIO, ws_frame, ws_payloads

TOKEN = "s3cret-token"


def run(story: Callable[[], Awaitable[None]], timeout_s: float = 20.0) -> None:
    asyncio.run(asyncio.wait_for(story(), timeout_s))


@contextlib.asynccontextmanager
async def serving(relay: Relay) -> AsyncIterator[TestServer]:
    app = web.Application()
    relay.setup(app)
    SocketIO(relay).setup(app)
    async with TestServer(app) as server:
        yield server


def event(name: str, job: tuple[str, str] | None = None, **data: Any) -> Envelope:
    return envelope.make(name, job, data)


class Listener:
    """A python-socketio client that records (event, data, meta) for every event it is sent."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(
            reconnection=False, engineio_logger=__import__("os").environ.get("EIO_LOG") == "1"
        )
        self.got: list[tuple[str, Any, Any]] = []
        self.arrived = asyncio.Event()

        async def record(name: str, data: Any = None, meta: Any = None) -> None:
            self.got.append((name, data, meta))
            self.arrived.set()

        self.client.on("*", record)
        self.refused: Any = None

        async def refused(data: Any) -> None:
            self.refused = data

        self.client.on("connect_error", refused)

    async def connect(self, server: TestServer, **options: Any) -> Listener:
        await self.client.connect(str(server.make_url("/")), wait_timeout=5, **options)
        return self

    async def until(self, count: int, timeout_s: float = 5.0) -> list[tuple[str, Any, Any]]:
        async with asyncio.timeout(timeout_s):
            while len(self.got) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.got

    async def close(self) -> None:
        if self.client.transport() == "polling":
            # python-engineio's client waits for its pending poll on a clean close (up to 45 s)
            eio = self.client.eio
            await eio.disconnect(abort=True)
            for task in (eio.read_loop_task, eio.write_loop_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        else:
            await self.client.disconnect()


async def settle() -> None:
    await asyncio.sleep(0.1)


# ---------------------------------------------------------------- events


@pytest.mark.parametrize("transports", [["websocket"], ["polling"], ["polling", "websocket"]])
def test_each_event_arrives_under_its_name_with_its_data_then_its_envelope(transports: list[str]) -> None:
    async def story() -> None:
        relay = Relay()
        async with serving(relay) as server:
            # Given a client on each transport (long-polling, websocket, polling upgraded to websocket)
            listener = await Listener().connect(server, transports=transports)
            await settle()
            # When 300 events go out
            sent = [
                event("analysis:progress", ("j%d" % n, "process-pending-analysis"), ticker="PETR4", progress=n)
                for n in range(300)
            ]
            for item in sent:
                relay.ingest(item)
                if item.data["progress"] % 50 == 0:
                    await asyncio.sleep(0.02)
            got = await listener.until(300)
            await listener.close()
        # Then the handlers got each under its own name, the data as published, the envelope after it
        assert [name for name, _, _ in got] == ["analysis:progress"] * 300
        assert [data for _, data, _ in got] == [{"ticker": "PETR4", "progress": n} for n in range(300)]
        _name, _data, meta = got[7]
        assert meta == {
            "id": sent[7].id,
            "seq": 8,
            "ts": sent[7].ts,
            "job": {"id": "j7", "name": "process-pending-analysis"},
        }

    run(story)


def test_the_handshake_and_a_subscribe_event_narrow_what_arrives() -> None:
    async def story() -> None:
        relay = Relay()
        async with serving(relay) as server:
            # Given a page watching PETR4's analyses, and one that narrows after connecting
            petr4 = await Listener().connect(
                server, transports=["websocket"], auth={"events": ["analysis:*"], "where": {"ticker": "PETR4"}}
            )
            later = await Listener().connect(server, transports=["websocket"])
            reply = await later.client.call("subscribe", {"events": ["asset:updated"], "where": {"ticker": "VALE3"}})
            bad = await later.client.call("subscribe", {"events": []})
            await settle()
            # When events of both tickers go out
            relay.ingest(event("analysis:started", ticker="VALE3"))
            relay.ingest(event("analysis:started", ticker="PETR4"))
            relay.ingest(event("asset:updated", ticker="PETR4", price=38.1))
            relay.ingest(event("asset:updated", ticker="VALE3", price=61.2))
            relay.ingest(event("analysis:completed", ticker="PETR4"))
            # Then each page gets only what it asked for
            assert [(n, d["ticker"]) for n, d, _ in await petr4.until(2)] == [
                ("analysis:started", "PETR4"),
                ("analysis:completed", "PETR4"),
            ]
            assert [(n, d) for n, d, _ in await later.until(1)] == [
                ("asset:updated", {"ticker": "VALE3", "price": 61.2})
            ]
            await settle()
            assert len(petr4.got) == 2 and len(later.got) == 1
            assert reply["op"] == "subscribed" and reply["events"] == ["asset:updated"]
            assert bad["op"] == "error" and bad["code"] == "bad_subscription"
            await petr4.close()
            await later.close()

    run(story)


# ---------------------------------------------------------------- auth


def test_with_a_token_a_client_without_it_or_with_a_wrong_one_is_refused() -> None:
    async def story() -> None:
        relay = Relay(token=TOKEN)
        async with serving(relay) as server:
            for auth in (None, {}, {"token": "wrong"}):
                refused = Listener()
                with pytest.raises(socketio.exceptions.ConnectionError):
                    await refused.connect(server, transports=["websocket"], auth=auth)
                assert refused.refused == {"message": "unauthorized"}
            listener = await Listener().connect(
                server, transports=["websocket"], auth={"token": TOKEN}, headers={"Origin": "http://platform.example"}
            )
            await settle()
            relay.ingest(event("asset:updated", ticker="PETR4", price=1.0))
            assert [n for n, _, _ in await listener.until(1)] == ["asset:updated"]
            assert relay.stats()["clients"] == 1
            await listener.close()

    run(story)


def test_without_a_token_a_page_of_another_origin_is_refused() -> None:
    async def story() -> None:
        relay = Relay()
        async with serving(relay) as server:
            for transports in (["websocket"], ["polling"]):
                with pytest.raises(socketio.exceptions.ConnectionError):
                    await Listener().connect(server, transports=transports, headers={"Origin": "http://evil.example"})
            own = "http://%s:%d" % (server.host, server.port)
            listener = await Listener().connect(server, transports=["websocket"], headers={"Origin": own})
            assert listener.client.connected
            await listener.close()

    run(story)


# ---------------------------------------------------------------- resume


def test_a_client_that_reconnects_to_another_node_with_its_last_id_gets_each_event_once() -> None:
    async def story() -> None:
        # Given two nodes whose queues saw two concurrent events in opposite orders
        a, b = Relay(), Relay()
        e = [event("job:progress", ("j1", "x"), progress=n) for n in range(8)]
        async with serving(a) as node_a, serving(b) as node_b:
            first = await Listener().connect(node_a, transports=["websocket"])
            await settle()
            for n in (0, 1, 2, 3):
                a.ingest(e[n])
            for n in (0, 1, 3, 2, 4):
                b.ingest(e[n])
            got = await first.until(4)
            await first.close()
            # When the page reconnects to B with the last id and the ids it saw
            ids = [meta["id"] for _, _, meta in got]
            second = await Listener().connect(node_b, transports=["websocket"], auth={"lastId": ids[-1], "seen": ids})
            for n in (5, 6, 7):
                b.ingest(e[n])
            more = await second.until(4)
            await settle()
            await second.close()
        # Then its handlers saw every progress once, in order
        assert [d["progress"] for _, d, _ in got + second.got] == list(range(8))
        assert len(more) == 4

    run(story)


def test_a_last_id_no_node_holds_is_announced_as_a_gap() -> None:
    async def story() -> None:
        relay = Relay(resume_wait_s=0.1)
        async with serving(relay) as server:
            relay.ingest(event("job:active", ("j1", "x")))
            await settle()
            listener = await Listener().connect(server, transports=["websocket"], auth={"lastId": "f" * 32})
            [(name, data, _)] = await listener.until(1)
            assert (name, data) == ("relay:gap", {"after": "f" * 32, "oldest": 1, "latest": 1})
            await listener.close()

    run(story)


# ---------------------------------------------------------------- slow clients


class StalledSocketIO:
    """A Socket.IO client on a raw websocket that connects, then stops reading (small receive buffer)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, host: str, port: int) -> StalledSocketIO:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % (host, port, key)
            ).encode()
        )
        assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
        peer = cls(reader, writer)
        assert (await peer.read_frame())[1].startswith(b"0{")  # engine.io OPEN
        mask = os.urandom(4)
        writer.write(bytes([0x81, 0x82]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"40")))
        assert (await peer.read_frame())[1].startswith(b"40{")  # socket.io CONNECT reply
        return peer

    async def read_frame(self) -> tuple[int, bytes]:
        head = await self.reader.readexactly(2)
        opcode, size = head[0] & 0x0F, head[1] & 0x7F
        if size == 126:
            (size,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif size == 127:
            (size,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return opcode, await self.reader.readexactly(size)

    async def read_to_close(self) -> tuple[list[Any], int]:
        events: list[Any] = []
        while True:
            opcode, payload = await self.read_frame()
            if opcode == 0x8:
                self.writer.close()
                return events, struct.unpack("!H", payload[:2])[0]
            if payload.startswith(b"42"):
                events.append(json.loads(payload[2:]))


def test_a_stalled_socketio_client_is_cut_off_and_the_others_are_not_slowed() -> None:
    async def story() -> None:
        relay = Relay(max_pending=600)
        async with serving(relay) as server:
            # Given 4 readers and one Socket.IO client that never reads (all in this one process, so the
            # readers' own parsing shares the server's CPU: paced so a loaded CI machine keeps up)
            readers = [await Listener().connect(server, transports=["websocket"]) for _ in range(4)]
            stalled = await StalledSocketIO.connect(server.host, server.port or 0)
            await settle()
            assert relay.stats()["clients"] == 5
            # When 6,000 events of 1 KB go out in 2.4 s
            for _ in range(120):
                for _ in range(50):
                    relay.ingest(event("asset:updated", ticker="PETR4", pad="x" * 1000))
                await asyncio.sleep(0.02)
            # Then every reader got all of them, and the stalled one was closed with 4408
            for listener in readers:
                assert len(await listener.until(6000, timeout_s=25)) == 6000
            assert relay.stats()["slow_disconnects"] == 1
            events, code = await asyncio.wait_for(stalled.read_to_close(), 5)
            assert code == 4408
            assert [meta["seq"] for _, _, meta in events] == list(range(1, len(events) + 1)) and len(events) < 6000
            for listener in readers:
                await listener.close()

    run(story, timeout_s=60)


def test_frames_split_back_into_packets() -> None:
    payloads = [b"42[]", b"x" * 200, b"y" * 70_000]
    assert ws_payloads(b"".join(ws_frame(p) for p in payloads)) == payloads
