"""Publishes events on the Kombu topic exchange, many per broker message, from a background thread.

- `emit` never raises into a job. It appends the envelope to an in-process buffer and returns.
  When the thread is behind and the buffer holds `max_buffer` events, `emit` waits for room
  (back-pressure, at most `block_s`) instead of dropping: while the broker is up nothing is dropped.
- The thread takes everything buffered at once, waiting after each round in proportion to its size
  (a round of 16 events or more: `linger_s`, 10 ms), so under load rounds go out every 10 ms and
  at a low rate an event goes out at once; it encodes each envelope once, groups them by routing key in an order that
  keeps each job's events in the order they were emitted (`plan`), and publishes one message per
  group: a JSON array of envelopes that share the message's routing key.
- Broker down: events stay in the buffer, in order, up to `max_outage` events; past that, new
  events are dropped, counted in `dropped` and logged once per outage. Once the broker is back the
  buffer is published in order.
- `after_published(fn)`: `fn` runs once every event emitted before it is on the broker (or, during
  an outage, kept for it). The runtime makes a new job visible to workers this way only after its
  `job:waiting` is out, so no worker's `job:active` can overtake it on the bus.
- `close()`, and the end of the process (atexit), publish what is buffered before returning.
"""

from __future__ import annotations

import atexit
import collections
import heapq
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from kombu.connection import Connection
from kombu.entity import Exchange

from bus import envelope as env
from bus.urls import redact

logger = logging.getLogger("b3jobs.bus")

MAX_BUFFER = 20_000  # events waiting for the thread while the broker is up; past it, emit waits
MAX_OUTAGE = 200_000  # events kept while the broker is down; past it, new events are dropped
BLOCK_S = 2.0  # the longest one emit waits for room before it drops (the broker is up but very slow)
MAX_EVENTS_PER_MESSAGE = 1_000
LINGER_S = 0.010  # under load, rounds of messages at most this often (a lone event is not held)
LOADED_ROUND = 16  # a round of this many events or more is load: the next one waits the whole linger_s
CLOSE_S = 5.0
CONFIRM_S = 5.0  # the longest an AMQP broker may take to confirm a message before it counts as down


def transport_options(url: str, namespace: str = "b3jobs") -> dict[str, Any]:
    """Short timeouts so an unreachable broker is noticed in seconds; Redis keys under the namespace.

    On AMQP every publish waits for the broker's confirm: a message is in its queues when `publish`
    returns, as with Redis. Without it a message still in flight when the broker dies would be
    counted published and lost, and one process's `job:active` could reach a queue before the
    `job:waiting` another process published first.
    """
    if url.startswith("memory://"):
        return {"polling_interval": 0.005}
    if url.startswith(("redis://", "rediss://")):
        return {
            "socket_timeout": 3,
            "socket_connect_timeout": 2,
            "visibility_timeout": 3600,
            "global_keyprefix": "%s:bus:" % namespace,
        }
    if url.startswith(("amqp://", "amqps://", "pyamqp://")):
        return {"confirm_publish": True}
    return {}


def exchange() -> Exchange:
    return Exchange(env.EXCHANGE, type="topic", durable=False, auto_delete=False)


# -- batching ------------------------------------------------------------------------------------


def plan(
    items: Sequence[tuple[str, str | None, bytes]], max_events: int = MAX_EVENTS_PER_MESSAGE
) -> list[tuple[str, list[bytes]]]:
    """The messages that carry `items` (routing key, job id, encoded envelope), in publish order.

    One message per routing key (split past `max_events`). Each job's consecutive events give an
    order between their keys (`job.active.x` before `job.completed.x`); the groups are published
    in an order that respects all of them, so a subscriber bound to `#` sees every job's events in
    the order they were emitted. A constraint that would contradict an earlier one (a cycle, e.g. a
    job retried and run again within one batch) closes the batch and starts another.
    """
    out: list[tuple[str, list[bytes]]] = []
    groups: dict[str, list[bytes]] = {}
    after: dict[str, set[str]] = {}
    last_key: dict[str, str] = {}
    for key, job, body in items:
        prev = last_key.get(job) if job is not None else None
        if prev is not None and prev != key and key not in after.get(prev, ()):
            if key in groups and _reaches(after, key, prev):
                out.extend(_ordered(groups, after, max_events))
                groups, after, last_key = {}, {}, {}
            else:
                after.setdefault(prev, set()).add(key)
        groups.setdefault(key, []).append(body)
        if job is not None:
            last_key[job] = key
    out.extend(_ordered(groups, after, max_events))
    return out


def _reaches(after: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, stack = {start}, [start]
    while stack:
        for nxt in after.get(stack.pop(), ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return False


def _ordered(
    groups: dict[str, list[bytes]], after: dict[str, set[str]], max_events: int
) -> list[tuple[str, list[bytes]]]:
    # Kahn's topological order, ties broken by first appearance.
    index = {key: i for i, key in enumerate(groups)}
    waiting_on = dict.fromkeys(groups, 0)
    for successors in after.values():
        for key in successors:
            waiting_on[key] += 1
    ready = [(index[key], key) for key, n in waiting_on.items() if n == 0]
    heapq.heapify(ready)
    out: list[tuple[str, list[bytes]]] = []
    while ready:
        _, key = heapq.heappop(ready)
        bodies = groups[key]
        out.extend((key, bodies[i : i + max_events]) for i in range(0, len(bodies), max_events))
        for nxt in after.get(key, ()):
            waiting_on[nxt] -= 1
            if waiting_on[nxt] == 0:
                heapq.heappush(ready, (index[nxt], nxt))
    return out


# -- the publisher ---------------------------------------------------------------------------------


class KombuPublisher:
    """An EventSink on Kombu. `published`, `dropped` and `buffered` count what became of emitted events."""

    holds_events = True  # events leave on a thread: the runtime releases new jobs through after_published

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "b3jobs",
        max_buffer: int = MAX_BUFFER,
        max_outage: int = MAX_OUTAGE,
        block_s: float = BLOCK_S,
        linger_s: float = LINGER_S,
    ):
        self.url = url
        self.label = redact(url)
        self.namespace = namespace
        self.published = 0
        self.dropped = 0
        self._max_buffer = max_buffer
        self._max_outage = max(max_outage, max_buffer)
        self._block_s = block_s
        self._linger_s = linger_s
        self._start()
        ref = weakref.ref(self)

        def close_at_exit() -> None:
            publisher = ref()
            if publisher is not None:
                publisher.close(CLOSE_S)

        def restart_in_child() -> None:
            # A forked worker process: the parent's thread did not come along; start afresh there.
            publisher = ref()
            if publisher is not None:
                publisher._start()

        atexit.register(close_at_exit)
        os.register_at_fork(after_in_child=restart_in_child)

    def _start(self) -> None:
        self._pid = os.getpid()
        lock = threading.Lock()
        self._has_items = threading.Condition(lock)
        self._has_room = threading.Condition(lock)
        self._buffer: collections.deque[env.Envelope | _Then] = collections.deque()
        self._count = 0  # envelopes in the buffer (callbacks not counted)
        self._down = False
        self._drop_logged = False
        self._closing = False
        self._last_send = 0.0
        self._last_round = 0  # events in the last round sent
        self._thread = threading.Thread(target=self._run, name="bus-publisher", daemon=True)
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Events emitted and not yet on the broker."""
        return self._count

    # -- the callers' side

    def emit(self, event: str, job: tuple[str, str] | None, data: dict[str, Any]) -> None:
        # A shallow copy: the handler may go on changing its dict while the thread encodes it.
        envelope = env.make(event, job, dict(data))
        with self._has_items:
            if self._count >= self._max_buffer and not self._down:
                deadline = time.monotonic() + self._block_s
                while self._count >= self._max_buffer and not self._down and not self._closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._has_room.wait(left)
            if self._count >= (self._max_outage if self._down else self._max_buffer):
                self._drop_one()
                return
            self._buffer.append(envelope)
            self._count += 1
            if len(self._buffer) == 1:
                self._has_items.notify()

    def after_published(self, callback: Callable[[list[Any]], None], items: list[Any]) -> None:
        """Call `callback(items)` once every event emitted so far is on the broker, or kept for an outage.

        Calls of the same callback that become due together are merged into one, with their items
        concatenated (the runtime releases many new jobs in one store call that way).
        """
        then = _Then(callback, items)
        with self._has_items:
            if not self._down:
                self._buffer.append(then)
                if len(self._buffer) == 1:
                    self._has_items.notify()
                return
        _run_callbacks([then])  # the broker is down: the events are kept, nothing to wait for

    def flush(self, timeout_s: float = 1.0) -> bool:
        """Wait until everything emitted so far is published (or kept for an outage); False on timeout."""
        done = threading.Event()
        self.after_published(lambda _: done.set(), [])
        return done.wait(timeout_s)

    def close(self, timeout_s: float = CLOSE_S) -> None:
        """Publish what is buffered (for at most `timeout_s`), then stop the thread."""
        if self._pid != os.getpid() or not self._thread.is_alive():
            return
        with self._has_items:
            self._closing = True
            self._has_items.notify()
            self._has_room.notify_all()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            logger.error(
                "bus %s: %d event(s) not published within %.0fs of closing", redact(self.url), self._count, timeout_s
            )

    def _drop_one(self) -> None:
        self.dropped += 1
        if not self._drop_logged:
            self._drop_logged = True
            why = "the broker is down and %d events are kept" % self._count if self._down else "the publisher is behind"
            logger.error("bus %s: dropping events: %s (counted in b3jobs_events_dropped_total)", redact(self.url), why)

    # -- the thread

    def _run(self) -> None:
        backoff_s = 0.5
        while True:
            try:
                options = transport_options(self.url, self.namespace)
                with Connection(self.url, transport_options=options, connect_timeout=2) as conn:
                    conn.ensure_connection(max_retries=1)
                    producer = conn.Producer(serializer=None)
                    if self._down:
                        logger.warning(
                            "bus %s reachable again; publishing %d kept event(s)", redact(self.url), self._count
                        )
                    with self._has_items:
                        self._down = False
                        self._drop_logged = False
                    backoff_s = 0.5
                    self._publish_until_closed(producer)
                    return
            except Exception as exc:  # any broker failure: keep the events, back off, reconnect
                with self._has_items:
                    if not self._down:
                        logger.error(
                            "bus %s unreachable (%s); keeping up to %d events until it is back",
                            redact(self.url),
                            exc,
                            self._max_outage,
                        )
                    self._down = True
                    self._has_room.notify_all()
                    callbacks = [item for item in self._buffer if not isinstance(item, env.Envelope)]
                    self._buffer = collections.deque(item for item in self._buffer if isinstance(item, env.Envelope))
                    closing = self._closing
                _run_callbacks(callbacks)
                if closing:
                    logger.error("bus %s down at close: %d event(s) lost", redact(self.url), self._count)
                    self.dropped += self._count
                    return
                time.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    def _publish_until_closed(self, producer: Any) -> None:
        ex = exchange()
        while True:
            with self._has_items:
                while not self._buffer and not self._closing:
                    self._has_items.wait()
                # The next round waits after the last one in proportion to its size, up to `linger_s`
                # from LOADED_ROUND events on: under load rounds grow and go out every `linger_s`;
                # at a low rate an event goes out at once (a new job waits for its job:waiting, so
                # holding events would delay every job's start).
                hold_s = self._linger_s * min(1.0, self._last_round / LOADED_ROUND)
                due = self._last_send + hold_s
                while (
                    not self._closing and self._count < MAX_EVENTS_PER_MESSAGE and (left := due - time.monotonic()) > 0
                ):
                    self._has_items.wait(left)
                if not self._buffer:
                    return
                items = list(self._buffer)
                self._buffer.clear()
            # Every event taken goes out first (the events before each callback among them), then
            # the callbacks run: one batch however events and callbacks interleave.
            events = [item for item in items if isinstance(item, env.Envelope)]
            callbacks = [item for item in items if not isinstance(item, env.Envelope)]
            self._publish(producer, ex, events, callbacks)
            self._last_send = time.monotonic()
            self._last_round = len(events)
            _run_callbacks(callbacks)

    def _publish(self, producer: Any, ex: Exchange, events: list[env.Envelope], rest: list[Any]) -> None:
        """Publish `events`; on a broker failure put back what is unpublished (and `rest`) and raise."""
        if not events:
            return
        encoded: list[tuple[str, str | None, bytes]] = []
        kept: list[env.Envelope] = []
        for envelope in events:
            try:
                encoded.append(
                    (env.routing_key(envelope), envelope.job.id if envelope.job else None, env.encode(envelope))
                )
                kept.append(envelope)
            except (TypeError, ValueError) as exc:  # one bad event, not a broker failure
                logger.warning("event %s dropped: cannot encode its data: %s", envelope.event, exc)
                self._count_out(1, published=False)
        messages = plan(encoded)
        done = 0
        try:
            for key, bodies in messages:
                producer.publish(
                    env.encode_batch(bodies),
                    exchange=ex,
                    routing_key=key,
                    declare=[ex],
                    content_type="application/json",
                    content_encoding="utf-8",
                    retry=False,
                    confirm_timeout=CONFIRM_S,
                )
                done += 1
                self._count_out(len(bodies), published=True)
        except Exception:
            # Put back what did not go out, in emitted order, ahead of everything emitted since.
            unsent = {body for _, bodies in messages[done:] for body in bodies}
            back = [e for e, (_, _, body) in zip(kept, encoded) if body in unsent]
            with self._has_items:
                self._buffer.extendleft(reversed(back + rest))
            raise

    def _count_out(self, n: int, *, published: bool) -> None:
        with self._has_items:
            self._count -= n
            if published:
                self.published += n
            else:
                self.dropped += n
            self._has_room.notify_all()


class _Then(NamedTuple):
    """An after_published callback waiting in the buffer behind the events emitted before it."""

    callback: Callable[[list[Any]], None]
    items: list[Any]


def _run_callbacks(due: list[_Then]) -> None:
    merged: dict[Callable[[list[Any]], None], list[Any]] = {}
    for then in due:
        merged.setdefault(then.callback, []).extend(then.items)
    for callback, items in merged.items():
        try:
            callback(items)
        except Exception:  # a release that fails is done later by the store's own reaper
            logger.exception("after_published callback failed")
