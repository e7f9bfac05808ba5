"""Prometheus metrics at `/metrics`: store-wide gauges and totals, histograms fed from the bus.

Two sources, because they answer different questions:

- The job store, read at each scrape: jobs per state and name, the running totals (started,
  completed, failed, retried, stalled) and the consumers whose lease heartbeat is recent. These
  live in the store, so every web process reports the same numbers.
- The bus, as this web process receives it: run time (`job:completed` carries `duration_s`) and
  queue wait (from a job's `job:waiting` to its `job:active`), per job name. Every web process
  receives every event, so each one's histograms describe the whole system since it started.

Each app has its own CollectorRegistry, so two apps in one process (tests) never collide.
"""

from __future__ import annotations

import collections
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from bus.envelope import Envelope
from runtime.core.events import EventSink
from runtime.core.records import STATES
from runtime.engine import Runtime
from runtime.store.base import METRICS as TOTALS
from runtime.store.outage import STORE_ERRORS
from runtime.web.api import RUNTIME, blocking

logger = logging.getLogger("b3jobs.metrics")

# From a few milliseconds (a cache hit) to an hour (a daily batch), roughly x2.5 per step.
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
MAX_WAITING_TRACKED = 100_000  # job ids between job:waiting and job:active; the oldest are forgotten first
ACTIVITY_MINUTES = 15
MAX_EVENT_LABELS = 200  # distinct event names counted by name; beyond, "other"
LABEL = "job_name"  # not "job": Prometheus sets `job` on every scraped series itself


class Activity:
    """Jobs completed and failed per job name and minute, over the last minutes, from bus events."""

    def __init__(self, minutes: int = ACTIVITY_MINUTES) -> None:
        self.minutes = minutes
        self.since = time.time()
        self._lock = threading.Lock()
        self._counts: dict[str, dict[int, list[int]]] = collections.defaultdict(dict)

    def add(self, name: str, failed: bool, ts: float) -> None:
        minute = int(ts // 60)
        with self._lock:
            by_minute = self._counts[name]
            by_minute.setdefault(minute, [0, 0])[1 if failed else 0] += 1
            for old in [m for m in by_minute if m <= minute - self.minutes]:
                del by_minute[old]

    def series(self, name: str, now: float) -> list[tuple[int, int]]:
        """(completed, failed) for each of the last `minutes` minutes, oldest first, the current one last."""
        current = int(now // 60)
        with self._lock:
            by_minute = dict(self._counts.get(name, {}))
        return [tuple(by_minute.get(m, (0, 0))) for m in range(current - self.minutes + 1, current + 1)]  # type: ignore[misc]


class BusMetrics:
    """What this web process learns from the events it receives: histograms, activity, events seen."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.run_time = Histogram(
            "b3jobs_job_run_seconds",
            "Run time of completed jobs (job:completed duration_s)",
            [LABEL],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "b3jobs_job_wait_seconds",
            "Time from a job's job:waiting to its job:active",
            [LABEL],
            buckets=DURATION_BUCKETS_S,
            registry=registry,
        )
        self.received = Counter(
            "b3jobs_bus_events_received",
            "Events this web process received from the bus, by event name",
            ["event"],
            registry=registry,
        )
        self.activity = Activity()
        self.fed = False  # whether a bus feeds this app at all (build_web) or not (create_app alone)
        self._lock = threading.Lock()
        self._waiting_since: collections.OrderedDict[str, float] = collections.OrderedDict()
        self._event_labels: set[str] = set()

    def observe_many(self, envelopes: list[Envelope]) -> None:
        """Called with every batch of events off the bus (on the bridge's thread); never raises."""
        try:
            for envelope in envelopes:
                self.observe(envelope)
        except Exception:  # metrics must never break the bridge that feeds the relay
            logger.exception("metrics: could not observe an event")

    def observe(self, envelope: Envelope) -> None:
        event = envelope.event
        if event not in self._event_labels:
            # Handlers name their own events; a bug emitting endless names must not explode the series.
            if len(self._event_labels) >= MAX_EVENT_LABELS:
                event = "other"
            self._event_labels.add(event)
        self.received.labels(event).inc()
        if envelope.job is None:
            return
        job_id, name, event = envelope.job.id, envelope.job.name, envelope.event
        if event == "job:waiting":
            with self._lock:
                self._waiting_since[job_id] = envelope.ts
                self._waiting_since.move_to_end(job_id)
                while len(self._waiting_since) > MAX_WAITING_TRACKED:
                    self._waiting_since.popitem(last=False)
        elif event == "job:active":
            with self._lock:
                since = self._waiting_since.pop(job_id, None)
            if since is not None:
                self.queue_wait.labels(name).observe(max(0.0, envelope.ts - since))
        elif event in ("job:completed", "job:failed", "job:delayed"):
            with self._lock:
                self._waiting_since.pop(job_id, None)
            if event == "job:completed":
                duration = envelope.data.get("duration_s")
                if isinstance(duration, (int, float)) and math.isfinite(duration) and duration >= 0:
                    self.run_time.labels(name).observe(duration)
            if event != "job:delayed":
                self.activity.add(name, event == "job:failed", envelope.ts)


@dataclass
class Snapshot:
    """The store's side of one scrape, read off the event loop."""

    counts: dict[str, dict[str, int]]
    totals: dict[str, dict[str, int]]
    paused: set[str]
    consumers: dict[str, float]
    taken_s: float = 0.0
    names: list[str] = field(default_factory=list)


def take_snapshot(runtime: Runtime) -> Snapshot:
    """The store's counts, totals, paused names and live consumers: one read for /metrics and the dashboard."""
    started = time.perf_counter()
    names = sorted(runtime.manifest.jobs)
    counts = runtime.store.counts(names)
    totals = runtime.store.stats(names)
    paused = runtime.store.paused()
    consumers = runtime.store.consumers(since_ts=time.time() - 3 * runtime.settings.lease_s)
    return Snapshot(counts, totals, paused, consumers, time.perf_counter() - started, names)


def publisher_counts(sink: EventSink) -> tuple[int, int, int] | None:
    """(published, dropped, buffered) of the runtime's bus publisher; None when events go to no bus (a log, a test)."""
    return (sink.published, sink.dropped, sink.buffered) if sink.holds_events else None


class StoreCollector:
    """Yields the families of the snapshot set just before each `generate_latest`."""

    def __init__(self, runtime: Runtime, relay: Any) -> None:
        self.runtime = runtime
        self.relay = relay
        self.snapshot: Snapshot | None = None

    def describe(self) -> list[Metric]:
        return []  # families vary with the store's content; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        up = GaugeMetricFamily("b3jobs_store_up", "Whether the job store answered this scrape")
        up.add_metric([], 0 if snap is None else 1)
        yield up
        if snap is not None:
            yield from self._store_families(snap)
        events = publisher_counts(self.runtime.events)
        if events is not None:
            published = CounterMetricFamily("b3jobs_events_published", "Events this web process published to the bus")
            published.add_metric([], events[0])
            dropped = CounterMetricFamily(
                "b3jobs_events_dropped", "Events this web process dropped (its outage buffer full, or unencodable)"
            )
            dropped.add_metric([], events[1])
            buffered = GaugeMetricFamily(
                "b3jobs_events_buffered",
                "Events this web process emitted and has not published yet (kept through an outage)",
            )
            buffered.add_metric([], events[2])
            yield published
            yield dropped
            yield buffered
        if self.relay is not None:
            stats = self.relay.stats()
            clients = GaugeMetricFamily("b3jobs_relay_clients", "Websocket clients connected to this relay")
            clients.add_metric([], stats.get("clients", 0))
            ingested = CounterMetricFamily("b3jobs_relay_events", "Events this relay received and numbered")
            ingested.add_metric([], stats.get("events_ingested", 0))
            slow = CounterMetricFamily("b3jobs_relay_slow_disconnects", "Websocket clients closed for being too slow")
            slow.add_metric([], stats.get("slow_disconnects", 0))
            yield from (clients, ingested, slow)

    def _store_families(self, snap: Snapshot) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("b3jobs_jobs", "Jobs in the registry by job name and state", labels=[LABEL, "state"])
        for name, by_state in snap.counts.items():
            for state in STATES:
                jobs.add_metric([name, state], by_state.get(state, 0))
        yield jobs
        paused = GaugeMetricFamily("b3jobs_queue_paused", "1 when the job name is paused", labels=[LABEL])
        for name in snap.counts:
            paused.add_metric([name], 1 if name in snap.paused else 0)
        yield paused
        helps = {
            "started": "Attempts started (a retried job starts again)",
            "completed": "Jobs completed",
            "failed": "Jobs failed for good (attempts exhausted, unrecoverable, stalled too often)",
            "retried": "Attempts that failed and were scheduled again",
            "stalled": "Attempts whose worker died or stopped heartbeating",
        }
        for total in TOTALS:
            family = CounterMetricFamily("b3jobs_jobs_%s" % total, helps[total], labels=[LABEL])
            for name, values in snap.totals.items():
                family.add_metric([name], values.get(total, 0))
            yield family
        alive = GaugeMetricFamily(
            "b3jobs_consumers_alive", "Consumer processes with a lease heartbeat in the last 3 leases"
        )
        alive.add_metric([], len(snap.consumers))
        yield alive
        took = GaugeMetricFamily("b3jobs_scrape_store_seconds", "Time this scrape spent reading the job store")
        took.add_metric([], snap.taken_s)
        yield took


class Metrics:
    """The per-app registry and its collectors; `render` produces one scrape."""

    def __init__(self, runtime: Runtime, relay: Any = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.bus = BusMetrics(self.registry)
        self.store = StoreCollector(runtime, relay)
        self.registry.register(self.store)
        self._render_lock = threading.Lock()

    def render(self, snapshot: Snapshot | None) -> bytes:
        with self._render_lock:
            self.store.snapshot = snapshot
            try:
                return generate_latest(self.registry)
            finally:
                self.store.snapshot = None


METRICS: web.AppKey[Metrics] = web.AppKey("metrics", Metrics)
SCRAPE_ERRORS: tuple[type[BaseException], ...] = (*STORE_ERRORS, redis.RedisError, sqlite3.Error)


async def metrics_handler(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format. A store outage still answers, with b3jobs_store_up 0."""
    runtime = request.app[RUNTIME]
    try:
        snapshot: Snapshot | None = await blocking(take_snapshot, runtime)
    except SCRAPE_ERRORS as exc:  # any store failure: store_up 0
        logger.warning("metrics: job store unreachable: %s", exc)
        snapshot = None
    body = request.app[METRICS].render(snapshot)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def bus_tap(app: web.Application) -> Callable[[list[Envelope]], None]:
    """The function the bus bridge calls with every batch of events, for this app's histograms."""
    bus = app[METRICS].bus
    bus.fed = True
    return bus.observe_many


def setup_metrics(app: web.Application, relay: Any = None) -> Metrics:
    """Give the app its own registry and `GET /metrics`."""
    metrics = Metrics(app[RUNTIME], relay)
    app[METRICS] = metrics
    app.router.add_get("/metrics", metrics_handler)
    return metrics
