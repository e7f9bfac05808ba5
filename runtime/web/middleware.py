"""The app's middlewares: JSON errors for every failure, the body size limit, the bearer token."""

from __future__ import annotations

import hmac
import logging
from typing import Any

import redis
from aiohttp import web

from runtime.core.errors import B3JobsError, InvalidArgument, InvalidState, JobNotFound, PayloadError, UnknownJob
from runtime.store.outage import STORE_ERRORS
from runtime.web import models as m
from runtime.web.api import respond

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
    if isinstance(exc, (*STORE_ERRORS, ConnectionError)):
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


