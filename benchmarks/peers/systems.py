"""The systems the peer benchmark runs, each as the commands of its workers and producers.

A `System` knows how to start one worker process with W workers, how to run a producer in each
mode, how to wipe its state between runs and, for b3-jobs, which other processes it runs with
as deployed (a web process and a bus listener) and how to check the events they received.
Configs name the worker processes of a drain: "1" and "8" are one process with 1 or 8 workers,
"2x8" two processes of 8.
"""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from procs import log_tail, spawn, stop, wait_for


@dataclass(frozen=True)
class Tools:
    """Where things are: the pinned code, the interpreters, and the private Redis."""

    root: Path  # the pinned copy of the project (runtime/, bus/, benchmarks/peers/ ...)
    py: str  # the project's python
    celery_py: str | None  # .venv-celery's python, None when Celery is skipped
    node: str | None  # node, None when BullMQ is skipped
    node_modules: Path  # BullMQ, installed in the work tree (NODE_PATH: the scripts run from the copy)
    redis_url: str | None
    redis_port: int | None

    @property
    def peers(self) -> Path:
        return self.root / "benchmarks" / "peers"


@dataclass
class RunDir:
    """One run's scratch: probe files, logs, SQLite files; and its names."""

    path: Path
    name: str = field(default_factory=lambda: "peers%s" % uuid.uuid4().hex[:8])

    def __post_init__(self) -> None:
        self.probe.mkdir(parents=True, exist_ok=True)

    @property
    def probe(self) -> Path:
        return self.path / "probe"

    @property
    def log(self) -> Path:
        return self.path / "processes.log"


LIFECYCLE = ("job:waiting", "job:active", "job:completed")


def score(rows: list[list[Any]]) -> dict[str, Any]:
    """event_listener.py's rows ([arrival, event, job id, ts, message]): what arrived of each job's lifecycle."""
    per_job: dict[str, list[str]] = {}
    for _arrival, event, job_id, _ts, _message in rows:
        if job_id and event in LIFECYCLE:
            per_job.setdefault(job_id, []).append(event)
    complete = sum(1 for seq in per_job.values() if tuple(seq) == LIFECYCLE)
    duplicates = sum(len(seq) - len(set(seq)) for seq in per_job.values())
    disordered = sum(
        1
        for seq in per_job.values()
        if any(LIFECYCLE.index(b) < LIFECYCLE.index(a) for a, b in itertools.pairwise(seq))
    )
    events: dict[str, int] = {}
    for row in rows:
        events[row[1]] = events.get(row[1], 0) + 1
    return {
        "events": events,
        "jobs": len(per_job),
        "lifecycle_complete": complete,
        "out_of_order": disordered,
        "duplicates": duplicates,
    }


def workers_of(config: str) -> list[int]:
    """ "8" → [8]; "2x8" → [8, 8]."""
    count, _, per = config.rpartition("x")
    return [int(per)] * int(count or 1)


class System:
    name = ""
    label = ""  # how the table names it
    backend = "redis"
    configs: tuple[str, ...] = ("1", "8")
    latency = True  # measure start latency (SQLite consumers poll; not measured there)
    bulk_variants: tuple[str, ...] = ("bulk",)
    version = ""

    def __init__(self, tools: Tools):
        self.tools = tools

    def env(self, run: RunDir) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(Path.home()),
            "PEERS_PROBE_DIR": str(run.probe),
            "PYTHONPATH": "%s:%s" % (self.tools.root, self.tools.peers),
            "PYTHONDONTWRITEBYTECODE": "1",
        }

    def reset(self, run: RunDir) -> None:
        """Start from nothing: the private Redis emptied (it serves only this benchmark)."""
        if self.tools.redis_url:
            client = redis.Redis.from_url(self.tools.redis_url)
            client.flushdb()
            client.close()

    def worker(self, run: RunDir, workers: int) -> list[str]:
        raise NotImplementedError

    def producer(self, run: RunDir, mode: str, n: int, chunk: int, gap_ms: float, variant: str = "bulk") -> list[str]:
        raise NotImplementedError

    def side_start(self, run: RunDir, timeout_s: float) -> list[subprocess.Popen[bytes]]:
        """Processes that run beside the workers as deployed (none for the peers)."""
        return []

    def side_report(self, run: RunDir, jobs: int, settle_s: float) -> dict[str, Any]:
        return {}

    def diagnose(self, run: RunDir) -> str:
        return ""


class BullMQ(System):
    name, label = "bullmq", "BullMQ"

    def env(self, run: RunDir) -> dict[str, str]:
        return {**super().env(run), "NODE_PATH": str(self.tools.node_modules)}

    def worker(self, run: RunDir, workers: int) -> list[str]:
        return [
            str(self.tools.node),
            str(self.tools.peers / "node" / "bullmq.js"),
            "worker",
            "--port",
            str(self.tools.redis_port),
            "--queue",
            run.name,
            "--concurrency",
            str(workers),
        ]

    def producer(self, run: RunDir, mode: str, n: int, chunk: int, gap_ms: float, variant: str = "bulk") -> list[str]:
        return [
            str(self.tools.node),
            str(self.tools.peers / "node" / "bullmq.js"),
            "produce",
            "--port",
            str(self.tools.redis_port),
            "--queue",
            run.name,
            "--mode",
            mode,
            "--n",
            str(n),
            "--chunk",
            str(chunk),
            "--gap-ms",
            str(gap_ms),
        ]


class Huey(System):
    """Bare Huey: `plain` RedisHuey, `priority` PriorityRedisHuey, `sqlite` SqliteHuey."""

    def __init__(self, tools: Tools, kind: str):
        super().__init__(tools)
        self.kind = kind
        self.name = "huey-%s" % kind
        self.label = {"plain": "RedisHuey", "priority": "PriorityRedisHuey", "sqlite": "SqliteHuey"}[kind]
        if kind == "sqlite":
            self.backend, self.latency = "sqlite", False

    def _where(self, run: RunDir) -> list[str]:
        if self.kind == "sqlite":
            return ["--sqlite", str(run.path / "huey.db")]
        return ["--redis", str(self.tools.redis_url)]

    def worker(self, run: RunDir, workers: int) -> list[str]:
        return [
            self.tools.py,
            str(self.tools.peers / "huey_app.py"),
            "--kind",
            self.kind,
            "--name",
            run.name,
            "--workers",
            str(workers),
            *self._where(run),
        ]

    def producer(self, run: RunDir, mode: str, n: int, chunk: int, gap_ms: float, variant: str = "bulk") -> list[str]:
        return [
            self.tools.py,
            str(self.tools.peers / "producer.py"),
            self.name,
            "--mode",
            mode,
            "--n",
            str(n),
            "--chunk",
            str(chunk),
            "--gap-ms",
            str(gap_ms),
            "--name",
            run.name,
            *self._where(run),
        ]


class Celery(System):
    """Celery with the threads pool: one process, like every other system's 1- and 8-worker configs."""

    name, label = "celery", "Celery (threads)"

    def env(self, run: RunDir) -> dict[str, str]:
        return {**super().env(run), "PYTHONPATH": str(self.tools.peers), "PEERS_REDIS_URL": str(self.tools.redis_url)}

    def worker(self, run: RunDir, workers: int) -> list[str]:
        return [
            str(self.tools.celery_py),
            "-m",
            "celery",
            "-A",
            "celery_app",
            "worker",
            "--pool",
            "threads",
            "--concurrency",
            str(workers),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]

    def producer(self, run: RunDir, mode: str, n: int, chunk: int, gap_ms: float, variant: str = "bulk") -> list[str]:
        return [
            str(self.tools.celery_py),
            str(self.tools.peers / "producer.py"),
            "celery",
            "--mode",
            mode,
            "--n",
            str(n),
            "--chunk",
            str(chunk),
            "--gap-ms",
            str(gap_ms),
        ]


class B3Jobs(System):
    """b3-jobs as deployed on Redis: `python -m runtime consumer` with the bus on the same Redis,
    a `python -m runtime web` process bound to it, and benchmarks/event_listener.py (a queue bound to `#`)."""

    name, label = "b3-jobs", "b3-jobs"
    configs = ("1", "8", "2x8")
    bulk_variants = ("bulk", "http")

    def __init__(self, tools: Tools):
        super().__init__(tools)
        self.web_port = 0
        self.listener: subprocess.Popen[bytes] | None = None

    def env(self, run: RunDir) -> dict[str, str]:
        env = {
            **super().env(run),
            "B3JOBS_NAMESPACE": run.name,
            "B3JOBS_MANIFEST": str(self.tools.peers / "peers.toml"),
            "B3JOBS_DATA_DIR": str(run.path),
        }
        if self.backend == "redis":
            env.update(REDIS_URL=self.tools.redis_url, BUS_URL=self.tools.redis_url, B3JOBS_PORT=str(self.web_port))
        return env

    def worker(self, run: RunDir, workers: int) -> list[str]:
        return [
            self.tools.py,
            "-m",
            "runtime",
            "--log-level",
            "WARNING",
            "consumer",
            "--workers",
            str(workers),
            "--worker-type",
            "thread",
            "--no-cron",
        ]

    def producer(self, run: RunDir, mode: str, n: int, chunk: int, gap_ms: float, variant: str = "bulk") -> list[str]:
        system = "b3-jobs-http" if variant == "http" else "b3-jobs"
        return [
            self.tools.py,
            str(self.tools.peers / "producer.py"),
            system,
            "--mode",
            mode,
            "--n",
            str(n),
            "--chunk",
            str(chunk),
            "--gap-ms",
            str(gap_ms),
            "--web",
            "127.0.0.1:%d" % self.web_port,
        ]

    # -- the web process and the listener

    def side_start(self, run: RunDir, timeout_s: float) -> list[subprocess.Popen[bytes]]:
        from tests.faults import free_port

        self.web_port = free_port()
        env = self.env(run)
        listen = run.path / "listener"
        listen.mkdir()
        web = spawn([self.tools.py, "-m", "runtime", "--log-level", "WARNING", "web"], env, run.log, self.tools.root)
        listener = spawn(
            [
                self.tools.py,
                str(self.tools.root / "benchmarks" / "event_listener.py"),
                "--url",
                str(self.tools.redis_url),
                "--namespace",
                run.name,
                "--dir",
                str(listen),
            ],
            env,
            run.log,
            self.tools.root,
        )
        procs = [web, listener]
        alive = lambda: all(p.poll() is None for p in procs)  # noqa: E731
        ready = wait_for(
            lambda: self._healthy() and (listen / "ready").exists() and self._bindings(run) >= 2, timeout_s, 0.05, alive
        )
        if not ready:
            for proc in procs:
                stop(proc)
            raise RuntimeError(
                "web process / listener not ready in %ss (web %s, listener %s, bindings %d): %s"
                % (timeout_s, web.poll(), listener.poll(), self._bindings(run), log_tail(run.log))
            )
        self.listener = listener
        return procs

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.web_port, timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    def _bindings(self, run: RunDir) -> int:
        """Queues bound to the event exchange (the web process's relay queue and the listener's)."""
        client = redis.Redis.from_url(str(self.tools.redis_url))
        try:
            return int(client.scard("%s:bus:_kombu.binding.b3.events" % run.name))
        finally:
            client.close()

    def side_report(self, run: RunDir, jobs: int, settle_s: float) -> dict[str, Any]:
        """Did every job's waiting, active and completed reach the listener (in order, once) and the web process?"""
        listen = run.path / "listener"
        total = lambda: json.loads((listen / "status").read_text())["total"]  # noqa: E731
        last, since, deadline = -1, time.monotonic(), time.monotonic() + settle_s
        while time.monotonic() < deadline:  # until all arrived, or nothing new for 2 s
            now = total()
            if now >= 3 * jobs:
                break
            if now != last:
                last, since = now, time.monotonic()
            elif time.monotonic() - since > 2:
                break
            time.sleep(0.05)
        assert self.listener is not None
        stop(self.listener)  # SIGTERM: it writes events.json and exits
        got = json.loads((listen / "events.json").read_text())
        listener = score(got["rows"])
        listener.update(total=got["total"], messages=got["messages"])
        web = self._web_received()
        web_ok = all(web.get(event, 0) == jobs for event in LIFECYCLE)
        return {
            "events_expected_jobs": jobs,
            "listener": listener,
            "web_received": web,
            "web_ok": web_ok,
            "events_ok": listener["lifecycle_complete"] == jobs
            and not listener["out_of_order"]
            and not listener["duplicates"]
            and web_ok,
        }

    def _web_received(self) -> dict[str, float]:
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.web_port, timeout=5) as response:
                text = response.read().decode()
        except OSError as exc:
            return {"error": str(exc)}  # type: ignore[dict-item]
        pattern = r'^b3jobs_bus_events_received(?:_total)?\{event="([^"]+)"\} ([0-9.e+]+)$'
        return {m.group(1): float(m.group(2)) for m in re.finditer(pattern, text, re.M)}

    def diagnose(self, run: RunDir) -> str:
        """The store's counts (through the web process) when a drain hangs."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/api/v1/queues" % self.web_port, timeout=5) as response:
                return response.read().decode()[:400]
        except OSError as exc:
            return "queues: %s" % exc


class B3JobsSqlite(B3Jobs):
    """b3-jobs on SQLite with the consumer's default bus (memory://: events stay in its process)."""

    name, label, backend = "b3-jobs-sqlite", "b3-jobs", "sqlite"
    configs = ("1", "8")
    latency = False
    bulk_variants = ("bulk",)

    def side_start(self, run: RunDir, timeout_s: float) -> list[subprocess.Popen[bytes]]:
        return []

    def side_report(self, run: RunDir, jobs: int, settle_s: float) -> dict[str, Any]:
        return {}

    def diagnose(self, run: RunDir) -> str:
        done = subprocess.run(
            [self.tools.py, "-m", "runtime", "status"],
            env=self.env(run),
            cwd=self.tools.root,
            capture_output=True,
            text=True,
            timeout=30,
        )
        return (done.stdout + done.stderr)[-400:]


def build(tools: Tools, only: list[str] | None) -> list[System]:
    """Every system that can run here (BullMQ needs node, Celery its venv), filtered by `only`."""
    systems: list[System] = []
    if tools.node:
        systems.append(BullMQ(tools))
    systems += [Huey(tools, "plain"), Huey(tools, "priority")]
    if tools.celery_py:
        systems.append(Celery(tools))
    systems += [B3Jobs(tools), Huey(tools, "sqlite"), B3JobsSqlite(tools)]
    return [s for s in systems if not only or s.name in only]
