"""JobContext: what a handler gets besides its payload."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runtime.core.errors import JobTimeout
from runtime.core.events import EventSink

logger = logging.getLogger("b3jobs.job")


class JobLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that puts the job's name and id on every line."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return "%s[%s] %s" % (self.extra["job"], self.extra["job_id"], msg), kwargs  # type: ignore[index]


@dataclass(frozen=True)
class ChildResult:
    """How one child of a flow ended: `result` when completed, `error` when failed."""

    id: str
    state: str
    result: Any = None
    error: str | None = None


class JobContext:
    """The handler's view of its job: identity, attempt, progress, events, time left, services."""

    def __init__(
        self,
        *,
        job_id: str,
        job: str,
        attempt: int,
        max_attempts: int,
        timeout_s: float | None,
        services: Any,
        events: EventSink,
        on_progress: Callable[[Any], object] | None = None,  # its return value is not used
        on_spawn: Callable[[str, list[dict[str, Any]], int], list[str]] | None = None,
        children: list[ChildResult] | None = None,
    ):
        self.job_id = job_id
        self.job = job
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.services = services
        self.log = JobLog(logger, {"job": job, "job_id": job_id})
        self._events = events
        self._on_progress = on_progress
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._timeout_s = timeout_s
        self._abandoned = threading.Event()
        self._on_spawn = on_spawn
        self.spawned = 0
        # None on a job's first run; after its children are all done, how each ended.
        self.children = children

    @property
    def time_remaining(self) -> float | None:
        """Seconds left before the attempt times out, or None without a timeout."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - time.monotonic())

    def check_timeout(self) -> None:
        """Raise JobTimeout if the attempt is past its deadline (or was given up on)."""
        if self._abandoned.is_set() or (self._deadline is not None and time.monotonic() >= self._deadline):
            raise JobTimeout("%s timed out after %ss" % (self.job, self._timeout_s))

    def progress(self, value: Any) -> None:
        """Record progress (a number 0-100 or any JSON value) and publish `job:progress`."""
        self.check_timeout()
        if self._on_progress is not None:
            self._on_progress(value)
        self._events.emit("job:progress", (self.job_id, self.job), {"progress": value})

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Publish a domain event (e.g. `order:shipped`); never raises for a bus outage."""
        self.check_timeout()
        self._events.emit(event, (self.job_id, self.job), data)

    def spawn(self, job: str, payloads: list[dict[str, Any]]) -> list[str]:
        """Create child jobs; when this handler returns, the job waits for them without holding a
        worker, then its handler runs again with `ctx.children` telling how each ended.

        Child ids derive from this job's id, so a rerun after a crash does not create them twice.
        """
        self.check_timeout()
        if self._on_spawn is None:
            raise RuntimeError("spawn is only available to jobs run by a consumer")
        ids = self._on_spawn(job, payloads, self.spawned)
        self.spawned += len(ids)
        return ids

    def abandon(self) -> None:
        """Called by the runtime when the attempt timed out: the next ctx call raises JobTimeout."""
        self._abandoned.set()
