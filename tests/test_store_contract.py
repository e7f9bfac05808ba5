"""The job store contract: the same tests on SQLite and on the real Redis."""

from __future__ import annotations

import time

import pytest

from runtime.engine import Runtime
from runtime.errors import InvalidState, JobNotFound
from runtime.manifest import Keep
from runtime.records import STATES, JobRecord
from runtime.store.base import PARKED, Outbound


def new_record(job_id: str, name: str = "noop", created_at: float | None = None, state: str = "waiting") -> JobRecord:
    return JobRecord(id=job_id, name=name, state=state, payload={"n": job_id}, created_at=created_at or time.time())


def msg(data: bytes = b"x", run_at: float | None = None) -> Outbound:
    return Outbound(data=data, priority=0, run_at=run_at)


def test_create_then_get_round_trips_every_field(runtime: Runtime) -> None:
    store = runtime.store
    record = JobRecord(id="a1", name="echo", state="waiting", payload={"text": "olá", "n": [1, 2]}, max_attempts=3,
                       priority=7, created_at=1000.5, parent_id="p1", children=["c1"])
    stored, created = store.create(record, msg())
    assert created and stored == record
    assert store.get("a1") == record
    assert store.get("nope") is None


def test_an_existing_id_is_not_overwritten(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("same"), msg())
    existing, created = store.create(JobRecord(id="same", name="echo", state="waiting", payload={}, created_at=1.0), msg())
    assert not created
    assert existing.name == "noop"
    assert store.counts(["noop"])["noop"]["waiting"] == 1


def test_lifecycle_waiting_active_completed(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("j"), msg())
    assert store.activate("j", 2000.0, msg()) == 1
    assert store.activate("j", 2000.0, msg()) is None  # already active: a duplicate message is skipped
    store.set_progress("j", b"42")
    assert store.get("j").progress == 42  # type: ignore[union-attr]
    assert store.complete("j", b'{"ok":true}', 2001.0, Keep(count=10))
    record = store.get("j")
    assert record is not None
    assert (record.state, record.result, record.attempts, record.started_at, record.finished_at) == (
        "completed", {"ok": True}, 1, 2000.0, 2001.0)
    assert not store.complete("j", b"null", 2002.0, Keep(count=10))  # finishing twice does nothing


def test_retry_later_then_due_then_fail(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("r"), msg())
    store.activate("r", 1.0, msg())
    assert store.retry_later("r", "ValueError: boom", "tb", msg(run_at=time.time() - 0.1))
    record = store.get("r")
    assert record is not None and (record.state, record.error, record.traceback) == ("delayed", "ValueError: boom", "tb")
    assert store.make_due("r", msg())
    assert not store.make_due("r", msg())  # only a delayed job becomes due
    assert store.get("r").state == "waiting"  # type: ignore[union-attr]
    assert store.activate("r", 2.0, msg()) == 2
    assert store.fail("r", "ValueError: again", "tb2", 3.0, Keep(count=10))
    record = store.get("r")
    assert record is not None and (record.state, record.attempts, record.error) == ("failed", 2, "ValueError: again")


def test_requeue_failed_resets_attempts_and_reason(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("f"), msg())
    store.activate("f", 1.0, msg())
    store.fail("f", "boom", "tb", 2.0, Keep(count=10))
    record = store.requeue_failed("f", msg(), 3.0)
    assert (record.state, record.attempts, record.error, record.finished_at) == ("waiting", 0, None, None)
    with pytest.raises(InvalidState, match="cannot retry job f: it is waiting, expected failed"):
        store.requeue_failed("f", msg(), 4.0)
    with pytest.raises(JobNotFound):
        store.requeue_failed("ghost", msg(), 4.0)


def test_remove_refuses_an_active_job(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("x"), msg())
    store.create(new_record("y"), msg())
    store.activate("y", 1.0, msg())
    assert store.remove("x")
    assert store.get("x") is None
    assert store.activate("x", 2.0, msg()) is None  # its message, still queued, is skipped
    with pytest.raises(InvalidState, match="it is active"):
        store.remove("y")
    assert not store.remove("x")


def test_list_newest_first_paginated_and_filtered(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(7):
        store.create(new_record("n%d" % i, created_at=100.0 + i), msg())
    store.create(new_record("e0", name="echo", created_at=103.5), msg())
    page1 = [r.id for r in store.list("waiting", None, 0, 3)]
    page2 = [r.id for r in store.list("waiting", None, 3, 3)]
    assert page1 == ["n6", "n5", "n4"]
    assert page2 == ["e0", "n3", "n2"]
    assert [r.id for r in store.list("waiting", "echo", 0, 10)] == ["e0"]
    assert [r.id for r in store.list(None, "noop", 5, 10)] == ["n1", "n0"]
    assert store.list("failed", None, 0, 10) == []


def test_counts_per_name_and_state(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("a"), msg())
    store.create(new_record("b"), msg())
    store.create(new_record("c", name="echo", state="delayed"), msg(run_at=time.time() + 60))
    store.activate("b", 1.0, msg())
    counts = store.counts(["noop", "echo", "flaky"])
    assert counts["noop"] == {**dict.fromkeys(STATES, 0), "waiting": 1, "active": 1}
    assert counts["echo"] == {**dict.fromkeys(STATES, 0), "delayed": 1}
    assert counts["flaky"] == dict.fromkeys(STATES, 0)


def test_retention_by_count_keeps_the_newest(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(30):
        store.create(new_record("k%02d" % i), msg())
        store.activate("k%02d" % i, 1.0, msg())
        store.complete("k%02d" % i, b"null", 1000.0 + i, Keep(count=10))
    kept = [r.id for r in store.list("completed", "noop", 0, 100)]
    assert kept == ["k%02d" % i for i in range(29, 19, -1)]
    assert store.get("k00") is None


def test_retention_by_age(runtime: Runtime) -> None:
    store = runtime.store
    now = time.time()
    for i, finished in enumerate([now - 500, now - 300, now - 10]):
        store.create(new_record("a%d" % i), msg())
        store.activate("a%d" % i, finished, msg())
        store.fail("a%d" % i, "x", "", finished, Keep(count=None, age=100))
    # each fail trims what is older than 100 s by its own clock; the last one leaves only itself
    assert [r.id for r in store.list("failed", None, 0, 10)] == ["a2"]


def test_retention_zero_removes_at_once(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("z"), msg())
    store.activate("z", 1.0, msg())
    assert store.complete("z", b"null", 2.0, Keep(count=0))
    assert store.get("z") is None


def test_cron_ticks_are_claimed_once(runtime: Runtime) -> None:
    store = runtime.store
    assert store.last_tick("every-minute") is None
    assert store.claim_tick("every-minute", 60.0)
    assert not store.claim_tick("every-minute", 60.0)
    assert store.claim_tick("every-minute", 120.0)
    assert store.last_tick("every-minute") == 120.0


def test_destroy_leaves_nothing(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("d"), msg())
    store.destroy()
    assert store.get("d") is None
    assert store.counts(["noop"])["noop"] == dict.fromkeys(STATES, 0)


def test_a_paused_name_sets_its_jobs_aside_until_resumed(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("p1"), msg())
    store.create(new_record("p2"), msg())
    assert store.pause("noop")
    assert not store.pause("noop")
    assert store.paused() == {"noop"}
    assert store.activate("p1", 1.0, msg(b"m1")) == PARKED
    assert store.get("p1").state == "waiting"  # type: ignore[union-attr]
    assert store.resume("noop") == 1
    assert store.paused() == set()
    assert store.activate("p2", 2.0, msg()) == 1


def test_promote_runs_a_delayed_job_now_and_its_old_schedule_entry_is_ignored(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("d1", state="delayed"), msg(run_at=time.time() + 3600))
    with pytest.raises(InvalidState, match="cannot promote job x1: it is waiting, expected delayed"):
        store.create(new_record("x1"), msg())
        store.promote("x1", msg(), time.time())
    record = store.promote("d1", msg(), time.time())
    assert (record.state, record.run_at) == ("waiting", None)
    assert not store.make_due("d1", msg())  # the schedule entry left behind does nothing
    with pytest.raises(JobNotFound):
        store.promote("ghost", msg(), time.time())


def test_a_stale_schedule_entry_does_not_end_a_later_delay_early(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("s1"), msg())
    store.activate("s1", 1.0, msg())
    store.retry_later("s1", "boom", "", msg(run_at=time.time() + 3600))
    assert not store.make_due("s1", msg())
    assert store.get("s1").state == "delayed"  # type: ignore[union-attr]


def test_clean_deletes_old_records_of_one_state(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(5):
        store.create(new_record("c%d" % i), msg())
        store.activate("c%d" % i, 1.0, msg())
        store.complete("c%d" % i, b"null", 100.0 + i, Keep(count=None))
    assert store.clean("noop", "completed", older_than=103.0, limit=2) == 2
    assert store.clean("noop", "completed", older_than=103.0, limit=100) == 1
    assert [r.id for r in store.list("completed", "noop", 0, 10)] == ["c4", "c3"]
