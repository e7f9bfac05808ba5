"""Bare Huey for the peer benchmark: the app (results off) with its noop task, and a consumer runner.

    python huey_app.py --kind plain|priority|sqlite --name NAME --workers N [--redis URL] [--sqlite PATH]

`plain` is `RedisHuey`, `priority` `PriorityRedisHuey` (the storage class b3-jobs grew from),
`sqlite` `SqliteHuey`; each keeps Huey's defaults apart from `results=False`. The consumer runs
`-w N -k thread` at log level WARNING, as `huey_consumer` would. producer.py imports `make_huey`
to enqueue.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import probe
from huey import PriorityRedisHuey, RedisHuey, SqliteHuey

KINDS = ("plain", "priority", "sqlite")


def noop(payload: dict[str, Any]) -> None:
    """The benchmark task: count the call; with an enqueue time, note the start latency."""
    probe.hit(payload.get("t"))


def make_huey(kind: str, name: str, redis_url: str | None = None, sqlite_path: str | None = None) -> tuple[Any, Any]:
    """The Huey app of one kind and its `noop` task."""
    if kind == "plain":
        huey = RedisHuey(name, results=False, url=redis_url)
    elif kind == "priority":
        huey = PriorityRedisHuey(name, results=False, url=redis_url)
    elif kind == "sqlite":
        huey = SqliteHuey(name, results=False, filename=sqlite_path)
    else:
        raise ValueError("kind must be one of %s, got %r" % (KINDS, kind))
    return huey, huey.task(name="noop")(noop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--workers", type=int, required=True)
    parser.add_argument("--redis")
    parser.add_argument("--sqlite")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    huey, _ = make_huey(args.kind, args.name, args.redis, args.sqlite)
    huey.create_consumer(workers=args.workers, worker_type="thread").run()


if __name__ == "__main__":
    # Huey names a task after its function's module: run the copy imported as `huey_app`, so the
    # consumer's task is `huey_app.noop`, the name producer.py enqueues.
    import huey_app

    huey_app.main()
