"""Enqueues cron jobs at their ticks; any number of consumers may run it, each tick runs once."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Iterable

from runtime.core.cron import cron_job_id
from runtime.core.errors import B3JobsError
from runtime.core.manifest import Job
from runtime.core.records import JobRecord
from runtime.store.base import JobStore

Enqueue = Callable[..., tuple[JobRecord, bool]]

logger = logging.getLogger("b3jobs.cron")


class CronRunner:
    """Claims each due tick of the manifest's cron jobs in the store and enqueues the job for it."""

    def __init__(self, store: JobStore, jobs: Iterable[Job], enqueue: Enqueue, now: float | None = None):
        self.store = store
        self.enqueue = enqueue
        self.jobs = [j for j in jobs if j.cron is not None and j.spec.enabled]
        # Start with the minute in progress: if no other consumer claimed it yet, it is still ours.
        self.last_minute = int((time.time() if now is None else now) // 60) * 60 - 60
        self.caught_up = False

    def tick(self, now: float | None = None) -> int:
        """Enqueue every cron job whose tick has come since the last call; returns how many ran."""
        minute = int((time.time() if now is None else now) // 60) * 60
        fired = 0
        if not self.caught_up:
            fired += self._catch_up()
            self.caught_up = True
        # A stalled process (suspend, long GC) catches up at most a few minutes; misfire policy
        # for longer outages belongs to the job's `misfire` setting.
        after = max(self.last_minute, minute - 5 * 60)
        if after < minute:
            fired += self._fire(after, minute)
            self.last_minute = minute
        return fired

    def _catch_up(self) -> int:
        """misfire = "run_once": ticks missed while no consumer ran are run once, on return.

        The first missed tick is the claim key, so consumers starting together run it once.
        On the very first start there is no last run, so nothing is caught up.
        """
        fired = 0
        for job in self.jobs:
            assert job.cron is not None
            last = self.store.last_tick(job.name)
            if job.spec.misfire != "run_once" or last is None:
                continue
            missed = job.cron.next_after(_utc(last), job.tz).timestamp()
            if missed > self.last_minute:
                continue  # nothing missed: ticks from here on are the normal tick's
            if self.store.claim_tick(job.name, missed):
                record, _ = self.enqueue(job.name, job.spec.input or {}, job_id=cron_job_id(job.name, missed))
                logger.warning(
                    "cron %s: ticks missed since %s; running once now (%s)",
                    job.name,
                    dt.datetime.fromtimestamp(last, job.tz).isoformat(),
                    record.id,
                )
                fired += 1
        return fired

    def _fire(self, after: float, until: float) -> int:
        """Enqueue the ticks in (after, until]; `Cron.ticks` decides them, DST included."""
        fired = 0
        for job in self.jobs:
            assert job.cron is not None
            for tick in job.cron.ticks(_utc(after), _utc(until), job.tz):
                fired += self._enqueue(job, tick.timestamp())
        return fired

    def _enqueue(self, job: Job, tick: float) -> int:
        """Claim one tick and enqueue its job; 1 if this consumer got it, else 0."""
        local = _utc(tick).astimezone(job.tz).isoformat()
        try:
            if not self.store.claim_tick(job.name, tick):
                return 0
            record, _ = self.enqueue(job.name, job.spec.input or {}, job_id=cron_job_id(job.name, tick))
        except (B3JobsError, OSError, ConnectionError) as exc:
            logger.error("cron %s at %s: could not enqueue: %s", job.name, local, exc)
            return 0
        logger.info("cron %s tick %s → %s", job.name, local, record.id)
        return 1


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)
