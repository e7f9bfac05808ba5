"""`/metrics`: Prometheus text that parses, agrees with the API, and histograms fed from the bus."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from conftest import TEST_MANIFEST, running_consumer
from prometheus_client.parser import text_string_to_metric_families
from test_dashboard_api import complete, fail

from bus.envelope import make
from bus.publisher import KombuPublisher
from runtime.core.manifest import load_manifest
from runtime.engine import Runtime
from runtime.web.app import build_web, create_app
from runtime.web.metrics import METRICS


async def scrape(client: Any) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """{sample name: {sorted labels: value}} from one scrape, through the official parser."""
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_job(samples: dict[tuple[tuple[str, str], ...], float]) -> dict[str, float]:
    return {dict(labels)["job_name"]: value for labels, value in samples.items()}


async def test_metrics_parse_and_agree_with_the_api_counts(
    runtime: Runtime, aiohttp_client: Callable[..., Any]
) -> None:
    # Given jobs completed, failed, waiting and delayed, one name paused and one consumer heartbeat
    client = await aiohttp_client(create_app(runtime))
    for i in range(3):
        complete(runtime, "echo", {"text": "ok%d" % i})
    fail(runtime, "echo", {"text": "bad"}, "ValueError: boom")
    runtime.pause("noop")
    runtime.enqueue("noop", {})
    runtime.enqueue("noop", {}, delay=60)
    runtime.store.renew("consumer-1", [], time.time(), runtime.settings.lease_s)

    # When Prometheus scrapes, and an operator asks the API
    metrics = await scrape(client)
    queues = (await (await client.get("/api/v1/queues")).json())["queues"]

    # Then every count per state and name is the API's
    gauges = {(dict(k)["job_name"], dict(k)["state"]): v for k, v in metrics["b3jobs_jobs"].items()}
    api_counts = {(q["name"], state): n for q in queues for state, n in q["counts"].items()}
    assert gauges == api_counts
    # And the totals agree with what happened (and with the store's running totals)
    assert by_job(metrics["b3jobs_jobs_completed_total"])["echo"] == 3 == api_counts[("echo", "completed")]
    assert by_job(metrics["b3jobs_jobs_failed_total"])["echo"] == 1 == api_counts[("echo", "failed")]
    assert by_job(metrics["b3jobs_jobs_started_total"])["echo"] == 4
    assert by_job(metrics["b3jobs_jobs_retried_total"])["echo"] == 0
    stats = runtime.store.stats(sorted(runtime.manifest.jobs))
    for total in ("started", "completed", "failed", "retried", "stalled"):
        assert by_job(metrics["b3jobs_jobs_%s_total" % total]) == {n: s[total] for n, s in stats.items()}
    assert by_job(metrics["b3jobs_queue_paused"]) == {q["name"]: float(q["paused"]) for q in queues}
    assert metrics["b3jobs_consumers_alive"][()] == 1
    assert metrics["b3jobs_store_up"][()] == 1


async def test_metrics_answer_with_a_token_set_and_when_the_store_is_down(
    runtime: Runtime, aiohttp_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await aiohttp_client(create_app(runtime, token="s3cret"))
    assert (await scrape(client))["b3jobs_store_up"][()] == 1

    def down(*args: Any) -> Any:
        raise redis.ConnectionError("connection refused")

    monkeypatch.setattr(runtime.store, "counts", down)
    metrics = await scrape(client)
    assert metrics["b3jobs_store_up"][()] == 0 and "b3jobs_jobs" not in metrics


async def test_each_app_has_its_own_registry(runtime: Runtime, aiohttp_client: Callable[..., Any]) -> None:
    one, two = create_app(runtime), create_app(runtime)
    one[METRICS].bus.observe(make("job:completed", ("j1", "echo"), {"duration_s": 0.2}))
    first, second = await aiohttp_client(one), await aiohttp_client(two)
    assert by_job((await scrape(first))["b3jobs_job_run_seconds_count"]) == {"echo": 1}
    assert "b3jobs_job_run_seconds_count" not in await scrape(second)


def test_queue_wait_runs_from_waiting_to_active_and_restarts_after_a_delay(runtime: Runtime) -> None:
    bus = create_app(runtime)[METRICS].bus
    waiting, active = make("job:waiting", ("j1", "echo"), {}), make("job:active", ("j1", "echo"), {})
    waiting.ts, active.ts = 100.0, 100.75
    bus.observe(waiting)
    bus.observe(active)
    # A job that went delayed (a backoff) waits again from its next job:waiting only.
    bus.observe(make("job:delayed", ("j2", "echo"), {}))
    bus.observe(make("job:active", ("j2", "echo"), {}))
    wait = bus.queue_wait.labels("echo")
    assert wait._sum.get() == pytest.approx(0.75)  # type: ignore[attr-defined]
    assert sum(b.get() for b in wait._buckets) == 1  # type: ignore[attr-defined]


async def test_histograms_and_event_counters_come_from_the_bus(
    settings_for: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> None:
    # Given a web process on the bus and a consumer publishing there
    settings = settings_for("sqlite")
    runtime = Runtime(
        settings, load_manifest(TEST_MANIFEST), events=KombuPublisher("memory://", namespace=settings.namespace)
    )
    client = await aiohttp_client(build_web(settings, runtime, url="memory://"))
    try:
        with running_consumer(runtime):
            # When jobs run
            for i in range(4):
                resp = await client.post("/api/v1/jobs/echo", json={"payload": {"text": "m%d" % i}})
                assert resp.status == 202
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                metrics = await scrape(client)
                if by_job(metrics.get("b3jobs_job_run_seconds_count", {})).get("echo") == 4:
                    break
                await asyncio.sleep(0.05)
        # Then run time and queue wait were observed once per job, and the events were counted
        assert by_job(metrics["b3jobs_job_run_seconds_count"])["echo"] == 4
        assert by_job(metrics["b3jobs_job_wait_seconds_count"])["echo"] == 4
        assert 0 < by_job(metrics["b3jobs_job_wait_seconds_sum"])["echo"] < 10
        received = {dict(k)["event"]: v for k, v in metrics["b3jobs_bus_events_received_total"].items()}
        assert received["job:completed"] >= 4 and received["job:active"] >= 4
        assert metrics["b3jobs_events_published_total"][()] > 0
        assert metrics["b3jobs_events_dropped_total"][()] == 0
        assert metrics["b3jobs_relay_events_total"][()] >= 12
        assert by_job(metrics["b3jobs_jobs_completed_total"])["echo"] == 4
    finally:
        runtime.store.destroy()
        runtime.close()
