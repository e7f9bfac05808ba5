"""A b3-jobs consumer for the benchmark: `python -m runtime consumer`, minus the event bus.

    python benchmarks/b3_consumer.py --workers N     (settings from the B3JOBS_* / REDIS_URL env vars)

It builds `Runtime(Settings.from_env())` — the default Runtime: job records on, events to the
debug log (LogSink) — and runs `B3Consumer(..., cron=False)` in the main thread at log level
WARNING. The CLI consumer is the same except that it publishes every job event on Kombu; the
benchmark measures that one too, as "b3-jobs+bus".
"""

from __future__ import annotations

import argparse
import logging

from runtime.core.settings import Settings
from runtime.engine import Runtime
from runtime.worker.consumer import B3Consumer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runtime = Runtime(Settings.from_env())
    B3Consumer(runtime, workers=args.workers, worker_type="thread", cron=False).run()


if __name__ == "__main__":
    main()
