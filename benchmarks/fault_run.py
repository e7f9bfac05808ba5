"""The fault run: consumers SIGKILLed at random while they work; does every job complete, once?

N consumer processes work through M jobs of 50 ms (`logged-sleep` from the test manifest, which
appends one line per run to a log). Every K seconds a random consumer is SIGKILLed (its whole
process group) and a new one started. At the end it prints jobs enqueued, completed, lost, and
run more than once, and checks the promise: lost = 0 and runs-twice <= kills x workers.

    .venv/bin/python benchmarks/fault_run.py --backend redis  --jobs 2000 --consumers 3 --kill-every 2
    .venv/bin/python benchmarks/fault_run.py --backend sqlite --jobs 2000 --consumers 3 --kill-every 2

Redis: the shared server at 127.0.0.1:6379 (or REDIS_URL), in a namespace of its own that is
deleted at the end. SQLite: a temporary directory.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from faults import TEST_MANIFEST, consumer_env, kill, report, start_consumer, stop  # noqa: E402

from runtime.core.events import LogSink  # noqa: E402
from runtime.core.manifest import load_manifest  # noqa: E402
from runtime.core.settings import Settings  # noqa: E402
from runtime.engine import Runtime  # noqa: E402


def runs(log: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in log.read_text().splitlines() if log.exists() else []:
        job_id = line.split()[0]
        counts[job_id] = counts.get(job_id, 0) + 1
    return counts


def fault_run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    redis_url = (os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0") if args.backend == "redis" else None
    namespace = "fault%s" % uuid.uuid4().hex[:8]
    settings = Settings(redis_url=redis_url, data_dir=workdir / "var", manifest=TEST_MANIFEST, namespace=namespace)
    runtime = Runtime(settings, load_manifest(TEST_MANIFEST), events=LogSink())
    log = workdir / "runs.log"
    ids = [
        runtime.enqueue("logged-sleep", {"log": str(log), "seconds": args.job_seconds})[0].id for _ in range(args.jobs)
    ]
    env = consumer_env(namespace, settings.data_dir, redis_url, args.lease)
    consumers = [start_consumer(env, workers=args.workers) for _ in range(args.consumers)]
    kills = 0
    started = time.monotonic()
    next_kill = started + args.kill_every
    try:
        while True:
            counts = runtime.counts()["logged-sleep"]
            if counts["completed"] + counts["failed"] >= args.jobs:
                break
            if time.monotonic() - started > args.max_seconds:
                print("gave up after %ss" % args.max_seconds, file=sys.stderr)
                break
            if time.monotonic() >= next_kill:
                victim = random.randrange(len(consumers))
                kill(consumers[victim])
                consumers[victim] = start_consumer(env, workers=args.workers)
                kills += 1
                next_kill += args.kill_every
            time.sleep(0.05)
        elapsed = time.monotonic() - started
    finally:
        for consumer in consumers:
            stop(consumer)
    counts = runtime.counts()["logged-sleep"]
    ran = runs(log)
    records = [runtime.store.get(i) for i in ids]
    result = {
        "backend": args.backend,
        "jobs": args.jobs,
        "consumers": args.consumers,
        "workers": args.workers,
        "job_seconds": args.job_seconds,
        "kill_every_s": args.kill_every,
        "lease_s": args.lease,
        "kills": kills,
        "seconds": round(elapsed, 1),
        "completed": counts["completed"],
        "failed": counts["failed"],
        "lost": sum(1 for r in records if r is None or r.state != "completed"),
        "never_ran": sum(1 for i in ids if i not in ran),
        "ran_more_than_once": sum(1 for i in ids if ran.get(i, 0) > 1),
        "extra_runs": sum(max(0, ran.get(i, 0) - 1) for i in ids),
        "max_stalls_seen": max((r.stalls for r in records if r is not None), default=0),
    }
    result["promise_kept"] = result["lost"] == 0 and result["ran_more_than_once"] <= kills * args.workers
    runtime.store.destroy()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=0.05)
    parser.add_argument("--kill-every", type=float, default=2.0)
    parser.add_argument("--lease", type=float, default=3.0, help="B3JOBS_LEASE_S for the consumers")
    parser.add_argument("--max-seconds", type=float, default=600)
    parser.add_argument("--json", type=Path, help="append the result as a JSON line to this file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="b3-fault-") as tmp:
        result = fault_run(args, Path(tmp))
    return report(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
