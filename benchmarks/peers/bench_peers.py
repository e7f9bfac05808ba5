"""Peer benchmark: b3-jobs as deployed against BullMQ, bare Huey and Celery, on a private Redis, in one run.

    .venv/bin/python benchmarks/peers/bench_peers.py              # full run (~45 min on a quiet 2-core box)
    .venv/bin/python benchmarks/peers/bench_peers.py --quick      # smoke run, ~2 min: small N, 1 repetition
    .venv/bin/python benchmarks/peers/bench_peers.py --systems b3-jobs bullmq --reps 5
    .venv/bin/python benchmarks/peers/bench_peers.py --table-from benchmarks/peers/results.jsonl

What runs (issue 12, "a peer benchmark in the project"):
  * BullMQ (node/bullmq.js; `npm ci` installs node/package-lock.json into node/node_modules on
    the first run; without node or the npm registry, BullMQ is skipped and the run says so),
  * bare Huey 3.5: RedisHuey and PriorityRedisHuey (huey_app.py), results off,
  * Celery (celery_app.py) with the threads pool, in its own venv (.venv-celery, made from
    requirements-celery.txt on the first run; never the project's dependencies). Threads, not
    prefork: every other system's 1- and 8-worker configs are one process, so Celery is too,
  * b3-jobs as deployed: `python -m runtime consumer --worker-type thread` with BUS_URL = the same
    Redis, a `python -m runtime web` process bound to it, and benchmarks/event_listener.py (a queue
    bound to `#` on the b3.events exchange) by which every job's waiting, active and completed
    events are checked to arrive, once and in order. Configs: 1 worker, 8 thread workers, and two
    consumer processes of 8,
  * SQLite: b3-jobs (consumer with its default bus, memory://) against SqliteHuey.
All Redis systems share one private redis-server on a free port (tests/faults.py PrivateRedis,
no persistence), emptied before every run; nothing else uses it.

Protocol, for every (system, config) cell and repetition (cells shuffled within a repetition):
  1. wait for a quiet machine: others' CPU ("foreign", from /proc) ≤ --max-foreign cores over 1 s;
  2. single enqueue: a producer process (producer.py, node/bullmq.js) makes N one-job calls
     (call 0 untimed). b3-jobs enqueues as `python -m runtime enqueue` does (Runtime + Kombu
     publisher): a new job is staged until its job:waiting is on the bus, so its rate is taken
     until the last job is visible to workers (the calls alone are in `enqueue_calls_rate`);
  3. drain: the worker process(es) start; the noop handler (probe.py, the same in node/bullmq.js)
     counts calls and notes start times, with no I/O per job. Rate = (N-1) / (start of the last
     job - start of the first), so start-up is excluded. CPU per job (consumer, redis-server, and
     for b3-jobs the web process and the listener) and Redis commands per job (INFO commandstats,
     Lua-internal commands included) over the drain, from the first job seen to the last;
  4. start latency (Redis systems): the workers idle 1 s, then --lat-n jobs go in one at a time,
     --gap-ms apart; each carries t = the producer's time.time() just before its enqueue call, and
     the handler notes its start - t. p50 and p99 per run;
  5. b3-jobs: the events the listener and the web process received (every job: waiting, active,
     completed, in that order, no duplicates).
Bulk enqueue is its own cell per system: N jobs in calls of --chunk (BullMQ addBulk, b3-jobs
Runtime.enqueue_many and POST /api/v1/jobs/noop/bulk to the web process, Celery group(), Huey a
loop: it has no bulk call). A run whose foreign CPU passed --max-foreign in any window is tried
again (--retries); a cell's median uses its clean runs, or its 3 least disturbed (marked *).
After the plan, one MONITOR pass counts b3-jobs' Redis round trips per job by process (commands.py).

Results: one JSON line per run appended to benchmarks/peers/results.jsonl (--quick:
results-quick.jsonl, not committed), and the markdown tables on stdout, with b3-jobs / peer
ratios against the issue's targets (PASS / FAIL). The script runs from a pinned copy of the code
(benchmarks/pinned.py: others edit runtime/ while it runs); the header names its commit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # benchmarks/ (pinned.py, event_listener.py) and this folder

from pinned import ORIGIN, ROOT, code_version, pin_code, remove_copy  # noqa: E402

if __name__ == "__main__":
    pin_code(__file__)

ORIGIN_PEERS = ORIGIN / "benchmarks" / "peers"  # what is installed stays in the work tree, not in the copy
CELERY_VENV = ORIGIN_PEERS / ".venv-celery"
NODE_DIR = ORIGIN_PEERS / "node"

import cpu  # noqa: E402
import redis  # noqa: E402
from commands import Monitor, commandstats, per_job, socket_owners  # noqa: E402
from procs import log_tail, read_probes, run_json, spawn, stop, wait_for  # noqa: E402
from report import Report  # noqa: E402
from systems import RunDir, System, Tools, build, workers_of  # noqa: E402

# -- setting up the peers ------------------------------------------------------------------------

SKIPPED: list[str] = []  # said at the start and again under the tables


def skip(message: str) -> None:
    SKIPPED.append(message)
    print("# " + message, flush=True)


def ensure_bullmq() -> str | None:
    """node, with BullMQ installed from package-lock.json (`npm ci`) if needed; None (and why) if not possible."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node:
        skip("BullMQ SKIPPED: node is not installed")
        return None
    if (NODE_DIR / "node_modules" / "bullmq" / "package.json").exists():
        return node
    if not npm:
        skip("BullMQ SKIPPED: npm is not installed, and node/node_modules is missing")
        return None
    print("# installing BullMQ: npm ci in %s" % NODE_DIR, flush=True)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        errors = [line.strip() for line in (done.stderr or done.stdout).splitlines() if "error" in line.lower()]
        skip("BullMQ SKIPPED: `npm ci` failed (is the npm registry reachable?): %s" % " | ".join(errors[:3])[:400])
        return None
    return node


def ensure_celery() -> str | None:
    """.venv-celery's python, made from requirements-celery.txt if needed; None (and why) if not possible."""
    requirements = HERE / "requirements-celery.txt"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp, py = CELERY_VENV / ".installed", CELERY_VENV / "bin" / "python"
    if stamp.exists() and stamp.read_text() == digest and py.exists():
        return str(py)
    print("# installing Celery into %s" % CELERY_VENV, flush=True)
    try:
        venv.create(CELERY_VENV, with_pip=True, clear=True)
        subprocess.run(
            [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(requirements)],
            check=True,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        output = getattr(exc, "stderr", "") or ""
        errors = [line.strip() for line in output.splitlines() if "error" in line.lower()]
        skip(
            "Celery SKIPPED: could not install %s (is the package index reachable?): %s %s"
            % (requirements.name, exc, " | ".join(errors[:3])[:400])
        )
        return None
    stamp.write_text(digest)
    return str(py)


# -- one run ----------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class Bench:
    """Runs cells on the private Redis and writes each run as a JSON line."""

    def __init__(self, args: argparse.Namespace, tools: Tools, redis_pid: int | None, scratch: Path):
        self.args, self.tools, self.redis_pid, self.scratch = args, tools, redis_pid, scratch
        self.client = redis.Redis.from_url(tools.redis_url) if tools.redis_url else None

    def new_record(self, system: System, kind: str, config: str, rep: int, attempt: int, n: int) -> dict[str, Any]:
        return {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "code": CODE,
            "quick": self.args.quick,
            "kind": kind,
            "backend": system.backend,
            "system": system.name,
            "label": system.label,
            "config": config,
            "rep": rep,
            "attempt": attempt,
            "n": n,
            "ok": True,
            "note": "",
            "foreign": {},
            "us_per_job": {},
        }

    def produce(self, system: System, run: RunDir, mode: str, n: int, variant: str = "bulk") -> dict[str, Any]:
        cmd = system.producer(run, mode, n, self.args.chunk, self.args.gap_ms, variant)
        return run_json(cmd, system.env(run), self.tools.peers, self.args.timeout)

    def quiet(self, rec: dict[str, Any]) -> None:
        rec["quiet_foreign"], rec["quiet_waited_s"] = cpu.wait_quiet(self.args.max_foreign, self.args.quiet_wait)

    def roles(self, system: System, workers: list[Any], side: list[Any]) -> dict[str, list[int]]:
        roles = {"consumer": [p.pid for p in workers], "bench": [os.getpid()]}
        if self.redis_pid and system.backend == "redis":
            roles["redis"] = [self.redis_pid]
        if side:
            roles["web"], roles["listener"] = [side[0].pid], [side[1].pid]
        return roles

    def drain(
        self, system: System, config: str, rep: int, attempt: int, monitor: Monitor | None = None, n: int | None = None
    ) -> dict[str, Any]:
        n = n or (self.args.n if system.backend == "redis" else self.args.n_sqlite)
        rec = self.new_record(system, "drain", config, rep, attempt, n)
        run = RunDir(Path(tempfile.mkdtemp(prefix="run-", dir=self.scratch)))
        workers: list[Any] = []
        side: list[Any] = []
        try:
            system.reset(run)
            side = system.side_start(run, 30)
            self.quiet(rec)
            # 1. single enqueue
            if monitor:
                monitor.mark("enqueue")
            a = cpu.sample()
            produced = self.produce(system, run, "single", n)
            b = cpu.sample()
            rec.update(
                enqueue_rate=produced["rate"],
                enqueue_calls_rate=produced.get("calls_rate"),
                version=produced.get("version"),
            )
            rec["foreign"]["enqueue"] = cpu.between(a, b)["foreign"]
            # 2. drain
            if monitor:
                monitor.mark("drain")
            spawned = time.time()
            workers = [
                spawn(system.worker(run, w), system.env(run), run.log, self.tools.peers) for w in workers_of(config)
            ]
            roles = self.roles(system, workers, side)
            alive = lambda: all(p.poll() is None for p in workers)  # noqa: E731
            if not wait_for(lambda: read_probes(run.probe).count > 0, self.args.timeout, 0.005, alive):
                raise RuntimeError("no job started in %ss" % self.args.timeout)
            s1, stats1, count1 = cpu.sample(roles), self.stats(system), read_probes(run.probe).count
            done = wait_for(lambda: read_probes(run.probe).count >= n, self.args.timeout, 0.02, alive)
            s2, stats2, totals = cpu.sample(roles), self.stats(system), read_probes(run.probe)
            if not done:
                raise RuntimeError(
                    "drain stuck: %d of %d jobs started after %ss; workers alive: %s; %s"
                    % (totals.count, n, self.args.timeout, alive(), system.diagnose(run))
                )
            jobs = max(1, totals.count - count1)
            rec.update(
                drain_rate=(n - 1) / (totals.last - totals.first),
                startup_s=round(totals.first - spawned, 3),
                worker_processes=totals.processes,
                drain_cores=cpu.between(s1, s2),
            )
            rec["foreign"]["drain"] = rec["drain_cores"]["foreign"]
            rec["us_per_job"] = {
                role: round(cpu.cpu_seconds(s1, s2, role) / jobs * 1e6, 1) for role in roles if role != "bench"
            }
            if stats1 is not None:
                rec["cmds_per_job"] = per_job(stats1, stats2, jobs)
            if monitor:
                monitor.mark("idle")
                rec["owners"] = socket_owners(
                    {k: v for k, v in roles.items() if k != "bench"}, self.tools.redis_port or 0
                )
            # 3. start latency, on idle workers
            expected = n
            if system.latency and self.args.lat_n and not monitor:
                time.sleep(self.args.idle_s)
                a = cpu.sample()
                self.produce(system, run, "latency", self.args.lat_n)
                expected += self.args.lat_n
                wait_for(lambda: read_probes(run.probe).count >= expected, 30, 0.02, alive)
                rec["foreign"]["latency"] = cpu.between(a, cpu.sample())["foreign"]
                lat = read_probes(run.probe).lat_ms
                rec.update(
                    lat_n=len(lat),
                    lat_p50_ms=percentile(lat, 50),
                    lat_p99_ms=percentile(lat, 99),
                    lat_worst_ms=[round(v, 2) for v in sorted(lat)[-5:]],
                )
                if len(lat) < self.args.lat_n:
                    rec["ok"], rec["note"] = False, "latency: %d of %d jobs started" % (len(lat), self.args.lat_n)
            # 4. b3-jobs: did the events arrive?
            events = system.side_report(run, expected, self.args.settle_s)
            if events:
                rec["events"] = events
                if not events["events_ok"]:
                    rec["note"] += " events missing or out of order"
        except Exception as exc:  # the run is reported as failed; the plan goes on
            rec["ok"] = False
            rec["note"] = ("%s: %s" % (type(exc).__name__, exc))[:1500] + " | log: " + log_tail(run.log, 800)
        finally:
            for proc in workers + side:
                stop(proc)
            shutil.rmtree(run.path, ignore_errors=True)
        return rec

    def bulk(self, system: System, variant: str, rep: int, attempt: int) -> dict[str, Any]:
        n = self.args.n if system.backend == "redis" else self.args.n_sqlite
        rec = self.new_record(system, "bulk", variant, rep, attempt, n)
        run = RunDir(Path(tempfile.mkdtemp(prefix="run-", dir=self.scratch)))
        side: list[Any] = []
        try:
            system.reset(run)
            side = system.side_start(run, 30)
            self.quiet(rec)
            a = cpu.sample()
            produced = self.produce(system, run, "bulk", n, variant)
            rec["foreign"]["enqueue"] = cpu.between(a, cpu.sample())["foreign"]
            rec.update(
                enqueue_rate=produced["rate"],
                enqueue_calls_rate=produced.get("calls_rate"),
                api=produced.get("api", "Queue.addBulk" if system.name == "bullmq" else ""),
                chunk=self.args.chunk,
            )
        except Exception as exc:
            rec["ok"], rec["note"] = (
                False,
                ("%s: %s" % (type(exc).__name__, exc))[:1500] + " | log: " + log_tail(run.log, 800),
            )
        finally:
            for proc in side:
                stop(proc)
            shutil.rmtree(run.path, ignore_errors=True)
        return rec

    def stats(self, system: System) -> Any:
        return commandstats(self.client) if self.client is not None and system.backend == "redis" else None


# -- the plan ---------------------------------------------------------------------------------------


def say(rec: dict[str, Any]) -> None:
    figures = []
    if rec.get("enqueue_rate"):
        figures.append("enqueue %7.0f/s" % rec["enqueue_rate"])
    if rec.get("drain_rate"):
        figures.append("drain %7.0f/s" % rec["drain_rate"])
    if rec.get("lat_p99_ms") is not None:
        figures.append("lat p50/p99 %.2f/%.2f ms" % (rec["lat_p50_ms"], rec["lat_p99_ms"]))
    if rec["us_per_job"]:
        figures.append("µs/job " + " ".join("%s %.0f" % kv for kv in rec["us_per_job"].items()))
    if rec.get("events"):
        figures.append("events %s" % ("ok" if rec["events"]["events_ok"] else "MISSING %s" % rec["events"]["listener"]))
    figures.append("foreign %s" % rec["foreign"])
    print(
        "%-15s %-5s %-4s rep %d%s: %s%s"
        % (
            rec["system"],
            rec["kind"],
            rec["config"],
            rec["rep"],
            " (attempt %d)" % rec["attempt"] if rec["attempt"] else "",
            "  ".join(figures),
            "" if rec["ok"] else "  FAILED " + rec["note"],
        ),
        flush=True,
    )


def run_plan(bench: Bench, systems: list[System], out: Any) -> list[dict[str, Any]]:
    cells = [(s, "drain", c) for s in systems for c in s.configs]
    cells += [(s, "bulk", v) for s in systems for v in s.bulk_variants if not bench.args.no_bulk]
    runs = []
    for rep in range(bench.args.reps):
        for system, kind, config in random.sample(cells, len(cells)):
            for attempt in range(bench.args.retries + 1):
                rec = (bench.drain if kind == "drain" else bench.bulk)(system, config, rep, attempt)
                runs.append(rec)
                out.write(json.dumps(rec) + "\n")
                out.flush()
                say(rec)
                if rec["ok"] and max(rec["foreign"].values(), default=0) <= bench.args.max_foreign:
                    break
    return runs


def monitor_pass(bench: Bench, system: System, config: str, n: int) -> str:
    """b3-jobs' Redis round trips per job by process, from MONITOR (one untimed run of n jobs)."""
    monitor = Monitor(str(bench.tools.redis_url), "peers-mark")
    monitor.start()
    try:
        rec = bench.drain(system, config, 0, 0, monitor=monitor, n=n)
    finally:
        monitor.mark("end")
        monitor.done.wait(30)
    if not rec["ok"]:
        return "MONITOR pass failed: %s" % rec["note"]
    owners = rec.get("owners", {})
    lines = ["| phase | sender | per job: total | by command |", "|---|---|--:|---|"]
    for phase in ("enqueue", "drain"):
        table = monitor.by_role(phase, owners, n)
        for role in sorted(table, key=lambda r: -table[r]["total"]):
            row = table[role]
            detail = ", ".join("%s %s" % (k, v) for k, v in row.items() if k != "total")
            sender = {
                "other": "producer and others" if phase == "enqueue" else "others (bench, closed connections)",
                "lua": "inside Lua scripts",
            }.get(role, role)
            lines.append("| %s | %s | %s | %s |" % (phase, sender, row["total"], detail))
    return "\n".join(lines)


def print_report(runs: list[dict[str, Any]], max_foreign: float) -> None:
    labels = {r["system"]: r["label"] for r in runs}
    labels.update({"huey-plain": "RedisHuey", "huey-priority": "PriorityRedisHuey"})
    rep = Report(runs, max_foreign, labels)
    for backend, title in (("redis", "Redis (private redis-server)"), ("sqlite", "SQLite")):
        if not rep.systems(backend):
            continue
        print("\n### %s: drain and start latency (medians; `*` = fewer than 3 clean runs)\n" % title)
        print(rep.drain_table(backend))
        print("\n### %s: enqueue, one producer process\n" % title)
        print(rep.enqueue_table(backend))
    print("\n### Targets (issue 12)\n")
    print(rep.targets())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--n", type=int, default=20_000, help="jobs per Redis run")
    parser.add_argument("--n-sqlite", type=int, default=10_000, help="jobs per SQLite run")
    parser.add_argument("--chunk", type=int, default=1000, help="jobs per bulk call")
    parser.add_argument("--lat-n", type=int, default=400, help="jobs of the start-latency phase (0: skip it)")
    parser.add_argument("--gap-ms", type=float, default=10, help="time between the latency phase's jobs")
    parser.add_argument("--idle-s", type=float, default=1.0, help="workers idle this long before the latency phase")
    parser.add_argument(
        "--systems",
        nargs="+",
        help="only these: bullmq huey-plain huey-priority celery b3-jobs huey-sqlite b3-jobs-sqlite",
    )
    parser.add_argument("--no-bulk", action="store_true", help="skip the bulk enqueue cells")
    parser.add_argument("--no-monitor", action="store_true", help="skip the MONITOR pass")
    parser.add_argument("--max-foreign", type=float, default=0.15, help="others' cores a clean run allows")
    parser.add_argument("--quiet-wait", type=float, default=120, help="seconds to wait for a quiet machine per run")
    parser.add_argument("--retries", type=int, default=2, help="extra attempts for a noisy run")
    parser.add_argument("--timeout", type=float, default=180, help="seconds a drain or a producer may take")
    parser.add_argument("--settle-s", type=float, default=30, help="b3-jobs: seconds to wait for events to arrive")
    parser.add_argument("--out", help="raw runs, appended (default results.jsonl; --quick: results-quick.jsonl)")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=2000, 60 latency jobs, 1 rep, no retries")
    parser.add_argument("--table-from", metavar="JSONL", help="only print the tables of runs saved before")
    args = parser.parse_args()
    if args.quick:
        args.reps, args.n, args.n_sqlite, args.lat_n, args.retries = 1, 2000, 2000, 60, 0
        args.quiet_wait, args.idle_s, args.settle_s = 0, 0.5, 10  # quiet_wait 0: one 1 s look, noted, no waiting
    if args.table_from:
        runs = [json.loads(line) for line in Path(args.table_from).read_text().splitlines() if line.strip()]
        print_report([r for r in runs if r.get("quick", False) == args.quick], args.max_foreign)
        return
    out_path = Path(args.out) if args.out else ORIGIN_PEERS / ("results-quick.jsonl" if args.quick else "results.jsonl")

    from tests.faults import PrivateRedis

    print(
        "# %s, %d cores, Python %s, load %s"
        % (time.strftime("%Y-%m-%d %H:%M:%S %Z"), os.cpu_count(), sys.version.split()[0], os.getloadavg()),
        flush=True,
    )
    print("# code: %s, run from a copy: %s" % (CODE, ROOT), flush=True)
    node = ensure_bullmq() if not args.systems or "bullmq" in args.systems else None
    celery_py = ensure_celery() if not args.systems or "celery" in args.systems else None
    scratch = Path(tempfile.mkdtemp(prefix="peers-run-"))
    server = PrivateRedis(scratch / "redis").start()
    try:
        assert server.proc is not None
        tools = Tools(ROOT, sys.executable, celery_py, node, NODE_DIR / "node_modules", server.url, server.port)
        print(
            "# private redis-server %s on port %d (pid %d); max foreign %.2f cores; N = %d (Redis), %d (SQLite)"
            % (
                redis.Redis.from_url(server.url).info("server")["redis_version"],
                server.port,
                server.proc.pid,
                args.max_foreign,
                args.n,
                args.n_sqlite,
            ),
            flush=True,
        )
        systems = build(tools, args.systems)
        bench = Bench(args, tools, server.proc.pid, scratch)
        with open(out_path, "a") as out:
            runs = run_plan(bench, systems, out)
        print_report(runs, args.max_foreign)
        for message in SKIPPED:
            print("\n**%s**" % message)
        b3 = next((s for s in systems if s.name == "b3-jobs"), None)
        if b3 is not None and not args.no_monitor:
            n = 500 if args.quick else 2000
            print("\n### b3-jobs: Redis commands per job by sender (MONITOR, %d jobs, 1 worker)\n" % n)
            print(monitor_pass(bench, b3, "1", n), flush=True)
        print("\n# raw runs appended to %s" % out_path)
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
        remove_copy()


CODE = code_version() if __name__ == "__main__" else ""

if __name__ == "__main__":
    main()
