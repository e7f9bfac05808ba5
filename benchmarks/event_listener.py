"""The event benchmark's measuring listener: a Kombu queue bound to `#` on b3.events, every event noted.

    python benchmarks/event_listener.py --url BUS_URL --namespace NS --dir DIR

A separate process, like a web process's bridge (bus/bridge.py): its own queue bound to `#`,
one `decode_batch` per message. For every event it notes (arrival time.time(), event name,
job id, the envelope's ts) and the number of the bus message it came in. It talks to the benchmark through files in DIR:

- `ready`: written once the queue is bound (events published before that are not seen);
- `ids`: written by the benchmark, one job id per line: the jobs of the run. Once it exists the
  listener counts the events of those jobs (other processes may publish on a shared broker);
- `status`: JSON {"total", "ours", "last"} rewritten every 0.1 s (`last`: arrival of the newest
  of ours);
- `events.json`: on SIGTERM, {"total": events, "messages": bus messages, "rows": [[arrival,
  event, job_id, ts, message number], ...]} with the rows of the run's jobs (all rows if `ids`
  never came), then the process exits.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import msgspec
from kombu import Connection, Queue

from bus.envelope import decode_batch
from bus.publisher import exchange, transport_options

STATUS_EVERY_S = 0.1


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class Listener:
    """Receives every event; counts those of the run's jobs once it knows them."""

    def __init__(self, out: Path):
        self.out = out
        self.rows: list[tuple[float, str, str, float, int]] = []
        self.ids: set[str] | None = None
        self.ours = 0
        self.last = 0.0
        self.messages = 0
        self._checked = 0

    def on_message(self, message) -> None:
        arrival = time.time()
        self.messages += 1
        body = message.body
        for envelope in decode_batch(body.encode() if isinstance(body, str) else body):
            self.rows.append(
                (arrival, envelope.event, envelope.job.id if envelope.job else "", envelope.ts, self.messages)
            )

    def write_status(self) -> None:
        if self.ids is None and (self.out / "ids").exists():
            self.ids = set((self.out / "ids").read_text().split())
        if self.ids is not None:
            for row in self.rows[self._checked :]:
                if row[2] in self.ids:
                    self.ours += 1
                    self.last = row[0]
            self._checked = len(self.rows)
        write_atomically(
            self.out / "status", msgspec.json.encode({"total": len(self.rows), "ours": self.ours, "last": self.last})
        )

    def dump(self) -> None:
        self.write_status()
        rows = self.rows if self.ids is None else [row for row in self.rows if row[2] in self.ids]
        write_atomically(
            self.out / "events.json",
            msgspec.json.encode({"total": len(self.rows), "messages": self.messages, "rows": rows}),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    listener = Listener(args.dir)
    conn = Connection(args.url, transport_options=transport_options(args.url, args.namespace), connect_timeout=2)
    queue = Queue(
        "bench.listen.%s.%s" % (args.namespace, uuid.uuid4().hex[:6]),
        exchange=exchange(),
        routing_key="#",
        durable=False,
        auto_delete=True,
        exclusive=args.url.startswith(("amqp://", "pyamqp://")),
    )
    with conn, conn.Consumer([queue], on_message=listener.on_message, accept=["application/json"], no_ack=True):
        (args.dir / "ready").write_text(queue.name)
        next_status = 0.0
        while not stopping:
            with contextlib.suppress(TimeoutError):
                conn.drain_events(timeout=STATUS_EVERY_S)
            if time.monotonic() >= next_status:
                listener.write_status()
                next_status = time.monotonic() + STATUS_EVERY_S
        listener.dump()
        queue(conn.default_channel).delete()


if __name__ == "__main__":
    main()
