"""The bus bridge: every event from the Kombu topic exchange, decoded once, into a web process.

Each web process gets its own exclusive auto-delete queue bound to `#`, so every process sees
every event; the relay filters per subscriber. Kombu has no asyncio: a thread receives the
messages (each a batch of envelopes), decodes each batch once, and hands the envelopes to the
relay on its event loop (call_soon_threadsafe) and to the taps (metrics) on the thread.

The web app starts serving once its queue is bound (or after READY_TIMEOUT_S, with the bus down):
a node behind a load balancer must not take clients before it receives the events they resume to.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
from aiohttp import web
from kombu.connection import Connection
from kombu.entity import Queue
from kombu.mixins import ConsumerMixin

from bus.envelope import Envelope, decode_batch
from bus.publisher import exchange, transport_options
from bus.urls import redact

logger = logging.getLogger("b3jobs.bus")


Envelopes = list[Envelope]
READY_TIMEOUT_S = 10.0


class BusBridge(ConsumerMixin):
    """A Kombu consumer thread that hands every batch of envelopes it receives to `on_events`."""

    def __init__(self, url: str, on_events: Callable[[Envelopes], None], *, namespace: str = "b3jobs"):
        self.url = url
        self.on_events = on_events
        self.connection = Connection(url, transport_options=transport_options(url, namespace), connect_timeout=2)
        self.queue = Queue(
            "b3.relay.%s.%d.%s" % (socket.gethostname(), os.getpid(), uuid.uuid4().hex[:8]),
            exchange=exchange(),
            routing_key="#",
            durable=False,
            exclusive=url.startswith(("amqp://", "pyamqp://")),
            auto_delete=True,
            expires=60,  # Redis: a dead relay's list disappears instead of growing forever
        )
        self.received = 0  # events
        self.undecodable = 0  # messages
        self._thread: threading.Thread | None = None
        self.ready = threading.Event()  # the queue is bound: every event published from now on arrives

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
        return [Consumer(queues=[self.queue], on_message=self._on_message, accept=["application/json"], no_ack=True)]

    def _on_message(self, message: Any) -> None:
        body = message.body
        try:
            envelopes = decode_batch(body.encode() if isinstance(body, str) else body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            self.undecodable += 1
            if self.undecodable <= 10 or self.undecodable % 1000 == 0:
                logger.warning("undecodable bus message dropped (%d so far): %s: %.120r", self.undecodable, exc, body)
            return
        self.received += len(envelopes)
        try:
            self.on_events(envelopes)
        except Exception:
            logger.exception("relay rejected %d event(s)", len(envelopes))

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        logger.error("bus %s: %s; reconnecting in %.0fs", redact(self.url), exc, interval)

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        logger.info("bus %s: receiving events on %s", redact(self.url), self.queue.name)
        self.ready.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="bus-bridge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)


def bridge_context(url: str, relay: Any, namespace: str, taps: tuple[Callable[[Envelopes], None], ...] = ()) -> Any:
    """cleanup_ctx: a BusBridge feeding the relay on this app's loop, and `taps` on the bridge's thread."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def on_events(envelopes: Envelopes) -> None:
            loop.call_soon_threadsafe(relay.ingest_many, envelopes)
            for tap in taps:
                tap(envelopes)

        bridge = BusBridge(url, on_events, namespace=namespace)
        bridge.start()
        if not await loop.run_in_executor(None, bridge.ready.wait, READY_TIMEOUT_S):
            logger.warning(
                "bus %s: not receiving events after %.0fs; serving anyway, resumes will report gaps",
                redact(url),
                READY_TIMEOUT_S,
            )
        yield
        await loop.run_in_executor(None, bridge.stop)

    return context
