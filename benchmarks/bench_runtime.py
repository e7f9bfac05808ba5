"""Runtime throughput: b3-jobs against bare Huey, on Redis and on SQLite, in one run.

    .venv/bin/python benchmarks/bench_runtime.py                  # full run, ~10 min
    .venv/bin/python benchmarks/bench_runtime.py --quick          # smoke test, small N, 1 rep
    .venv/bin/python benchmarks/bench_runtime.py --commandstats --bus-check   # + Redis commands per job, event delivery

Systems: bare Huey (`PriorityRedisHuey`, the storage class b3-jobs uses on Redis; plain
`RedisHuey` as a second reference; `SqliteHuey`), all with results=False and a noop task, and
b3-jobs (a `Runtime` with the `noop` job of tests/schedules.toml, records on, as shipped).

Protocol, for each (backend, system, workers) cell and repetition:
  1. enqueue: this process makes N single enqueue calls (`task({})` / `Runtime.enqueue`).
     Call 0 is untimed (connection set-up); the rate is (N-1) / time of calls 1..N-1.
  2. drain: ONE consumer subprocess (1 worker, or 8 thread workers) is started and stopped by
     PID. Rate = N / (last job finished - first job started), so start-up is excluded.
     b3-jobs: the records' started_at (first jobs, caught by polling them before the
     completed-record trim removes them) and finished_at (newest completed record).
     bare Huey: the task itself writes time.time() on its 1st and N-th call (bare_huey.py).
     No per-job extra I/O on either side.
  3. CPU during the run (spawn → drained), from /proc: our consumer, this process, the
     (shared) redis-server, and everything else ("foreign"). A run with more foreign load
     than --max-foreign cores is repeated (up to --retries times); medians use clean runs.
Results: one JSON line per run (--out), and a markdown table on stdout.

Keys: every run uses its own namespace (bench<random>) on the Redis at BENCH_REDIS_URL
(default redis://127.0.0.1:6379/0) and deletes its keys afterwards. SQLite files live in a
temporary directory that is removed at the end.

Pinned code (benchmarks/pinned.py): others edit runtime/, bus/ and tests/ while this runs, so
the script first copies the project's packages (runtime/, bus/, ...), benchmarks/,
tests/schedules.toml and tests/testjobs/ to a temporary directory and runs from there
(PYTHONPATH, cwd): every run of one invocation measures the same code.
The header line names the commit and the uncommitted files it was copied from.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
PY = sys.executable

if __name__ == "__main__":
    from pinned import pin_code

    pin_code(__file__)
sys.path.insert(0, str(HERE))

from pinned import ORIGIN, ROOT, code_version, remove_copy  # noqa: E402

MANIFEST = ROOT / "tests" / "schedules.toml"

import bare_huey  # noqa: E402

from runtime.core.errors import ManifestError  # noqa: E402
from runtime.core.manifest import load_manifest  # noqa: E402
from runtime.core.settings import Settings, bus_url  # noqa: E402
from runtime.engine import Runtime  # noqa: E402

REDIS_URL = bare_huey.REDIS_URL
HZ = os.sysconf("SC_CLK_TCK")
FIRST_IDS = 16  # b3-jobs: the first-enqueued jobs whose started_at we catch (≥ worker count)
SYSTEMS = {
    "redis": ("huey-priority", "huey-plain", "b3-jobs", "b3-jobs+bus"),
    "sqlite": ("huey-sqlite", "b3-jobs", "b3-jobs+bus"),
}
BASELINE = {"redis": "huey-priority", "sqlite": "huey-sqlite"}  # bare Huey on b3-jobs' own storage class
BARE_KIND = {"huey-priority": "priority", "huey-plain": "plain", "huey-sqlite": "sqlite"}


@dataclass
class Run:
    backend: str
    system: str
    workers: int
    n: int
    rep: int
    enqueue_rate: float = 0.0
    drain_rate: float = 0.0
    startup_s: float = 0.0
    cores: dict = field(default_factory=dict)  # consumer, bench (this process), redis, foreign
    consumer_cpu_us_per_job: float = 0.0
    ok: bool = True
    note: str = ""


# -- CPU accounting --------------------------------------------------------------------------


def _busy_jiffies() -> int:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq = fields[:7]
    return user + nice + system + irq + softirq


def _proc_jiffies(pid: int | None) -> int:
    if not pid:
        return 0
    try:
        stat = Path("/proc/%d/stat" % pid).read_text()
    except OSError:
        return 0
    rest = stat.rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime


class CpuMeter:
    """Cores used between start() and stop() by: the consumer, us, redis-server, `others`, and all the rest.

    `others` names more processes of the benchmark (a web process, a listener, the broker) so
    their CPU is not counted as foreign.
    """

    def __init__(self, consumer_pid: int | None, redis_pid: int | None, others: dict[str, int | None] | None = None):
        self.pids = {"consumer": consumer_pid, "bench": os.getpid(), "redis": redis_pid, **(others or {})}

    def _sample(self) -> tuple[float, int, dict[str, int]]:
        return time.monotonic(), _busy_jiffies(), {k: _proc_jiffies(p) for k, p in self.pids.items()}

    def start(self) -> None:
        self.t0, self.busy0, self.own0 = self._sample()

    def stop(self) -> dict[str, float]:
        t1, busy1, own1 = self._sample()
        secs = (t1 - self.t0) * HZ
        cores = {k: (own1[k] - self.own0[k]) / secs for k in self.pids}
        cores["foreign"] = max(0.0, (busy1 - self.busy0) / secs - sum(cores.values()))
        cores["seconds"] = t1 - self.t0
        return {k: round(v, 3) for k, v in cores.items()}


def redis_pid() -> int | None:
    """The local redis-server's PID (for its CPU use), if it runs on this machine."""
    try:
        pid = int(redis.Redis.from_url(REDIS_URL).info("server")["process_id"])
        return pid if Path("/proc/%d" % pid).exists() else None
    except Exception:
        return None


# -- processes -------------------------------------------------------------------------------


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """Stop the consumer we started, by its PID: SIGTERM (Huey's immediate stop), then SIGKILL."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(predicate, timeout: float, interval: float, proc: subprocess.Popen):
    """Poll predicate() until it returns something truthy; None on timeout or if proc died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            return predicate() or None
        time.sleep(interval)
    return None


def new_namespace() -> str:
    return "bench%s" % uuid.uuid4().hex[:10]


def timed_enqueue(call, n: int, phase=None) -> float:
    """Make n enqueue calls; the rate of calls 1..n-1 (call 0 sets up connections)."""
    call()
    if phase:
        phase("enqueue")
    t0 = time.perf_counter()
    for _ in range(n - 1):
        call()
    rate = (n - 1) / (time.perf_counter() - t0)
    if phase:
        phase("enqueued")
    return rate


# -- bare Huey -------------------------------------------------------------------------------


def run_bare(run: Run, tmp: Path, timeout: float, phase=None, name: str | None = None) -> None:
    kind = BARE_KIND[run.system]
    name = name or new_namespace()
    db = str(tmp / ("%s.db" % name)) if kind == "sqlite" else None
    marks = tmp / name
    marks.mkdir()
    huey, task = bare_huey.make_huey(kind, name, db)
    try:
        run.enqueue_rate = timed_enqueue(lambda: task({}), run.n, phase)
        cmd = [
            PY,
            str(HERE / "bare_huey.py"),
            "--kind",
            kind,
            "--name",
            name,
            "--workers",
            str(run.workers),
            "--total",
            str(run.n),
            "--marks",
            str(marks),
        ] + (["--sqlite", db] if db else [])
        drain(
            run,
            cmd,
            os.environ.copy(),
            tmp,
            timeout,
            done=lambda: (marks / "last").exists(),
            window=lambda: (float((marks / "first").read_text()), float((marks / "last").read_text())),
            left=huey.pending_count,
            phase=phase,
        )
    finally:
        if kind == "sqlite":
            huey.storage.close()
        else:
            s = huey.storage
            s.conn.delete(s.queue_key, s.schedule_key, s.result_key, s.counter_key)
            s.pool.disconnect()


# -- b3-jobs ---------------------------------------------------------------------------------


def b3_env(backend: str, namespace: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL",)}
    env.update(B3JOBS_NAMESPACE=namespace, B3JOBS_DATA_DIR=str(data_dir), B3JOBS_MANIFEST=str(MANIFEST))
    if backend == "redis":
        env["REDIS_URL"] = REDIS_URL
    return env


class B3Probe:
    """Looks at a b3-jobs store, through the Runtime's own API, while a consumer drains it."""

    def __init__(self, rt: Runtime, first_ids: list[str]):
        self.rt, self.first_ids, self.started = rt, first_ids, {}

    def catch_first(self) -> bool:
        """Note started_at of the first-enqueued jobs (before the keep_completed trim deletes them)."""
        for job_id in self.first_ids:
            if job_id not in self.started:
                record = self.rt.store.get(job_id)
                if record is not None and record.started_at:
                    self.started[job_id] = record.started_at
        return len(self.started) == len(self.first_ids)

    def left(self) -> int:
        """Jobs of the run not finished yet."""
        counts = self.rt.counts().get("noop", {})
        return sum(counts.get(state, 0) for state in ("waiting", "delayed", "active"))

    def window(self) -> tuple[float, float]:
        newest = self.rt.list(state="completed", name="noop", limit=1)
        return min(self.started.values()), newest[0].finished_at


def run_b3(run: Run, tmp: Path, timeout: float, phase=None, name: str | None = None, listen: bool = False) -> None:
    """b3-jobs: the default Runtime and benchmarks/b3_consumer.py; "+bus": as the CLI does it, events on Kombu.

    listen=True (bus only) binds a queue to the event exchange, as a web process does, lets the
    consumer run until no more events arrive, and notes how many of the 3 per job got there.
    """
    bus = run.system.endswith("+bus")
    namespace = name or new_namespace()
    env = b3_env(run.backend, namespace, tmp)
    settings = Settings.from_env(env)
    events = None
    if bus:  # what `python -m runtime enqueue` / the consumer build: runtime/cli.py _runtime(bus=True)
        from bus.publisher import KombuPublisher

        events = KombuPublisher(bus_url(settings), namespace=namespace)
    rt = Runtime(settings, events=events)
    listener = EventCounter(events.url, namespace) if listen else None
    try:
        ids: list[str] = []
        run.enqueue_rate = timed_enqueue(lambda: ids.append(rt.enqueue("noop", {})[0].id), run.n, phase)
        probe = B3Probe(rt, ids[:FIRST_IDS])
        consumer = ["-m", "runtime", "--log-level", "WARNING", "consumer"] if bus else [str(HERE / "b3_consumer.py")]
        cmd = [PY, *consumer, "--workers", str(run.workers)] + (["--worker-type", "thread", "--no-cron"] if bus else [])
        drain(
            run,
            cmd,
            env,
            tmp,
            timeout,
            done=lambda: probe.catch_first() and probe.left() == 0,
            window=probe.window,
            left=probe.left,
            first=probe.catch_first,
            phase=phase,
            settle=listener.settle if listener else None,
        )
        if listener:
            got = listener.count()
            run.note += "events delivered: %d of %d (%.0f%%)" % (got, 3 * run.n, 100 * got / (3 * run.n))
        counts = rt.counts()["noop"]
        if run.ok and (counts["failed"] or counts["waiting"] or counts["active"] or counts["delayed"]):
            run.ok, run.note = False, "counts after drain: %s" % counts
    finally:
        if events is not None:
            events.close()
        if listener:
            listener.close()
        rt.store.destroy()
        rt.close()


class EventCounter:
    """A queue bound to `#` on the event exchange (as a web process binds one), to count deliveries."""

    def __init__(self, url: str, namespace: str):
        from kombu import Connection, Queue

        from bus.publisher import exchange, transport_options

        self.conn = Connection(url, transport_options=transport_options(url, namespace))
        self.queue = Queue("bench.events.%s" % namespace, exchange=exchange(), routing_key="#", durable=False)
        self.bound = self.queue(self.conn.default_channel)
        self.bound.declare()

    def count(self) -> int:
        # queue_declare(passive=True) says 404 here: Kombu's Redis transport checks the queue's
        # key without the global_keyprefix. The channel's own size method uses the right key.
        return self.bound.channel._size(self.queue.name)

    def settle(self, quiet: float = 1.0, limit: float = 60) -> None:
        """Wait until no event has arrived for `quiet` seconds (the publisher thread caught up)."""
        deadline, last, since = time.monotonic() + limit, -1, time.monotonic()
        while time.monotonic() < deadline:
            now_count = self.count()
            if now_count != last:
                last, since = now_count, time.monotonic()
            elif time.monotonic() - since >= quiet:
                return
            time.sleep(0.1)

    def close(self) -> None:
        self.bound.delete()
        self.conn.release()


# -- the drain, common to both ---------------------------------------------------------------


def drain(
    run: Run,
    cmd: list[str],
    env: dict,
    tmp: Path,
    timeout: float,
    done,
    window,
    left,
    first=None,
    phase=None,
    settle=None,
    pids: dict[str, int | None] | None = None,
) -> None:
    """Start the consumer, wait for the queue to drain, compute the rate from the job timestamps.

    `settle()`, if given, runs after the drain while the consumer still runs (its events go out);
    `pids` are more processes of the benchmark whose CPU is not foreign (see CpuMeter).
    """
    log = tmp / "consumer.log"
    spawned = time.time()
    proc = spawn(cmd, env, log)
    meter = CpuMeter(proc.pid, REDIS_PID, pids)
    meter.start()
    try:
        if first is not None:  # catch the first jobs' records quickly, then poll slowly
            wait_until(first, timeout, 0.005, proc)
        finished = wait_until(done, timeout, 0.2, proc)  # the rate comes from the jobs' own timestamps
        cpu = meter.stop()
        if settle is not None and finished:
            settle()
    finally:
        stop(proc)
    if phase:
        phase("drained")
    if not finished:
        tail = log.read_text(errors="replace")[-600:] if log.exists() else ""
        run.ok, run.note = (
            False,
            "not drained after %ss (%s jobs left, consumer rc %s); log tail: %s"
            % (timeout, left(), proc.returncode, tail),
        )
        return
    first, last = window()
    run.drain_rate = run.n / (last - first)
    run.startup_s = first - spawned
    run.cores = cpu
    run.consumer_cpu_us_per_job = cpu["consumer"] * cpu["seconds"] / run.n * 1e6


# -- the plan and the report -----------------------------------------------------------------


def measure(backend: str, system: str, workers: int, n: int, rep: int, timeout: float, listen: bool = False) -> Run:
    run = Run(backend, system, workers, n, rep)
    tmp = Path(tempfile.mkdtemp(prefix="b3bench"))
    try:
        if system.startswith("b3"):
            run_b3(run, tmp, timeout, listen=listen)
        else:
            run_bare(run, tmp, timeout)
    except Exception as exc:  # keep going; the run is reported as failed
        run.ok, run.note = False, "%s: %s" % (type(exc).__name__, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run


def cells(backends: list[str], workers: list[int]) -> list[tuple[str, str, int]]:
    return [(b, s, w) for b in backends for w in workers for s in SYSTEMS[b]]


def foreign_cores(run) -> float:
    """How much other processes' CPU disturbed a run (cores)."""
    return run.cores.get("foreign", 0)


def median_of(runs: list[Run], max_foreign: float, key: str, foreign=foreign_cores) -> tuple[float, str]:
    """Median over clean runs; with fewer than 3, over the 3 least disturbed (marked *)."""
    good = [r for r in runs if r.ok]
    clean = [r for r in good if foreign(r) <= max_foreign]
    if len(clean) >= 3:
        return statistics.median(getattr(r, key) for r in clean), ""
    least = sorted(good, key=foreign)[:3]
    return (statistics.median(getattr(r, key) for r in least), "*") if least else (float("nan"), "!")


def report(runs: list[Run], plan: list[tuple[str, str, int]], max_foreign: float) -> str:
    """The markdown table: medians per cell, and b3-jobs' rates as a fraction of bare Huey's."""
    by_cell = {c: [r for r in runs if (r.backend, r.system, r.workers) == c] for c in plan}
    med = {c: {k: median_of(rs, max_foreign, k) for k in ("enqueue_rate", "drain_rate")} for c, rs in by_cell.items()}

    def ratio(c: tuple[str, str, int], ref: str, key: str) -> str:
        base = med.get((c[0], ref, c[2]))
        return "%.2f×" % (med[c][key][0] / base[key][0]) if base and c[1].startswith("b3") else "–"

    lines = [
        "| backend | workers | system | enqueue (jobs/s) | drain (jobs/s) | enqueue ÷ bare Huey (same storage) "
        "| drain ÷ bare Huey (same storage) | drain ÷ RedisHuey | consumer CPU µs/job | foreign cores | runs clean/all |",
        "|---|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in sorted(plan, key=lambda c: (c[0] != "redis", c[2], SYSTEMS[c[0]].index(c[1]))):
        backend, system, workers = c
        ok = [r for r in by_cell[c] if r.ok]
        (enq, m1), (drn, m2) = med[c]["enqueue_rate"], med[c]["drain_rate"]
        cpu = statistics.median(r.consumer_cpu_us_per_job for r in ok) if ok else float("nan")
        foreign = statistics.median(r.cores.get("foreign", 0) for r in ok) if ok else float("nan")
        clean = sum(1 for r in ok if r.cores.get("foreign", 0) <= max_foreign)
        plain = ratio(c, "huey-plain", "drain_rate") if backend == "redis" else "–"
        if not ok:
            lines.append(
                "| %s | %d | %s | failed: %s | | | | | | | 0/%d |"
                % (backend, workers, system, by_cell[c][-1].note[:80].replace("|", "/"), len(by_cell[c]))
            )
            continue
        lines.append(
            "| %s | %d | %s | %s%s | %s%s | %s | %s | %s | %.0f | %.2f | %d/%d |"
            % (
                backend,
                workers,
                system,
                f"{enq:,.0f}",
                m1,
                f"{drn:,.0f}",
                m2,
                ratio(c, BASELINE[backend], "enqueue_rate"),
                ratio(c, BASELINE[backend], "drain_rate"),
                plain,
                cpu,
                foreign,
                clean,
                len(by_cell[c]),
            )
        )
    return "\n".join(lines)


# -- Redis commands per job ------------------------------------------------------------------


class CommandCounter(threading.Thread):
    """Counts, from MONITOR, the Redis commands that name one namespace, split into phases.

    The benchmark marks a phase with `ECHO <marker>:<phase>`; MONITOR keeps the server's order,
    so the split is exact. Commands that other clients of the shared Redis send don't name our
    namespace and are left out; so are this process's own connections (the ones that enqueued)
    once the consumer runs. Commands run inside Lua scripts are counted apart ("lua").
    """

    def __init__(self, namespace: str):
        super().__init__(daemon=True)
        self.ns, self.marker = namespace.encode(), ("mark-%s" % namespace).encode()
        self.client = redis.Redis.from_url(REDIS_URL)
        self.phases: dict[str, tuple[Counter, Counter]] = {}
        self.done = threading.Event()
        self.conn = self.client.connection_pool.get_connection()
        self.conn.send_command("MONITOR")
        self.conn.read_response()

    def mark(self, phase: str) -> None:
        self.client.echo(self.marker + b":" + phase.encode())

    def run(self) -> None:
        calls, lua, ours, phase = Counter(), Counter(), set(), None
        while True:
            line = self.conn.read_response()
            _ts, rest = line.split(b" ", 1)
            client, command = rest[rest.index(b" ") + 1 :].split(b"]", 1)
            name = command.split(b'"', 2)[1].lower().decode()
            if self.marker in command and name == "echo":
                if phase is not None:
                    self.phases[phase] = (calls, lua)
                phase, calls, lua = command.split(b":")[-1].rstrip(b'"').decode(), Counter(), Counter()
                ours.add(client)
                if phase == "end":
                    break
            elif self.ns in command and phase is not None:
                if phase == "enqueue" and client != b"lua":
                    ours.add(client)  # this process's connections
                elif phase != "enqueue" and client in ours:
                    continue  # our polling while the consumer drains
                (lua if client == b"lua" else calls)[name] += 1
        self.conn.disconnect()
        self.done.set()


def commandstats(n: int) -> str:
    """Redis commands per enqueue call and per drained job (1 worker), for each Redis system."""

    def per_job(counts: Counter, jobs: int) -> str:
        parts = sorted(((v / jobs, k) for k, v in counts.items()), reverse=True)
        total = sum(counts.values()) / jobs
        return "**%.1f**: %s" % (total, ", ".join("%s %.2f" % (k, v) for v, k in parts if v >= 0.02)) if counts else "0"

    out = [
        "| system | per enqueue call: round trips | (inside Lua) | per job in the consumer: round trips | (inside Lua) |",
        "|---|---|---|---|---|",
    ]
    for system in SYSTEMS["redis"]:
        namespace = new_namespace()
        counter = CommandCounter(namespace)
        counter.start()
        run, tmp = Run("redis", system, 1, n, 0), Path(tempfile.mkdtemp(prefix="b3bench"))
        try:
            (run_b3 if system.startswith("b3") else run_bare)(run, tmp, 120, counter.mark, namespace)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            counter.mark("end")
            counter.done.wait(30)
        (enq, enq_lua), (drn, drn_lua) = counter.phases["enqueue"], counter.phases["enqueued"]
        out.append(
            "| %s | %s | %s | %s | %s |"
            % (system, per_job(enq, n - 1), per_job(enq_lua, n - 1), per_job(drn, n), per_job(drn_lua, n))
        )
    return "\n".join(out)


def bus_check(n: int, workers: list[int], timeout: float) -> str:
    """b3-jobs+bus on Redis with a listening queue: how many of the 3 events per job arrive."""
    out = ["| workers | N | drain (jobs/s) | events delivered |", "|--:|--:|--:|---|"]
    for w in workers:
        run = measure("redis", "b3-jobs+bus", w, n, 0, timeout, listen=True)
        print("bus check w=%d: drain %.0f/s %s" % (w, run.drain_rate, run.note), flush=True)
        out.append("| %d | %d | %s | %s |" % (w, n, f"{run.drain_rate:,.0f}" if run.ok else "failed", run.note.strip()))
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


def run_plan(args: argparse.Namespace) -> str:
    """Every cell, --reps times in shuffled order; a disturbed run is tried again. Returns the table."""
    plan = cells(args.backends, args.workers)
    runs: list[Run] = []
    with open(args.out, "a") as out:
        for rep in range(args.reps):
            for backend, system, workers in random.sample(plan, len(plan)):  # shuffled: no order bias
                n = args.n_redis if backend == "redis" else args.n_sqlite
                for attempt in range(args.retries + 1):
                    run = measure(backend, system, workers, n, rep, args.timeout)
                    run.note += " attempt %d" % attempt if attempt else ""
                    runs.append(run)
                    out.write(json.dumps(asdict(run)) + "\n")
                    out.flush()
                    print(
                        "%-6s %-13s w=%d rep %d: enqueue %6.0f/s  drain %6.0f/s  start-up %.2fs  cores %s %s"
                        % (
                            backend,
                            system,
                            workers,
                            rep,
                            run.enqueue_rate,
                            run.drain_rate,
                            run.startup_s,
                            run.cores,
                            "" if run.ok else "FAILED " + run.note,
                        ),
                        flush=True,
                    )
                    if run.ok and run.cores.get("foreign", 0) <= args.max_foreign:
                        break
    return report(runs, plan, args.max_foreign)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-redis", type=int, default=20_000)
    parser.add_argument("--n-sqlite", type=int, default=5_000)  # b3-jobs SQLite drain is O(N²) now: keep runs < 60 s
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=["redis", "sqlite"], choices=["redis", "sqlite"])
    parser.add_argument("--max-foreign", type=float, default=0.15, help="cores of others' CPU use a clean run allows")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a disturbed run")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a drain may take")
    parser.add_argument(
        "--out", default=str(ORIGIN / "benchmarks" / "results_runtime.jsonl"), help="raw runs, appended"
    )
    parser.add_argument("--quick", action="store_true", help="N=2000, 1 rep: a smoke test")
    parser.add_argument("--no-table", action="store_true", help="skip the main measurement (extras only)")
    parser.add_argument("--commandstats", action="store_true", help="also count Redis commands per job (MONITOR)")
    parser.add_argument("--table-from", metavar="JSONL", help="only print the table of runs saved by --out")
    parser.add_argument(
        "--bus-check",
        action="store_true",
        help="also count the events a listening queue receives from b3-jobs+bus (N = --n-redis)",
    )
    args = parser.parse_args()
    if args.quick:
        args.reps, args.n_redis, args.n_sqlite = 1, 2000, 2000
    if args.table_from:
        runs = [Run(**json.loads(line)) for line in Path(args.table_from).read_text().splitlines()]
        plan = [
            c for c in cells(args.backends, args.workers) if any((r.backend, r.system, r.workers) == c for r in runs)
        ]
        print(report(runs, plan, args.max_foreign))
        return

    print(
        "# %s, %d cores, Python %s, load %s"
        % (time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.cpu_count(), sys.version.split()[0], os.getloadavg()),
        flush=True,
    )
    print(
        "# code: %s, run from a copy: %s" % (code_version(), Path(sys.modules[Runtime.__module__].__file__).parent),
        flush=True,
    )
    try:
        load_manifest(MANIFEST)
    except ManifestError as exc:
        sys.exit("the test manifest does not load (being edited?), try again: %s" % exc)
    try:
        run_main(args)
    finally:
        remove_copy()


def run_main(args: argparse.Namespace) -> None:
    if not args.no_table:
        print("\n" + run_plan(args), flush=True)
    if args.bus_check:
        print("\nEvent delivery, b3-jobs+bus on Redis with one queue bound to the exchange (as a web process):\n")
        print(bus_check(args.n_redis, args.workers, args.timeout), flush=True)
    if args.commandstats:
        print(
            "\nRedis commands per job (MONITOR, 2,000 jobs, only commands naming the run's namespace, "
            "this script's own polling left out):\n"
        )
        print(commandstats(2000))


REDIS_PID = redis_pid()

if __name__ == "__main__":
    main()
