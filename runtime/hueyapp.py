"""Huey, with b3-jobs' execution in place of Huey's own `_execute`.

Huey keeps doing what it is good at: the queue, the schedule of delayed messages, the consumer
with its thread or process workers and its health checks. What runs a dequeued message, and what
the scheduler does with a due one, is b3-jobs' executor, which keeps the job records.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from huey import Huey
from huey.storage import PriorityRedisStorage
from redis import ConnectionPool

from runtime.serializer import MsgspecSerializer
from runtime.settings import Settings
from runtime.store.sqlite import B3SqliteStorage

if TYPE_CHECKING:
    from runtime.executor import Executor

logger = logging.getLogger("b3jobs.huey")


class B3Huey(Huey):
    executor: "Executor"

    def execute(self, task: Any, timestamp: Any = None) -> Any:
        if not self.ready_to_run(task, timestamp):
            self.add_schedule(task)
            return None
        return self.executor.run(task)

    def enqueue(self, task: Any) -> None:
        # Called by Huey's scheduler for a delayed message whose time has come.
        self.executor.make_due(task)

    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        # b3-jobs removes a job through its record; the executor skips messages without one.
        return False


def build_huey(settings: Settings) -> B3Huey:
    common: dict[str, Any] = dict(results=False, utc=True, serializer=MsgspecSerializer())
    if settings.redis_url:
        return B3Huey(
            settings.namespace,
            storage_class=PriorityRedisStorage,
            connection_pool=ConnectionPool.from_url(settings.redis_url, health_check_interval=30, socket_keepalive=True),
            read_timeout=1,
            **common,
        )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return B3Huey(settings.namespace, storage_class=B3SqliteStorage, filename=str(settings.sqlite_path), **common)
