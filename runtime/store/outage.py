"""What a store outage looks like, and how callers ride it out: log once, back off, never crash."""

from __future__ import annotations

import logging
import sqlite3
import time

import redis

logger = logging.getLogger("b3jobs.store")

# The store is unreachable (Redis down or restarting, the SQLite file locked or gone): wait and retry.
# Anything else (a script error, a corrupt value) is a bug to report, not an outage to wait out.
STORE_ERRORS: tuple[type[BaseException], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    sqlite3.OperationalError,
    OSError,
)


class Outage:
    """Logs a backend outage once when it starts and once when it ends, and backs off meanwhile."""

    def __init__(self, what: str):
        self.what = what
        self.since: float | None = None
        self.backoff_s = 0.25

    def down(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            logger.error("%s unreachable (%s); retrying with backoff", self.what, exc)
        time.sleep(self.backoff_s)
        self.backoff_s = min(self.backoff_s * 2, 5.0)

    def up(self) -> None:
        if self.since is not None:
            logger.warning("%s reachable again after %.1fs", self.what, time.monotonic() - self.since)
            self.since = None
        self.backoff_s = 0.25
