"""Who may drive a web process without a token: the Host, Origin and Content-Type checks.

Without `B3JOBS_TOKEN` the API answers anyone who reaches it, and it is served on loopback only.
A browser on the operator's machine reaches loopback too, on behalf of any page it shows, so:

- Host: the request must name this server: a loopback name at the port it listens on, or a name
  in B3JOBS_ALLOWED_HOSTS. A DNS-rebound name (`evil.example` resolving to 127.0.0.1) is refused.
- Origin: a state-changing request (POST, PUT, PATCH, DELETE) or a websocket upgrade sent by a
  page must come from a page of this server; browsers say so in `Origin` (and `Sec-Fetch-Site`).
  Requests without them come from scripts, not pages, and pass.
- Content-Type: a state-changing request with a body must say `application/json`; a form or
  `text/plain` body (what a page on another site can send without asking first) is refused.
  Engine.IO's long-polling POSTs to `/socket.io/` are text/plain by protocol and are let through
  this one check; their Origin is checked as above.

With a token the token is the guard (a page on another site cannot send the header); the Host is
then checked only when B3JOBS_ALLOWED_HOSTS is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Engine.IO's long-polling POSTs (bus.socketio) carry text/plain by protocol; Origin still applies.
ENGINEIO_PATH = "/socket.io/"


class Refused(Exception):
    """A request this policy turns away: the status, a code and why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def split_host(value: str, default_port: int | None) -> tuple[str, int | None]:
    """(name, port) of a Host header or `name[:port]` entry, the name lower case, without a final dot."""
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:3101
        name, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        name, _, port_text = value.partition(":")
    else:
        name, port_text = value, ""
    if port_text and not port_text.isdigit():
        raise ValueError("bad port in %r" % value)
    port = int(port_text) if port_text else default_port
    return name.rstrip("."), port


@dataclass(frozen=True)
class OriginPolicy:
    token: bool  # a token is configured
    allowed: tuple[tuple[str, int | None], ...]  # B3JOBS_ALLOWED_HOSTS: (name, port or None for any)

    @classmethod
    def of(cls, token: str | None, allowed_hosts: tuple[str, ...]) -> OriginPolicy:
        return cls(bool(token), tuple(split_host(h, None) for h in allowed_hosts))

    def host_ok(self, name: str, port: int | None, own_port: int | None) -> bool:
        if name in LOOPBACK_NAMES and (port == own_port or own_port is None):
            return True
        return any(name == n and (p is None or p == port) for n, p in self.allowed)

    def check(self, request: web.Request) -> None:
        """Raise Refused for a request this server must not act on."""
        if self.token and not self.allowed:
            return
        own_port = _own_port(request)
        host = request.headers.get("Host")
        if host is None:
            raise Refused(403, "unknown_host", "a Host header is required")
        try:
            name, port = split_host(host, 443 if request.secure else 80)
        except ValueError:
            raise Refused(403, "unknown_host", "Host %.100r is not a host name" % host) from None
        if not self.host_ok(name, port, own_port):
            raise Refused(
                403,
                "unknown_host",
                "Host %.100r is not this server's; allowed: loopback at its port, and B3JOBS_ALLOWED_HOSTS" % host,
            )
        if self.token:
            return
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if request.method not in STATE_CHANGING and not upgrade:
            return
        self._check_origin(request, own_port)
        if request.method in STATE_CHANGING and request.body_exists and not request.path.startswith(ENGINEIO_PATH):
            mime = request.content_type
            if not (mime == "application/json" or mime.endswith("+json")):
                raise Refused(
                    415,
                    "unsupported_media_type",
                    "a request body must be JSON sent as Content-Type: application/json, got %.100r" % mime,
                )

    def _check_origin(self, request: web.Request, own_port: int | None) -> None:
        origin = request.headers.get("Origin")
        if origin is not None:
            parts = urlsplit(origin.strip())
            try:
                default = {"http": 80, "https": 443}.get(parts.scheme)
                ok = default is not None and self.host_ok(*split_host(parts.netloc, default), own_port)
            except ValueError:
                ok = False
            if not ok:
                raise Refused(
                    403,
                    "foreign_origin",
                    "requests from pages of %.100r are not accepted without "
                    "B3JOBS_TOKEN; only this server's own pages may change state" % origin,
                )
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise Refused(
                403,
                "foreign_origin",
                "requests from other sites (Sec-Fetch-Site: %.40s) are not accepted without B3JOBS_TOKEN" % site,
            )


def _own_port(request: web.Request) -> int | None:
    """The port this connection reached (what a browser puts in Host for this server)."""
    transport: Any = request.transport
    sockname = transport.get_extra_info("sockname") if transport is not None else None
    return sockname[1] if isinstance(sockname, tuple) and len(sockname) >= 2 else None
