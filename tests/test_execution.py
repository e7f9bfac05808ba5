"""Jobs run by a real consumer, on SQLite and on Redis: results, retries, timeouts, delays, retention."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import wait_for, wait_state

from runtime.core.errors import JobNotFound, PayloadError, UnknownJob
from runtime.engine import Runtime


def events_of(runtime: Runtime, job_id: str) -> list[str]:
    return [e for e, job, _ in runtime.events.events if job and job[0] == job_id]  # type: ignore[attr-defined]


def test_a_job_completes_with_its_return_value(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    record, created = runtime.enqueue("echo", {"text": "ab", "times": 2})
    assert created and record.state == "waiting"
    with consumer(runtime):
        done = wait_state(runtime, record.id)
    assert done.state == "completed"
    assert done.result == {"echo": "abab", "attempt": 1}
    assert done.attempts == 1 and done.progress == 50
    assert done.created_at <= done.started_at <= done.finished_at  # type: ignore[operator]
    assert events_of(runtime, record.id) == [
        "job:waiting",
        "job:active",
        "job:progress",
        "test:echoed",
        "job:completed",
    ]


def test_exponential_backoff_fails_twice_then_succeeds(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    # Given a handler failing its first two attempts, retries = 2, exponential backoff from 1 s
    record, _ = runtime.enqueue("flaky", {"fail_times": 2})
    starts: list[float] = []
    with consumer(runtime):

        def seen_active() -> bool:
            current = runtime.get(record.id)
            if current.started_at and current.started_at not in starts:
                starts.append(current.started_at)
            return current.state == "completed"

        wait_for(seen_active, timeout=15, interval=0.01, what="flaky to complete")
    done = runtime.get(record.id)
    # Then three attempts, completed, and the waits grow: about 1 s, then about 2 s
    assert (done.state, done.attempts, done.result) == ("completed", 3, {"attempt": 3})
    assert len(starts) == 3, starts
    waits = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.9 <= waits[0] <= 1.6, waits
    assert 1.9 <= waits[1] <= 2.6, waits
    assert events_of(runtime, record.id).count("job:retrying") == 2


def test_attempts_never_exceed_retries_plus_one(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    record, _ = runtime.enqueue("always-fails", {"message": "broken upstream"})
    with consumer(runtime):
        done = wait_state(runtime, record.id, ("failed",))
        time.sleep(0.5)  # nothing runs it again
    done = runtime.get(record.id)
    assert (done.state, done.attempts, done.max_attempts) == ("failed", 3, 3)
    assert done.error == "ValueError: broken upstream"
    assert "Traceback (most recent call last)" in (done.traceback or "")
    assert "raise ValueError(payload.message)" in (done.traceback or "")


def test_custom_backoff_function_of_the_attempt(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    record, _ = runtime.enqueue("flaky-custom", {"fail_times": 3})  # waits 0.1, 0.4, 0.9 s
    with consumer(runtime):
        done = wait_state(runtime, record.id, timeout=15)
    assert (done.state, done.attempts) == ("completed", 4)


def test_unrecoverable_error_fails_without_retrying(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    record, _ = runtime.enqueue("gives-up", {"message": "unknown ticker XXXX9"})
    with consumer(runtime):
        done = wait_state(runtime, record.id)
    assert (done.state, done.attempts) == ("failed", 1)
    assert done.error == "UnrecoverableError: unknown ticker XXXX9"


def test_retry_with_an_explicit_delay(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    record, _ = runtime.enqueue("asks-retry", {"seconds": 0.5})
    with consumer(runtime):
        wait_for(lambda: runtime.get(record.id).state == "delayed", what="delayed after Retry")
        assert runtime.get(record.id).error == "Retry: not yet"
        done = wait_state(runtime, record.id)
    assert (done.state, done.attempts, done.result) == ("completed", 2, 2)
    assert done.finished_at - done.created_at >= 0.5  # type: ignore[operator]


@pytest.mark.parametrize("job", ["sleepy", "sleepy-cooperative", "async-sleepy"])
def test_a_handler_past_its_timeout_fails_each_attempt(
    runtime: Runtime, consumer: Callable[..., Any], job: str
) -> None:
    record, _ = runtime.enqueue(job, {"seconds": 3})
    started = time.monotonic()
    with consumer(runtime):
        done = wait_state(runtime, record.id, timeout=10)
    assert done.state == "failed"
    assert done.attempts == runtime.manifest.job(job).max_attempts
    assert done.error == "JobTimeout: %s timed out after 0.5s" % job
    assert time.monotonic() - started < 2.5  # each 0.5 s attempt was cut short, not waited out


def test_process_workers_interrupt_a_timed_out_handler(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    sleeper, _ = runtime.enqueue("sleepy", {"seconds": 3})
    pid_job, _ = runtime.enqueue("pid", {})
    with consumer(runtime, workers=2, worker_type="process"):
        done = wait_state(runtime, sleeper.id, timeout=10)
        ran_in = wait_state(runtime, pid_job.id, timeout=10)
    assert (done.state, done.attempts, done.error) == ("failed", 2, "JobTimeout: sleepy timed out after 0.5s")
    assert ran_in.state == "completed" and ran_in.result != os.getpid()


def test_a_delayed_job_waits_then_runs(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    record, _ = runtime.enqueue("noop", {}, delay=1.0)
    assert record.state == "delayed" and record.run_at == pytest.approx(record.created_at + 1.0)
    assert runtime.counts()["noop"]["delayed"] == 1
    with consumer(runtime):
        done = wait_state(runtime, record.id, timeout=5)
    assert done.state == "completed"
    assert 1.0 <= done.started_at - done.created_at < 1.6  # type: ignore[operator]


def test_priority_1_runs_before_lower_priorities(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    low = [runtime.enqueue("noop", {}, priority=10)[0].id for _ in range(5)]
    high = runtime.enqueue("noop", {}, priority=1)[0].id
    with consumer(runtime, workers=1):
        wait_for(lambda: all(runtime.get(i).state == "completed" for i in [*low, high]), what="all done")
    first = min([*low, high], key=lambda i: runtime.get(i).started_at)  # type: ignore[arg-type, return-value]
    assert first == high


def test_an_expired_job_fails_without_running(
    make_runtime: Callable[..., Runtime], tmp_path: Any, consumer: Callable[..., Any]
) -> None:
    manifest = tmp_path / "expiring.toml"
    manifest.write_text(
        '[jobs.echo]\nhandler = "testjobs.basic:echo"\npayload = "testjobs.basic:Echo"\nexpires = 0.2\n'
    )
    runtime = make_runtime(manifest=manifest)
    record, _ = runtime.enqueue("echo", {"text": "late"})
    time.sleep(0.4)
    with consumer(runtime):
        done = wait_state(runtime, record.id)
    assert done.state == "failed" and done.error == "expired: not started within 0.2s of enqueue"
    assert "test:echoed" not in events_of(runtime, record.id)


def test_bad_payload_lists_every_field_and_enqueues_nothing(runtime: Runtime) -> None:
    with pytest.raises(PayloadError) as caught:
        runtime.enqueue("echo", {"text": "", "times": 99, "extra": 1}, priority=0, delay=-1)
    problems = {e["loc"]: e["msg"] for e in caught.value.errors}
    assert set(problems) == {"text", "times", "priority", "delay"}
    assert "at least 1 character" in problems["text"]
    assert "less than or equal to 10" in problems["times"]
    assert sum(runtime.counts()["echo"].values()) == 0
    with pytest.raises(UnknownJob, match="unknown job 'nope'"):
        runtime.enqueue("nope", {})


def test_job_id_deduplicates_and_retry_and_remove(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    _, created = runtime.enqueue("always-fails", {"message": "x"}, job_id="fixed-1")
    again, created_again = runtime.enqueue("always-fails", {"message": "y"}, job_id="fixed-1")
    assert created and not created_again and again.payload == {"message": "x"}
    with consumer(runtime):
        wait_state(runtime, "fixed-1", ("failed",))
        retried = runtime.retry("fixed-1")
        assert retried.state != "failed"  # queued again (a worker may already have it)
        assert retried.finished_at is None
        done = wait_state(runtime, "fixed-1", ("failed",))
        assert done.attempts == 3
    assert runtime.retry_failed("always-fails") == 1
    assert runtime.get("fixed-1").state == "waiting"
    runtime.remove("fixed-1")
    with pytest.raises(JobNotFound):
        runtime.get("fixed-1")


def test_retention_keeps_at_most_100_after_5000_jobs(runtime: Runtime, consumer: Callable[..., Any]) -> None:
    ids = [runtime.enqueue("kept", {})[0].id for _ in range(5000)]
    with consumer(runtime, workers=4):
        wait_for(
            lambda: runtime.counts()["kept"]["waiting"] == 0 and runtime.counts()["kept"]["active"] == 0,
            timeout=90,
            interval=0.2,
            what="5,000 jobs to run",
        )
    counts = runtime.counts()["kept"]
    assert counts["completed"] == 100
    assert counts["failed"] == 0
    kept = {r.id for r in runtime.list("completed", "kept", 0, 500)}
    assert len(kept) == 100 and ids[-1] in kept and ids[0] not in kept


def test_pause_holds_across_consumers_until_resume(
    make_runtime: Callable[..., Runtime], consumer: Callable[..., Any]
) -> None:
    # Given two consumers (each with its own runtime, as two processes would have) and a paused job name
    first, second = make_runtime(), make_runtime()
    assert first.pause("noop")
    ids = [first.enqueue("noop", {})[0].id for _ in range(6)]
    other = first.enqueue("echo", {"text": "still runs"})[0].id
    with consumer(first, workers=2), consumer(second, workers=2):
        # Then no consumer starts a paused job, while other names keep running
        wait_state(first, other)
        time.sleep(1.0)
        assert [first.get(i).state for i in ids] == ["waiting"] * 6
        assert first.counts()["noop"]["waiting"] == 6
        # And after resume every held job runs
        assert second.resume("noop") == 6
        for job_id in ids:
            assert wait_state(second, job_id).state == "completed"
    assert [e[0] for e in first.events.events if e[0].startswith("queue:")] == ["queue:paused"]  # type: ignore[attr-defined]
    assert next(e for e in second.events.events if e[0] == "queue:resumed")[2] == {"job": "noop", "released": 6}  # type: ignore[attr-defined]


def test_a_worker_stopping_gives_back_the_job_its_last_completion_took(
    runtime: Runtime, consumer: Callable[..., Any]
) -> None:
    # Given a backlog, and workers that take their next job in the call that completes the last one
    ids = [r.id for r, _ in runtime.enqueue_many("noop", [{}] * 3000)]
    with consumer(runtime, workers=2):
        wait_for(lambda: sum(runtime.get(i).state == "completed" for i in ids[:20]) >= 5, what="some jobs done")
    # When the consumer has stopped (gracefully), no job is left active under its lease:
    # each is completed, or waiting again with its attempt not counted
    states = {i: runtime.get(i) for i in ids}
    assert not [i for i, r in states.items() if r.state == "active"]
    assert all(r.attempts == 0 for r in states.values() if r.state == "waiting")
    assert any(r.state == "waiting" for r in states.values()), "the backlog should outlast the run"
