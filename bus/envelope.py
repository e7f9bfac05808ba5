"""The event envelope, encoded once with msgspec, its Kombu routing key, and the batch a bus message carries.

On the bus a message is a batch: a JSON array of envelopes that all share the message's routing
key (see `bus.publisher.plan`), so a consumer bound to a narrow key receives exactly the events
its binding names. A single envelope object (what publishers before batching sent) is read too.
"""

from __future__ import annotations

import itertools
import os
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
_batch_decoder = msgspec.json.Decoder(list[Envelope] | Envelope)


class _Ids:
    """Event ids unique across processes: 16 random hex digits per process, then a counter.

    Cheaper than a uuid4 per event (no system call); a forked process draws a new prefix.
    """

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = uuid.uuid4().hex[:16]
        self.counter = itertools.count()

    def next(self) -> str:
        return "%s%08x" % (self.prefix, next(self.counter))


_ids = _Ids()


def make(event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> Envelope:
    return Envelope(
        id=_ids.next(),
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


def encode_batch(encoded: list[bytes]) -> bytes:
    """A bus message: envelopes already encoded one by one, as one JSON array (nothing encoded twice)."""
    return b"[" + b",".join(encoded) + b"]"


def decode_batch(raw: bytes) -> list[Envelope]:
    """The envelopes of one bus message, in order; raises msgspec.ValidationError / DecodeError."""
    decoded = _batch_decoder.decode(raw)
    return decoded if isinstance(decoded, list) else [decoded]


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
