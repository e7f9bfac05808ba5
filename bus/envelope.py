"""The event envelope, encoded once with msgspec, and its Kombu routing key."""

from __future__ import annotations

import time
import uuid
from typing import Any

import msgspec

EXCHANGE = "b3.events"


class JobRef(msgspec.Struct, array_like=False):
    id: str
    name: str


class Envelope(msgspec.Struct, kw_only=True):
    """One event. `seq` is 0 when published; the relay numbers what it receives, rising by 1."""

    id: str
    seq: int = 0
    event: str
    ts: float
    job: JobRef | None = None
    data: dict[str, Any] = {}


_encoder = msgspec.json.Encoder(enc_hook=lambda v: v.model_dump(mode="json") if hasattr(v, "model_dump") else str(v))
_decoder = msgspec.json.Decoder(Envelope)


def make(event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> Envelope:
    return Envelope(
        id=uuid.uuid4().hex,
        event=event,
        ts=time.time(),
        job=JobRef(id=job[0], name=job[1]) if job else None,
        data=data,
    )


def encode(envelope: Envelope) -> bytes:
    return _encoder.encode(envelope)


def decode(raw: bytes) -> Envelope:
    """Decode an envelope; raises msgspec.ValidationError / DecodeError for anything else."""
    return _decoder.decode(raw)


def routing_key(envelope: Envelope) -> str:
    """`job.completed.update-asset-prices`, `asset.updated.PETR4`, `analysis.completed.<job>`.

    Job and queue lifecycle events end in the job name; domain events in their ticker when the
    data has one, else the job name, else `_`.
    """
    base = envelope.event.replace(":", ".")
    if envelope.event.startswith(("job:", "queue:")):
        tail = envelope.job.name if envelope.job else str(envelope.data.get("job", "_"))
    elif isinstance(envelope.data.get("ticker"), str):
        tail = envelope.data["ticker"]
    else:
        tail = envelope.job.name if envelope.job else "_"
    return "%s.%s" % (base, tail.replace(".", "_"))
