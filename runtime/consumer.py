"""The consumer: Huey's, with a finer schedule poll, quicker idle polling, and cron ticks."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from huey.consumer import Consumer, Scheduler

from runtime.cron_runner import CronRunner

if TYPE_CHECKING:
    from runtime.engine import Runtime

logger = logging.getLogger("b3jobs.consumer")

SCHEDULE_POLL_S = 0.2  # Huey's minimum is 1 s, which makes a 1 s retry delay land near 2 s.


class B3Scheduler(Scheduler):
    def __init__(self, huey: Any, stop_flag: Any, interval: float, periodic: bool, cron: CronRunner | None):
        super().__init__(huey, stop_flag, interval, periodic=False)
        self.interval = SCHEDULE_POLL_S
        self.cron = cron

    def loop(self, now: Any = None) -> None:
        super().loop(now)
        if self.cron is not None:
            try:
                self.cron.tick()
            except Exception:
                logger.exception("cron tick failed; will try again")


class B3Consumer(Consumer):
    def __init__(
        self, runtime: "Runtime", *, workers: int, worker_type: str, cron: bool = True, signals: bool = True, **kwargs: Any
    ):
        self.runtime = runtime
        self.signals = signals
        self.cron = CronRunner(runtime) if cron else None
        # SQLite cannot block on an empty queue: poll quickly when idle, at most every 0.5 s.
        kwargs.setdefault("initial_delay", 0.02)
        kwargs.setdefault("max_delay", 0.5)
        super().__init__(runtime.huey, workers=workers, worker_type=worker_type, periodic=False, **kwargs)

    def _create_scheduler(self) -> B3Scheduler:
        return B3Scheduler(self.huey, self.stop_flag, self.scheduler_interval, False, self.cron)

    def _set_signal_handlers(self) -> None:
        # Embedded consumers (tests, a web process) leave signals to their host.
        if self.signals:
            super()._set_signal_handlers()
