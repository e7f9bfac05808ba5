"""Runtime throughput: b3-jobs against bare Huey, on Redis and on SQLite, in one run.

    .venv/bin/python benchmarks/bench_runtime.py                  # full run, ~10 min
    .venv/bin/python benchmarks/bench_runtime.py --quick          # smoke test, small N, 1 rep
    .venv/bin/python benchmarks/bench_runtime.py --commandstats   # also count Redis commands per job

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
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PY = sys.executable
MANIFEST = ROOT / "tests" / "schedules.toml"
sys.path.insert(0, str(HERE))

import bare_huey  # noqa: E402
from runtime.engine import Runtime  # noqa: E402
from runtime.settings import Settings  # noqa: E402

REDIS_URL = bare_huey.REDIS_URL
HZ = os.sysconf("SC_CLK_TCK")
FIRST_IDS = 16  # b3-jobs: the first-enqueued jobs whose started_at we catch (≥ worker count)
SYSTEMS = {"redis": ("huey-priority", "huey-plain", "b3-jobs"), "sqlite": ("huey-sqlite", "b3-jobs")}
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
    """Cores used between start() and stop() by: the consumer, us, redis-server, and all the rest."""

    def __init__(self, consumer_pid: int, redis_pid: int | None):
        self.pids = {"consumer": consumer_pid, "bench": os.getpid(), "redis": redis_pid}

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


def run_bare(run: Run, tmp: Path, timeout: float, phase=None) -> None:
    kind = BARE_KIND[run.system]
    name = "bench%s" % uuid.uuid4().hex[:10]
    db = str(tmp / ("%s.db" % name)) if kind == "sqlite" else None
    marks = tmp / name
    marks.mkdir()
    huey, task = bare_huey.make_huey(kind, name, db)
    try:
        run.enqueue_rate = timed_enqueue(lambda: task({}), run.n, phase)
        cmd = [PY, str(HERE / "bare_huey.py"), "--kind", kind, "--name", name, "--workers", str(run.workers),
               "--total", str(run.n), "--marks", str(marks)] + (["--sqlite", db] if db else [])
        drain(run, cmd, os.environ.copy(), tmp, timeout,
              done=lambda: (marks / "last").exists(),
              window=lambda: (float((marks / "first").read_text()), float((marks / "last").read_text())),
              left=huey.pending_count, phase=phase)
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
    """Cheap read-only looks at a b3-jobs store while a consumer drains it."""

    def __init__(self, rt: Runtime, first_ids: list[str]):
        self.rt, self.first_ids, self.started = rt, first_ids, {}
        self.redis = rt.settings.redis_url is not None

    def catch_first(self) -> bool:
        """Record started_at of the first-enqueued jobs (before the keep_completed trim deletes them)."""
        todo = [i for i in self.first_ids if i not in self.started]
        if not todo:
            return True
        if self.redis:
            store = self.rt.store
            with store.r.pipeline(transaction=False) as pipe:
                for i in todo:
                    pipe.hget(store._key(i), "started_at")
                values = pipe.execute()
            found = {i: float(v) for i, v in zip(todo, values) if v}
        else:
            marks = ",".join("?" * len(todo))
            rows = self.rt.store.storage.sql(
                "select id, started_at from b3_jobs where id in (%s) and started_at is not null" % marks, todo, results=True)
            found = dict(rows)
        self.started.update(found)
        return len(self.started) == len(self.first_ids)

    def left(self) -> int:
        """Jobs not yet finished: messages on Huey's queue plus records waiting or active."""
        if self.redis:
            store = self.rt.store
            with store.r.pipeline(transaction=False) as pipe:
                pipe.zcard(store.storage.queue_key)
                pipe.zcard(store._idx("noop", "waiting"))
                pipe.zcard(store._idx("noop", "active"))
                return sum(pipe.execute())
        rows = self.rt.store.storage.sql(
            "select (select count(*) from task), (select count(*) from b3_jobs where state in ('waiting', 'active'))",
            results=True)
        return sum(rows[0])

    def window(self) -> tuple[float, float]:
        newest = self.rt.list(state="completed", name="noop", limit=1)
        return min(self.started.values()), newest[0].finished_at


def run_b3(run: Run, tmp: Path, timeout: float, phase=None) -> None:
    namespace = "bench%s" % uuid.uuid4().hex[:10]
    env = b3_env(run.backend, namespace, tmp)
    settings = Settings.from_env(env)
    rt = Runtime(settings)
    try:
        ids: list[str] = []
        run.enqueue_rate = timed_enqueue(lambda: ids.append(rt.enqueue("noop", {})[0].id), run.n, phase)
        probe = B3Probe(rt, ids[:FIRST_IDS])
        cmd = [PY, "-m", "runtime", "--log-level", "WARNING", "consumer", "--workers", str(run.workers),
               "--worker-type", "thread", "--no-cron"]
        drain(run, cmd, env, tmp, timeout, done=lambda: probe.catch_first() and probe.left() == 0,
              window=probe.window, left=probe.left, first=probe.catch_first, phase=phase)
        counts = rt.counts()["noop"]
        if counts["failed"] or counts["waiting"] or counts["active"] or counts["delayed"]:
            run.ok, run.note = False, "counts after drain: %s" % counts
    finally:
        rt.store.destroy()
        rt.close()


# -- the drain, common to both ---------------------------------------------------------------


def drain(run: Run, cmd: list[str], env: dict, tmp: Path, timeout: float, done, window, left, first=None,
          phase=None) -> None:
    """Start the consumer, wait for the queue to drain, compute the rate from the job timestamps."""
    log = tmp / "consumer.log"
    spawned = time.time()
    proc = spawn(cmd, env, log)
    meter = CpuMeter(proc.pid, REDIS_PID)
    meter.start()
    try:
        if first is not None:  # catch the first jobs' records quickly, then poll slowly
            wait_until(first, timeout, 0.005, proc)
        finished = wait_until(done, timeout, 0.05, proc)
        cpu = meter.stop()
    finally:
        stop(proc)
    if phase:
        phase("drained")
    if not finished:
        run.ok, run.note = False, "not drained after %ss (%s jobs left, consumer rc %s): see %s" % (
            timeout, left(), proc.returncode, log)
        return
    first, last = window()
    run.drain_rate = run.n / (last - first)
    run.startup_s = first - spawned
    run.cores = cpu
    run.consumer_cpu_us_per_job = cpu["consumer"] * cpu["seconds"] / run.n * 1e6


# -- the plan and the report -----------------------------------------------------------------


def measure(backend: str, system: str, workers: int, n: int, rep: int, timeout: float) -> Run:
    run = Run(backend, system, workers, n, rep)
    tmp = Path(tempfile.mkdtemp(prefix="b3bench"))
    try:
        (run_b3 if system == "b3-jobs" else run_bare)(run, tmp, timeout)
    except Exception as exc:  # keep going; the run is reported as failed
        run.ok, run.note = False, "%s: %s" % (type(exc).__name__, exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return run


def cells(backends: list[str], workers: list[int]) -> list[tuple[str, str, int]]:
    return [(b, s, w) for b in backends for w in workers for s in SYSTEMS[b]]


def median_of(runs: list[Run], max_foreign: float, key: str) -> tuple[float, str]:
    """Median over clean runs; with fewer than 3, over the 3 least disturbed (marked *)."""
    good = [r for r in runs if r.ok]
    clean = [r for r in good if r.cores.get("foreign", 0) <= max_foreign]
    if len(clean) >= 3:
        return statistics.median(getattr(r, key) for r in clean), ""
    least = sorted(good, key=lambda r: r.cores.get("foreign", 0))[:3]
    return (statistics.median(getattr(r, key) for r in least), "*") if least else (float("nan"), "!")


def report(runs: list[Run], plan: list[tuple[str, str, int]], max_foreign: float) -> str:
    by_cell = {c: [r for r in runs if (r.backend, r.system, r.workers) == c] for c in plan}
    med = {c: {k: median_of(rs, max_foreign, k) for k in ("enqueue_rate", "drain_rate")} for c, rs in by_cell.items()}
    lines = [
        "| backend | system | workers | N | enqueue (jobs/s) | drain (jobs/s) | b3-jobs / this: enqueue | b3-jobs / this: drain "
        "| consumer CPU µs/job | foreign cores (median) | runs (clean/all) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for c in plan:
        backend, system, workers = c
        rs = [r for r in by_cell[c] if r.ok]
        (enq, m1), (drn, m2) = med[c]["enqueue_rate"], med[c]["drain_rate"]
        b3 = med.get((backend, "b3-jobs", workers))
        ratio = lambda k, v: "–" if system == "b3-jobs" else "%.2f×" % (b3[k][0] / v)  # noqa: E731
        cpu = statistics.median(r.consumer_cpu_us_per_job for r in rs) if rs else float("nan")
        foreign = statistics.median(r.cores.get("foreign", 0) for r in rs) if rs else float("nan")
        clean = sum(1 for r in rs if r.cores.get("foreign", 0) <= max_foreign)
        lines.append("| %s | %s | %d | %d | %s%s | %s%s | %s | %s | %.0f | %.2f | %d/%d |" % (
            backend, system, workers, by_cell[c][0].n, f"{enq:,.0f}", m1, f"{drn:,.0f}", m2,
            ratio("enqueue_rate", enq), ratio("drain_rate", drn), cpu, foreign, clean, len(by_cell[c])))
    return "\n".join(lines)


# -- Redis commands per job ------------------------------------------------------------------


def commandstats(n: int) -> str:
    """Redis commands per enqueue and per drained job (w=1), from INFO commandstats deltas."""
    r = redis.Redis.from_url(REDIS_URL)

    def calls() -> dict[str, int]:
        return {k.removeprefix("cmdstat_"): v["calls"] for k, v in r.info("commandstats").items()}

    def per_job(before: dict[str, int], after: dict[str, int], jobs: int) -> str:
        d = {k: (v - before.get(k, 0)) / jobs for k, v in after.items()}
        return ", ".join("%s %.2f" % kv for kv in sorted(d.items(), key=lambda kv: -kv[1]) if kv[1] >= 0.05)

    out = ["| system | per enqueue call | per job in the consumer (w=1) |", "|---|---|---|"]
    for system in SYSTEMS["redis"]:
        snap: dict[str, dict[str, int]] = {}
        run, tmp = Run("redis", system, 1, n, 0), Path(tempfile.mkdtemp(prefix="b3bench"))
        try:
            (run_b3 if system == "b3-jobs" else run_bare)(run, tmp, 120, lambda name: snap.__setitem__(name, calls()))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.append("| %s | %s | %s |" % (system, per_job(snap["enqueue"], snap["enqueued"], n - 1),
                                        per_job(snap["enqueued"], snap["drained"], n)))
    return "\n".join(out)


# -- main ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--n-redis", type=int, default=20_000)
    parser.add_argument("--n-sqlite", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=["redis", "sqlite"], choices=["redis", "sqlite"])
    parser.add_argument("--max-foreign", type=float, default=0.15, help="cores of others' CPU use a clean run allows")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a disturbed run")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a drain may take")
    parser.add_argument("--out", default=str(HERE / "results_runtime.jsonl"))
    parser.add_argument("--quick", action="store_true", help="N=2000, 1 rep: a smoke test")
    parser.add_argument("--commandstats", action="store_true", help="also count Redis commands per job")
    parser.add_argument("--commandstats-only", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.n_redis, args.n_sqlite = 1, 2000, 2000

    print("# %s, %d cores, Python %s, load %s" % (time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.cpu_count(),
                                                  sys.version.split()[0], os.getloadavg()), flush=True)
    if not args.commandstats_only:
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
                        print("%-6s %-13s w=%d rep %d: enqueue %8.0f/s  drain %7.0f/s  start-up %.2fs  cores %s %s" % (
                            backend, system, workers, rep, run.enqueue_rate, run.drain_rate, run.startup_s,
                            run.cores, "" if run.ok else "FAILED " + run.note), flush=True)
                        if run.ok and run.cores.get("foreign", 0) <= args.max_foreign:
                            break
        print("\n" + report(runs, plan, args.max_foreign))
    if args.commandstats or args.commandstats_only:
        print("\nRedis commands per job (INFO commandstats deltas over 2000 jobs; the Redis is shared, so others' "
              "commands, and this script's polling, would show too):\n")
        print(commandstats(2000))


REDIS_PID = redis_pid()

if __name__ == "__main__":
    main()
