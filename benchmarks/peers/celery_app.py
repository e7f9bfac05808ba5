"""Celery for the peer benchmark: the app (Redis broker, no result backend) and its noop task.

Runs in its own venv (benchmarks/peers/.venv-celery, made by bench_peers.py from
requirements-celery.txt), never the project's. The worker is

    celery -A celery_app worker --pool threads --concurrency N --loglevel WARNING \
        --without-gossip --without-mingle --without-heartbeat

with PEERS_REDIS_URL naming the broker. Celery's defaults are kept otherwise (JSON serializer,
prefetch multiplier 4, early acks).
"""

from __future__ import annotations

import os
from typing import Any

import probe
from celery import Celery

app = Celery("peers", broker=os.environ.get("PEERS_REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_ignore_result=True,
    result_backend=None,
    broker_connection_retry_on_startup=True,
)


@app.task(name="noop")
def noop(payload: dict[str, Any]) -> None:
    """The benchmark task: count the call; with an enqueue time, note the start latency."""
    probe.hit(payload.get("t"))
