"""Broker and store URLs as they may be shown: never with a password or token in them."""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def redact(url: str) -> str:
    """`redis://:secret@host:6379/0` → `redis://:***@host:6379/0`; a URL without credentials unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = "[%s]" % host
    if parts.port is not None:
        host = "%s:%d" % (host, parts.port)
    user = parts.username or ""
    userinfo = "%s:***" % user if parts.password is not None else "***"
    return urlunsplit((parts.scheme, "%s@%s" % (userinfo, host), parts.path, parts.query, parts.fragment))


# The userinfo of a URL inside any text (an exception's message): `user:password@` or `token@`.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^:/@\s]*)(?P<password>:[^@/\s]*)?@")


def redact_text(text: str) -> str:
    """`text` with the credentials of every URL in it masked as `redact` masks them."""
    return _USERINFO.sub(_mask, text)


def _mask(match: re.Match[str]) -> str:
    if match["password"] is not None:
        return "%s%s:***@" % (match["scheme"], match["user"])
    return "%s***@" % match["scheme"]
