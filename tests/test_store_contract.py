"""The job store contract: the same tests on SQLite and on the real Redis."""

from __future__ import annotations

import threading
import time

import pytest

from runtime.core.errors import InvalidState, JobNotFound
from runtime.core.manifest import Keep
from runtime.core.records import STATES, JobRecord
from runtime.engine import Runtime
from runtime.store.base import Lease, NewJob

OWNER = "host:1:abc"


def new_record(
    job_id: str,
    name: str = "noop",
    created_at: float | None = None,
    state: str = "waiting",
    priority: int | None = None,
    run_at: float | None = None,
    max_stalls: int = 3,
) -> JobRecord:
    return JobRecord(
        id=job_id,
        name=name,
        state=state,
        payload={"n": job_id},
        created_at=created_at or time.time(),
        priority=priority,
        run_at=run_at,
        max_stalls=max_stalls,
    )


def take(store, owner: str = OWNER, lease_s: float = 30.0):  # type: ignore[no-untyped-def]
    return store.dequeue(owner, time.time(), lease_s, wait_s=0)


def test_create_then_get_round_trips_every_field(runtime: Runtime) -> None:
    store = runtime.store
    record = JobRecord(
        id="a1",
        name="echo",
        state="waiting",
        payload={"text": "olá", "n": [1, 2]},
        max_attempts=3,
        priority=7,
        created_at=1000.5,
        parent_id="p1",
        children=["c1"],
        max_stalls=2,
    )
    stored, created = store.create(record, b"msg-a1")
    assert created and stored == record
    assert store.get("a1") == record
    assert store.get("nope") is None


def test_an_existing_id_is_not_overwritten(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("same"), b"m")
    existing, created = store.create(
        JobRecord(id="same", name="echo", state="waiting", payload={}, created_at=1.0), b"x"
    )
    assert not created and existing.name == "noop"
    assert store.counts(["noop"])["noop"]["waiting"] == 1


def test_dequeue_leases_in_priority_then_fifo_order(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("low1", priority=5), b"m-low1")
    store.create(new_record("none1"), b"m-none1")
    store.create(new_record("high", priority=1), b"m-high")
    store.create(new_record("low2", priority=5), b"m-low2")
    store.create(new_record("none2"), b"m-none2")
    order = []
    while (got := take(store)) is not None:
        order.append(got.job_id)
        assert got.message == b"m-" + got.job_id.encode() and (got.lease.owner, got.lease.attempt) == (OWNER, 1)
    # no priority first (as in BullMQ), then 1 = most urgent, FIFO within a priority
    assert order == ["none1", "none2", "high", "low1", "low2"]
    record = store.get("high")
    assert record is not None and (record.state, record.attempts, record.worker) == ("active", 1, OWNER)


def test_two_consumers_never_get_the_same_job(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(200):
        store.create(new_record("j%d" % i), b"m")
    taken: list[str] = []

    def consume(owner: str) -> None:
        while (got := take(store, owner)) is not None:
            taken.append(got.job_id)

    threads = [threading.Thread(target=consume, args=("c%d" % i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == sorted("j%d" % i for i in range(200))


def test_complete_is_fenced_by_the_lease(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("j"), b"m")
    lease = take(store).lease
    assert store.set_progress("j", lease, b"42")
    assert not store.complete("j", Lease("someone-else", 1, "other-token"), b"1", 2001.0, Keep(count=10))
    assert not store.complete("j", Lease(OWNER, 2, lease.token), b"1", 2001.0, Keep(count=10))
    assert store.complete("j", lease, b'{"ok":true}', 2001.0, Keep(count=10))
    record = store.get("j")
    assert record is not None
    assert (record.state, record.result, record.attempts, record.progress, record.finished_at, record.worker) == (
        "completed",
        {"ok": True},
        1,
        42,
        2001.0,
        None,
    )
    assert not store.complete("j", lease, b"null", 2002.0, Keep(count=10))  # finishing twice does nothing


def test_an_expired_lease_is_reaped_and_the_late_finisher_is_fenced(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("s"), b"m")
    # (stores read their own clock when leasing: Redis's, or SQLite's holding the write lock)
    first = take(store, "dead-consumer", lease_s=1.0)
    now = time.time()
    assert store.reap(now=now + 0.5) == []  # still leased
    (reaped,) = store.reap(now=now + 1.5)
    assert (reaped.job_id, reaped.stalls, reaped.failed) == ("s", 1, False)
    record = store.get("s")
    assert record is not None and (record.state, record.attempts, record.stalls, record.worker) == (
        "waiting",
        0,
        1,
        None,
    )
    second = take(store, "live-consumer")
    assert (second.lease.owner, second.lease.attempt) == ("live-consumer", 1)
    # the first consumer was only slow: its late finish changes nothing
    assert not store.complete("s", first.lease, b'"late"', time.time(), Keep(count=10))
    assert store.complete("s", second.lease, b'"fresh"', time.time(), Keep(count=10))
    assert store.get("s").result == "fresh"  # type: ignore[union-attr]


def test_renewed_leases_are_not_reaped(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("long"), b"m")
    take(store, OWNER, lease_s=1.0)
    now = time.time()
    assert store.renew(OWNER, ["long"], now=now + 0.8, lease_s=1.0) == 1
    assert store.renew("other", ["long"], now=now + 0.8, lease_s=1.0) == 0
    assert store.reap(now=now + 1.5) == []
    assert len(store.reap(now=now + 2.0)) == 1


def test_a_job_that_stalls_more_than_max_stalls_fails(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("poison", max_stalls=2), b"m")
    for stall in (1, 2, 3):
        take(store, "c%d" % stall, lease_s=1.0)
        (reaped,) = store.reap(now=time.time() + 2)
        assert reaped.stalls == stall and reaped.failed == (stall == 3)
    record = store.get("poison")
    assert record is not None and record.state == "failed" and record.stalls == 3
    assert record.error and record.error.startswith("stalled too often")
    assert take(store) is None


def test_release_hands_a_job_back_without_counting_the_attempt(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("r"), b"m")
    lease = take(store).lease
    assert store.release("r", lease)
    assert store.get("r").attempts == 0  # type: ignore[union-attr]
    assert take(store).lease.attempt == 1


def test_retry_later_then_due_then_fail(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("r"), b"m")
    lease = take(store).lease
    assert store.retry_later("r", lease, "ValueError: boom", "tb", run_at=time.time() + 60)
    record = store.get("r")
    assert record is not None and (record.state, record.error, record.traceback) == (
        "delayed",
        "ValueError: boom",
        "tb",
    )
    assert store.promote_due(["noop"], time.time()) == []
    assert take(store) is None
    assert store.promote_due(["noop"], time.time() + 61) == [("r", "noop")]
    lease = take(store).lease
    assert lease.attempt == 2
    assert store.fail("r", lease, "ValueError: again", "tb2", 3.0, Keep(count=10))
    record = store.get("r")
    assert record is not None and (record.state, record.attempts, record.error) == ("failed", 2, "ValueError: again")


def test_a_delayed_job_waits_for_its_time(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("d", state="delayed", run_at=time.time() + 30), b"m")
    assert take(store) is None
    assert store.promote_due(["noop"], time.time() + 31) == [("d", "noop")]
    assert take(store).job_id == "d"


def test_requeue_failed_resets_attempts_and_reason(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("f"), b"m")
    store.fail("f", take(store).lease, "boom", "tb", 2.0, Keep(count=10))
    record = store.requeue_failed("f", 3.0)
    assert (record.state, record.attempts, record.error, record.finished_at) == ("waiting", 0, None, None)
    with pytest.raises(InvalidState, match="cannot retry job f: it is waiting, expected failed"):
        store.requeue_failed("f", 4.0)
    with pytest.raises(JobNotFound):
        store.requeue_failed("ghost", 4.0)
    assert take(store).job_id == "f"


def test_promote_runs_a_delayed_job_now(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("d1", state="delayed", run_at=time.time() + 3600), b"m")
    store.create(new_record("x1"), b"m")
    with pytest.raises(InvalidState, match="cannot promote job x1: it is waiting, expected delayed"):
        store.promote("x1", time.time())
    record = store.promote("d1", time.time())
    assert (record.state, record.run_at) == ("waiting", None)
    assert store.promote_due(["noop"], time.time() + 7200) == []
    with pytest.raises(JobNotFound):
        store.promote("ghost", time.time())


def test_remove_refuses_an_active_job(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("y"), b"m")
    take(store)
    store.create(new_record("x"), b"m")
    assert store.remove("x")
    assert store.get("x") is None
    assert take(store) is None  # a removed job is never handed out
    with pytest.raises(InvalidState, match="it is active"):
        store.remove("y")
    assert not store.remove("x")


def test_a_paused_name_is_not_handed_out_until_resumed(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("p1"), b"m")
    store.create(new_record("p2"), b"m")
    store.create(new_record("e1", name="echo"), b"m")
    assert store.pause("noop") and not store.pause("noop")
    assert store.paused() == {"noop"}
    assert take(store).job_id == "e1"
    assert take(store) is None
    assert store.get("p1").state == "waiting"  # type: ignore[union-attr]
    assert store.resume("noop") == 2
    assert store.paused() == set()
    assert [take(store).job_id, take(store).job_id] == ["p1", "p2"]


def test_list_newest_first_paginated_and_filtered(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(7):
        store.create(new_record("n%d" % i, created_at=100.0 + i), b"m")
    store.create(new_record("e0", name="echo", created_at=103.5), b"m")
    assert [r.id for r in store.list("waiting", None, 0, 3)] == ["n6", "n5", "n4"]
    assert [r.id for r in store.list("waiting", None, 3, 3)] == ["e0", "n3", "n2"]
    assert [r.id for r in store.list("waiting", "echo", 0, 10)] == ["e0"]
    assert [r.id for r in store.list(None, "noop", 5, 10)] == ["n1", "n0"]
    assert store.list("failed", None, 0, 10) == []


def test_counts_per_name_and_state(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("a"), b"m")
    store.create(new_record("b"), b"m")
    store.create(new_record("c", name="echo", state="delayed", run_at=time.time() + 60), b"m")
    take(store)
    counts = store.counts(["noop", "echo", "flaky"])
    assert counts["noop"] == {**dict.fromkeys(STATES, 0), "waiting": 1, "active": 1}
    assert counts["echo"] == {**dict.fromkeys(STATES, 0), "delayed": 1}
    assert counts["flaky"] == dict.fromkeys(STATES, 0)


def test_retention_by_count_keeps_the_newest(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(30):
        store.create(new_record("k%02d" % i), b"m")
        store.complete("k%02d" % i, take(store).lease, b"null", 1000.0 + i, Keep(count=10))
    assert [r.id for r in store.list("completed", "noop", 0, 100)] == ["k%02d" % i for i in range(29, 19, -1)]
    assert store.get("k00") is None


def test_retention_by_age(runtime: Runtime) -> None:
    store = runtime.store
    now = time.time()
    for i, finished in enumerate([now - 500, now - 300, now - 10]):
        store.create(new_record("a%d" % i), b"m")
        store.fail("a%d" % i, take(store).lease, "x", "", finished, Keep(count=None, age=100))
    assert [r.id for r in store.list("failed", None, 0, 10)] == ["a2"]


def test_retention_zero_removes_at_once(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("z"), b"m")
    assert store.complete("z", take(store).lease, b"null", 2.0, Keep(count=0))
    assert store.get("z") is None


def test_clean_deletes_old_records_of_one_state(runtime: Runtime) -> None:
    store = runtime.store
    for i in range(5):
        store.create(new_record("c%d" % i), b"m")
        store.complete("c%d" % i, take(store).lease, b"null", 100.0 + i, Keep(count=None))
    assert store.clean("noop", "completed", cutoff_ts=103.0, limit=2) == 2
    assert store.clean("noop", "completed", cutoff_ts=103.0, limit=100) == 1
    assert [r.id for r in store.list("completed", "noop", 0, 10)] == ["c4", "c3"]


def test_cron_ticks_are_claimed_once(runtime: Runtime) -> None:
    store = runtime.store
    assert store.last_tick("every-minute") is None
    assert store.claim_tick("every-minute", 60.0)
    assert not store.claim_tick("every-minute", 60.0)
    assert store.claim_tick("every-minute", 120.0)
    assert store.last_tick("every-minute") == 120.0


def test_destroy_leaves_nothing(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("d"), b"m")
    store.destroy()
    assert store.get("d") is None
    assert store.counts(["noop"])["noop"] == dict.fromkeys(STATES, 0)


def test_running_totals_and_live_consumers(runtime: Runtime) -> None:
    store = runtime.store
    for job_id in ("t1", "t2", "t3"):
        store.create(new_record(job_id), b"m")
    store.complete("t1", take(store).lease, b"1", time.time(), Keep(count=10))
    store.retry_later("t2", take(store).lease, "boom", "", run_at=time.time() - 1)
    store.promote_due(["noop"], time.time())
    store.fail("t3", take(store).lease, "boom", "", time.time(), Keep(count=10))
    take(store, "gone", lease_s=0.01)
    store.reap(time.time() + 1)
    assert store.stats(["noop", "echo"])["noop"] == {
        "started": 4,
        "completed": 1,
        "failed": 1,
        "retried": 1,
        "stalled": 1,
    }
    assert store.stats(["echo"])["echo"] == {"started": 0, "completed": 0, "failed": 0, "retried": 0, "stalled": 0}
    store.renew("c1", [], now=1000.0, lease_s=10)
    store.renew("c2", [], now=2000.0, lease_s=10)
    assert store.consumers(since_ts=1500.0) == {"c2": 2000.0}


def test_a_process_that_gets_its_own_job_back_cannot_finish_the_old_run(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("same-owner"), b"m")
    old = take(store, OWNER, lease_s=0.01).lease
    store.reap(time.time() + 1)
    new = take(store, OWNER).lease
    assert (old.owner, old.attempt) == (new.owner, new.attempt) and old.token != new.token
    assert not store.complete("same-owner", old, b'"stale"', time.time(), Keep(count=10))
    assert store.complete("same-owner", new, b'"fresh"', time.time(), Keep(count=10))


def _flow(store, parent_id: str, children: int):  # type: ignore[no-untyped-def]
    from runtime.store.base import NewJob

    store.create(new_record(parent_id, name="flow-parent"), b"m")
    lease = take(store).lease
    kids = [NewJob(new_record("%s.%d" % (parent_id, i), name="flow-child"), b"c") for i in range(children)]
    for kid in kids:
        kid.record.parent_id = parent_id
    assert store.spawn(parent_id, lease, kids, time.time()) == children
    return lease


def test_a_flow_parent_waits_for_every_child_once(runtime: Runtime) -> None:
    store = runtime.store
    lease = _flow(store, "p", 2)
    assert store.wait_children("p", lease, time.time()) == "waiting-children"
    first, second = take(store), take(store)
    assert store.fail(first.job_id, first.lease, "boom", "", time.time(), Keep(count=10))
    # the failed child is retried and ends again: still counted once, the parent keeps waiting
    store.requeue_failed(first.job_id, time.time())
    again = take(store)
    assert again.job_id == first.job_id
    assert store.complete(again.job_id, again.lease, b"1", time.time(), Keep(count=10))
    assert store.get("p").state == "waiting-children"  # type: ignore[union-attr]
    assert store.complete(second.job_id, second.lease, b"2", time.time(), Keep(count=10))
    parent = take(store)
    assert parent.job_id == "p" and parent.children_done
    assert sorted((o.id, o.state, o.detail) for o in store.child_outcomes("p")) == [
        ("p.0", "completed", "1"),
        ("p.1", "completed", "2"),
    ]


def test_a_parent_rerun_before_it_waited_is_not_told_its_children_are_done(runtime: Runtime) -> None:
    store = runtime.store
    _flow(store, "q", 1)
    store.reap(time.time() + 3600)  # its worker died between spawn and wait
    rerun = take(store)
    assert rerun.job_id == "q" and not rerun.children_done


def test_removing_a_child_releases_its_parent(runtime: Runtime) -> None:
    store = runtime.store
    lease = _flow(store, "r", 1)
    assert store.wait_children("r", lease, time.time()) == "waiting-children"
    assert store.remove("r.0")
    parent = take(store)
    assert parent.job_id == "r" and parent.children_done
    assert [(o.state, o.detail) for o in store.child_outcomes("r")] == [("failed", "removed")]


def test_retrying_a_failed_job_does_not_make_a_second_live_duplicate(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("x1"), b"m", dedupe_key="noop:k")
    store.fail("x1", take(store).lease, "boom", "", time.time(), Keep(count=10))
    assert store.create(new_record("x2"), b"m", dedupe_key="noop:k")[1]  # x1 ended: the key is free
    assert not store.create(new_record("x3"), b"m", dedupe_key="noop:k")[1]
    with pytest.raises(InvalidState, match="cannot retry job x1"):
        store.requeue_failed("x1", time.time())
    assert store.get("x1").state == "failed"  # type: ignore[union-attr]


# -- many at once, and staged jobs ---------------------------------------------------------------


def test_create_many_creates_in_order_honouring_ids_and_dedupe_per_item(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("old"), b"m-old")
    jobs = [
        NewJob(new_record("b1", priority=2), b"m-b1"),
        NewJob(new_record("old"), b"m-other"),  # an existing id: that job, unchanged
        NewJob(new_record("b2"), b"m-b2", dedupe_key="k"),
        NewJob(new_record("b3"), b"m-b3", dedupe_key="k"),  # same dedupe key as b2, in the same call
        NewJob(new_record("b4", state="delayed", run_at=time.time() + 60), b"m-b4"),
    ]
    results = store.create_many(jobs)
    assert [(r.id, created) for r, created in results] == [
        ("b1", True),
        ("old", False),
        ("b2", True),
        ("b2", False),
        ("b4", True),
    ]
    assert store.get("b1") == jobs[0].record and store.get("b3") is None
    assert store.counts(["noop"])["noop"] == {**dict.fromkeys(STATES, 0), "waiting": 3, "delayed": 1}
    taken = [take(store) for _ in range(4)]
    assert [t.job_id for t in taken if t] == ["old", "b2", "b1"]  # no priority first, then by priority


def test_staged_jobs_are_waiting_but_not_taken_until_released(runtime: Runtime) -> None:
    store = runtime.store
    # Given two jobs created staged
    results = store.create_many([NewJob(new_record("s1"), b"m1"), NewJob(new_record("s2"), b"m2")], staged=True)
    assert all(created for _, created in results)
    # Then they count as waiting, but no worker takes them
    assert store.counts(["noop"])["noop"]["waiting"] == 2
    assert take(store) is None
    # When one is released, it is taken; releasing it again changes nothing
    assert store.release_staged(["s1"]) == 1
    assert store.release_staged(["s1", "nope"]) == 0
    got = take(store)
    assert got is not None and got.job_id == "s1"
    assert take(store) is None


def test_a_staged_job_whose_release_never_comes_is_queued_by_reap(runtime: Runtime) -> None:
    from runtime.store.base import STAGED_MAX_S

    store = runtime.store
    store.create_many([NewJob(new_record("orphan", created_at=time.time() - STAGED_MAX_S - 1), b"m")], staged=True)
    store.create_many([NewJob(new_record("young"), b"m")], staged=True)
    store.reap(None)
    got = take(store)
    assert got is not None and got.job_id == "orphan"
    assert take(store) is None


def test_a_staged_job_removed_before_its_release_stays_removed(runtime: Runtime) -> None:
    store = runtime.store
    store.create_many([NewJob(new_record("gone"), b"m")], staged=True)
    assert store.remove("gone")
    assert store.release_staged(["gone"]) == 0
    assert take(store) is None and store.get("gone") is None


# -- complete and take in one call ------------------------------------------------------------------


def test_complete_and_take_completes_then_leases_the_next_job_to_the_same_owner(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("first"), b"m-first")
    store.create(new_record("second"), b"m-second")
    got = take(store)
    assert got is not None and got.job_id == "first"
    # When the worker completes `first` and takes its next job in the same call
    done, nxt = store.complete_and_take("first", got.lease, b'{"ok": 1}', time.time(), Keep(count=10), OWNER, 30.0)
    # Then `first` is completed and `second` is active, leased to the same owner under a new token
    assert done and store.get("first").state == "completed" and store.get("first").result == {"ok": 1}
    assert nxt is not None and nxt.job_id == "second" and nxt.message == b"m-second"
    assert (nxt.lease.owner, nxt.lease.attempt) == (OWNER, 1) and nxt.lease.token != got.lease.token
    assert store.get("second").state == "active"
    # And with nothing left, it completes and takes nothing
    done, nxt2 = store.complete_and_take("second", nxt.lease, b"null", time.time(), Keep(count=10), OWNER, 30.0)
    assert done and nxt2 is None


def test_complete_and_take_with_a_lease_that_moved_on_changes_nothing_of_that_job(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("j"), b"m")
    got = take(store)
    assert got is not None
    stale = Lease(got.lease.owner, got.lease.attempt, "not-the-token")
    done, nxt = store.complete_and_take("j", stale, b"1", time.time(), Keep(count=10), OWNER, 30.0)
    assert not done and nxt is None and store.get("j").state == "active"


def test_complete_and_take_frees_a_concurrency_slot_before_taking(runtime: Runtime) -> None:
    from runtime.store.base import Limits

    store = runtime.store
    store.set_limits({"noop": Limits(concurrency=1)})
    store.create(new_record("c1"), b"m1")
    store.create(new_record("c2"), b"m2")
    got = take(store)
    assert got is not None and take(store, owner="other") is None  # at its concurrency
    done, nxt = store.complete_and_take(got.job_id, got.lease, b"1", time.time(), Keep(count=10), OWNER, 30.0)
    assert done and nxt is not None and nxt.job_id == "c2"


def test_get_many_returns_each_record_in_the_order_asked_and_none_for_an_unknown_id(runtime: Runtime) -> None:
    store = runtime.store
    store.create(new_record("g1"), b"m1")
    store.create(new_record("g2", name="echo"), b"m2")
    got = store.get_many(["g2", "nope", "g1"])
    assert [r.id if r else None for r in got] == ["g2", None, "g1"]
    assert got[0] == store.get("g2") and store.get_many([]) == []
