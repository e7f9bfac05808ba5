"""Enqueue: validate a job, build its record and message, put it in the store, announce it.

The one way a job comes to exist, used by the API and the CLI (through `Runtime`), by `ctx.spawn`
(children) and by cron ticks. Every field problem of a request is reported at once.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from runtime.core.errors import JobIdTaken, PayloadError
from runtime.core.events import EventSink
from runtime.core.manifest import MAX_PRIORITY, Manifest
from runtime.core.messages import encode_message
from runtime.core.records import DELAYED, WAITING, JobRecord
from runtime.store.base import JobStore, Limits, NewJob

# A job id: ASCII letters, digits and `_ . : -`, starting alphanumeric, at most 128 (whole string:
# `fullmatch`, so no trailing newline slips through `$`). The JSON-schema form is CALLER_JOB_ID.
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
CALLER_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")
# Ids ending in `.<digits>` are b3-jobs' own: cron ticks (`<job>.cron.<tick>`) and flow children
# (`<parent>.<n>`). A caller who could take one could keep a tick from running.
RESERVED_ID = re.compile(r".*\.[0-9]+")
MAX_DELAY_S = 366 * 86400
MAX_CREATE = 10_000  # jobs per store call of a bulk enqueue (one Lua call / transaction each)
OPTIONS = ("delay", "priority", "job_id")  # what `prepare` checks besides the payload: its problems' `type`


def check_caller_id(job_id: str | None, loc: str = "job_id") -> list[dict[str, Any]]:
    """The problems of an id chosen by a caller (API, CLI): its form, and not one b3-jobs reserves."""
    if job_id is None:
        return []
    if not JOB_ID.fullmatch(job_id):
        return [_bad_id(job_id, loc)]
    if RESERVED_ID.fullmatch(job_id):
        msg = "ids ending in .<digits> are reserved for cron ticks and flow children, got %r" % job_id
        return [{"loc": loc, "msg": msg, "type": "job_id"}]
    return []


def _bad_id(job_id: str, loc: str) -> dict[str, Any]:
    msg = "must be 1-128 of A-Z a-z 0-9 _ . : - (starting alphanumeric), got %.200r" % job_id
    return {"loc": loc, "msg": msg, "type": "job_id"}


@dataclass(frozen=True)
class EnqueueItem:
    """One job of a bulk enqueue: its payload and, optionally, the options a single enqueue takes."""

    payload: Any
    delay: float | None = None
    priority: int | None = None
    job_id: str | None = None


def limits_of(manifest: Manifest) -> dict[str, Limits]:
    """What `dequeue` must enforce per job name: concurrency and rate limits from the manifest."""
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


def _item_loc(n: int, problem: dict[str, Any]) -> str:
    """Where a problem of bulk item `n` is: `3.delay` for one of its options, `3.payload.user_id` in its payload."""
    if problem["type"] in OPTIONS:
        return "%d.%s" % (n, problem["loc"])
    return "%d.payload.%s" % (n, problem["loc"]) if problem["loc"] else "%d.payload" % n


class Enqueuer:
    """Validates jobs against the manifest, creates them in the store and publishes their first event."""

    def __init__(self, manifest: Manifest, store: JobStore, events: EventSink) -> None:
        self.manifest = manifest
        self.store = store
        self.events = events

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

        An existing `job_id` of this job, or an equal job (the manifest's `dedupe` fields) that is
        waiting, delayed or active, is returned instead of enqueueing a second one; an existing
        `job_id` of another job is JobIdTaken. Any id is taken here (cron ticks use this); callers
        go through `Runtime.enqueue`, which refuses the reserved ones (`check_caller_id`).
        """
        new = self.prepare(name, payload, delay=delay, priority=priority, job_id=job_id)
        if job_id is not None:
            existing = self.store.get(job_id)
            if existing is not None:
                return _same_job(existing, name), False
        record, created = self._create([new])[0]
        return (record if created or job_id is None else _same_job(record, name)), created

    def enqueue_many(self, name: str, items: list[EnqueueItem]) -> list[tuple[JobRecord, bool]]:
        """Validate every item first, then create them all in one store call; (record, created) per item.

        Nothing is enqueued when any item is invalid: the PayloadError lists each problem with its
        index (`3.payload.user_id`, `3.delay`). Ids and dedupe keys are honoured per item, as by
        `enqueue`. Past MAX_CREATE items, the validated jobs are created MAX_CREATE per store call.
        """
        news: list[NewJob] = []
        problems: list[dict[str, Any]] = []
        for n, item in enumerate(items):
            try:
                news.append(
                    self.prepare(name, item.payload, delay=item.delay, priority=item.priority, job_id=item.job_id)
                )
            except PayloadError as exc:
                problems.extend({**e, "loc": _item_loc(n, e)} for e in exc.errors)
        if problems:
            raise PayloadError(name, problems)
        # Ids given by the caller that exist under another name refuse the whole bulk: one lookup for all.
        for existing in self.store.get_many([item.job_id for item in items if item.job_id is not None]):
            if existing is not None:
                _same_job(existing, name)
        results = [
            r for start in range(0, len(news), MAX_CREATE) for r in self._create(news[start : start + MAX_CREATE])
        ]
        for item, (record, created) in zip(items, results):
            if item.job_id is not None and not created:
                _same_job(record, name)  # taken meanwhile by another name: nothing was created for it
        return results

    def _create(self, news: list[NewJob]) -> list[tuple[JobRecord, bool]]:
        # With a sink that publishes later (the bus), new jobs are created staged: invisible to
        # workers until their job:waiting is out, so no job:active can overtake it on the bus.
        # With one that delivers at once, the event goes first and the job is visible at once.
        staged = self.events.holds_events
        if not staged and len(news) == 1 and not news[0].dedupe_key:
            new = news[0]
            self.announce(new.record)
            return [self.store.create(new.record, new.message, rate_key=new.rate_key)]
        results = self.store.create_many(news, staged=staged)
        created = [record for record, was_created in results if was_created]
        for record in created:
            self.announce(record)
        if staged and created:
            self.events.after_published(self._release, [r.id for r in created if r.run_at is None])
        return results

    def _release(self, job_ids: list[str]) -> None:
        if job_ids:
            self.store.release_staged(job_ids)

    def announce(self, record: JobRecord) -> None:
        """The event of a job that has just been created: `job:waiting`, or `job:delayed` with its time."""
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
    ) -> NewJob:
        """Validate a job and build its record and message (every field problem reported at once)."""
        job = self.manifest.job(name)
        problems = []
        if delay is not None and not (0 <= delay <= MAX_DELAY_S):
            problems.append(
                {
                    "loc": "delay",
                    "msg": "must be between 0 and %d seconds, got %r" % (MAX_DELAY_S, delay),
                    "type": "delay",
                }
            )
        if priority is not None and not (1 <= priority <= MAX_PRIORITY):
            problems.append(
                {
                    "loc": "priority",
                    "msg": "must be 1 (most urgent) to %d, got %r" % (MAX_PRIORITY, priority),
                    "type": "priority",
                }
            )
        if job_id is not None and not JOB_ID.fullmatch(job_id):
            problems.append(_bad_id(job_id, "job_id"))
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
        new_id = job_id or uuid.uuid4().hex
        expires_at = now + job.spec.expires if job.spec.expires else None
        record = JobRecord(
            id=new_id,
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
        return NewJob(record, encode_message(new_id, name, data, priority, expires_at), rate_key, dedupe_key)


def _same_job(record: JobRecord, name: str) -> JobRecord:
    """`record`, when it is a job of `name`; JobIdTaken when its id belongs to another job."""
    if record.name != name:
        raise JobIdTaken(record.id, record.name, name)
    return record
