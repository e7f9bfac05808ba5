"""The app factory: the HTTP API, the OpenAPI document, the dashboard, metrics, the `/ws` relay and
its Socket.IO endpoint (`/socket.io/`) in one aiohttp app."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bus.bridge import bridge_context
from bus.publisher import KombuPublisher
from bus.relay import Relay
from bus.socketio import SocketIO
from runtime.core.settings import Settings, bus_url
from runtime.engine import Runtime
from runtime.web.api import ROUTES, RUNTIME
from runtime.web.dashboard import setup_dashboard
from runtime.web.dashboard_api import DASHBOARD_ROUTES
from runtime.web.limits import LIMITS, WebLimits, hide_version
from runtime.web.metrics import bus_tap, setup_metrics
from runtime.web.middleware import (
    MAX_BODY_BYTES,
    auth_middleware,
    body_limit_middleware,
    errors_middleware,
    origin_middleware,
    security_headers,
)
from runtime.web.openapi import document
from runtime.web.origin import OriginPolicy
from runtime.web.triggers import trigger_routes


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


OPENAPI: web.AppKey[dict[str, Any]] = web.AppKey("openapi", dict)


def create_app(
    runtime: Runtime,
    relay: Any = None,
    *,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
    limits: WebLimits | None = None,
) -> web.Application:
    """The app factory, used by `python -m runtime web`, local_runner.py and the tests.

    `allowed_hosts` defaults to the runtime's settings (B3JOBS_ALLOWED_HOSTS); `limits` to WebLimits
    with the settings' B3JOBS_MAX_CONNECTIONS (runtime.web.limits, SECURITY.md).
    """
    hide_version()
    settings = runtime.settings
    policy = OriginPolicy.of(token, settings.allowed_hosts if allowed_hosts is None else allowed_hosts)
    limits = limits or WebLimits(max_connections=settings.max_connections)
    app = web.Application(
        middlewares=[errors_middleware, origin_middleware(policy), body_limit_middleware, auth_middleware(token)],
        client_max_size=MAX_BODY_BYTES,
        # aiohttp's keep-alive timer also closes a connection whose headers have not all arrived; after
        # an answer to a body not read to its end (a 408, a 413) it reads on at most a second, not ten.
        handler_args={"keepalive_timeout": limits.header_timeout_s, "lingering_time": 1.0},
    )
    app[LIMITS] = limits
    app.on_response_prepare.append(security_headers)
    app[RUNTIME] = runtime
    # The runtime's routes, the jobs' HTTP triggers and the app's routes (both declared by the manifest).
    routes = [*ROUTES, *trigger_routes(runtime.manifest), *runtime.manifest.app.routes, *DASHBOARD_ROUTES]
    app[OPENAPI] = document(routes, secured=token is not None)
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    app.router.add_get("/api/openapi.json", openapi)
    if relay is not None:
        relay.setup(app)
        SocketIO(relay).setup(app)
    setup_metrics(app, relay)
    setup_dashboard(app)
    return app


def build_web(
    settings: Settings, runtime: Runtime | None = None, *, url: str | None = None, limits: WebLimits | None = None
) -> web.Application:
    """The full web app for a process: runtime publishing on the bus, relay fed from the bus."""
    url = url or bus_url(settings)
    if runtime is None:
        runtime = Runtime(settings, events=KombuPublisher(url, namespace=settings.namespace))
    relay = Relay(token=settings.token)
    app = create_app(runtime, relay, token=settings.token, allowed_hosts=settings.allowed_hosts, limits=limits)
    app.cleanup_ctx.append(bridge_context(url, relay, settings.namespace, taps=(bus_tap(app),)))
    return app
