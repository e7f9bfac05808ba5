"""The web process of the fan-out benchmark: the relay on /ws and /socket.io/, fed in-process or from a Kombu bus.

    python benchmarks/fanout/server.py --port 8765 [--bus redis://127.0.0.1:6379/15 --namespace N]

    POST /publish?rate=R&duration=S   start an in-process publisher: R envelopes/s for S seconds,
                                      each stamped with its publish time `ts` (as a bridge would)
    GET  /status                      {"publishing", "published", "relay": relay.stats(), "pid"}

With --bus, a `bus.bridge.BusBridge` thread feeds `relay.ingest_many` through
`loop.call_soon_threadsafe`, as `runtime.web.app` does. --gc-threshold0 N sets the cyclic GC's
young-generation threshold (Python's default is 700), to measure its effect on pauses.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bus import envelope
from bus.relay import Relay
from bus.socketio import SocketIO

TICKERS = ["PETR4", "VALE3", "ITUB4", "BBDC4", "ABEV3", "WEGE3", "BBAS3", "RENT3", "SUZB3", "GGBR4"]


def sample_event(n: int) -> envelope.Envelope:
    """A typical `asset:updated` (about 260 bytes encoded)."""
    ticker = TICKERS[n % len(TICKERS)]
    return envelope.make(
        "asset:updated",
        ("%032x" % n, "update-asset-prices"),
        {"ticker": ticker, "price": 30.0 + n % 700 / 100, "change": 0.42, "volume": 1_234_567 + n, "bench": "fanout"},
    )


class Publisher:
    """The in-process source: ingests `rate` events a second on the relay's loop."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.published = 0
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    async def run(self, rate: float, duration_s: float) -> None:
        start = time.monotonic()
        counter = itertools.count(self.published)
        sent = 0
        while (elapsed := time.monotonic() - start) < duration_s:
            for _ in range(int(elapsed * rate) - sent):  # catch up on the schedule after a busy loop
                self.relay.ingest(sample_event(next(counter)))
                sent += 1
                self.published += 1
            await asyncio.sleep(0.001)


PUBLISHER: web.AppKey[Publisher] = web.AppKey("publisher", Publisher)
RELAY: web.AppKey[Relay] = web.AppKey("relay", Relay)


async def publish(request: web.Request) -> web.Response:
    publisher = request.app[PUBLISHER]
    if publisher.running:
        return web.json_response({"error": "already publishing"}, status=409)
    rate, duration = float(request.query["rate"]), float(request.query["duration"])
    publisher.task = asyncio.get_running_loop().create_task(publisher.run(rate, duration))
    return web.json_response({"started": True})


async def status(request: web.Request) -> web.Response:
    publisher = request.app[PUBLISHER]
    return web.json_response(
        {"publishing": publisher.running, "published": publisher.published, "relay": request.app[RELAY].stats()}
    )


def bridge_context(url: str, namespace: str, relay: Relay) -> Any:
    from bus.bridge import BusBridge

    async def context(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def on_events(envelopes: list[Any]) -> None:  # on the Kombu thread
            loop.call_soon_threadsafe(relay.ingest_many, envelopes)

        bridge = BusBridge(url, on_events, namespace=namespace)
        bridge.start()
        yield
        await loop.run_in_executor(None, bridge.stop)

    return context


def make_app(bus: str | None, namespace: str) -> web.Application:
    relay = Relay()
    app = web.Application()
    app[RELAY] = relay
    app[PUBLISHER] = Publisher(relay)
    relay.setup(app)
    SocketIO(relay).setup(app)
    app.router.add_post("/publish", publish)
    app.router.add_get("/status", status)
    if bus:
        app.cleanup_ctx.append(bridge_context(bus, namespace, relay))
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--bus", default=None, help="Kombu URL to consume events from")
    parser.add_argument("--namespace", default="benchfanout")
    parser.add_argument("--gc-threshold0", type=int, default=None, help="gc.set_threshold(N, 10, 10)")
    args = parser.parse_args()
    if args.gc_threshold0:
        gc.set_threshold(args.gc_threshold0, 10, 10)
    web.run_app(make_app(args.bus, args.namespace), host="127.0.0.1", port=args.port, print=None, backlog=2048)


if __name__ == "__main__":
    main()
