"""Enqueues cron jobs at their ticks; any number of consumers may run it, each tick runs once."""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import TYPE_CHECKING

from runtime.errors import B3JobsError

if TYPE_CHECKING:
    from runtime.engine import Runtime

logger = logging.getLogger("b3jobs.cron")


class CronRunner:
    def __init__(self, runtime: "Runtime", now: float | None = None):
        self.runtime = runtime
        self.jobs = [j for j in runtime.manifest.jobs.values() if j.cron is not None and j.spec.enabled]
        # Start with the minute in progress: if no other consumer claimed it yet, it is still ours.
        self.last_minute = int((time.time() if now is None else now) // 60) * 60 - 60

    def tick(self, now: float | None = None) -> int:
        """Enqueue every cron job whose tick has come since the last call; returns how many ran."""
        minute = int((time.time() if now is None else now) // 60) * 60
        fired = 0
        # A stalled process (suspend, long GC) catches up at most a few minutes; misfire policy
        # for longer outages belongs to the job's `misfire` setting.
        self.last_minute = max(self.last_minute, minute - 5 * 60)
        while self.last_minute < minute:
            self.last_minute += 60
            fired += self._fire(self.last_minute)
        return fired

    def _fire(self, minute: int) -> int:
        fired = 0
        for job in self.jobs:
            assert job.cron is not None
            local = dt.datetime.fromtimestamp(minute, job.tz)
            if not job.cron.matches(local):
                continue
            try:
                if not self.runtime.store.claim_tick(job.name, minute):
                    continue
                record, _ = self.runtime.enqueue(job.name, job.spec.input or {}, job_id="%s.cron.%d" % (job.name, minute))
            except (B3JobsError, OSError, ConnectionError) as exc:
                logger.error("cron %s at %s: could not enqueue: %s", job.name, local.isoformat(), exc)
                continue
            logger.info("cron %s tick %s → %s", job.name, local.isoformat(), record.id)
            fired += 1
        return fired
