"""The runtime: manifest jobs as Huey tasks, their records, and the operations on them."""

from __future__ import annotations

import hashlib
import json
import re
import time
import types
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from runtime.core.errors import B3JobsError, InvalidArgument, JobNotFound, PayloadError
from runtime.core.events import EventSink, LogSink
from runtime.worker.executor import Executor, naive_utc
from runtime.worker.huey_app import build_huey
from runtime.core.manifest import MAX_PRIORITY, Manifest, import_object, load_manifest
from runtime.core.records import COMPLETED, DELAYED, FAILED, WAITING, JobRecord
from runtime.core.settings import Settings, SettingsError
from runtime.store.base import JobStore, Limits
from runtime.store.redis import RedisJobStore
from runtime.store.sqlite import SqliteJobStore

JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def _dispatched_by_executor(*args: Any) -> None:
    """Placeholder body of every Huey task: b3-jobs' executor calls the manifest's handler instead."""
    raise RuntimeError("b3-jobs tasks are run by runtime.executor.Executor")


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


@dataclass(frozen=True)
class NewJob:
    record: JobRecord
    message: bytes
    dedupe_key: str
    rate_key: str


def limits_of(manifest: Manifest) -> dict[str, Limits]:
    out = {}
    for name, job in manifest.jobs.items():
        spec = job.spec
        rate = spec.rate_limit
        if spec.concurrency or rate:
            out[name] = Limits(
                concurrency=spec.concurrency,
                rate_limit=rate.limit if rate else None,
                rate_window_s=rate.per if rate else None,
                rate_keyed=bool(rate and rate.key),
            )
    return out


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
        self.tasks = {name: self.huey.task(name=name)(_dispatched_by_executor) for name in self.manifest.jobs}
        self.services = services if services is not None else load_services(self.settings, self.manifest)
        self.executor = Executor(self.huey, self.store, self.manifest, self.events, self.services, self.settings.lease_s, self.prepare)
        self.huey.executor = self.executor

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
        """Validate and enqueue a job; returns (record, created).

        An existing `job_id`, or an equal job (the manifest's `dedupe` fields) that is waiting,
        delayed or active, is returned instead of enqueueing a second one.
        """
        new = self.prepare(name, payload, delay=delay, priority=priority, job_id=job_id)
        if job_id is not None:
            existing = self.store.get(job_id)
            if existing is not None:
                return existing, False
        if new.dedupe_key:
            # Published after the store decided, so a deduplicated enqueue publishes nothing.
            record, created = self.store.create(new.record, new.message, dedupe_key=new.dedupe_key, rate_key=new.rate_key)
            if created:
                self._emit_queued(record)
            return record, created
        # Published before the job is visible, so no consumer's job:active can overtake it.
        self._emit_queued(new.record)
        self._flush_events()
        return self.store.create(new.record, new.message, rate_key=new.rate_key)

    def _emit_queued(self, record: JobRecord) -> None:
        data = {"run_at": record.run_at, "reason": "delay"} if record.run_at else {}
        self.events.emit("job:delayed" if record.run_at else "job:waiting", (record.id, record.name), data)

    def prepare(
        self,
        name: str,
        payload: Any,
        *,
        delay: float | None = None,
        priority: int | None = None,
        job_id: str | None = None,
        parent_id: str | None = None,
    ) -> "NewJob":
        """Validate a job and build its record and message (every field problem reported at once)."""
        job = self.manifest.job(name)
        problems = []
        if delay is not None and not (0 <= delay <= 366 * 86400):
            problems.append({"loc": "delay", "msg": "must be between 0 and 31622400 seconds, got %r" % delay, "type": "delay"})
        if priority is not None and not (1 <= priority <= MAX_PRIORITY):
            problems.append({"loc": "priority", "msg": "must be 1 (most urgent) to %d, got %r" % (MAX_PRIORITY, priority), "type": "priority"})
        if job_id is not None and not JOB_ID.match(job_id):
            problems.append({"loc": "job_id", "msg": "must be 1-128 of A-Z a-z 0-9 _ . : - (starting alphanumeric), got %r" % job_id, "type": "job_id"})
        try:
            model = job.payload_model.model_validate(payload)
        except ValidationError as exc:
            problems.extend(
                {"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()
            )
        if problems:
            raise PayloadError(name, problems)
        priority = priority if priority is not None else job.spec.priority
        now = time.time()
        run_at = now + delay if delay else None
        data = model.model_dump(mode="json")
        task = self.tasks[name].s(data)
        task.id = job_id or uuid.uuid4().hex
        task.revoke_id = "r:%s" % task.id
        task.priority = priority
        if job.spec.expires:
            task.expires_resolved = naive_utc(now + job.spec.expires)
        record = JobRecord(
            id=task.id,
            name=name,
            state=DELAYED if run_at else WAITING,
            payload=data,
            max_attempts=job.max_attempts,
            max_stalls=job.spec.max_stalls,
            priority=priority,
            created_at=now,
            run_at=run_at,
            delay_reason="delay" if run_at else None,
            parent_id=parent_id,
        )
        dedupe_key = ""
        if job.spec.dedupe and parent_id is None:
            values = json.dumps([data.get(f) for f in job.spec.dedupe], sort_keys=True, default=str)
            dedupe_key = "%s:%s" % (name, hashlib.sha1(values.encode()).hexdigest())
        limit = job.spec.rate_limit
        rate_key = str(data.get(limit.key)) if limit is not None and limit.key else ""
        return NewJob(record, self.huey.serialize_task(task), dedupe_key, rate_key)

    def _flush_events(self) -> None:
        flush = getattr(self.events, "flush", None)
        if flush is not None:
            flush(0.25)

    # -- inspect -------------------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def list(self, state: str | None = None, name: str | None = None, offset: int = 0, limit: int = 50) -> list[JobRecord]:
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

    def retry_many(self, job_ids: list[str]) -> int:
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
