"""Where job events go. The runtime calls an EventSink; the bus provides the Kombu one.

A sink never raises into a job: publishing is best effort, failures are logged and counted.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

logger = logging.getLogger("b3jobs.events")


class EventSink(Protocol):
    def emit(self, event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> None:
        """Publish `event` for job (id, name) or for no job; must not raise."""


class LogSink:
    """The sink used until a bus is configured: events go to the debug log."""

    def emit(self, event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s %s %s", event, job[0] if job else "-", data)


class RecordingSink:
    """Keeps every event in memory, in order: for tests and `invoke`."""

    def __init__(self) -> None:
        self.events: list[tuple[str, tuple[str, str] | None, dict[str, Any]]] = []

    def emit(self, event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> None:
        self.events.append((event, job, data))
