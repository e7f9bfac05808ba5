"""Broker and store URLs as they may be shown: never with a password or token in them."""

from __future__ import annotations

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
