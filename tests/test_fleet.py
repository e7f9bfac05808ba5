"""The fleet (deploy/): two web nodes behind the proxy, killed in turn while events stream at 200/s.

Real processes on Redis (store) and RabbitMQ (bus), started by `deploy.fleet.Fleet`: two consumers,
two web nodes, the proxy. The test process enqueues 40 `echo` jobs a second straight into the
store (5 events each: waiting, active, progress, test:echoed, completed = 200 events/s) and two
clients listen through the proxy: `bus.client.RelayClient` on `/ws` and python-socketio's client
on `/socket.io/` (websocket transport, resuming as the frontend does: `lastId` and `seen` in its
`auth`, no deduplication of its own). Then, 10 times, the node the clients are on is SIGKILLed
and restarted: each client moves to the other node and resumes there. Every job's events must
arrive exactly once, in lifecycle order, at both clients, with no gap. About 60 s.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import socketio
from conftest import REDIS_URL, ROOT, TEST_MANIFEST, TESTS, require_redis
from test_events_e2e import require_amqp

from bus.client import Gap, RelayClient
from bus.envelope import Envelope
from bus.publisher import KombuPublisher
from runtime.core.manifest import load_manifest
from runtime.core.settings import Settings
from runtime.engine import Runtime

sys.path.insert(0, str(ROOT))
from deploy.fleet import Fleet

pytestmark = [pytest.mark.slow, pytest.mark.redis]

LIFECYCLE = ["job:waiting", "job:active", "job:progress", "test:echoed", "job:completed"]
JOBS_PER_S = 40  # × 5 events = 200 events/s
KILLS = 10
FILTER = {"events": ["job:*", "test:*"], "where": {"job": "echo"}}


def free_ports(count: int) -> int:
    """A base port with `count` free ports from it."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65535:
            continue
        try:
            for p in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise RuntimeError("no %d free ports in a row" % count)


class Producer(threading.Thread):
    """Enqueues `echo` jobs at JOBS_PER_S into the fleet's store, publishing on its bus."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(name="producer", daemon=True)
        self.runtime = runtime
        self.ids: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while not self.stopping.is_set():
            due = int((time.monotonic() - started) * JOBS_PER_S)
            while len(self.ids) < due:
                job_id = "fleet-%06d-%s" % (len(self.ids), uuid.uuid4().hex[:6])
                self.runtime.enqueue("echo", {"text": "x"}, job_id=job_id)
                self.ids.append(job_id)
            time.sleep(0.005)


class SocketIOPage:
    """python-socketio's client resuming as the frontend does (lastId and seen in `auth`); records what arrives."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str, int]] = []  # (event, job id, event id, seq)
        self.recent: list[str] = []
        self.gaps: list[Any] = []
        self.connects = 0
        self.client = socketio.AsyncClient(
            reconnection=True, reconnection_delay=0.25, reconnection_delay_max=1, randomization_factor=0.2
        )
        self.client.on("*", self._event)
        self.client.on("connect", self._connected)

    def auth(self) -> dict[str, Any]:
        resume = {"lastId": self.recent[-1], "seen": self.recent[-1000:]} if self.recent else {}
        return {**FILTER, **resume}

    async def _connected(self) -> None:
        self.connects += 1

    async def _event(self, name: str, data: Any = None, meta: Any = None) -> None:
        if name == "relay:gap":
            self.gaps.append(data)
            return
        self.events.append((name, meta["job"]["id"], meta["id"], meta["seq"]))
        self.recent.append(meta["id"])
        del self.recent[:-2000]


async def relay_listener(
    url: str, events: list[tuple[str, str, str, int]], gaps: list[Gap], client: list[RelayClient]
) -> None:
    async with RelayClient(url, backoff_s=0.1, max_backoff_s=1.0) as relay:
        client.append(relay)
        await relay.subscribe(FILTER["events"], where=FILTER["where"])
        async for item in relay:
            if isinstance(item, Gap):
                gaps.append(item)
            elif isinstance(item, Envelope) and item.job is not None:
                events.append((item.event, item.job.id, item.id, item.seq))


def relay_events_received(url: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=2) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("b3jobs_relay_events_total"):
                return float(line.split()[-1])
    return 0.0


def per_job(events: list[tuple[str, str, str, int]], ids: set[str]) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {}
    for name, job_id, _, _ in events:
        if job_id in ids:
            jobs.setdefault(job_id, []).append(name)
    return jobs


async def test_ten_sigkills_alternating_between_two_nodes_lose_and_repeat_nothing(tmp_path: Path) -> None:
    require_redis()
    amqp = require_amqp()
    namespace = "tfleet%s" % uuid.uuid4().hex[:10]
    base = free_ports(3)
    env = {
        "REDIS_URL": REDIS_URL,
        "BUS_URL": amqp,
        "B3JOBS_NAMESPACE": namespace,
        "B3JOBS_MANIFEST": str(TEST_MANIFEST),
        "B3JOBS_DATA_DIR": str(tmp_path / "var"),
        "PYTHONPATH": os.pathsep.join([str(TESTS), str(ROOT)]),
        "B3JOBS_TOKEN": "",
    }
    settings = Settings.from_env(
        {}, redis_url=REDIS_URL, namespace=namespace, manifest=TEST_MANIFEST, data_dir=tmp_path / "var"
    )
    publisher = KombuPublisher(amqp, namespace=namespace)
    runtime = Runtime(settings, load_manifest(TEST_MANIFEST), events=publisher)
    fleet = Fleet(consumers=2, web=2, port=base, env=env, logs=tmp_path / "logs", workers=4)
    loop = asyncio.get_running_loop()
    producer = Producer(runtime)
    ws_events: list[tuple[str, str, str, int]] = []
    ws_gaps: list[Gap] = []
    ws_client: list[RelayClient] = []
    page = SocketIOPage()
    listener: asyncio.Task[None] | None = None
    try:
        await loop.run_in_executor(None, fleet.start)
        # Given both clients connected through the proxy, and 200 events/s flowing
        listener = asyncio.create_task(
            relay_listener(fleet.url.replace("http", "ws") + "/ws", ws_events, ws_gaps, ws_client)
        )
        await page.client.connect(fleet.url, transports=["websocket"], auth=page.auth, wait_timeout=10)
        await asyncio.sleep(1.0)
        producer.start()
        await asyncio.sleep(2.0)

        # When the node each client is on is killed, ten times, alternating between the two nodes
        for kill in range(KILLS):
            victim = kill % 2
            fleet.kill_web(victim)
            await loop.run_in_executor(None, fleet.start_web, victim)
            deadline = time.monotonic() + 10
            while await loop.run_in_executor(None, relay_events_received, fleet.web_url(victim)) == 0:
                assert time.monotonic() < deadline, "the restarted node receives no events"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)
        producer.stopping.set()
        await loop.run_in_executor(None, producer.join)

        # Then, once every job has finished, each client has every job's events once, in order
        ids = set(producer.ids)
        expected = {job_id: LIFECYCLE for job_id in ids}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if per_job(ws_events, ids) == expected and per_job(page.events, ids) == expected:
                break
            await asyncio.sleep(0.25)
        problems = []
        for name, events in (("/ws", ws_events), ("socket.io", page.events)):
            got = per_job(events, ids)
            missing = [j for j in ids if j not in got]
            wrong = {j: [(e[0], e[3]) for e in events if e[1] == j] for j, names in got.items() if names != LIFECYCLE}
            ours = [e for e in events if e[1] in ids]
            unique = len({e[2] for e in ours})
            if missing or wrong or not unique == len(ours) == 5 * len(ids):
                problems.append(
                    "%s: %d jobs missing (%s), %d wrong (%s), %d events, %d distinct, %d expected"
                    % (
                        name,
                        len(missing),
                        missing[:3],
                        len(wrong),
                        list(wrong.items())[:3],
                        len(ours),
                        unique,
                        5 * len(ids),
                    )
                )
        assert not problems, problems
        assert ws_gaps == [] and page.gaps == []
        assert len(ids) >= JOBS_PER_S * KILLS  # the stream really ran through every kill
        assert ws_client[0].reconnects >= KILLS - 1 and page.connects >= KILLS
    finally:
        producer.stopping.set()
        if listener is not None:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)
        if page.client.connected:
            await page.client.disconnect()
        await loop.run_in_executor(None, fleet.stop)
        publisher.close()
        runtime.store.destroy()
        runtime.close()
