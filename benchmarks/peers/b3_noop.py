"""The b3-jobs handler of the peer benchmark (peers.toml): the same noop body as every peer's."""

from __future__ import annotations

import probe
from pydantic import BaseModel

from runtime import JobContext


class Noop(BaseModel):
    t: float | None = None  # the producer's time.time() just before the enqueue call (latency runs)


def noop(payload: Noop, ctx: JobContext) -> None:
    probe.hit(payload.t)
