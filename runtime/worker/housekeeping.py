"""What every consumer's scheduler thread does besides waiting: due delays, dead leases, cron.

Any number of consumers run it at once; every step is atomic in the store, so they never do the
same work twice.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from runtime.worker.cron_runner import CronRunner
from runtime.worker.executor import STORE_ERRORS, Outage

if TYPE_CHECKING:
    from runtime.engine import Runtime

logger = logging.getLogger("b3jobs.housekeeping")

REAP_EVERY_S = 1.0


class Housekeeper:
    def __init__(self, runtime: "Runtime", cron: bool = True):
        self.runtime = runtime
        self.cron = CronRunner(runtime) if cron else None
        self.names = sorted(runtime.manifest.jobs)
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
        moved = self.runtime.store.promote_due(self.names, now)
        for job_id, name in moved:
            self.runtime.events.emit("job:waiting", (job_id, name), {})
        return len(moved)

    def reap(self, now: float) -> int:
        reaped = self.runtime.store.reap(None)  # judged on the clock leases were given on
        for r in reaped:
            ref = (r.job_id, r.name)
            self.runtime.events.emit("job:stalled", ref, {"stalls": r.stalls})
            if r.failed:
                logger.error("! %s[%s] failed: stalled %d times", r.name, r.job_id, r.stalls)
                self.runtime.events.emit("job:failed", ref, {"error": "stalled too often", "stalls": r.stalls})
            else:
                logger.warning("%s[%s] stalled (worker gone); back to the queue (stall %d)", r.name, r.job_id, r.stalls)
                self.runtime.events.emit("job:waiting", ref, {"stalled": True})
        return len(reaped)
