"""The rate-limit run: 3 consumer processes x 8 workers, 1,000 jobs limited to 50 starts per second.

Reports the most starts seen in any 1-second window (from the job records' start times), whether
every job completed, and the time from the first start to the last finish against the ideal
(jobs / limit = 20 s). The promise: never more than the limit in any window; within 25 % of ideal.

    .venv/bin/python benchmarks/limits_run.py --backend redis
    .venv/bin/python benchmarks/limits_run.py --backend sqlite
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from faults import TEST_MANIFEST, consumer_env, most_in_any_window, report, start_consumer, stop  # noqa: E402

from runtime.core.events import LogSink  # noqa: E402
from runtime.core.manifest import load_manifest  # noqa: E402
from runtime.core.settings import Settings  # noqa: E402
from runtime.engine import Runtime  # noqa: E402


def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    redis_url = (os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0") if args.backend == "redis" else None
    namespace = "limits%s" % uuid.uuid4().hex[:8]
    settings = Settings(redis_url=redis_url, data_dir=workdir / "var", manifest=TEST_MANIFEST, namespace=namespace)
    runtime = Runtime(settings, load_manifest(TEST_MANIFEST), events=LogSink())
    ids = [runtime.enqueue("limited", {})[0].id for _ in range(args.jobs)]
    env = consumer_env(namespace, settings.data_dir, redis_url, lease_s=15)
    consumers = [start_consumer(env, workers=args.workers) for _ in range(args.consumers)]
    try:
        deadline = time.monotonic() + args.jobs / 50 * 3 + 30
        while runtime.counts()["limited"]["completed"] < args.jobs and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        for consumer in consumers:
            stop(consumer)
    records = [runtime.store.get(i) for i in ids]
    done = [r for r in records if r is not None and r.state == "completed"]
    starts = [r.started_at for r in done if r.started_at]
    finishes = [r.finished_at for r in done if r.finished_at]
    ideal = args.jobs / 50
    total = max(finishes) - min(starts) if starts else float("nan")
    result = {
        "backend": args.backend,
        "jobs": args.jobs,
        "consumers": args.consumers,
        "workers": args.workers,
        "completed": len(done),
        "most_starts_in_any_1s": most_in_any_window(starts, 1.0),
        "first_start_to_last_finish_s": round(total, 2),
        "ideal_s": ideal,
        "ratio_to_ideal": round(total / ideal, 3),
        "attempts_spent": sorted({r.attempts for r in done}),
    }
    result["promise_kept"] = (
        result["completed"] == args.jobs and result["most_starts_in_any_1s"] <= 50 and total <= ideal * 1.25
    )
    runtime.store.destroy()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="b3-limits-") as tmp:
        result = run(args, Path(tmp))
    return report(result, args.json)


if __name__ == "__main__":
    sys.exit(main())
