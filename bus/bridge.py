"""Receives every event from the Kombu topic exchange on a thread, for a web process's relay.

Each web process gets its own exclusive auto-delete queue bound to `#`, so every process sees
every event; the relay filters per subscriber. Kombu has no asyncio: the thread hands raw bodies
to the caller (the relay bridges them into its loop with call_soon_threadsafe).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import uuid
from typing import Any, AsyncIterator, Callable

from kombu import Connection, Queue
from aiohttp import web
from kombu.mixins import ConsumerMixin

from bus.publisher import exchange, transport_options

logger = logging.getLogger("b3jobs.bus")


class BusBridge(ConsumerMixin):
    def __init__(self, url: str, on_raw: Callable[[bytes], None], *, namespace: str = "b3jobs"):
        self.url = url
        self.on_raw = on_raw
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
        self.received = 0
        self._thread: threading.Thread | None = None

    def get_consumers(self, Consumer: Any, channel: Any) -> list[Any]:
        return [Consumer(queues=[self.queue], on_message=self._on_message, accept=["application/json"], no_ack=True)]

    def _on_message(self, message: Any) -> None:
        self.received += 1
        body = message.body
        try:
            self.on_raw(body.encode() if isinstance(body, str) else body)
        except Exception:
            logger.exception("relay rejected an event")

    def on_connection_error(self, exc: Exception, interval: float) -> None:
        logger.error("bus %s: %s; reconnecting in %.0fs", self.url, exc, interval)

    def on_consume_ready(self, connection: Any, channel: Any, consumers: Any, **kwargs: Any) -> None:
        logger.info("bus %s: receiving events on %s", self.url, self.queue.name)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="bus-bridge", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 3.0) -> None:
        self.should_stop = True
        if self._thread is not None:
            self._thread.join(timeout)


def bridge_context(url: str, relay: Any, namespace: str, taps: tuple[Any, ...] = ()) -> Any:
    """cleanup_ctx: a Kombu consumer thread feeding the relay on this app's loop (and `taps`, on the thread)."""
    async def context(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def on_raw(raw: bytes) -> None:
            loop.call_soon_threadsafe(relay.ingest_raw, raw)
            for tap in taps:
                tap(raw)

        bridge = BusBridge(url, on_raw, namespace=namespace)
        bridge.start()
        yield
        await loop.run_in_executor(None, bridge.stop)

    return context
