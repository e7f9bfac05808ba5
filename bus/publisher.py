"""Publishes events on the Kombu topic exchange from a background thread.

`emit` never blocks a job and never raises: it puts the envelope on a bounded in-process queue.
While the broker is unreachable, events are dropped and counted (one log line per outage), and
the thread reconnects with backoff; events flow again when the broker is back.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Any

from kombu import Connection, Exchange

from bus import envelope as env

logger = logging.getLogger("b3jobs.bus")

_STOP = object()


def transport_options(url: str, namespace: str = "b3jobs") -> dict[str, Any]:
    """Short timeouts so an unreachable broker is noticed in seconds; Redis keys under the namespace."""
    if url.startswith("memory://"):
        return {"polling_interval": 0.005}
    if url.startswith(("redis://", "rediss://")):
        return {
            "socket_timeout": 3,
            "socket_connect_timeout": 2,
            "visibility_timeout": 3600,
            "global_keyprefix": "%s:bus:" % namespace,
        }
    return {}


def exchange() -> Exchange:
    return Exchange(env.EXCHANGE, type="topic", durable=False, auto_delete=False)


class KombuPublisher:
    """An EventSink on Kombu. `published`, `dropped` count what happened to emitted events."""

    def __init__(self, url: str, *, namespace: str = "b3jobs", max_queue: int = 50_000):
        self.url = url
        self.namespace = namespace
        self.published = 0
        self.dropped = 0
        self._max_queue = max_queue
        self._start()

    def _start(self) -> None:
        self._pid = os.getpid()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self._max_queue)
        self._down = False
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bus-publisher", daemon=True)
        self._thread.start()

    def emit(self, event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> None:
        if self._pid != os.getpid():
            self._start()  # a forked worker process: the parent's thread did not come along
        if self._down:
            self._drop(1)
            return
        try:
            # A shallow copy: the handler may go on changing its dict while the thread encodes it.
            self._queue.put_nowait(env.make(event, job, dict(data)))
        except queue.Full:
            self._drop(1)

    def flush(self, timeout: float = 1.0) -> bool:
        """Wait until everything emitted so far is published (or dropped); False on timeout."""
        done = threading.Event()
        try:
            self._queue.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    def close(self, timeout: float = 2.0) -> None:
        self.flush(timeout)
        self._stopped.set()
        try:
            self._queue.put_nowait(_STOP)
        except queue.Full:
            pass
        self._thread.join(timeout)

    def _drop(self, count: int) -> None:
        self.dropped += count

    def _run(self) -> None:
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                options = transport_options(self.url, self.namespace)
                with Connection(self.url, transport_options=options, connect_timeout=2) as conn:
                    conn.ensure_connection(max_retries=1)
                    if self._down:
                        logger.warning("bus %s reachable again; %d event(s) were dropped meanwhile", self.url, self.dropped)
                    self._down = False
                    backoff = 0.5
                    self._publish_until_stopped(conn)
                    return
            except Exception as exc:  # any broker failure: drop, count, back off, reconnect
                if not self._down:
                    logger.error("bus %s unreachable (%s); dropping events until it is back", self.url, exc)
                self._down = True
                self._drain_as_dropped()
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _publish_until_stopped(self, conn: Connection) -> None:
        ex = exchange()
        producer = conn.Producer(serializer=None)
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if isinstance(item, threading.Event):
                item.set()
                continue
            try:
                body = env.encode(item)
            except (TypeError, ValueError) as exc:  # one bad event, not a broker failure
                logger.warning("event %s dropped: cannot encode its data: %s", item.event, exc)
                self._drop(1)
                continue
            try:
                producer.publish(
                    body,
                    exchange=ex,
                    routing_key=env.routing_key(item),
                    declare=[ex],
                    content_type="application/json",
                    content_encoding="utf-8",
                    retry=False,
                )
                self.published += 1
            except Exception:
                self._drop(1)
                raise

    def _drain_as_dropped(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, threading.Event):
                item.set()
            elif item is not _STOP:
                self._drop(1)
            else:
                self._stopped.set()
