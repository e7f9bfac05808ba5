"""Events end to end: HTTP enqueue → consumer → Kombu (memory, Redis, RabbitMQ) → relay → websocket."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import CI, TEST_MANIFEST, require_redis, running_consumer
from faults import PrivateRedis

from bus.publisher import KombuPublisher
from runtime.core.manifest import load_manifest
from runtime.engine import Runtime
from runtime.web.app import build_web

AMQP_URL = os.environ.get("B3JOBS_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def require_amqp() -> str:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
    except OSError as exc:
        if CI:
            pytest.fail("CI=true but RabbitMQ at %s does not answer: %s" % (AMQP_URL, exc))
        pytest.skip("no RabbitMQ at %s: %s" % (AMQP_URL, exc))
    return AMQP_URL


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis), "amqp"])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "redis":
        return require_redis().rsplit("/", 1)[0] + "/13"
    if request.param == "amqp":
        return require_amqp()
    return "memory://"


async def next_events(ws: Any, job_id: str, until: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Events of one job as received, until (and including) the event named `until`."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = await ws.receive_json(timeout=max(0.05, deadline - time.monotonic()))
        frames = msg if isinstance(msg, list) else [msg]
        for event in frames:
            if "op" in event:
                continue
            if event["job"] and event["job"]["id"] == job_id:
                seen.append(event)
                if event["event"] == until:
                    return seen
    raise AssertionError("no %s for %s; saw %s" % (until, job_id, [e["event"] for e in seen]))


async def subscribe(ws: Any, **message: Any) -> dict[str, Any]:
    await ws.send_json({"op": "subscribe", **message})
    while True:
        reply = await ws.receive_json(timeout=5)
        if isinstance(reply, dict) and reply.get("op") == "subscribed":
            return reply


async def test_a_job_enqueued_over_http_is_seen_live_in_order_once(
    bus_url: str, settings_for: Callable[..., Any], aiohttp_client: Callable[..., Any]
) -> None:
    # Given a web process and a consumer, each publishing on the same bus
    settings = settings_for("sqlite")
    manifest = load_manifest(TEST_MANIFEST)
    web_runtime = Runtime(settings, manifest, events=KombuPublisher(bus_url, namespace=settings.namespace))
    worker_runtime = Runtime(settings, manifest, events=KombuPublisher(bus_url, namespace=settings.namespace))
    client = await aiohttp_client(build_web(settings, web_runtime, url=bus_url))
    try:
        ws = await client.ws_connect("/ws")
        await subscribe(ws, events=["job:*"], where={"job": "echo"})
        await asyncio.sleep(0.5)  # the bridge's queue is bound
        with running_consumer(worker_runtime, workers=2):
            # When a job is enqueued over HTTP
            resp = await client.post("/api/v1/jobs/echo", json={"payload": {"text": "PETR4"}})
            job_id = (await resp.json())["id"]
            events = await next_events(ws, job_id, "job:completed")
            await asyncio.sleep(0.3)
            try:
                late = await ws.receive_json(timeout=0.3)
            except TimeoutError:
                late = None
        # Then waiting, active, progress, completed arrive in order, each exactly once
        assert [e["event"] for e in events] == ["job:waiting", "job:active", "job:progress", "job:completed"]
        assert events[-1]["data"]["result"] == {"echo": "PETR4", "attempt": 1}
        assert events[2]["data"] == {"progress": 50}
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        assert late is None or all(
            e.get("job", {}).get("id") != job_id for e in (late if isinstance(late, list) else [late])
        )
        await ws.close()
    finally:
        web_runtime.events.close()  # type: ignore[attr-defined]
        worker_runtime.events.close()  # type: ignore[attr-defined]
        worker_runtime.store.destroy()


async def test_with_the_bus_down_jobs_complete_and_their_events_arrive_once_it_is_back(
    settings_for: Callable[..., Any], aiohttp_client: Callable[..., Any], tmp_path: Path
) -> None:
    if shutil.which("redis-server") is None:
        if CI:
            pytest.fail("CI=true but redis-server is not installed")
        pytest.skip("redis-server not installed")
    # A broker that keeps its state across a restart (AOF), as a production one would
    broker = PrivateRedis(tmp_path / "broker", aof=True).start()
    settings = settings_for("sqlite")
    manifest = load_manifest(TEST_MANIFEST)
    publisher = KombuPublisher(broker.url, namespace=settings.namespace)
    web_runtime = Runtime(settings, manifest, events=publisher)
    worker_runtime = Runtime(settings, manifest, events=publisher)
    client = await aiohttp_client(build_web(settings, web_runtime, url=broker.url))
    try:
        ws = await client.ws_connect("/ws")
        await subscribe(ws, events=["job:completed"])
        await asyncio.sleep(0.5)
        with running_consumer(worker_runtime, workers=2):
            # When the broker dies
            broker.stop()
            # Then jobs still complete and the API still answers
            ids = []
            for _ in range(5):
                resp = await client.post("/api/v1/jobs/noop", json={})
                assert resp.status == 202
                ids.append((await resp.json())["id"])
            for job_id in ids:
                for _ in range(100):
                    if worker_runtime.get(job_id).state == "completed":
                        break
                    await asyncio.sleep(0.05)
                assert worker_runtime.get(job_id).state == "completed"
            # And their events are kept, not dropped
            assert publisher.buffered > 0 and publisher.dropped == 0
            # And when the broker is back, every one of them arrives
            broker.start()
            seen: set[str] = set()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not set(ids) <= seen:
                try:
                    msg = await ws.receive_json(timeout=1.0)
                except TimeoutError:
                    continue
                frames = msg if isinstance(msg, list) else [msg]
                seen.update(f["job"]["id"] for f in frames if f.get("event") == "job:completed" and f.get("job"))
            assert set(ids) <= seen, "missing after the broker came back: %s" % (set(ids) - seen)
            assert publisher.dropped == 0
        await ws.close()
    finally:
        publisher.close()
        broker.stop()
        worker_runtime.store.destroy()
