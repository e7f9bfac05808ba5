"""Where job events go: the EventSink seam. The runtime calls a sink; the bus provides the Kombu one.

A sink never raises into a job: publishing is best effort, failures are logged and counted.
A sink that publishes on a thread of its own (`holds_events`) runs `after_published` callbacks
once the events emitted before them are out; the runtime makes new jobs visible that way, so a
job's `job:waiting` is on the bus before any worker can take it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

logger = logging.getLogger("b3jobs.events")

JobRef = tuple[str, str]  # (job id, job name)


class EventSink(Protocol):
    """What the runtime publishes events through."""

    holds_events: bool  # True: events leave later, on another thread (use after_published to wait for them)
    label: str  # where events go, for operators: a URL without credentials, or "log"
    published: int
    dropped: int

    @property
    def buffered(self) -> int:
        """Events emitted, not published yet."""

    def emit(self, event: str, job: JobRef | None, data: dict[str, Any]) -> None:
        """Publish `event` for job (id, name) or for no job; must not raise."""

    def after_published(self, callback: Callable[[list[Any]], None], items: list[Any]) -> None:
        """Call `callback(items)` once every event emitted so far is published (or kept for an outage).

        A sink may merge calls of one callback that become due together, concatenating their items.
        """

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until every event emitted so far is published; False on timeout."""

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish what is held, then release the sink's resources."""


class ImmediateSink:
    """Base of the sinks that deliver on the caller's thread: nothing is held, callbacks run at once."""

    holds_events = False
    label = "log"

    def __init__(self) -> None:
        self.published = 0
        self.dropped = 0
        self.buffered = 0

    def emit(self, event: str, job: JobRef | None, data: dict[str, Any]) -> None:
        self.published += 1

    def after_published(self, callback: Callable[[list[Any]], None], items: list[Any]) -> None:
        callback(items)

    def flush(self, timeout_s: float = 1.0) -> bool:
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        return None


class LogSink(ImmediateSink):
    """The sink used until a bus is configured: events go to the debug log."""

    def emit(self, event: str, job: JobRef | None, data: dict[str, Any]) -> None:
        self.published += 1
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s %s", event, job[0] if job else "-", data)


class RecordingSink(ImmediateSink):
    """Keeps every event in memory, in order: for tests and `invoke`."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, JobRef | None, dict[str, Any]]] = []

    def emit(self, event: str, job: JobRef | None, data: dict[str, Any]) -> None:
        self.published += 1
        self.events.append((event, job, data))
