"""Serving the app: the bind check, GC tuning, `python -m runtime web`, and a server thread for embedding."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import threading

from aiohttp import web

from bus.urls import redact
from runtime.core.errors import InvalidArgument
from runtime.core.settings import Settings, bus_url
from runtime.web.app import build_web
from runtime.web.limits import GatedRunner

logger = logging.getLogger("b3jobs.web")


def require_safe_bind(settings: Settings) -> None:
    """Without a token, only loopback may be served: an open job API on a network is a remote shell."""
    if settings.token:
        return
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    if not loopback:
        raise InvalidArgument(
            "B3JOBS_HOST", "refusing to serve %s without B3JOBS_TOKEN; set a token or bind 127.0.0.1" % settings.host
        )


def tune_gc() -> None:
    """With ~1,000 open sockets a full collection pauses the loop 30-57 ms every few seconds;
    a larger young generation removed those pauses in the fan-out benchmark (RESULTS-fanout.md)."""
    import gc

    gc.set_threshold(50_000, 10, 10)


def serve(settings: Settings) -> None:
    require_safe_bind(settings)
    tune_gc()
    url = bus_url(settings)
    if url.startswith("memory://"):
        logger.warning(
            "BUS_URL is memory:// in a separate web process: it will only see events published by itself. "
            "Set BUS_URL (or REDIS_URL) to share events with consumers."
        )
    app = build_web(settings, url=url)
    asyncio.run(_serve_until_signalled(app, settings, url))


async def _serve_until_signalled(app: web.Application, settings: Settings, url: str) -> None:
    """Serve `app` through a GatedRunner (connection cap) until SIGINT or SIGTERM, then shut down cleanly."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    runner = GatedRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.port).start()
        logger.info(
            "b3-jobs web on http://%s:%d (bus %s, store %s, at most %d connections)",
            settings.host,
            settings.port,
            redact(url),
            settings.backend,
            runner.cap,
        )
        await stop.wait()
    finally:
        await runner.cleanup()


class WebThread:
    """Serves an app from a background thread with its own event loop (local_runner, tests)."""

    def __init__(self, app: web.Application, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)

    def start(self, timeout: float = 10.0) -> WebThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("web server did not start within %ss" % timeout)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = GatedRunner(self.app, handle_signals=False)
        try:
            self.loop.run_until_complete(self.runner.setup())
            site = web.TCPSite(self.runner, self.host, self.port)
            self.loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self.runner.cleanup())
        self.loop.close()

    def stop(self, timeout: float = 10.0) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
