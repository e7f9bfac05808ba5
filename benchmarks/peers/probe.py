"""The noop task's body, the same for every Python system: count the call, note when it started.

A worker process calls `hit(t_enq)` once per job, at the first line of its handler. No I/O
happens per job: a reporter thread writes this process's figures to `$PEERS_PROBE_DIR/<pid>.json`
every 50 ms while they change, and the benchmark sums the files of all worker processes:

    {"pid": 123, "count": 2000, "first": <time of call 1>, "last": <time of the latest call>,
     "lat_ms": [<start - t_enq> of each job that carried an enqueue time]}

Times are `time.time()`, the clock the producers stamp `t_enq` with (node/bullmq.js uses the same
wall clock). Without PEERS_PROBE_DIR (an import outside a benchmark run) `hit` only counts.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

REPORT_EVERY_S = 0.05


class Probe:
    """This process's count of noop calls, its first and latest start, and the start latencies."""

    def __init__(self, directory: str | None):
        self.directory = Path(directory) if directory else None
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.lat_ms: list[float] = []
        self._reporter: threading.Thread | None = None
        self._lock = threading.Lock()
        self._hit_lock = threading.Lock()

    def hit(self, t_enq: float | None = None) -> None:
        now = time.time()
        with self._hit_lock:  # uncontended it costs ~0.1 µs; 8 threads must not lose the last count
            self.count += 1
            if self.count == 1:
                self.first = now
            if now > self.last:
                self.last = now
            if t_enq is not None:
                self.lat_ms.append((now - t_enq) * 1000)
        if self._reporter is None:
            self._start_reporter()

    def _start_reporter(self) -> None:
        with self._lock:
            if self._reporter is None and self.directory is not None:
                self._reporter = threading.Thread(target=self._report_forever, name="peers-probe", daemon=True)
                self._reporter.start()

    def _report_forever(self) -> None:
        assert self.directory is not None
        path = self.directory / ("%d.json" % os.getpid())
        tmp = path.with_suffix(".tmp")
        written = None
        while True:
            state = (self.count, self.last, len(self.lat_ms))
            if state != written:
                tmp.write_text(
                    json.dumps(
                        {
                            "pid": os.getpid(),
                            "count": self.count,
                            "first": self.first,
                            "last": self.last,
                            "lat_ms": self.lat_ms[:],
                        }
                    )
                )
                tmp.rename(path)  # the benchmark never reads a half-written file
                written = state
            time.sleep(REPORT_EVERY_S)


PROBE = Probe(os.environ.get("PEERS_PROBE_DIR"))
hit = PROBE.hit
