"""The consumer: Huey's, whose scheduler thread does b3-jobs' housekeeping (delays, leases, cron)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from huey.consumer import Consumer, Scheduler

from runtime.worker.housekeeping import Housekeeper

if TYPE_CHECKING:
    from runtime.engine import Runtime

logger = logging.getLogger("b3jobs.consumer")

SCHEDULE_POLL_S = 0.2  # how late a delayed job or a retry may start; Huey's own minimum is 1 s


class B3Scheduler(Scheduler):  # type: ignore[misc]  # Huey is untyped
    def __init__(self, huey: Any, stop_flag: Any, housekeeper: Housekeeper):
        super().__init__(huey, stop_flag, 1, periodic=False)
        self.housekeeper = housekeeper

    def loop(self, now: Any = None) -> None:
        started = time.monotonic()
        self.housekeeper.tick()
        self.sleep_for_interval(started, SCHEDULE_POLL_S)


class B3Consumer(Consumer):  # type: ignore[misc]  # Huey is untyped
    def __init__(
        self,
        runtime: Runtime,
        *,
        workers: int,
        worker_type: str,
        cron: bool = True,
        signals: bool = True,
        **kwargs: Any,
    ):
        self.runtime = runtime
        self.signals = signals
        self.housekeeper = runtime.housekeeper(cron=cron)
        kwargs.setdefault("initial_delay", 0.05)
        kwargs.setdefault("max_delay", 1.0)
        kwargs.setdefault("health_check_interval", 2)  # restart a dead process worker within seconds
        super().__init__(runtime.huey, workers=workers, worker_type=worker_type, periodic=False, **kwargs)

    def _create_scheduler(self) -> B3Scheduler:
        return B3Scheduler(self.huey, self.stop_flag, self.housekeeper)

    def start(self) -> None:
        # Huey installs its handlers after starting the workers; a SIGTERM in between would kill
        # the process without handing running jobs back. Install them first.
        self._set_signal_handlers()
        super().start()

    def _set_signal_handlers(self) -> None:
        # Embedded consumers (tests, a web process) leave signals to their host.
        if self.signals:
            super()._set_signal_handlers()
