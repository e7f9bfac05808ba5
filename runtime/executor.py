"""Runs one attempt of one job: the single place where a job moves through its states.

activate (count the attempt) → validate the payload → call the handler under its timeout →
complete | retry later (backoff or `Retry`) | fail (attempts spent, `UnrecoverableError`, stale payload).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import signal
import threading
import time
import traceback
from typing import Any, Iterator

import msgspec
from pydantic import ValidationError

from runtime.backoff import next_delay
from runtime.context import JobContext
from runtime.errors import JobTimeout, Retry, UnrecoverableError
from runtime.events import EventSink
from runtime.manifest import Job, Manifest
from runtime.records import encode_json
from runtime.store.base import PARKED, JobStore, Outbound

logger = logging.getLogger("b3jobs.executor")


def naive_utc(ts: float) -> dt.datetime:
    """Huey's clock: naive datetimes in UTC."""
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(tzinfo=None)


def huey_priority(priority: int | None) -> int:
    """BullMQ order (no priority first, then 1 = most urgent) as Huey's (higher runs first)."""
    return 0 if priority is None else -priority


class Executor:
    def __init__(self, huey: Any, store: JobStore, manifest: Manifest, events: EventSink, services: Any):
        self.huey = huey
        self.store = store
        self.manifest = manifest
        self.events = events
        self.services = services

    # -- the scheduler's side ------------------------------------------------------------------

    def make_due(self, task: Any) -> None:
        outbound = Outbound(self.huey.serialize_task(task), task.priority or 0)
        if self.store.make_due(task.id, outbound):
            self.events.emit("job:waiting", (task.id, task.name), {})

    # -- the worker's side ---------------------------------------------------------------------

    def run(self, task: Any) -> None:
        job = self.manifest.jobs[task.name]
        ref = (task.id, job.name)
        message = Outbound(self.huey.serialize_task(task), task.priority or 0)
        attempt = self.store.activate(task.id, time.time(), message)
        if attempt is None:
            logger.info("%s[%s] skipped: removed or no longer waiting", job.name, task.id)
            return
        if attempt == PARKED:
            logger.info("%s[%s] set aside: %s is paused", job.name, task.id, job.name)
            return
        self.events.emit("job:active", ref, {"attempt": attempt})
        if task.expires_resolved is not None and task.expires_resolved < naive_utc(time.time()):
            self._fail(job, task, attempt, "expired: not started within %ss of enqueue" % job.spec.expires, "")
            return
        try:
            payload = job.payload_model.model_validate(task.args[0])
        except ValidationError as exc:
            # The payload was valid at enqueue; a model changed since. Retrying cannot help.
            self._fail(job, task, attempt, "stale payload: %s" % exc, "")
            return
        ctx = JobContext(
            job_id=task.id,
            job=job.name,
            attempt=attempt,
            max_attempts=job.max_attempts,
            timeout_s=job.spec.timeout,
            services=self.services,
            events=self.events,
            on_progress=lambda value: self.store.set_progress(task.id, encode_json(value)),
        )
        started = time.monotonic()
        try:
            value = call_handler(job, payload, ctx)
            result_json = encode_json(value)
        except Exception as exc:
            self._after_error(job, task, attempt, exc)
            return
        if not self.store.complete(task.id, result_json, time.time(), job.spec.keep_completed):
            logger.warning("%s[%s] finished but its record had moved on; result dropped", job.name, task.id)
            return
        duration = time.monotonic() - started
        logger.info("%6.3fs ● %s[%s] attempt %d", duration, job.name, task.id, attempt)
        self.events.emit("job:completed", ref, {"result": msgspec.Raw(result_json), "attempts": attempt})

    def _after_error(self, job: Job, task: Any, attempt: int, exc: Exception) -> None:
        reason = "%s: %s" % (type(exc).__name__, exc)
        tb = "".join(traceback.format_exception(exc))
        if isinstance(exc, UnrecoverableError) or attempt >= job.max_attempts:
            if isinstance(exc, Retry):
                reason = "retries exhausted after %d attempt(s): %s" % (attempt, reason)
            self._fail(job, task, attempt, reason, tb)
            return
        delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None else next_delay(job, attempt)
        run_at = time.time() + delay
        task.eta = naive_utc(run_at)
        outbound = Outbound(self.huey.serialize_task(task), task.priority or 0, run_at)
        if self.store.retry_later(task.id, reason, tb, outbound):
            logger.warning("↻ %s[%s] attempt %d/%d failed (%s); next in %.2fs", job.name, task.id, attempt, job.max_attempts, reason, delay)
            ref = (task.id, job.name)
            self.events.emit("job:retrying", ref, {"attempt": attempt, "error": reason, "delay_s": delay})
            self.events.emit("job:delayed", ref, {"run_at": run_at, "reason": "backoff"})

    def _fail(self, job: Job, task: Any, attempt: int, reason: str, tb: str) -> None:
        if self.store.fail(task.id, reason, tb, time.time(), job.spec.keep_failed):
            logger.error("! %s[%s] failed after %d attempt(s): %s", job.name, task.id, attempt, reason)
            self.events.emit("job:failed", (task.id, job.name), {"error": reason, "attempts": attempt})


def call_handler(job: Job, payload: Any, ctx: JobContext) -> Any:
    """Call the handler, enforcing the job's timeout the strongest way this thread allows."""
    timeout = job.spec.timeout
    if job.is_async:
        return asyncio.run(_call_async(job, payload, ctx, timeout))
    if timeout is None:
        return job.handler(payload, ctx)
    if threading.current_thread() is threading.main_thread():
        # A process worker (or `invoke`): interrupt the handler itself.
        with _alarm(timeout, job):
            return job.handler(payload, ctx)
    return _call_in_thread(job, payload, ctx, timeout)


async def _call_async(job: Job, payload: Any, ctx: JobContext, timeout: float | None) -> Any:
    try:
        return await asyncio.wait_for(job.handler(payload, ctx), timeout)
    except asyncio.TimeoutError:
        raise JobTimeout("%s timed out after %ss" % (job.name, timeout)) from None


@contextlib.contextmanager
def _alarm(timeout: float, job: Job) -> Iterator[None]:
    def on_alarm(signum: int, frame: Any) -> None:
        raise JobTimeout("%s timed out after %ss" % (job.name, timeout))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _call_in_thread(job: Job, payload: Any, ctx: JobContext, timeout: float) -> Any:
    # A thread cannot be interrupted: run the handler in a helper thread and stop waiting at the
    # deadline. The handler is told at its next ctx call; whatever it returns later is discarded.
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = job.handler(payload, ctx)
        except BaseException as exc:  # handed over to the worker thread below
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=target, name="%s[%s]" % (job.name, ctx.job_id), daemon=True).start()
    if not done.wait(timeout):
        ctx.abandon()
        raise JobTimeout("%s timed out after %ss" % (job.name, timeout))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
