"""What every consumer's scheduler thread does besides waiting: due delays, dead leases, cron.

Any number of consumers run it at once; every step is atomic in the store, so they never do the
same work twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from runtime.core.events import EventSink
from runtime.store.base import JobStore
from runtime.store.outage import STORE_ERRORS, Outage
from runtime.worker.cron_runner import CronRunner

logger = logging.getLogger("b3jobs.housekeeping")

REAP_EVERY_S = 1.0


class Housekeeper:
    """One consumer's scheduler round: promote due delayed jobs, reap dead leases, fire cron ticks."""

    def __init__(self, store: JobStore, events: EventSink, names: Iterable[str], cron: CronRunner | None):
        self.store = store
        self.events = events
        self.cron = cron
        self.names = sorted(names)
        self._next_reap = 0.0
        self._outage = Outage("job store (scheduler)")

    def tick(self, now: float | None = None) -> None:
        """One round; store outages are logged once and backed off, never raised."""
        now = time.time() if now is None else now
        try:
            self.promote_due(now)
            if now >= self._next_reap:
                self._next_reap = now + REAP_EVERY_S
                self.reap(now)
            if self.cron is not None:
                self.cron.tick(now)
        except STORE_ERRORS as exc:
            self._outage.down(exc)
            return
        self._outage.up()

    def promote_due(self, now: float) -> int:
        moved = self.store.promote_due(self.names, now)
        for job_id, name in moved:
            self.events.emit("job:waiting", (job_id, name), {})
        return len(moved)

    def reap(self, now: float) -> int:
        reaped = self.store.reap(None)  # judged on the clock leases were given on
        for r in reaped:
            ref = (r.job_id, r.name)
            self.events.emit("job:stalled", ref, {"stalls": r.stalls})
            if r.failed:
                logger.error("! %s[%s] failed: stalled %d times", r.name, r.job_id, r.stalls)
                self.events.emit("job:failed", ref, {"error": "stalled too often", "stalls": r.stalls})
            else:
                logger.warning("%s[%s] stalled (worker gone); back to the queue (stall %d)", r.name, r.job_id, r.stalls)
                self.events.emit("job:waiting", ref, {"stalled": True})
        return len(reaped)
