"""What one caller can cost a web process: read timeouts, a connection cap, no version banner.

- Headers: aiohttp closes a connection whose request has not fully arrived `header_timeout_s`
  after it opened or after its previous response (its keep-alive timer), so a client that
  dribbles headers (slowloris) holds a socket that long at most.
- Bodies: the API reads a body within `body_timeout_s` or answers 408 and closes.
- Connections: past `max_connections` open sockets (and never closer than `FD_RESERVE` to the
  process's file limit, where asyncio's accept loop would spin on EMFILE), a new connection gets
  a 503 and is closed; the first refusal of an episode is logged, not every one.
- Responses name the server `b3-jobs`, without aiohttp's or Python's version.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web, web_response

logger = logging.getLogger("b3jobs.web")

SERVER_NAME = "b3-jobs"
FD_RESERVE = 64  # descriptors kept for the store, the bus, log files and the listening socket
LOG_EVERY_S = 60.0


@dataclass(frozen=True)
class WebLimits:
    header_timeout_s: float = 10.0  # a request's headers, and an idle keep-alive connection
    body_timeout_s: float = 30.0  # a request's body, once its headers are in
    max_connections: int = 10_000  # open sockets, past which new ones get a 503


LIMITS: web.AppKey[WebLimits] = web.AppKey("limits", WebLimits)


def hide_version() -> None:
    """aiohttp sets `Server: Python/3.x aiohttp/3.y` on every response, including the 400s its parser
    sends before any app code runs; this is the one place that covers them all."""
    web_response.SERVER_SOFTWARE = SERVER_NAME  # type: ignore[attr-defined]


def connection_cap(wanted: int) -> int:
    """`wanted`, or fewer when the file limit would not hold that many sockets besides FD_RESERVE."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - FD_RESERVE))


REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nServer: " + SERVER_NAME.encode() + b"\r\nContent-Length: %d\r\n\r\n"
)
REFUSAL_BODY = b'{"error": {"code": "too_many_connections", "message": "this server has all the connections it takes; retry later", "details": null}}'


class Refusal(asyncio.Protocol):
    """A connection past the cap: a 503, then closed (after the client's end, or at once if it sends on)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(REFUSAL % len(REFUSAL_BODY) + REFUSAL_BODY)
        transport.close()

    def data_received(self, data: bytes) -> None:
        pass


class ConnectionGate:
    """The listening socket's protocol factory: aiohttp's request handler while fewer than `cap`
    connections are open, else a Refusal."""

    def __init__(self, server: web.Server, cap: int) -> None:
        self.server = server
        self.cap = cap
        self.refused = 0
        self._episode_refused = 0
        self._logged_at = -LOG_EVERY_S

    def __call__(self) -> asyncio.Protocol:
        open_ = len(self.server.connections)
        if open_ < self.cap:
            if self._episode_refused:
                self._log(
                    "b3-jobs web: accepting connections again; %d refused while %d were open",
                    self._episode_refused,
                    self.cap,
                )
                self._episode_refused = 0
            return self.server()
        self.refused += 1
        self._episode_refused += 1
        if self._episode_refused == 1:
            self._log(
                "b3-jobs web: %d connections open, the cap (B3JOBS_MAX_CONNECTIONS or the file limit); "
                "refusing new ones with 503 until some close",
                open_,
            )
        return Refusal()

    def _log(self, message: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            logger.warning(message, *args)


class GatedRunner(web.AppRunner):
    """An AppRunner whose sites accept connections through a ConnectionGate (the app's LIMITS cap)."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        limits = app.get(LIMITS, WebLimits())
        self.cap = connection_cap(limits.max_connections)
        self.gate: ConnectionGate | None = None

    @property
    def server(self) -> Any:  # TCPSite calls it as the protocol factory
        inner = super().server
        if inner is None:
            return None
        if self.gate is None or self.gate.server is not inner:
            self.gate = ConnectionGate(inner, self.cap)
        return self.gate
