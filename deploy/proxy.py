"""A small round-robin reverse proxy for b3-jobs web nodes: HTTP, websockets (`/ws`, `/socket.io/`).

    python deploy/proxy.py --port 3100 --backend 127.0.0.1:3101 --backend 127.0.0.1:3102

Each new request or websocket goes to the next backend in turn; a backend that refuses the
connection is skipped (and left alone for 2 s), so a dead node costs a client one reconnect, not
an error. A websocket is piped both ways until either side closes; when a node dies its clients'
sockets are closed (1012 "service restart"), they reconnect through the proxy to a live node and
resume there by event id (see bus/relay.py, Resume).

Socket.IO's HTTP long-polling needs every request of a session on one node: a polling request
that names an engine.io `sid` goes to the node that opened that session (learnt from its
handshake answer). Websocket-only clients (`transports: ["websocket"]`) need nothing sticky.

For production use nginx, HAProxy or a cloud load balancer with the same two rules (websocket
upgrade passed through; polling sticky by `sid`, or by client IP); this one exists so the fleet
can be started and tested on one machine with Python alone.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web

log = logging.getLogger("b3jobs.proxy")

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
        "Content-Length",
    )
)
WS_HEADERS = frozenset(
    h.lower()
    for h in ("Sec-WebSocket-Key", "Sec-WebSocket-Version", "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol")
)
DOWN_S = 2.0
SESSIONS = 100_000  # engine.io sids remembered for long-polling


class Backends:
    """The nodes, taken in turn; one that refused a connection sits out DOWN_S seconds."""

    def __init__(self, addresses: list[str]) -> None:
        self.addresses = addresses
        self._turn = itertools.cycle(range(len(addresses)))
        self._down_until = [0.0] * len(addresses)
        self.sessions: collections.OrderedDict[str, str] = collections.OrderedDict()  # engine.io sid -> node

    def order(self) -> list[str]:
        """Every node, starting with the next in turn; those marked down go last."""
        start = next(self._turn)
        ring = [self.addresses[(start + i) % len(self.addresses)] for i in range(len(self.addresses))]
        now = time.monotonic()
        up = [a for a in ring if self._down_until[self.addresses.index(a)] <= now]
        return up + [a for a in ring if a not in up]

    def down(self, address: str) -> None:
        self._down_until[self.addresses.index(address)] = time.monotonic() + DOWN_S
        log.warning("proxy: %s refused a connection; skipping it for %.0fs", address, DOWN_S)

    def remember(self, sid: str, address: str) -> None:
        self.sessions[sid] = address
        if len(self.sessions) > SESSIONS:
            self.sessions.popitem(last=False)


BACKENDS: web.AppKey[Backends] = web.AppKey("backends", Backends)
SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)


def forwarded_headers(request: web.Request, websocket: bool = False) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    if websocket:
        headers = {k: v for k, v in headers.items() if k.lower() not in WS_HEADERS}
    headers["Host"] = request.host  # the name the browser used: Origin checks compare with it
    headers["X-Forwarded-For"] = request.remote or ""
    return headers


async def handle(request: web.Request) -> web.StreamResponse:
    backends = request.app[BACKENDS]
    sid = request.query.get("sid") if request.path.startswith("/socket.io/") else None
    pinned = backends.sessions.get(sid) if sid else None
    candidates = [pinned] if pinned else backends.order()
    upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
    for address in candidates:
        try:
            if upgrade:
                return await pipe_websocket(request, address)
            return await forward(request, address)
        except aiohttp.ClientConnectorError:
            backends.down(address)
    return web.json_response({"error": {"code": "no_backend", "message": "no web node answers"}}, status=502)


async def forward(request: web.Request, address: str) -> web.StreamResponse:
    session = request.app[SESSION]
    body = await request.read()
    url = "http://%s%s" % (address, request.path_qs)
    async with session.request(
        request.method, url, headers=forwarded_headers(request), data=body, allow_redirects=False
    ) as upstream:
        payload = await upstream.read()
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        if request.path.startswith("/socket.io/") and "sid" not in request.query and payload[:2] == b"0{":
            # An engine.io long-polling handshake: pin the session to this node.
            with contextlib.suppress(ValueError, KeyError):
                request.app[BACKENDS].remember(json.loads(payload[1:].split(b"\x1e")[0])["sid"], address)
        return web.Response(status=upstream.status, headers=headers, body=payload)


async def pipe_websocket(request: web.Request, address: str) -> web.WebSocketResponse:
    session = request.app[SESSION]
    url = "ws://%s%s" % (address, request.path_qs)
    protocols = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
    upstream = await session.ws_connect(
        url,
        headers=forwarded_headers(request, websocket=True),
        protocols=protocols,
        autoping=False,
        max_msg_size=0,
        compress=0,
    )
    downstream = web.WebSocketResponse(protocols=protocols, autoping=False, max_msg_size=0, compress=False)
    await downstream.prepare(request)

    async def copy(source: Any, target: Any) -> None:
        async for msg in source:
            if msg.type is WSMsgType.TEXT:
                await target.send_str(msg.data)
            elif msg.type is WSMsgType.BINARY:
                await target.send_bytes(msg.data)
            elif msg.type is WSMsgType.PING:
                await target.ping(msg.data)
            elif msg.type is WSMsgType.PONG:
                await target.pong(msg.data)

    tasks = [asyncio.ensure_future(copy(upstream, downstream)), asyncio.ensure_future(copy(downstream, upstream))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The node's close code when it sent one (4401, 4408, 1001...), else 1012: the node went away.
        code = upstream.close_code if upstream.close_code is not None else 1012
        if code in (1005, 1006):
            code = 1012
        await upstream.close()
        await downstream.close(code=code, message=b"upstream closed")
    return downstream


def make_app(addresses: list[str]) -> web.Application:
    app = web.Application(client_max_size=2 * 1024 * 1024)
    app[BACKENDS] = Backends(addresses)

    async def client_session(app: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=None, connect=2, sock_read=90)
        app[SESSION] = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, connector=aiohttp.TCPConnector(limit=0)
        )
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3100)
    parser.add_argument("--backend", action="append", required=True, help="host:port of a web node (repeat)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    web.run_app(make_app(args.backend), host=args.host, port=args.port, print=lambda text: log.info(text.strip()))


if __name__ == "__main__":
    main()
