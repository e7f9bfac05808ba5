"""Fixtures: a runtime per backend (SQLite file, real Redis), consumers in threads, waiting helpers."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
TEST_MANIFEST = TESTS / "schedules.toml"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_URL = os.environ.get("B3JOBS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

sys.path.insert(0, str(TESTS))  # the test handlers package `testjobs`

from runtime.core.events import RecordingSink  # noqa: E402
from runtime.core.manifest import load_manifest  # noqa: E402
from runtime.core.settings import Settings  # noqa: E402
from runtime.engine import Runtime  # noqa: E402
from runtime.worker.consumer import B3Consumer  # noqa: E402


def require_redis() -> str:
    """The test Redis URL, or skip (fail under CI) when no server answers."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        if CI:
            pytest.fail("CI=true but Redis at %s does not answer: %s" % (REDIS_URL, exc))
        pytest.skip("no Redis server at %s: %s" % (REDIS_URL, exc))
    return REDIS_URL


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        require_redis()
    return str(request.param)


@pytest.fixture
def settings_for(tmp_path: Path) -> Callable[..., Settings]:
    def make(backend: str, **overrides: Any) -> Settings:
        values: dict[str, Any] = dict(
            data_dir=tmp_path / "var",
            manifest=TEST_MANIFEST,
            namespace="t%s" % uuid.uuid4().hex[:12],  # this test's own keys; removed at the end
        )
        if backend == "redis":
            values["redis_url"] = REDIS_URL
        values.update(overrides)
        return Settings.from_env({}, **values)  # nothing from the shell's environment: each test says what it runs on

    return make


@pytest.fixture
def make_runtime(backend: str, settings_for: Callable[..., Settings]) -> Iterator[Callable[..., Runtime]]:
    made: list[Runtime] = []

    def make(manifest: Path = TEST_MANIFEST, events: Any = None, **overrides: Any) -> Runtime:
        settings = settings_for(backend, manifest=manifest, **overrides)
        if made and "namespace" not in overrides:
            settings = settings.model_copy(update={"namespace": made[0].settings.namespace})
        runtime = Runtime(settings, load_manifest(manifest), events=events if events is not None else RecordingSink())
        made.append(runtime)
        return runtime

    yield make
    for runtime in reversed(made):
        runtime.store.destroy()
        runtime.close()


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()


@contextlib.contextmanager
def running_consumer(
    runtime: Runtime, workers: int = 2, worker_type: str = "thread", cron: bool = False
) -> Iterator[B3Consumer]:
    consumer = B3Consumer(runtime, workers=workers, worker_type=worker_type, cron=cron, signals=False)
    consumer.start()
    try:
        yield consumer
    finally:
        consumer.stop(graceful=True)


@pytest.fixture
def consumer() -> Callable[..., Any]:
    return running_consumer


def wait_for(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out after %ss waiting for %s" % (timeout, what))


def wait_state(
    runtime: Runtime, job_id: str, states: tuple[str, ...] = ("completed", "failed"), timeout: float = 10.0
) -> Any:
    return wait_for(
        lambda: (r := runtime.get(job_id)).state in states and r, timeout, what="job %s to reach %s" % (job_id, states)
    )


@pytest.fixture
async def api(runtime: Runtime, aiohttp_client: Callable[..., Any]) -> Any:
    """An HTTP client on the app of `runtime` (SQLite or Redis, per `backend`)."""
    from runtime.web.app import create_app

    return await aiohttp_client(create_app(runtime))


def take(runtime: Runtime, job_id: str) -> Any:
    """Dequeue as a consumer would, expecting `job_id`; returns its lease."""
    got = runtime.store.dequeue("test", time.time(), 30, wait_s=0)
    assert got is not None and got.job_id == job_id
    return got.lease
