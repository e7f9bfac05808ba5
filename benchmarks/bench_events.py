"""Events at job speed: what the event bus costs b3-jobs, and whether every event arrives, in one run.

    .venv/bin/python benchmarks/bench_events.py                 # full run (3 reps, N = 20,000): ~15-25 min, quiet machine
    .venv/bin/python benchmarks/bench_events.py --quick         # smoke test: N = 2,000, 1 rep, no retries, ~40 s
    .venv/bin/python benchmarks/bench_events.py --table-from benchmarks/results_events.jsonl   # the report again
    .venv/bin/python benchmarks/bench_events.py --buses off redis --workers 1   # a subset (no RabbitMQ)

--table-from reports the saved runs with this invocation's N (add --quick for the smoke runs').

The store is Redis (BENCH_REDIS_URL, default redis://127.0.0.1:6379/0) in every configuration;
the bus is one of:
  off       LogSink (benchmarks/b3_consumer.py, the CLI consumer minus the bus);
  redis     BUS_URL = the same Redis (Kombu keys under the run's namespace, `<ns>:bus:`);
  rabbitmq  BUS_URL = BENCH_AMQP_URL (default amqp://guest:guest@127.0.0.1:5672//).
With the bus on, two more processes are bound to it before anything is enqueued: a web process
as deployed (`python -m runtime web` on a free port, same BUS_URL; its bridge's queue is bound
to `#`) and the measuring listener (benchmarks/event_listener.py: its own queue bound to `#`,
one decode_batch per message, noting per event its arrival time, name, job id and the
envelope's ts). Consumer and enqueuer are what `python -m runtime consumer` / `enqueue` run:
a KombuPublisher, so new jobs are staged until their job:waiting is published.

Cells, each --reps times, in a new shuffled order every repetition:
  drain (bus, workers 1 | 8):
    1. bulk enqueue: N noop jobs with Runtime.enqueue_many in chunks of 1,000 from this
       process (after one untimed warm-up enqueue of a delayed `echo` job). `bulk` = N / time
       of the calls; `visible` = N / time until the sink's flush() returned, i.e. every job
       released to the workers (with the bus: its job:waiting is on the broker).
    2. drain: ONE consumer process (1 worker, or 8 thread workers), started after the bulk
       enqueue. Rate = N / (last finished_at - first started_at) from the records, as in
       bench_runtime.py. The consumer keeps running until the listener has all 3N events of
       the run, or none came for 3 s.
    3. events (bus on): 3 per job are produced (job:waiting at enqueue, job:active and
       job:completed in the consumer). Received = distinct (job, event) pairs of the run's jobs
       at the listener; duplicates, jobs whose events arrived out of order and any other event
       of the run's jobs are counted too. Latency = arrival - envelope ts for job:active and
       job:completed (the events of the drain; job:waiting's, from the bulk burst, is kept
       apart); lag = arrival of the last event - finished_at of the last job. Events per bus
       message = the drain's events / the messages they came in (how well the consumer's
       publisher batches). The web process's received counts (its /metrics) are recorded too.
  single (bus): N sequential Runtime.enqueue calls from this process (call 0 untimed);
    with the bus, the listener's job:waiting count, latency and events per message.
The RabbitMQ exchange b3.events is shared with whatever else uses that broker: the listener
keeps only the events of the run's job ids; the web process's counts may include others'.
CPU (bench_runtime.CpuMeter): consumer, this process, redis-server, web, listener and, for the
RabbitMQ bus, beam.smp are ours; everything else is "foreign". A run with more foreign load
than --max-foreign cores (in the drain or in its enqueue) is repeated up to --retries times;
medians use clean runs (`*`: fewer than 3 clean runs, the 3 least disturbed are used).

Output: one JSON line per run appended to --out (benchmarks/results_events.jsonl), then a
markdown table of medians with the bus-on / bus-off ratios, and the issue's targets with
PASS/FAIL. Every run uses its own namespace and deletes its keys. The code measured is a
pinned copy (benchmarks/pinned.py); the header names its commit.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    from pinned import pin_code

    pin_code(__file__)
sys.path.insert(0, str(HERE))

import bench_runtime as br  # noqa: E402
from pinned import ORIGIN, code_version, remove_copy  # noqa: E402

from bus.urls import redact  # noqa: E402
from runtime.core.errors import ManifestError  # noqa: E402
from runtime.core.manifest import load_manifest  # noqa: E402
from runtime.core.settings import Settings  # noqa: E402
from runtime.engine import Runtime  # noqa: E402

PY = sys.executable
AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
BUS_URLS = {"off": None, "redis": br.REDIS_URL, "rabbitmq": AMQP_URL}
BUSES = tuple(BUS_URLS)
LIFECYCLE = ("job:waiting", "job:active", "job:completed")
DRAIN_EVENTS = ("job:active", "job:completed")  # the events the consumer emits while it drains
BULK_CHUNK = 1_000
START_S = 30  # web process and listener start-up
SETTLE_QUIET_S = 3.0  # after the drain: no new event of the run for this long, the rest is missing

# The targets.
LATENCY_P99_MS = 100.0
LAST_EVENT_LAG_S = 0.5
DRAIN_RATIO = 0.9
SINGLE_RATIO = 0.8
BULK_JOBS_S = 20_000


@dataclass
class EventRun:
    kind: str  # "drain": bulk enqueue, then one consumer drains; "single": sequential enqueue calls
    bus: str  # off | redis | rabbitmq
    workers: int  # 0 for "single"
    n: int
    rep: int
    at: str = ""
    enqueue_rate: float = 0.0  # drain: enqueue_many jobs/s (chunks of 1,000); single: calls/s
    visible_rate: float = 0.0  # drain: jobs/s until all could be taken (with the bus: job:waiting published)
    drain_rate: float = 0.0
    startup_s: float = 0.0
    cores: dict = field(default_factory=dict)  # drain (single: the enqueue loop): consumer, bench, redis, web, ...
    enqueue_cores: dict = field(default_factory=dict)  # drain: the bulk enqueue
    consumer_cpu_us_per_job: float = 0.0
    events_expected: int = 0
    events_received: int = 0  # distinct (job, event) of the run's jobs at the listener
    missing: dict = field(default_factory=dict)  # event -> count
    duplicates: int = 0
    out_of_order: int = 0  # jobs whose events arrived in another order than emitted
    unexpected: dict = field(default_factory=dict)  # other events of the run's jobs: event -> count
    latency_p50_ms: float = 0.0  # job:active and job:completed: arrival at the listener - envelope ts
    latency_p99_ms: float = 0.0
    latency_max_ms: float = 0.0
    waiting_p50_ms: float = 0.0  # job:waiting, the same way
    waiting_p99_ms: float = 0.0
    waiting_max_ms: float = 0.0
    last_event_lag_s: float = 0.0  # arrival of the run's last event - finished_at of its last job
    events_per_message: float = 0.0  # drain: job:active/completed per bus message; single: job:waiting
    web_received: dict = field(
        default_factory=dict
    )  # the web process's /metrics, lifecycle events (RabbitMQ: + others')
    dropped: int = 0  # events this process's publisher dropped
    consumer_log: str = ""  # error lines of the consumer, if any
    ok: bool = True
    note: str = ""


def run_foreign(run: EventRun) -> float:
    """The disturbance of a run: the larger foreign load of its drain and its enqueue phase."""
    return max(run.cores.get("foreign", 0), run.enqueue_cores.get("foreign", 0))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rabbitmq_pid() -> int | None:
    """The local RabbitMQ node's PID (beam.smp), for its CPU use, if it runs on this machine."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "comm").read_text().strip() == "beam.smp":
                return int(proc.name)
        except OSError:
            continue
    return None


def wait_for(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return sorted_values[max(0, math.ceil(q * len(sorted_values)) - 1)] if sorted_values else 0.0


# -- the processes bound to the bus ----------------------------------------------------------


class WebProcess:
    """`python -m runtime web` on a free port, its bridge bound to the bus as deployed."""

    def __init__(self, env: dict[str, str], tmp: Path):
        self.port = free_port()
        self.log = tmp / "web.log"
        env = dict(env, B3JOBS_HOST="127.0.0.1", B3JOBS_PORT=str(self.port))
        self.proc = br.spawn([PY, "-m", "runtime", "--log-level", "INFO", "web"], env, self.log)

    def ready(self) -> bool:
        """Serving HTTP, and its bridge consuming (its queue is bound)."""
        if self.proc.poll() is not None:
            raise RuntimeError("web process exited (rc %s): %s" % (self.proc.returncode, self.tail()))
        if "receiving events on" not in self.log.read_text(errors="replace"):
            return False
        try:
            return urllib.request.urlopen("http://127.0.0.1:%d/healthz" % self.port, timeout=2).status == 200
        except OSError:
            return False

    def received(self, expected: dict[str, int], wait_s: float = 3.0) -> dict[str, int]:
        """Lifecycle events its bridge received (its /metrics), once it has `expected` or after `wait_s`."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                got = self.scrape()
            except OSError:  # reported as nothing received; the listener's figures stand
                got = {}
            if all(got.get(e, 0) >= n for e, n in expected.items()) or time.monotonic() >= deadline:
                return got
            time.sleep(0.1)

    def scrape(self) -> dict[str, int]:
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.port, timeout=5).read().decode()
        out = {}
        for line in text.splitlines():
            if line.startswith("b3jobs_bus_events_received_total{"):
                labels, value = line.rsplit(" ", 1)
                event = labels.split('event="', 1)[1].split('"', 1)[0]
                if event in LIFECYCLE:
                    out[event] = int(float(value))
        return out

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-600:] if self.log.exists() else ""

    def stop(self) -> None:
        br.stop(self.proc)


class ListenerProcess:
    """benchmarks/event_listener.py: a queue bound to `#`, every event noted (see its docstring)."""

    def __init__(self, url: str, namespace: str, tmp: Path):
        self.dir = tmp / "listener"
        self.dir.mkdir()
        cmd = [PY, str(HERE / "event_listener.py"), "--url", url, "--namespace", namespace, "--dir", str(self.dir)]
        self.proc = br.spawn(cmd, dict(os.environ), self.dir / "log")

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("listener exited (rc %s): %s" % (self.proc.returncode, self.tail()))
        return (self.dir / "ready").exists()

    def expect(self, job_ids: list[str]) -> None:
        """Tell it the run's jobs: it counts their events from now on (others may share the broker)."""
        tmp = self.dir / "ids.tmp"
        tmp.write_text("\n".join(job_ids))
        os.replace(tmp, self.dir / "ids")

    def ours(self) -> int:
        try:
            return json.loads((self.dir / "status").read_text())["ours"]
        except (OSError, ValueError, KeyError):
            return 0

    def settle(self, expected: int, quiet_s: float = SETTLE_QUIET_S, limit_s: float = 120) -> None:
        """Wait until the listener has `expected` events of the run, or none came for `quiet_s`."""
        deadline, last, since = time.monotonic() + limit_s, -1, time.monotonic()
        while time.monotonic() < deadline:
            ours = self.ours()
            if ours >= expected:
                return
            if ours != last:
                last, since = ours, time.monotonic()
            elif time.monotonic() - since >= quiet_s:
                return
            time.sleep(0.05)

    def collect(self) -> dict:
        """Stop it; {"total": events, "messages": n, "rows": [[arrival, event, job id, ts], ...] of the run's jobs}."""
        br.stop(self.proc)
        path = self.dir / "events.json"
        if not path.exists():
            raise RuntimeError("listener wrote no events.json (rc %s): %s" % (self.proc.returncode, self.tail()))
        return json.loads(path.read_text())

    def tail(self) -> str:
        log = self.dir / "log"
        return log.read_text(errors="replace")[-600:] if log.exists() else ""

    def stop(self) -> None:
        br.stop(self.proc)


class BusSide:
    """The web process and the listener of one run (none with the bus off), started and stopped together."""

    def __init__(self, bus: str, env: dict[str, str], namespace: str, tmp: Path):
        url = BUS_URLS[bus]
        self.web = self.listener = None
        self.pids: dict[str, int | None] = {}
        if url is None:
            return
        self.listener = ListenerProcess(url, namespace, tmp)
        self.web = WebProcess(env, tmp)
        self.pids = {"web": self.web.proc.pid, "listener": self.listener.proc.pid}
        if bus == "rabbitmq":
            self.pids["rabbitmq"] = RABBITMQ_PID
        if not wait_for(self.listener.ready, START_S):
            raise RuntimeError("listener not bound within %ds: %s" % (START_S, self.listener.tail()))
        if not wait_for(self.web.ready, START_S, 0.1):
            raise RuntimeError("web process not receiving within %ds: %s" % (START_S, self.web.tail()))

    def stop(self) -> None:
        for proc in (self.listener, self.web):
            if proc is not None:
                proc.stop()


# -- one run -----------------------------------------------------------------------------------


def bench_env(bus: str, namespace: str, tmp: Path) -> dict[str, str]:
    env = br.b3_env("redis", namespace, tmp)
    env.pop("BUS_URL", None)
    if BUS_URLS[bus]:
        env["BUS_URL"] = BUS_URLS[bus]
    return env


def make_runtime(bus: str, env: dict[str, str]) -> Runtime:
    """The enqueuing side as the CLI builds it (runtime/cli.py _runtime(bus=True)), or with the LogSink."""
    settings = Settings.from_env(env)
    events = None
    if BUS_URLS[bus]:
        from bus.publisher import KombuPublisher

        events = KombuPublisher(BUS_URLS[bus], namespace=settings.namespace)
    return Runtime(settings, events=events)


def consumer_cmd(bus: str, workers: int) -> list[str]:
    if BUS_URLS[bus] is None:
        return [PY, str(HERE / "b3_consumer.py"), "--workers", str(workers)]
    return [
        PY,
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


def score_events(
    run: EventRun, got: dict, job_ids: list[str], expected: tuple[str, ...], last_finished: float | None
) -> None:
    """Received, missing, duplicated, out-of-order and other events of the run's jobs; latencies; lag."""
    rows, ours = got["rows"], set(job_ids)
    seen: set[tuple[str, str]] = set()
    order: dict[str, list[str]] = defaultdict(list)
    unexpected: Counter = Counter()
    latency: dict[str, list[float]] = defaultdict(list)
    messages: dict[str, set[int]] = defaultdict(set)
    last_arrival = 0.0
    for arrival, event, job_id, ts, message in rows:
        if job_id not in ours:
            continue
        last_arrival = max(last_arrival, arrival)
        if event not in expected:
            unexpected[event] += 1
            continue
        if (job_id, event) in seen:
            run.duplicates += 1
            continue
        seen.add((job_id, event))
        order[job_id].append(event)
        latency[event].append((arrival - ts) * 1000)
        messages[event].add(message)
    run.events_expected = len(ours) * len(expected)
    run.events_received = len(seen)
    run.missing = {e: len(ours) - len(latency[e]) for e in expected if len(latency[e]) < len(ours)}
    run.unexpected = dict(unexpected)
    run.out_of_order = sum(1 for events in order.values() if events != [e for e in expected if e in events])
    drain = sorted(x for e in DRAIN_EVENTS for x in latency[e])
    waiting = sorted(latency["job:waiting"])
    run.latency_p50_ms, run.latency_p99_ms, run.latency_max_ms = (percentile(drain, q) for q in (0.5, 0.99, 1.0))
    run.waiting_p50_ms, run.waiting_p99_ms, run.waiting_max_ms = (percentile(waiting, q) for q in (0.5, 0.99, 1.0))
    measured = DRAIN_EVENTS if last_finished is not None else expected  # the drain's events, or the enqueue's
    in_messages = len(set().union(*(messages[e] for e in measured)))
    run.events_per_message = sum(len(latency[e]) for e in measured) / in_messages if in_messages else 0.0
    if last_finished is not None and last_arrival:
        run.last_event_lag_s = last_arrival - last_finished


def consumer_problems(tmp: Path) -> str:
    log = tmp / "consumer.log"
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    bad = [line for line in lines if "ERROR" in line or "dropping" in line or "Traceback" in line]
    return " / ".join(bad[:3])[:400]


def run_drain(run: EventRun, tmp: Path, timeout: float) -> None:
    """Bulk enqueue N noop jobs, then drain them with one consumer; with the bus, score the events."""
    namespace = br.new_namespace()
    env = bench_env(run.bus, namespace, tmp)
    side = rt = None
    try:
        side = BusSide(run.bus, env, namespace, tmp)
        rt = make_runtime(run.bus, env)
        rt.enqueue("echo", {"text": "warm-up"}, delay=3600)  # connections, scripts; never runs in the drain
        rt.events.flush(10)
        ids: list[str] = []
        meter = br.CpuMeter(None, br.REDIS_PID, side.pids)
        meter.start()
        t0 = time.perf_counter()
        for start in range(0, run.n, BULK_CHUNK):
            ids.extend(record.id for record, _ in rt.enqueue_many("noop", [{}] * min(BULK_CHUNK, run.n - start)))
        t1 = time.perf_counter()
        released = rt.events.flush(timeout)
        t2 = time.perf_counter()
        run.enqueue_cores = meter.stop()
        run.enqueue_rate, run.visible_rate = run.n / (t1 - t0), run.n / (t2 - t0)
        if not released:
            run.ok, run.note = (
                False,
                "enqueue: the sink did not flush within %ss (%d buffered)" % (timeout, rt.events.buffered),
            )
            return
        if side.listener:
            side.listener.expect(ids)
        probe = br.B3Probe(rt, ids[: br.FIRST_IDS])
        settle = (lambda: side.listener.settle(3 * run.n)) if side.listener else None
        br.drain(
            run,
            consumer_cmd(run.bus, run.workers),
            env,
            tmp,
            timeout,
            done=lambda: probe.catch_first() and probe.left() == 0,
            window=probe.window,
            left=probe.left,
            first=probe.catch_first,
            settle=settle,
            pids=side.pids,
        )
        run.consumer_log = consumer_problems(tmp)
        if not run.ok:
            return
        counts = rt.counts()["noop"]
        if counts["failed"] or counts["waiting"] or counts["active"] or counts["delayed"]:
            run.ok, run.note = False, "counts after drain: %s" % counts
        if side.listener:
            score_events(run, side.listener.collect(), ids, LIFECYCLE, last_finished=probe.window()[1])
            run.web_received = side.web.received(dict.fromkeys(LIFECYCLE, run.n))
        run.dropped = rt.events.dropped
    finally:
        cleanup(side, rt)


def run_single(run: EventRun, tmp: Path, timeout: float) -> None:
    """N sequential Runtime.enqueue calls; with the bus, score their job:waiting events."""
    namespace = br.new_namespace()
    env = bench_env(run.bus, namespace, tmp)
    side = rt = None
    try:
        side = BusSide(run.bus, env, namespace, tmp)
        rt = make_runtime(run.bus, env)
        ids: list[str] = []
        meter = br.CpuMeter(None, br.REDIS_PID, side.pids)
        meter.start()
        run.enqueue_rate = br.timed_enqueue(lambda: ids.append(rt.enqueue("noop", {})[0].id), run.n)
        run.cores = meter.stop()
        if not rt.events.flush(timeout):
            run.ok, run.note = False, "the sink did not flush within %ss (%d buffered)" % (timeout, rt.events.buffered)
            return
        if side.listener:
            side.listener.expect(ids)
            side.listener.settle(run.n)
            score_events(run, side.listener.collect(), ids, ("job:waiting",), last_finished=None)
            run.web_received = side.web.received({"job:waiting": run.n})
        run.dropped = rt.events.dropped
    finally:
        cleanup(side, rt)


def cleanup(side: BusSide | None, rt: Runtime | None) -> None:
    """Stop the bus side first (it would recreate keys), then delete the run's keys."""
    if side is not None:
        side.stop()
    if rt is not None:
        rt.events.close()
        rt.store.destroy()
        rt.close()


def measure(kind: str, bus: str, workers: int, n: int, rep: int, timeout: float) -> EventRun:
    run = EventRun(kind, bus, workers, n, rep, at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    tmp = Path(tempfile.mkdtemp(prefix="b3bench-ev"))
    try:
        (run_drain if kind == "drain" else run_single)(run, tmp, timeout)
    except Exception as exc:  # keep going; the run is reported as failed
        run.ok, run.note = False, "%s: %s" % (type(exc).__name__, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run


# -- the plan and the report -----------------------------------------------------------------


Cell = tuple[str, str, int]  # (kind, bus, workers)


def cells(buses: list[str], workers: list[int]) -> list[Cell]:
    return [("drain", b, w) for b in buses for w in workers] + [("single", b, 0) for b in buses]


def describe(run: EventRun) -> str:
    if not run.ok:
        return "FAILED %s" % run.note
    parts = ["enqueue %6.0f/s" % run.enqueue_rate]
    if run.kind == "drain":
        parts += ["visible %6.0f/s" % run.visible_rate, "drain %6.0f/s" % run.drain_rate]
    if run.events_expected:
        parts.append(
            "events %d/%d dup %d order %d, %.1f/message"
            % (run.events_received, run.events_expected, run.duplicates, run.out_of_order, run.events_per_message)
        )
        if run.kind == "drain":
            parts.append(
                "latency p50/p99/max %.1f/%.1f/%.1f ms, last +%.3fs"
                % (run.latency_p50_ms, run.latency_p99_ms, run.latency_max_ms, run.last_event_lag_s)
            )
        else:
            parts.append("waiting latency p50/p99 %.1f/%.1f ms" % (run.waiting_p50_ms, run.waiting_p99_ms))
        if run.web_received:
            parts.append("web %s" % "/".join(str(run.web_received.get(e, 0)) for e in LIFECYCLE))
    parts.append("foreign %.2f" % run_foreign(run))
    if run.consumer_log:
        parts.append("consumer log: %s" % run.consumer_log)
    return "  ".join(parts)


class Medians:
    """Medians per cell over clean runs (bench_runtime.median_of, disturbance = run_foreign)."""

    def __init__(self, runs: list[EventRun], plan: list[Cell], max_foreign: float):
        self.max_foreign = max_foreign
        self.by_cell = {c: [r for r in runs if (r.kind, r.bus, r.workers) == c] for c in plan}

    def get(self, cell: Cell, key: str) -> tuple[float, str]:
        runs = self.by_cell.get(cell, [])
        return br.median_of(runs, self.max_foreign, key, foreign=run_foreign) if runs else (float("nan"), "!")

    def value(self, cell: Cell, key: str) -> float:
        return self.get(cell, key)[0]

    def ok(self, cell: Cell) -> list[EventRun]:
        return [r for r in self.by_cell.get(cell, []) if r.ok]

    def ratio(self, cell: Cell, key: str) -> float:
        base = self.value((cell[0], "off", cell[2]), key)
        return self.value(cell, key) / base if base else float("nan")


def fmt(value: float, mark: str = "", digits: int = 0) -> str:
    return "–" if math.isnan(value) else "{:,.{}f}{}".format(value, digits, mark)


def times(value: float) -> str:
    return "–" if math.isnan(value) else "%.2f×" % value


def received_text(runs: list[EventRun]) -> str:
    """The worst run's received/expected (all runs must have 100 %)."""
    scored = [r for r in runs if r.events_expected]
    if not scored:
        return "–"
    worst = min(scored, key=lambda r: r.events_received / r.events_expected)
    text = "%s/%s" % (f"{worst.events_received:,}", f"{worst.events_expected:,}")
    if worst.events_received < worst.events_expected:
        text += " (**%.2f %%**, missing %s)" % (100 * worst.events_received / worst.events_expected, worst.missing)
    extra = sum(r.duplicates for r in scored), sum(r.out_of_order for r in scored)
    if any(extra):
        text += "; dup %d, out of order %d" % extra
    return text


def report(runs: list[EventRun], plan: list[Cell], max_foreign: float) -> str:
    m = Medians(runs, plan, max_foreign)
    drains = [c for c in plan if c[0] == "drain"]
    singles = [c for c in plan if c[0] == "single"]
    lines = [
        "| bus | workers | drain (jobs/s) | drain ÷ bus off | events received / produced (worst run) "
        "| latency p50 / p99 / max (ms) | last event after last job (s) | events per bus message "
        "| bulk enqueue (jobs/s) | bulk ÷ bus off | bulk until visible (jobs/s) "
        "| consumer CPU µs/job | foreign cores | runs clean/all |",
        "|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in sorted(drains, key=lambda c: (c[2], BUSES.index(c[1]))):
        ok = m.ok(c)
        if not ok:
            note = m.by_cell[c][-1].note[:100].replace("|", "/") if m.by_cell[c] else "no runs"
            lines.append("| %s | %d | failed: %s | | | | | | | | | | | 0/%d |" % (c[1], c[2], note, len(m.by_cell[c])))
            continue
        bus_on = c[1] != "off"
        drn, enq, vis = m.get(c, "drain_rate"), m.get(c, "enqueue_rate"), m.get(c, "visible_rate")
        latency = "%s / %s / %s" % tuple(
            fmt(*m.get(c, k), digits=1) for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms")
        )
        clean = sum(1 for r in ok if run_foreign(r) <= max_foreign)
        lines.append(
            "| %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s | %.0f | %.2f | %d/%d |"
            % (
                c[1],
                c[2],
                fmt(*drn),
                times(m.ratio(c, "drain_rate")) if bus_on else "–",
                received_text(ok) if bus_on else "–",
                latency if bus_on else "–",
                fmt(*m.get(c, "last_event_lag_s"), digits=3) if bus_on else "–",
                fmt(*m.get(c, "events_per_message"), digits=1) if bus_on else "–",
                fmt(*enq),
                times(m.ratio(c, "enqueue_rate")) if bus_on else "–",
                fmt(*vis),
                statistics.median(r.consumer_cpu_us_per_job for r in ok),
                statistics.median(run_foreign(r) for r in ok),
                clean,
                len(m.by_cell[c]),
            )
        )
    lines += [
        "",
        "| bus | single enqueue (calls/s) | ÷ bus off | job:waiting received / produced (worst run) | job:waiting latency p50 / p99 / max (ms) "
        "| events per bus message | foreign cores | runs clean/all |",
        "|---|--:|--:|---|--:|--:|--:|--:|",
    ]
    for c in sorted(singles, key=lambda c: BUSES.index(c[1])):
        ok = m.ok(c)
        if not ok:
            note = m.by_cell[c][-1].note[:100].replace("|", "/") if m.by_cell[c] else "no runs"
            lines.append("| %s | failed: %s | | | | | | 0/%d |" % (c[1], note, len(m.by_cell[c])))
            continue
        bus_on = c[1] != "off"
        latency = "%s / %s / %s" % tuple(
            fmt(*m.get(c, k), digits=1) for k in ("waiting_p50_ms", "waiting_p99_ms", "waiting_max_ms")
        )
        clean = sum(1 for r in ok if run_foreign(r) <= max_foreign)
        lines.append(
            "| %s | %s | %s | %s | %s | %s | %.2f | %d/%d |"
            % (
                c[1],
                fmt(*m.get(c, "enqueue_rate")),
                times(m.ratio(c, "enqueue_rate")) if bus_on else "–",
                received_text(ok) if bus_on else "–",
                latency if bus_on else "–",
                fmt(*m.get(c, "events_per_message"), digits=1) if bus_on else "–",
                statistics.median(run_foreign(r) for r in ok),
                clean,
                len(m.by_cell[c]),
            )
        )
    lines += ["", "Targets (medians; `*` = fewer than 3 clean runs):", "", *targets(runs, m, plan)]
    return "\n".join(lines)


def targets(runs: list[EventRun], m: Medians, plan: list[Cell]) -> list[str]:
    """The issue's targets, one line each, PASS or FAIL."""
    out = []

    def line(passed: bool | None, text: str) -> None:
        out.append("- %s %s" % ("n/a (not measured)" if passed is None else "PASS" if passed else "**FAIL**", text))

    def check(value: float, passed: bool) -> bool | None:
        return None if math.isnan(value) else passed

    on_drains = [c for c in plan if c[0] == "drain" and c[1] != "off"]
    for c in on_drains:
        p99, mark = m.get(c, "latency_p99_ms")
        line(
            check(p99, p99 < LATENCY_P99_MS),
            "event latency p99 < %.0f ms, bus %s, %d worker(s): %s ms"
            % (LATENCY_P99_MS, c[1], c[2], fmt(p99, mark, 1)),
        )
    for c in on_drains:
        lag, mark = m.get(c, "last_event_lag_s")
        line(
            check(lag, lag <= LAST_EVENT_LAG_S),
            "last event within %.1f s of the last job finishing, bus %s, %d worker(s): %s s"
            % (LAST_EVENT_LAG_S, c[1], c[2], fmt(lag, mark, 3)),
        )
    for c in on_drains:
        ratio = m.ratio(c, "drain_rate")
        line(
            check(ratio, ratio >= DRAIN_RATIO),
            "drain bus on ≥ %.1f× bus off, bus %s, %d worker(s): %s (%s vs %s jobs/s)"
            % (
                DRAIN_RATIO,
                c[1],
                c[2],
                times(ratio),
                fmt(*m.get(c, "drain_rate")),
                fmt(*m.get(("drain", "off", c[2]), "drain_rate")),
            ),
        )
    scored = [r for r in runs if r.bus != "off" and (r.kind, r.bus, r.workers) in plan]
    short = [r for r in scored if r.ok and r.events_received < r.events_expected]
    broken = [r for r in scored if r.ok and (r.duplicates or r.out_of_order)]
    failed = [r for r in scored if not r.ok]
    line(
        bool(scored) and not short and not failed,
        "100 %% of lifecycle events received, every bus-on run: %d run(s), %d short%s%s"
        % (
            len(scored),
            len(short),
            "; %d failed run(s): %s"
            % (len(failed), "; ".join("%s/%s/w%d: %s" % (r.kind, r.bus, r.workers, r.note[:120]) for r in failed))
            if failed
            else "",
            "; %d with duplicates or out-of-order jobs" % len(broken) if broken else "",
        ),
    )
    for c in [c for c in plan if c[0] == "single" and c[1] != "off"]:
        ratio = m.ratio(c, "enqueue_rate")
        line(
            check(ratio, ratio >= SINGLE_RATIO),
            "single enqueue bus on ≥ %.1f× bus off, bus %s: %s (%s vs %s calls/s)"
            % (
                SINGLE_RATIO,
                c[1],
                times(ratio),
                fmt(*m.get(c, "enqueue_rate")),
                fmt(*m.get(("single", "off", 0), "enqueue_rate")),
            ),
        )
    for bus in dict.fromkeys(c[1] for c in plan if c[0] == "drain"):
        rates = [m.value(c, "enqueue_rate") for c in plan if c[0] == "drain" and c[1] == bus]
        rate = statistics.median(rates)
        line(
            check(rate, rate >= BULK_JOBS_S),
            "bulk enqueue ≥ %s jobs/s on Redis, bus %s: %s jobs/s" % (f"{BULK_JOBS_S:,}", bus, fmt(rate)),
        )
    return out


def run_plan(args: argparse.Namespace) -> str:
    """Every cell, --reps times in shuffled order; a disturbed run is tried again. Returns the report."""
    plan = cells(args.buses, args.workers)
    runs: list[EventRun] = []
    with open(args.out, "a") as out:
        for rep in range(args.reps):
            for kind, bus, workers in random.sample(plan, len(plan)):
                n = args.n if kind == "drain" else args.n_single
                for attempt in range(args.retries + 1):
                    run = measure(kind, bus, workers, n, rep, args.timeout)
                    run.note += " attempt %d" % attempt if attempt else ""
                    runs.append(run)
                    out.write(json.dumps(asdict(run)) + "\n")
                    out.flush()
                    print("%-6s %-8s w=%d rep %d: %s" % (kind, bus, workers, rep, describe(run)), flush=True)
                    if run.ok and run_foreign(run) <= args.max_foreign:
                        break
    return report(runs, plan, args.max_foreign)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n", type=int, default=20_000, help="jobs per drain (bulk-enqueued first)")
    parser.add_argument("--n-single", type=int, default=20_000, help="sequential enqueue calls per single run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--buses", nargs="+", default=list(BUSES), choices=BUSES)
    parser.add_argument("--max-foreign", type=float, default=0.15, help="cores of others' CPU use a clean run allows")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a disturbed run")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a drain (or a flush) may take")
    parser.add_argument("--out", default=str(ORIGIN / "benchmarks" / "results_events.jsonl"), help="raw runs, appended")
    parser.add_argument("--quick", action="store_true", help="N = 2,000, 1 rep, no retries: a smoke test")
    parser.add_argument(
        "--table-from", metavar="JSONL", help="only print the report of runs saved by --out (of this --n)"
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.n, args.n_single, args.retries = 1, 2000, 2000, 0
    if args.table_from:
        runs = [EventRun(**json.loads(line)) for line in Path(args.table_from).read_text().splitlines()]
        runs = [r for r in runs if r.n == (args.n if r.kind == "drain" else args.n_single)]
        plan = [c for c in cells(args.buses, args.workers) if any((r.kind, r.bus, r.workers) == c for r in runs)]
        print(report(runs, plan, args.max_foreign))
        return

    print(
        "# %s, %d cores, Python %s, load %s"
        % (time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.cpu_count(), sys.version.split()[0], os.getloadavg()),
        flush=True,
    )
    print("# code: %s, run from a copy: %s" % (code_version(), br.ROOT), flush=True)
    print(
        "# store %s; buses: %s; N = %d (drain), %d (single); %d rep(s)"
        % (
            br.REDIS_URL,
            ", ".join("%s=%s" % (b, BUS_URLS[b] and redact(BUS_URLS[b])) for b in args.buses),
            args.n,
            args.n_single,
            args.reps,
        ),
        flush=True,
    )
    try:
        load_manifest(br.MANIFEST)
    except ManifestError as exc:
        sys.exit("the test manifest does not load (being edited?), try again: %s" % exc)
    try:
        print("\n" + run_plan(args), flush=True)
    finally:
        remove_copy()


RABBITMQ_PID = rabbitmq_pid()

if __name__ == "__main__":
    main()
