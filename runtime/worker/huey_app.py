"""Huey, with b3-jobs' delivery in place of Huey's at-most-once dequeue and its `_execute`.

Huey keeps doing what it is good at: the consumer with its thread or process workers, health
checks and signal handling, and its task registry. What a worker takes next (a leased job, from
b3-jobs' store) and how it runs it (records, retries, timeouts) is b3-jobs' executor.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from huey import Huey
from huey.registry import Registry
from huey.storage import RedisStorage
from redis import ConnectionPool

from runtime.core.settings import Settings
from runtime.store.sqlite import B3SqliteStorage
from runtime.worker.serializer import MsgspecSerializer

if TYPE_CHECKING:
    from runtime.worker.executor import Executor

logger = logging.getLogger("b3jobs.huey")


LEGACY_PREFIX = "runtime.engine."  # messages written before the registry keyed tasks by job name


class JobRegistry(Registry):  # type: ignore[misc]  # Huey is untyped
    """Huey's task registry keyed by the job's name, so a message names its job and nothing else."""

    def task_to_string(self, task_class: Any) -> str:
        return str(task_class.__name__)

    def string_to_task(self, task_str: str) -> Any:
        return super().string_to_task(task_str.removeprefix(LEGACY_PREFIX))


def _dispatched_by_executor(*args: Any) -> None:
    """Placeholder body of every Huey task: b3-jobs' executor calls the manifest's handler instead."""
    raise RuntimeError("b3-jobs tasks are run by runtime.worker.executor.Executor")


class B3Huey(Huey):  # type: ignore[misc]  # Huey is untyped
    executor: Executor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._registry = JobRegistry()

    def register_jobs(self, names: Any) -> None:
        """One Huey task per job name: Huey's workers decode messages through these."""
        for name in names:
            self.task(name=name)(_dispatched_by_executor)

    def dequeue(self) -> Any:
        # Called by Huey's worker loop: a job leased to this process, or None after waiting a while.
        return self.executor.next_task()

    def execute(self, task: Any, timestamp: Any = None) -> Any:
        return self.executor.run(task)

    def notify_interrupted_tasks(self) -> None:
        # The consumer is stopping without waiting for running jobs: hand them back at once
        # rather than let their leases run out.
        self.executor.hand_back_all()

    def is_revoked(self, task: Any, timestamp: Any = None, peek: bool = True) -> bool:
        # b3-jobs removes a job through its record; a removed job is never dequeued.
        return False


def build_huey(settings: Settings) -> B3Huey:
    common: dict[str, Any] = dict(results=False, utc=True, serializer=MsgspecSerializer())
    if settings.redis_url:
        pool = ConnectionPool.from_url(
            settings.redis_url, health_check_interval=30, socket_keepalive=True, socket_connect_timeout=2
        )
        huey = B3Huey(settings.namespace, storage_class=RedisStorage, connection_pool=pool, **common)
    else:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        huey = B3Huey(settings.namespace, storage_class=B3SqliteStorage, filename=str(settings.sqlite_path), **common)
    # Our dequeue waits for work itself; Huey's worker must not add its own sleep after an empty one.
    huey.storage.blocking = True
    return huey
