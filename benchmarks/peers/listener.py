"""A bus listener for the peer benchmark: a Kombu queue bound to `#` on the b3.events exchange.

    python listener.py --url BUS_URL --namespace NS --out STATE.json

Bound as a web process binds its relay queue, it receives every event, decodes each message (a
batch of envelopes) and keeps, per job, the lifecycle events it saw in order. Every 100 ms while
they change it writes its figures to --out (atomically); it writes the file once it is bound, so
the benchmark starts producing only after that:

    {"bound": true, "events": {"job:waiting": n, ...}, "jobs": jobs seen,
     "lifecycle_complete": jobs with waiting, active and completed, in that order,
     "out_of_order": events that came before an earlier lifecycle event of their job, "duplicates": envelopes seen twice,
     "undecodable": messages}
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from kombu import Connection, Consumer, Queue

from bus.envelope import decode_batch
from bus.publisher import exchange, transport_options

LIFECYCLE = ("job:waiting", "job:active", "job:completed")


class Tally:
    """What arrived: events by name, and each job's lifecycle events in arrival order."""

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self.per_job: dict[str, list[str]] = {}
        self.seen: set[str] = set()
        self.complete = 0
        self.out_of_order = 0
        self.duplicates = 0
        self.undecodable = 0

    def take(self, message: Any) -> None:
        body = message.body  # raw: the batch is decoded here, once, as the web process's bridge does
        try:
            envelopes = decode_batch(body.encode() if isinstance(body, str) else body)
        except Exception:
            self.undecodable += 1
            return
        for envelope in envelopes:
            if envelope.id in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(envelope.id)
            self.events[envelope.event] += 1
            if envelope.job is not None and envelope.event in LIFECYCLE:
                seq = self.per_job.setdefault(envelope.job.id, [])
                if seq and LIFECYCLE.index(envelope.event) < LIFECYCLE.index(seq[-1]):
                    self.out_of_order += 1
                seq.append(envelope.event)
                if tuple(seq) == LIFECYCLE:
                    self.complete += 1

    def state(self) -> dict[str, Any]:
        return {"bound": True, "events": dict(self.events), "jobs": len(self.per_job), "lifecycle_complete": self.complete,
                "out_of_order": self.out_of_order, "duplicates": self.duplicates, "undecodable": self.undecodable}


def write(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.rename(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    tally = Tally()
    queue = Queue("peers.listener.%d.%s" % (os.getpid(), uuid.uuid4().hex[:6]), exchange=exchange(), routing_key="#",
                  durable=False, auto_delete=True)
    with Connection(args.url, transport_options=transport_options(args.url, args.namespace)) as conn:
        with Consumer(conn, queues=[queue], on_message=tally.take, accept=["application/json"], no_ack=True):
            written: dict[str, Any] | None = None
            next_write = 0.0
            while True:
                if time.monotonic() >= next_write:
                    state = tally.state()
                    if state != written:
                        write(out, state)
                        written = state
                    next_write = time.monotonic() + 0.1
                try:
                    conn.drain_events(timeout=0.1)
                except TimeoutError:  # socket.timeout: nothing arrived
                    pass


if __name__ == "__main__":
    main()
