"""Memory over a million jobs: does b3-jobs stay flat with its default retention?

    .venv/bin/python benchmarks/memory_run.py                   # 1,000,000 noop jobs, Redis then SQLite
    .venv/bin/python benchmarks/memory_run.py --jobs 200000 --backends redis   # shorter

One consumer as deployed (`python -m runtime consumer`, 1 worker; on Redis its events go on the
same private Redis as its bus, on SQLite on memory://) drains noop jobs (tests/schedules.toml,
`keep_completed = 1000`, as `[defaults]` there says) while this process keeps a bounded backlog
(bulk enqueues of 5,000 whenever fewer than 10,000 wait), so what is measured is what stays
behind, not the queue. After the first 10 % of the jobs and at the end it samples:
  Redis: `used_memory` of the private redis-server (after the last job, the backlog is empty);
  SQLite: the database file's size (WAL checkpointed with TRUNCATE, no VACUUM);
  the consumer's RSS (/proc/<pid>/status VmRSS).
The promise holds when every end value is within 10 % of its value at 10 %. One JSON line per
backend goes to benchmarks/results_memory.jsonl; a table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "tests")]

from benchmarks.pinned import code_version, pin_code, remove_copy  # noqa: E402

pin_code(__file__)

import redis  # noqa: E402
from faults import PrivateRedis, start_consumer, stop  # noqa: E402

from runtime.core.settings import Settings  # noqa: E402
from runtime.engine import Runtime  # noqa: E402

ROOT = HERE.parent
MANIFEST = ROOT / "tests" / "schedules.toml"
CHUNK = 5_000
LOW_WATER = 10_000


def rss_bytes(pid: int) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def sqlite_bytes(path: Path) -> int:
    with sqlite3.connect(path) as db:
        db.execute("pragma wal_checkpoint(TRUNCATE)")
    return path.stat().st_size


def run(backend: str, jobs: int, tmp: Path) -> dict[str, object]:
    namespace = "mem%s" % uuid.uuid4().hex[:8]
    data_dir = tmp / namespace
    broker = PrivateRedis(tmp / ("redis-" + namespace)).start() if backend == "redis" else None
    settings = Settings.from_env(
        {}, manifest=MANIFEST, namespace=namespace, data_dir=data_dir, redis_url=broker.url if broker else None
    )
    runtime = Runtime(settings)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
        "B3JOBS_MANIFEST": str(MANIFEST),
        "B3JOBS_DATA_DIR": str(data_dir),
        "B3JOBS_NAMESPACE": namespace,
        "BUS_URL": broker.url if broker else "memory://",
    }
    if broker:
        env["REDIS_URL"] = broker.url
    consumer = start_consumer(env, workers=1, log=tmp / ("consumer-%s.log" % namespace))
    client = redis.Redis.from_url(broker.url) if broker else None

    def store_bytes() -> int:
        return int(client.info("memory")["used_memory"]) if client else sqlite_bytes(settings.sqlite_path)

    enqueued, samples, started = 0, {}, time.monotonic()
    first_mark = jobs // 10
    try:
        while True:
            counts = runtime.counts()["noop"]
            total_done = runtime.store.stats(["noop"]).get("noop", {}).get("completed", 0)
            if "at_10pct" not in samples and total_done >= first_mark:
                # Sampled with the queue empty, as at the end: what stays behind, not the backlog.
                samples["at_10pct"] = {"done": total_done, "store": store_bytes(), "rss": rss_bytes(consumer.pid)}
            if total_done >= jobs:
                break
            if enqueued >= first_mark and "at_10pct" not in samples:
                time.sleep(0.05)  # the first tenth is in: let it drain before sampling
                continue
            if enqueued < jobs and counts["waiting"] < LOW_WATER:
                n = min(CHUNK, jobs - enqueued, (first_mark - enqueued) if enqueued < first_mark else jobs)
                runtime.enqueue_many("noop", [{}] * n)
                enqueued += n
            elif consumer.poll() is not None:
                raise RuntimeError("the consumer exited (%s)" % consumer.returncode)
            else:
                time.sleep(0.05)
        time.sleep(1.0)  # let the last finishes and heartbeats settle
        samples["at_end"] = {"done": total_done, "store": store_bytes(), "rss": rss_bytes(consumer.pid)}
    finally:
        stop(consumer)
        runtime.close()
        if broker:
            broker.stop()
    first, last = samples["at_10pct"], samples["at_end"]
    growth = {k: (last[k] - first[k]) / first[k] for k in ("store", "rss")}
    return {
        "backend": backend,
        "jobs": jobs,
        "code": code_version(),
        "seconds": round(time.monotonic() - started, 1),
        "at_10pct": first,
        "at_end": last,
        "growth": {k: round(v, 4) for k, v in growth.items()},
        "promise_kept": all(abs(v) <= 0.10 for v in growth.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--backends", default="redis,sqlite")
    parser.add_argument(
        "--out", default=str(Path(os.environ.get("BENCH_ORIGIN", ROOT)) / "benchmarks" / "results_memory.jsonl")
    )
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="b3mem-") as tmp:
        for backend in args.backends.split(","):
            result = run(backend, args.jobs, Path(tmp))
            results.append(result)
            with open(args.out, "a") as out:
                out.write(json.dumps(result) + "\n")
    print("| backend | jobs | store at 10 % | store at end | growth | consumer RSS at 10 % | at end | growth | held |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|---|")
    for r in results:
        a, b, g = r["at_10pct"], r["at_end"], r["growth"]
        print(
            "| %s | %d | %.1f MB | %.1f MB | %+.1f %% | %.1f MB | %.1f MB | %+.1f %% | %s |"
            % (
                r["backend"],
                r["jobs"],
                a["store"] / 1e6,
                b["store"] / 1e6,
                100 * g["store"],
                a["rss"] / 1e6,
                b["rss"] / 1e6,
                100 * g["rss"],
                "yes" if r["promise_kept"] else "NO",
            )
        )
    remove_copy()


if __name__ == "__main__":
    main()
