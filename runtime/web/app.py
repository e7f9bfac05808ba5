"""The web process: the HTTP API, the OpenAPI document and the `/ws` relay, in one aiohttp app."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
from typing import Any, AsyncIterator

import redis
from aiohttp import web

from runtime.web import models as m
from runtime.web.api import RUNTIME, ROUTES, respond
from runtime.web.dashboard_api import DASHBOARD_ROUTES
from runtime.web.triggers import trigger_routes
from runtime.web.dashboard import setup_dashboard
from runtime.engine import Runtime
from runtime.core.errors import (
    B3JobsError, InvalidArgument, InvalidState, JobNotFound, PayloadError, UnknownJob,
)
from runtime.web.metrics import bus_tap, setup_metrics
from runtime.web.openapi import document
from runtime.core.settings import Settings

logger = logging.getLogger("b3jobs.web")

MAX_BODY_BYTES = 1024 * 1024
OPEN_PATHS = ("/healthz", "/api/openapi.json")


def error(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body = m.Error(error=m.ErrorDetail(code=code, message=message, details=details))
    return respond(body, status)


def _error_for(exc: Exception) -> web.Response:
    if isinstance(exc, PayloadError):
        return error(422, "invalid_payload", str(exc), exc.errors)
    if isinstance(exc, (UnknownJob, JobNotFound)):
        return error(404, "not_found", str(exc))
    if isinstance(exc, InvalidState):
        return error(409, "invalid_state", str(exc), {"state": exc.state})
    if isinstance(exc, InvalidArgument):
        return error(400, "bad_request", str(exc), {"field": exc.field})
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, ConnectionError)):
        return error(503, "store_unavailable", "the job store is unreachable: %s" % exc)
    return error(400, "bad_request", str(exc))


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(exc.status, "http_error")
        return error(exc.status, code, exc.reason if exc.status != 413 else exc.text or "request body too large")
    except (B3JobsError, redis.RedisError, ConnectionError) as exc:
        return _error_for(exc)
    except Exception:
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal", "internal error; see the web process log")


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    # Refuse by the declared length before reading a byte; aiohttp's client_max_size covers chunked bodies.
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return error(413, "body_too_large", "request body is %d bytes; the limit is %d" % (request.content_length, MAX_BODY_BYTES))
    return await handler(request)


def auth_middleware(token: str | None) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        if token is None or request.path in OPEN_PATHS or request.path == "/ws" or not request.path.startswith("/api/"):
            return await handler(request)
        given = request.headers.get("Authorization", "")
        if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
            return error(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <B3JOBS_TOKEN>)")
        return await handler(request)

    return check


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)


def create_app(runtime: Runtime, relay: Any = None, *, token: str | None = None) -> web.Application:
    """The app factory, used by `python -m runtime web`, local_runner.py and the tests."""
    app = web.Application(
        middlewares=[errors_middleware, body_limit_middleware, auth_middleware(token)],
        client_max_size=MAX_BODY_BYTES,
    )
    app[RUNTIME] = runtime
    # The runtime's routes, the jobs' HTTP triggers and the app's routes (both declared by the manifest).
    routes = [*ROUTES, *trigger_routes(runtime.manifest), *runtime.manifest.app.routes, *DASHBOARD_ROUTES]
    app[OPENAPI] = document(routes)
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_get("/api/openapi.json", openapi)
    if relay is not None:
        relay.setup(app)
    setup_metrics(app, relay)
    setup_dashboard(app)
    return app


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


def bus_url(settings: Settings, default: str | None = None) -> str:
    """BUS_URL, else REDIS_URL, else memory:// (events stay inside this process)."""
    return settings.bus_url or settings.redis_url or default or "memory://"


def bridge_context(url: str, relay: Any, namespace: str, taps: tuple[Any, ...] = ()) -> Any:
    """cleanup_ctx: a Kombu consumer thread feeding the relay on this app's loop (and `taps`, on the thread)."""
    from bus.consumer import BusBridge

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


def build_web(settings: Settings, runtime: Runtime | None = None, *, url: str | None = None) -> web.Application:
    """The full web app for a process: runtime publishing on the bus, relay fed from the bus."""
    from bus.publisher import KombuPublisher
    from bus.relay import Relay

    url = url or bus_url(settings)
    if runtime is None:
        runtime = Runtime(settings, events=KombuPublisher(url, namespace=settings.namespace))
    relay = Relay(token=settings.token)
    app = create_app(runtime, relay, token=settings.token)
    app.cleanup_ctx.append(bridge_context(url, relay, settings.namespace, taps=(bus_tap(app),)))
    return app


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
        logger.warning("BUS_URL is memory:// in a separate web process: it will only see events published by itself. "
                       "Set BUS_URL (or REDIS_URL) to share events with consumers.")
    app = build_web(settings, url=url)
    web.run_app(app, host=settings.host, port=settings.port, print=lambda text: logger.info(text.strip()))



class WebThread:
    """Serves an app from a background thread with its own event loop (local_runner, tests)."""

    def __init__(self, app: web.Application, host: str, port: int):
        import threading

        self.app, self.host, self.port = app, host, port
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="web", daemon=True)

    def start(self, timeout: float = 10.0) -> "WebThread":
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("web server did not start within %ss" % timeout)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, handle_signals=False)
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
