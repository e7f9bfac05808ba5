"""Runs one attempt of one job: the single place where a job moves through its states.

activate (count the attempt) → validate the payload → call the handler under its timeout →
complete | retry later (backoff or `Retry`) | fail (attempts spent, `UnrecoverableError`, stale payload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
from pydantic import ValidationError

from runtime.core.context import ChildResult, JobContext
from runtime.core.errors import JobTimeout, Retry, UnrecoverableError
from runtime.core.events import EventSink
from runtime.core.manifest import Job, Keep, Manifest
from runtime.core.messages import naive_utc
from runtime.core.records import encode_json
from runtime.store.base import Dequeued, JobStore, Lease, NewJob
from runtime.store.outage import STORE_ERRORS, Outage
from runtime.worker.leases import HeldLeases, ProcessLeases
from runtime.worker.retries import next_delay

logger = logging.getLogger("b3jobs.executor")


class Executor:
    """Takes leased jobs for Huey's workers and runs them; one per process (forked workers get their own leases)."""

    def __init__(
        self,
        huey: Any,
        store: JobStore,
        manifest: Manifest,
        events: EventSink,
        services: Any,
        lease_s: float,
        prepare: Callable[..., NewJob],
    ):
        self.prepare = prepare
        self.huey = huey
        self.store = store
        self.manifest = manifest
        self.events = events
        self.services = services
        self.lease_s = lease_s
        self._leases = ProcessLeases(store, lease_s)
        self._outage = Outage("job store")
        # A worker that completes a job takes its next one in the same store call; it waits here,
        # leased and held, until that worker thread asks for it (next_task).
        self._taken = threading.local()

    @property
    def owner(self) -> str:
        """This process's name on its leases."""
        return self._leases.here().owner

    def hand_back_all(self) -> int:
        """Release every job this process is running (it is about to exit); returns how many."""
        return self._leases.hand_back_all()

    def hand_back_taken(self) -> None:
        """A worker stops: the job it took with its last completion never ran; give it back now."""
        got: Dequeued | None = getattr(self._taken, "next", None)
        self._taken.next = None
        if got is None:
            return
        try:
            self.store.release(got.job_id, got.lease)
        except STORE_ERRORS as exc:
            logger.warning("could not hand back %s (%s); its lease will expire", got.job_id, exc)
        self._leases.here().drop(got.job_id, got.lease)

    # -- the worker's side ---------------------------------------------------------------------

    def next_task(self) -> Any:
        """The next job for a Huey worker, leased to this process; None when there is none yet."""
        held = self._leases.here()
        with held.dequeuing() as open_:
            return self._next_task(held) if open_ else None

    def _next_task(self, held: HeldLeases) -> Any:
        got: Dequeued | None = getattr(self._taken, "next", None)
        self._taken.next = None
        if got is None:
            self.store.pin_connection()  # once per worker thread: its own connection from then on
            try:
                got = self.store.dequeue(held.owner, time.time(), self.lease_s, wait_s=1.0)
            except STORE_ERRORS as exc:
                self._outage.down(exc)
                return None
            self._outage.up()
            if got is None:
                return None
            held.hold(got.job_id, got.lease)
        if held.closing:  # taken while this process hands its jobs back: give it back too
            self.store.release(got.job_id, got.lease)
            held.drop(got.job_id, got.lease)
            return None
        task = self._decode(got)
        if task is None:
            held.drop(got.job_id, got.lease)
            return None
        task.b3 = got
        return task

    def _decode(self, got: Dequeued) -> Any:
        """The Huey task in a dequeued message, or None after failing the job with the reason."""
        if got.name not in self.manifest.jobs:
            reason = "unknown job %r: this consumer's manifest does not declare it (a newer producer?)" % got.name
        else:
            try:
                task = self.huey.deserialize_task(got.message)
            except Exception as exc:  # any decode failure is the same thing to the operator
                reason = "undecodable message: %s: %s" % (type(exc).__name__, exc)
            else:
                # The record says what runs; a message naming another job or id was not written by enqueue.
                if (task.name, task.id) == (got.name, got.job_id):
                    return task
                reason = "message names %.100s[%.100s], its record %s[%s]: not run" % (
                    task.name,
                    task.id,
                    got.name,
                    got.job_id,
                )
        keep = self.manifest.jobs[got.name].spec.keep_failed if got.name in self.manifest.jobs else Keep(count=1000)
        if self.store.fail(got.job_id, got.lease, reason, "", time.time(), keep):
            logger.error("! %s[%s] %s", got.name, got.job_id, reason)
            self.events.emit("job:failed", (got.job_id, got.name), {"error": reason, "attempts": got.lease.attempt})
        return None

    def run(self, task: Any) -> None:
        got: Dequeued = task.b3
        try:
            self._run(task, got)
        except KeyboardInterrupt:
            # Shutdown interrupted the handler: hand the job back now instead of at lease expiry.
            try:
                if self.store.release(got.job_id, got.lease):
                    logger.warning("%s[%s] interrupted by shutdown; handed back to the queue", task.name, task.id)
            except STORE_ERRORS as exc:
                logger.warning("%s[%s] not handed back (%s); its lease will expire", task.name, task.id, exc)
            raise
        finally:
            self._leases.here().drop(got.job_id, got.lease)

    def _run(self, task: Any, got: Dequeued) -> None:
        job = self.manifest.jobs[task.name]
        ref = (task.id, job.name)
        lease = got.lease
        attempt = lease.attempt
        self.events.emit("job:active", ref, {"attempt": attempt, "worker": lease.owner})
        children = self._children(got) if got.children_done else None
        if children is not None and job.spec.children_fail == "fail_parent":
            failed = [c for c in children if c.state != "completed"]
            if failed:
                reasons = "; ".join("%s: %s" % (c.id, c.error) for c in failed[:3])
                self._fail(job, task, lease, "%d of %d children failed: %s" % (len(failed), len(children), reasons), "")
                return
        if task.expires_resolved is not None and task.expires_resolved < naive_utc(time.time()):
            self._fail(job, task, lease, "expired: not started within %ss of enqueue" % job.spec.expires, "")
            return
        try:
            payload = job.payload_model.model_validate(task.args[0])
        except ValidationError as exc:
            # The payload was valid at enqueue; a model changed since. Retrying cannot help.
            self._fail(job, task, lease, "stale payload: %s" % exc, "")
            return
        ctx = JobContext(
            job_id=task.id,
            job=job.name,
            attempt=attempt,
            max_attempts=job.max_attempts,
            timeout_s=job.spec.timeout,
            services=self.services,
            events=self.events,
            on_progress=lambda value: self.store.set_progress(task.id, lease, encode_json(value)),
            on_spawn=lambda name, payloads, first: self._spawn(task.id, lease, name, payloads, first),
            children=children,
        )
        started = time.monotonic()
        try:
            value = call_handler(job, payload, ctx)
            result_json = encode_json(value)
        except Exception as exc:
            self._after_error(job, task, lease, exc)
            return
        if ctx.spawned:
            state = self.store.wait_children(task.id, lease, time.time())
            logger.info("%s[%s] spawned %d child job(s); now %s", job.name, task.id, ctx.spawned, state)
            if state is not None:
                self.events.emit("job:" + state, ref, {"children": ctx.spawned})
            return
        if not self._complete(task.id, lease, result_json, job.spec.keep_completed):
            logger.warning(
                "%s[%s] attempt %d finished after its lease moved on; result dropped", job.name, task.id, attempt
            )
            return
        duration = time.monotonic() - started
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%6.3fs ● %s[%s] attempt %d", duration, job.name, task.id, attempt)
        self.events.emit(
            "job:completed", ref, {"result": msgspec.Raw(result_json), "attempts": attempt, "duration_s": duration}
        )

    def _complete(self, job_id: str, lease: Lease, result_json: bytes, keep: Keep) -> bool:
        """Complete the job and, in the same store call, take this worker's next one (see `_taken`)."""
        held = self._leases.here()
        if held.closing:
            return self.store.complete(job_id, lease, result_json, time.time(), keep)
        with held.dequeuing():
            done, got = self.store.complete_and_take(
                job_id, lease, result_json, time.time(), keep, held.owner, self.lease_s
            )
            if got is not None:
                held.hold(got.job_id, got.lease)
                self._taken.next = got
        return done

    def _children(self, got: Dequeued) -> list[ChildResult]:
        out = []
        for outcome in sorted(self.store.child_outcomes(got.job_id), key=lambda o: _child_order(o.id)):
            if outcome.state == "completed":
                out.append(ChildResult(outcome.id, outcome.state, result=msgspec.json.decode(outcome.detail)))
            else:
                out.append(ChildResult(outcome.id, outcome.state, error=outcome.detail))
        return out

    def _spawn(self, parent_id: str, lease: Lease, name: str, payloads: list[dict[str, Any]], first: int) -> list[str]:
        children = []
        for n, payload in enumerate(payloads, start=first):
            new = self.prepare(name, payload, job_id="%s.%d" % (parent_id, n), parent_id=parent_id)
            children.append(new)
        self.store.spawn(parent_id, lease, children, time.time())
        for child in children:
            self.events.emit("job:waiting", (child.record.id, name), {"parent": parent_id})
        return [c.record.id for c in children]

    def _after_error(self, job: Job, task: Any, lease: Lease, exc: Exception) -> None:
        attempt = lease.attempt
        reason = "%s: %s" % (type(exc).__name__, exc)
        tb = "".join(traceback.format_exception(exc))
        if isinstance(exc, UnrecoverableError) or attempt >= job.max_attempts:
            if isinstance(exc, Retry):
                reason = "retries exhausted after %d attempt(s): %s" % (attempt, reason)
            self._fail(job, task, lease, reason, tb)
            return
        delay = exc.delay if isinstance(exc, Retry) and exc.delay is not None else next_delay(job, attempt)
        run_at = time.time() + delay
        if self.store.retry_later(task.id, lease, reason, tb, run_at):
            logger.warning(
                "↻ %s[%s] attempt %d/%d failed (%s); next in %.2fs",
                job.name,
                task.id,
                attempt,
                job.max_attempts,
                reason,
                delay,
            )
            ref = (task.id, job.name)
            self.events.emit("job:retrying", ref, {"attempt": attempt, "error": reason, "delay_s": delay})
            self.events.emit("job:delayed", ref, {"run_at": run_at, "reason": "backoff"})

    def _fail(self, job: Job, task: Any, lease: Lease, reason: str, tb: str) -> None:
        if self.store.fail(task.id, lease, reason, tb, time.time(), job.spec.keep_failed):
            logger.error("! %s[%s] failed after %d attempt(s): %s", job.name, task.id, lease.attempt, reason)
            self.events.emit("job:failed", (task.id, job.name), {"error": reason, "attempts": lease.attempt})


def _child_order(child_id: str) -> tuple[int, str]:
    head, _, n = child_id.rpartition(".")
    return (int(n), head) if n.isdigit() else (0, child_id)


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
    except TimeoutError:
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
