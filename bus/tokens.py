"""Checking a bearer token: in constant time, and for any bytes a client may send."""

from __future__ import annotations

import hmac


def token_matches(given: str, expected: bytes) -> bool:
    """Whether `given` is the token; header values may hold undecodable bytes (kept as surrogates)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected)


def bearer(header: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None for anything else."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
