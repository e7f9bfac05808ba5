"""Bare Huey for the runtime benchmark: the app, its noop task, and a consumer runner.

The benchmark process imports `make_huey` to enqueue; a consumer subprocess runs this file:

    python benchmarks/bare_huey.py --kind priority|plain|sqlite --name NAME --workers N \
        [--sqlite PATH] --total N --marks DIR

The noop task does no I/O per job. A process-local counter (itertools.count, atomic under the
GIL) tells the task which call it is: call 1 writes `DIR/first` and call N writes `DIR/last`,
each holding time.time(). Only those two jobs pay for a file write; b3-jobs' side pays nothing
extra either (its timestamps are the records' started_at / finished_at, written anyway).
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import time
from pathlib import Path

from huey import PriorityRedisHuey, RedisHuey, SqliteHuey

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
KINDS = ("priority", "plain", "sqlite")

_calls = itertools.count(1)
_marks = {"total": 0, "dir": None}


def _mark(name: str) -> None:
    path = Path(_marks["dir"]) / name
    path.with_suffix(".tmp").write_text(repr(time.time()))
    path.with_suffix(".tmp").rename(path)  # the poller never sees a half-written file


def noop(payload: dict) -> None:
    """The benchmark task: nothing, except marking the first and the N-th call."""
    n = next(_calls)
    if n == 1:
        _mark("first")
    if n == _marks["total"]:
        _mark("last")


def make_huey(kind: str, name: str, sqlite_path: str | None = None):
    """The Huey app of one kind, results off (b3-jobs keeps its own records), with `noop` registered."""
    if kind == "priority":
        huey = PriorityRedisHuey(name, results=False, url=REDIS_URL)
    elif kind == "plain":
        huey = RedisHuey(name, results=False, url=REDIS_URL)
    elif kind == "sqlite":
        huey = SqliteHuey(name, results=False, filename=sqlite_path)
    else:
        raise ValueError("kind must be one of %s" % (KINDS,))
    task = huey.task(name="noop")(noop)
    return huey, task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--sqlite")
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--marks", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)  # same level as the b3-jobs consumer's --log-level WARNING
    _marks.update(total=args.total, dir=args.marks)
    huey, _ = make_huey(args.kind, args.name, args.sqlite)
    huey.create_consumer(workers=args.workers, worker_type="thread").run()


if __name__ == "__main__":
    # Huey names a task after its function's module. Run the copy imported as `bare_huey`, so the
    # consumer's task is `bare_huey.noop`, the name the benchmark process enqueues.
    import bare_huey

    bare_huey.main()
