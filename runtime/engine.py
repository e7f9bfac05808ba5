"""The runtime: the one object that wires a process together (store, Huey, enqueue, executor) and the operations on jobs."""

from __future__ import annotations

import builtins
import time
import types
from typing import Any

from runtime.core.enqueue import EnqueueItem, Enqueuer, check_caller_id, limits_of
from runtime.core.errors import B3JobsError, InvalidArgument, JobNotFound, PayloadError
from runtime.core.events import EventSink, LogSink
from runtime.core.manifest import Manifest, import_object, load_manifest
from runtime.core.records import COMPLETED, DELAYED, FAILED, WAITING, JobRecord
from runtime.core.settings import Settings, SettingsError
from runtime.store.base import JobStore
from runtime.store.redis import RedisJobStore
from runtime.store.sqlite import SqliteJobStore
from runtime.worker.cron_runner import CronRunner
from runtime.worker.executor import Executor
from runtime.worker.housekeeping import Housekeeper
from runtime.worker.huey_app import build_huey


def load_services(settings: Settings, manifest: Manifest) -> Any:
    """The domain services every job gets as `ctx.services`: built by the factory B3JOBS_SERVICES names,
    else by the manifest's `[app] services`; an empty namespace without either.

    The factory is called once per process with the settings; it should create expensive things
    (connections, clients) lazily, on first use, so forked worker processes get their own.
    """
    factory = manifest.app.services
    if settings.services is not None:
        try:
            factory = import_object(settings.services)
        except Exception as exc:  # an import-time failure of any kind is a bad setting
            raise SettingsError(
                "bad settings: B3JOBS_SERVICES: cannot import %r: %s" % (settings.services, exc)
            ) from exc
        if not callable(factory):
            raise SettingsError("bad settings: B3JOBS_SERVICES: %r is not callable" % settings.services)
    if factory is None:
        return types.SimpleNamespace()
    return factory(settings)


class Runtime:
    """Everything a process needs to enqueue, run and inspect jobs, on the configured backend."""

    def __init__(
        self,
        settings: Settings | None = None,
        manifest: Manifest | None = None,
        events: EventSink | None = None,
        services: Any = None,
    ):
        self.settings = settings or Settings.from_env()
        self.manifest = manifest or load_manifest(self.settings.manifest)
        self.events: EventSink = events or LogSink()
        self.huey = build_huey(self.settings)
        self.store: JobStore = (
            RedisJobStore(self.huey.storage.conn, self.settings.namespace)
            if self.settings.redis_url
            else SqliteJobStore(self.huey.storage)
        )
        self.store.set_limits(limits_of(self.manifest))
        self.huey.register_jobs(self.manifest.jobs)
        self.services = services if services is not None else load_services(self.settings, self.manifest)
        self.enqueuer = Enqueuer(self.manifest, self.store, self.events)
        self.executor = Executor(
            self.huey,
            self.store,
            self.manifest,
            self.events,
            self.services,
            self.settings.lease_s,
            self.enqueuer.prepare,
        )
        self.huey.executor = self.executor
        # Each worker, as it stops, gives back the job its last completion took and it never ran.
        self.huey.on_shutdown("b3-hand-back-taken")(self.executor.hand_back_taken)

    # -- enqueue -------------------------------------------------------------------------------

    def enqueue(
        self,
        name: str,
        payload: Any,
        *,
        delay: float | None = None,
        priority: int | None = None,
        job_id: str | None = None,
    ) -> tuple[JobRecord, bool]:
        """Validate and enqueue a job for a caller; returns (record, created). See `Enqueuer.enqueue`.

        A `job_id` must not be one b3-jobs reserves for cron ticks and flow children (`check_caller_id`).
        """
        problems = check_caller_id(job_id)
        if problems:
            self.manifest.job(name)
            raise PayloadError(name, problems)
        return self.enqueuer.enqueue(name, payload, delay=delay, priority=priority, job_id=job_id)

    def enqueue_many(
        self,
        name: str,
        payloads: list[Any] | list[EnqueueItem],
        *,
        delay: float | None = None,
        priority: int | None = None,
    ) -> list[tuple[JobRecord, bool]]:
        """BullMQ's addBulk: validate every payload, then create all in one store call (one event batch).

        `payloads` are payloads (with `delay`/`priority` for all) or EnqueueItems with their own options.
        Nothing is enqueued if any is invalid. Returns (record, created) per item, in order.
        """
        items = [p if isinstance(p, EnqueueItem) else EnqueueItem(p, delay=delay, priority=priority) for p in payloads]
        problems = [e for n, item in enumerate(items) for e in check_caller_id(item.job_id, "%d.job_id" % n)]
        if problems:
            self.manifest.job(name)
            raise PayloadError(name, problems)
        return self.enqueuer.enqueue_many(name, items)

    # -- the consumer's parts ----------------------------------------------------------------------

    def cron_runner(self, now: float | None = None) -> CronRunner:
        """A runner of this manifest's cron ticks, enqueueing through this runtime."""
        return CronRunner(self.store, self.manifest.jobs.values(), self.enqueuer.enqueue, now=now)

    def housekeeper(self, cron: bool = True) -> Housekeeper:
        """A consumer's scheduler round: due delays, the reaper and (with `cron`) cron ticks."""
        return Housekeeper(self.store, self.events, self.manifest.jobs, self.cron_runner() if cron else None)

    # -- inspect -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def list(
        self, state: str | None = None, name: str | None = None, offset: int = 0, limit: int = 50
    ) -> list[JobRecord]:
        return self.store.list(state, name, offset, limit)

    def counts(self) -> dict[str, dict[str, int]]:
        return self.store.counts(sorted(self.manifest.jobs))

    # -- control -------------------------------------------------------------------------------

    def retry(self, job_id: str) -> JobRecord:
        """Run a failed job again, with a fresh set of attempts."""
        self._known(self.get(job_id))
        record = self.store.requeue_failed(job_id, time.time())
        self.events.emit("job:waiting", (record.id, record.name), {"retried": True})
        return record

    def retry_failed(self, name: str) -> int:
        """Retry every failed job of one name; returns how many were queued again."""
        self.manifest.job(name)
        return self.retry_many(self.store.ids_in_state(name, FAILED))

    def retry_many(self, job_ids: builtins.list[str]) -> int:
        """Retry these failed jobs; returns how many were queued again."""
        retried = 0
        for job_id in job_ids:
            try:
                self.retry(job_id)
                retried += 1
            except B3JobsError:
                continue  # removed or retried by someone else meanwhile
        return retried

    def remove(self, job_id: str) -> None:
        if not self.store.remove(job_id):
            raise JobNotFound(job_id)

    def promote(self, job_id: str) -> JobRecord:
        """Run a delayed job now instead of at its time."""
        record = self.store.promote(job_id, time.time())
        self.events.emit("job:waiting", (record.id, record.name), {"promoted": True})
        return record

    def pause(self, name: str) -> bool:
        """No consumer starts a job of this name until `resume`; its jobs stay waiting."""
        self.manifest.job(name)
        changed = self.store.pause(name)
        if changed:
            self.events.emit("queue:paused", None, {"job": name})
        return changed

    def resume(self, name: str) -> int:
        self.manifest.job(name)
        was_paused = name in self.store.paused()
        moved = self.store.resume(name)
        if was_paused:
            self.events.emit("queue:resumed", None, {"job": name, "released": moved})
        return moved

    def paused(self) -> set[str]:
        return self.store.paused()

    def drain(self, name: str) -> int:
        """Remove every waiting job of a name."""
        self.manifest.job(name)
        return self.store.drain(name)

    def obliterate(self, name: str, *, confirm: bool, force: bool = False) -> int:
        """Remove a name's queue, records and totals. `confirm` must be True; `force` also while jobs run."""
        if not confirm:
            raise InvalidArgument("confirm", "obliterate deletes every %s job and record; pass confirm=true" % name)
        if name not in self.manifest.jobs and name not in self.store.counts([]):
            self.manifest.job(name)
        return self.store.obliterate(name, force)

    def clean(self, name: str, state: str, older_than_s: float = 0, limit: int = 1000) -> int:
        """Delete up to `limit` records of `name` in `state` (not active) older than `older_than_s` seconds."""
        self.manifest.job(name)
        if state not in (WAITING, DELAYED, COMPLETED, FAILED):
            raise InvalidArgument("state", "must be one of waiting, delayed, completed, failed; got %r" % state)
        if older_than_s < 0 or not 1 <= limit <= 100_000:
            raise InvalidArgument("age" if older_than_s < 0 else "limit", "out of range")
        return self.store.clean(name, state, time.time() - older_than_s, limit)

    def _known(self, record: JobRecord) -> None:
        if record.name not in self.manifest.jobs:
            raise B3JobsError("job %s is a %r, which this manifest does not declare" % (record.id, record.name))

    def close(self) -> None:
        self.store.close()
