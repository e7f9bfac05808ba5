"""The job message kept inside each record: what a worker needs to run one job, as msgspec JSON.

It is Huey's Message with the fields b3-jobs uses (the worker's serializer turns one into the
other), encoded array-like so a crafted message can never run code: there is no pickle.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec


class WireMessage(msgspec.Struct, array_like=True, tag="m"):
    """Huey's Message, with the fields b3-jobs uses; pipelines and chords are not carried."""

    id: str
    name: str
    eta: dt.datetime | None
    priority: int | None
    args: tuple[Any, ...]
    expires_resolved: dt.datetime | None = None


def naive_utc(ts: float) -> dt.datetime:
    """Huey's clock: naive datetimes in UTC."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).replace(tzinfo=None)


def encode_message(
    job_id: str, name: str, payload: dict[str, Any], priority: int | None, expires_at: float | None
) -> bytes:
    """The message of one job, as a worker's Huey will decode it."""
    expires = naive_utc(expires_at) if expires_at is not None else None
    return msgspec.json.encode(WireMessage(job_id, name, None, priority, (payload,), expires))
