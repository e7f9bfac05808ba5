"""Faults: consumers killed mid-job, poison jobs, cron across consumers, bad messages, Redis restarts."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CI, running_consumer, wait_for, wait_state
from faults import PrivateRedis, consumer_env, cpu_seconds, kill, start_consumer, stop

from runtime.core.records import JobRecord
from runtime.engine import Runtime


def runs_of(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            job_id = line.split()[0]
            counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def test_a_job_whose_consumer_is_killed_runs_again_elsewhere(runtime: Runtime, tmp_path: Path) -> None:
    # Given a long job running on consumer A, with 2 s leases
    env = consumer_env(runtime.settings.namespace, runtime.settings.data_dir, runtime.settings.redis_url, lease_s=2)
    log = tmp_path / "runs.log"
    record, _ = runtime.enqueue("logged-sleep", {"log": str(log), "seconds": 2.5})
    a = start_consumer(env)
    try:
        wait_for(lambda: runs_of(log).get(record.id), timeout=15, what="the handler to start on A")
        # When A is SIGKILLed mid-job and B runs
        kill(a)
        b = start_consumer(env)
        try:
            done = wait_state(runtime, record.id, ("completed",), timeout=20)
        finally:
            stop(b)
    finally:
        kill(a)
    # Then the job completed on B: run twice, one attempt counted, one stall recorded
    assert runs_of(log)[record.id] == 2
    assert (done.attempts, done.stalls, done.result) == (1, 1, 1)
    events = [e[0] for e in runtime.events.events]  # type: ignore[attr-defined]
    assert "job:waiting" in events


def test_a_poison_job_fails_after_max_stalls_and_others_go_on(runtime: Runtime, tmp_path: Path) -> None:
    env = consumer_env(runtime.settings.namespace, runtime.settings.data_dir, runtime.settings.redis_url, lease_s=1)
    poison, _ = runtime.enqueue("suicide", {})
    consumer = start_consumer(env, workers=2, worker_type="process", log=tmp_path / "consumer.log")
    try:
        done = wait_state(runtime, poison.id, ("failed",), timeout=40)
        others = [runtime.enqueue("noop", {})[0].id for _ in range(20)]
        for job_id in others:
            assert wait_state(runtime, job_id, ("completed",), timeout=20).state == "completed"
        assert consumer.poll() is None, "the consumer itself must survive its workers dying"
    finally:
        stop(consumer)
    assert done.stalls == 3  # max_stalls = 2 in the test manifest: the third stall fails it
    assert done.error == "stalled too often: its worker died or stopped heartbeating 3 time(s) while running it"


def test_three_consumers_for_five_minutes_run_a_minutely_cron_job_five_times(
    make_runtime: Callable[..., Runtime],
) -> None:
    runtimes = [make_runtime() for _ in range(3)]
    start = (int(time.time() // 60) + 1) * 60 + 1.0  # just after a minute boundary
    runners = [r.cron_runner(now=start) for r in runtimes]
    now = start
    while now < start + 300 - 1:  # five minutes of ticks, every 7 s, each consumer in turn
        for runner in runners:
            runner.tick(now)
        now += 7
    assert runtimes[0].counts()["every-minute"]["waiting"] == 5


def test_missed_ticks_run_once_on_return_or_are_skipped(make_runtime: Callable[..., Runtime]) -> None:
    runtime = make_runtime()
    minute = (int(time.time() // 60) + 1) * 60
    # Given both cron jobs last ran 10 minutes before this consumer starts
    for name in ("every-minute", "every-minute-skip"):
        assert runtime.store.claim_tick(name, minute - 600)
    # When a consumer starts now
    runtime.cron_runner(now=minute + 5).tick(minute + 5)
    counts = runtime.counts()
    # Then run_once caught up once (plus this minute's tick); skip only ran this minute
    assert counts["every-minute"]["waiting"] == 2
    assert counts["every-minute-skip"]["waiting"] == 1
    # And on the very first start of a job there is nothing to catch up
    fresh = make_runtime(namespace="fresh%d" % int(time.time() * 1000))
    fresh.cron_runner(now=minute + 5).tick(minute + 5)
    assert fresh.counts()["every-minute"]["waiting"] == 1


def test_undecodable_messages_and_unknown_jobs_become_failed_records(runtime: Runtime) -> None:
    now = time.time()
    runtime.store.create(
        JobRecord(id="garbage", name="noop", state="waiting", payload={}, created_at=now), b"\x80not msgspec"
    )
    runtime.store.create(
        JobRecord(id="future", name="from-the-future", state="waiting", payload={}, created_at=now), b"[]"
    )
    ok, _ = runtime.enqueue("noop", {})
    with running_consumer(runtime):
        garbage = wait_state(runtime, "garbage", ("failed",))
        future = wait_state(runtime, "future", ("failed",))
        assert wait_state(runtime, ok.id).state == "completed"
    assert garbage.error is not None and garbage.error.startswith("undecodable message: DecodeError")
    assert (
        future.error
        == "unknown job 'from-the-future': this consumer's manifest does not declare it (a newer producer?)"
    )
    assert runtime.counts()["from-the-future"]["failed"] == 1


@pytest.mark.slow
def test_redis_restarted_with_aof_mid_run_loses_nothing(tmp_path: Path, settings_for: Callable[..., Any]) -> None:
    try:
        redis_server = PrivateRedis(tmp_path / "redis", aof=True).start()
    except RuntimeError as exc:
        if CI:
            raise
        pytest.skip(str(exc))
    from conftest import TEST_MANIFEST

    from runtime.core.manifest import load_manifest

    settings = settings_for("redis", redis_url=redis_server.url)
    runtime = Runtime(settings, load_manifest(TEST_MANIFEST))
    log = tmp_path / "runs.log"
    ids = [runtime.enqueue("logged-sleep", {"log": str(log), "seconds": 0.01})[0].id for _ in range(1000)]
    consumer = start_consumer(
        consumer_env(settings.namespace, settings.data_dir, redis_server.url, lease_s=3),
        workers=4,
        log=tmp_path / "consumer.log",
    )
    try:
        wait_for(lambda: len(runs_of(log)) >= 300, timeout=30, what="300 jobs done")
        # When Redis stops (AOF flushed on shutdown) for 3 s, then comes back
        redis_server.stop()
        cpu_before, t0 = cpu_seconds(consumer.pid), time.monotonic()
        time.sleep(3)
        down_cores = (cpu_seconds(consumer.pid) - cpu_before) / (time.monotonic() - t0)
        redis_server.start()
        # Then every job completes, the consumer never crashed, and it idled while Redis was down
        wait_for(
            lambda: runtime.counts()["logged-sleep"]["completed"] == 1000,
            timeout=60,
            interval=0.5,
            what="all 1000 jobs completed",
        )
        assert consumer.poll() is None
    finally:
        stop(consumer)
        runtime.store.destroy()
        redis_server.stop()
    assert set(runs_of(log)) == set(ids)
    assert down_cores < 0.05, "consumer used %.1f%% of a core while Redis was down" % (down_cores * 100)


def test_sqlite_consumer_killed_mid_write_leaves_a_consistent_database(
    settings_for: Callable[..., Any], tmp_path: Path
) -> None:
    from conftest import TEST_MANIFEST

    from runtime.core.manifest import load_manifest

    runtime = Runtime(settings_for("sqlite"), load_manifest(TEST_MANIFEST))
    env = consumer_env(runtime.settings.namespace, runtime.settings.data_dir, None, lease_s=1)
    log = tmp_path / "runs.log"
    ids = [runtime.enqueue("logged-sleep", {"log": str(log), "seconds": 0})[0].id for _ in range(2000)]
    consumer = start_consumer(env, workers=4)
    wait_for(lambda: len(runs_of(log)) >= 300, timeout=30, what="300 jobs done")
    kill(consumer)
    with sqlite3.connect(runtime.settings.sqlite_path) as db:
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)
    again = start_consumer(env, workers=4)
    try:
        wait_for(
            lambda: runtime.counts()["logged-sleep"]["completed"] == len(ids), timeout=60, interval=0.5, what="all done"
        )
    finally:
        stop(again)
    assert set(runs_of(log)) == set(ids)


def test_an_immediate_shutdown_hands_running_jobs_back_at_once(runtime: Runtime, tmp_path: Path) -> None:
    import signal as signals

    env = consumer_env(runtime.settings.namespace, runtime.settings.data_dir, runtime.settings.redis_url, lease_s=60)
    log = tmp_path / "runs.log"
    record, _ = runtime.enqueue("logged-sleep", {"log": str(log), "seconds": 30})
    consumer = start_consumer(env, log=tmp_path / "consumer.log")
    try:
        wait_for(lambda: runs_of(log).get(record.id), timeout=15, what="the handler to start")
        consumer.send_signal(signals.SIGTERM)  # Huey's immediate stop: running jobs are not waited for
        consumer.wait(15)
        # Then the job is waiting again now, not after its 60 s lease, and its attempt is not counted
        back = runtime.get(record.id)
        assert (back.state, back.attempts, back.worker) == ("waiting", 0, None)
    finally:
        kill(consumer)


def test_the_api_answers_503_while_redis_is_down_and_recovers(tmp_path: Path, settings_for: Callable[..., Any]) -> None:
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer
    from conftest import TEST_MANIFEST

    from runtime.core.manifest import load_manifest
    from runtime.web.app import create_app

    try:
        redis_server = PrivateRedis(tmp_path / "redis").start()
    except RuntimeError as exc:
        if CI:
            raise
        pytest.skip(str(exc))
    runtime = Runtime(settings_for("redis", redis_url=redis_server.url), load_manifest(TEST_MANIFEST))

    async def scenario() -> list[int]:
        async with TestClient(TestServer(create_app(runtime))) as client:
            statuses = [(await client.get("/api/v1/queues")).status]
            redis_server.stop()
            down = await client.get("/api/v1/queues")
            statuses.append(down.status)
            assert (await down.json())["error"]["code"] == "store_unavailable"
            statuses.append((await client.get("/healthz")).status)
            redis_server.start()
            statuses.append((await client.get("/api/v1/queues")).status)
            return statuses

    try:
        assert asyncio.run(scenario()) == [200, 503, 503, 200]
    finally:
        redis_server.stop()
