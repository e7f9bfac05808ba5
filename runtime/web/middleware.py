"""The app's middlewares: JSON errors for every failure, the body size limit, Host/Origin checks, the bearer token."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bus.tokens import bearer, token_matches
from bus.urls import redact_text
from runtime.core.errors import (
    B3JobsError,
    InvalidArgument,
    InvalidState,
    JobIdTaken,
    JobNotFound,
    PayloadError,
    UnknownJob,
)
from runtime.store.outage import STORE_ERRORS
from runtime.web import models as m
from runtime.web.api import respond
from runtime.web.origin import OriginPolicy, Refused

logger = logging.getLogger("b3jobs.web")

MAX_BODY_BYTES = 1024 * 1024
OPEN_PATHS = ("/healthz", "/api/openapi.json")
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large"}
UNREACHABLE: tuple[type[BaseException], ...] = (*STORE_ERRORS, ConnectionError)  # answered with a 503


def error(status: int, code: str, message: str, details: Any = None) -> web.Response:
    body = m.Error(error=m.ErrorDetail(code=code, message=message, details=details))
    return respond(body, status)


def _error_for(exc: Exception) -> web.Response:
    if isinstance(exc, PayloadError):
        return error(422, "invalid_payload", str(exc), exc.errors)
    if isinstance(exc, (UnknownJob, JobNotFound)):
        return error(404, "not_found", str(exc))
    if isinstance(exc, JobIdTaken):
        return error(409, "job_id_taken", str(exc), {"job_id": exc.job_id, "name": exc.name})
    if isinstance(exc, InvalidState):
        return error(409, "invalid_state", str(exc), {"state": exc.state})
    if isinstance(exc, InvalidArgument):
        return error(400, "bad_request", str(exc), {"field": exc.field})
    return error(400, "bad_request", str(exc))


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.text or exc.reason if exc.status in (408, 413) else exc.reason
        response = error(exc.status, HTTP_CODES.get(exc.status, "http_error"), message)
        if exc.status == 408:
            response.force_close()  # the rest of a body that did not come in time is not waited for
        return response
    except Refused as exc:
        return error(exc.status, exc.code, exc.message)
    except B3JobsError as exc:
        return _error_for(exc)
    except UNREACHABLE as exc:
        logger.warning("store unreachable on %s %s: %s", request.method, request.path, redact_text(str(exc)))
        return error(
            503, "store_unavailable", "the job store is unreachable (%s); see the web process log" % type(exc).__name__
        )
    except Exception:
        # Anything else, a Redis reply error included, is a bug: its text (a command, a key) stays in the log.
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, "internal", "internal error; see the web process log")


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    # Refuse by the declared length before reading a byte; aiohttp's client_max_size covers chunked bodies.
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        return error(
            413,
            "body_too_large",
            "request body is %d bytes; the limit is %d" % (request.content_length, MAX_BODY_BYTES),
        )
    return await handler(request)


def origin_middleware(policy: OriginPolicy) -> Middleware:
    """Host, Origin and Content-Type checks (runtime.web.origin) before any handler runs."""

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        policy.check(request)
        return await handler(request)

    return check


def auth_middleware(token: str | None) -> Middleware:
    expected = token.encode() if token else None

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            expected is None
            or request.path in OPEN_PATHS
            or request.path == "/ws"
            or not request.path.startswith("/api/")
        ):
            return await handler(request)
        given = bearer(request.headers.get("Authorization"))
        if given is None or not token_matches(given, expected):
            return error(401, "unauthorized", "missing or wrong bearer token (Authorization: Bearer <B3JOBS_TOKEN>)")
        return await handler(request)

    return check


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no page of this server may be framed or have its types sniffed."""
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
