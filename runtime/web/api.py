"""The HTTP API's routes: one table drives both the aiohttp router and the OpenAPI document."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ValidationError

from bus import json_limits
from bus.urls import redact_text
from runtime.core.enqueue import EnqueueItem
from runtime.core.errors import InvalidArgument, PayloadError
from runtime.engine import Runtime
from runtime.web import models as m
from runtime.web.limits import LIMITS, WebLimits

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime", Runtime)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: dict[int, type[BaseModel] | None] = field(default_factory=dict)
    auth: bool = True


async def blocking(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a store call (Redis or SQLite, both blocking) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


def respond(model: BaseModel, status: int = 200) -> web.Response:
    return web.Response(body=model.model_dump_json(by_alias=True), status=status, content_type="application/json")


async def read_json(request: web.Request) -> Any:
    """The body as JSON ({} when empty), read within the app's body timeout, nested at most json_limits.MAX_DEPTH."""
    timeout_s = request.app.get(LIMITS, WebLimits()).body_timeout_s
    try:
        async with asyncio.timeout(timeout_s):
            raw = await request.read() if request.can_read_body else b""
    except TimeoutError:
        raise web.HTTPRequestTimeout(text="the request body did not arrive within %gs" % timeout_s) from None
    if not raw.strip():
        return {}
    try:
        return json_limits.decode(raw)
    except json_limits.BadJson as exc:
        raise InvalidArgument("body", "not valid JSON: %s" % exc) from None


async def parse_body(request: web.Request, model: type[BaseModel]) -> Any:
    data = await read_json(request)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PayloadError("request body", [_field_error(e) for e in exc.errors()]) from None


def parse_query(request: web.Request, model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(dict(request.query))
    except ValidationError as exc:
        raise PayloadError("query", [_field_error(e) for e in exc.errors()]) from None


def _field_error(err: Any, under: str = "") -> dict[str, Any]:
    loc = ".".join(str(p) for p in (under, *err["loc"]) if p != "")
    return {"loc": loc, "msg": err["msg"], "type": err["type"]}


def job_out(record: Any, deduplicated: bool | None = None) -> m.Job:
    return m.Job(**record.to_dict(), deduplicated=deduplicated)


# -- handlers -------------------------------------------------------------------------------------


async def enqueue(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    job = runtime.manifest.job(request.match_info["name"])
    data = await read_json(request)
    try:
        body = m.EnqueueBody.model_validate(data)
    except ValidationError as exc:
        # Report the payload's problems together with the envelope's, not one round trip each.
        problems = [_field_error(e) for e in exc.errors()]
        payload = data.get("payload") if isinstance(data, dict) else None
        if isinstance(payload, dict):
            try:
                job.payload_model.model_validate(payload)
            except ValidationError as payload_exc:
                problems.extend(_field_error(e) for e in payload_exc.errors())
        raise PayloadError(job.name, problems) from None
    record, created = await blocking(
        runtime.enqueue,
        request.match_info["name"],
        body.payload,
        delay=body.delay,
        priority=body.priority,
        job_id=body.job_id,
    )
    return respond(job_out(record, deduplicated=not created), 202 if created else 200)


async def enqueue_bulk(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    job = runtime.manifest.job(request.match_info["name"])
    data = await read_json(request)
    try:
        body = m.BulkBody.model_validate(data)
    except ValidationError as exc:
        # As for one job: every item's payload problems come with the envelopes', not a round trip later.
        problems = [_field_error(e) for e in exc.errors()]
        items = data.get("jobs") if isinstance(data, dict) else None
        for n, item in enumerate(items if isinstance(items, list) else []):
            payload = item.get("payload") if isinstance(item, dict) else None
            if isinstance(payload, dict):
                try:
                    job.payload_model.model_validate(payload)
                except ValidationError as payload_exc:
                    problems.extend(_field_error(e, "jobs.%d.payload" % n) for e in payload_exc.errors())
        raise PayloadError(job.name, problems) from None
    items = [EnqueueItem(j.payload, delay=j.delay, priority=j.priority, job_id=j.job_id) for j in body.jobs]
    try:
        results = await blocking(runtime.enqueue_many, job.name, items)
    except PayloadError as exc:  # `3.payload.user_id` → `jobs.3.payload.user_id`: where it is in the body
        raise PayloadError(exc.job, [{**e, "loc": "jobs." + e["loc"]} for e in exc.errors]) from None
    jobs = [m.BulkJob(id=r.id, state=r.state, deduplicated=not created) for r, created in results]
    created = sum(1 for _, c in results if c)
    return respond(m.BulkResult(created=created, jobs=jobs), 202 if created else 200)


async def get_job(request: web.Request) -> web.Response:
    return respond(job_out(await blocking(request.app[RUNTIME].get, request.match_info["id"])))


async def list_jobs(request: web.Request) -> web.Response:
    q = parse_query(request, m.JobsQuery)
    runtime = request.app[RUNTIME]
    if q.name is not None:
        runtime.manifest.job(q.name)
    records = await blocking(runtime.list, q.state, q.name, q.offset, q.limit)
    return respond(m.JobPage(jobs=[job_out(r) for r in records], offset=q.offset, limit=q.limit))


async def retry_job(request: web.Request) -> web.Response:
    return respond(job_out(await blocking(request.app[RUNTIME].retry, request.match_info["id"])))


async def promote_job(request: web.Request) -> web.Response:
    return respond(job_out(await blocking(request.app[RUNTIME].promote, request.match_info["id"])))


async def remove_job(request: web.Request) -> web.Response:
    await blocking(request.app[RUNTIME].remove, request.match_info["id"])
    return respond(m.Removed(id=request.match_info["id"], removed=True))


async def queues(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    counts, paused = await asyncio.gather(blocking(runtime.counts), blocking(runtime.paused))
    return respond(
        m.Queues(
            queues=[
                m.Queue(name=name, paused=name in paused, counts=m.Counts.model_validate(by_state))
                for name, by_state in counts.items()
            ]
        )
    )


async def pause(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    changed = await blocking(request.app[RUNTIME].pause, name)
    return respond(m.PauseResult(name=name, paused=True, changed=changed))


async def resume(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    runtime = request.app[RUNTIME]
    was_paused = name in await blocking(runtime.paused)
    released = await blocking(runtime.resume, name)
    return respond(m.PauseResult(name=name, paused=False, changed=was_paused, released=released))


async def clean(request: web.Request) -> web.Response:
    body = await parse_body(request, m.CleanBody)
    name = request.match_info["name"]
    removed = await blocking(request.app[RUNTIME].clean, name, body.state, body.age, body.limit)
    return respond(m.Cleaned(name=name, state=body.state, removed=removed))


async def retry_all(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return respond(m.RetryAllResult(name=name, retried=await blocking(request.app[RUNTIME].retry_failed, name)))


async def drain(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return respond(m.Drained(name=name, removed=await blocking(request.app[RUNTIME].drain, name)))


async def obliterate(request: web.Request) -> web.Response:
    q = parse_query(request, m.ObliterateQuery)
    name = request.match_info["name"]
    removed = await blocking(request.app[RUNTIME].obliterate, name, confirm=q.confirm, force=q.force)
    return respond(m.Drained(name=name, removed=removed))


async def healthz(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME]
    try:
        await blocking(runtime.paused)
        store = "ok"
    except Exception as exc:  # the point of a health check: report, do not raise
        store = "unreachable: %s: %s" % (type(exc).__name__, redact_text(str(exc)))
    bus = runtime.events.label
    status: Literal["ok", "degraded"] = "ok" if store == "ok" else "degraded"
    return respond(
        m.Health(status=status, backend=runtime.settings.backend, bus=bus, store=store), 200 if status == "ok" else 503
    )


E = m.Error
ROUTES = [
    Route(
        "POST",
        "/api/v1/jobs/{name}",
        enqueue,
        "Enqueue a job",
        body=m.EnqueueBody,
        responses={202: m.Job, 200: m.Job, 400: E, 404: E, 413: E, 422: E},
    ),
    Route(
        "POST",
        "/api/v1/jobs/{name}/bulk",
        enqueue_bulk,
        "Enqueue many jobs of one name: all validated first, then created in one store call",
        body=m.BulkBody,
        responses={202: m.BulkResult, 200: m.BulkResult, 400: E, 404: E, 413: E, 422: E},
    ),
    Route(
        "GET",
        "/api/v1/jobs",
        list_jobs,
        "List jobs by state and name, newest first",
        query=m.JobsQuery,
        responses={200: m.JobPage, 404: E, 422: E},
    ),
    Route("GET", "/api/v1/jobs/{id}", get_job, "Get a job", responses={200: m.Job, 404: E}),
    Route(
        "DELETE",
        "/api/v1/jobs/{id}",
        remove_job,
        "Remove a job that is not active",
        responses={200: m.Removed, 404: E, 409: E},
    ),
    Route("POST", "/api/v1/jobs/{id}/retry", retry_job, "Retry a failed job", responses={200: m.Job, 404: E, 409: E}),
    Route(
        "POST",
        "/api/v1/jobs/{id}/promote",
        promote_job,
        "Run a delayed job now",
        responses={200: m.Job, 404: E, 409: E},
    ),
    Route(
        "GET", "/api/v1/queues", queues, "Counts per state, and paused, for every job name", responses={200: m.Queues}
    ),
    Route(
        "POST",
        "/api/v1/queues/{name}/pause",
        pause,
        "Pause a job name across all consumers",
        responses={200: m.PauseResult, 404: E},
    ),
    Route(
        "POST",
        "/api/v1/queues/{name}/resume",
        resume,
        "Resume a paused job name",
        responses={200: m.PauseResult, 404: E},
    ),
    Route(
        "POST",
        "/api/v1/queues/{name}/clean",
        clean,
        "Delete old records of one state",
        body=m.CleanBody,
        responses={200: m.Cleaned, 400: E, 404: E, 422: E},
    ),
    Route(
        "POST",
        "/api/v1/queues/{name}/retry",
        retry_all,
        "Retry every failed job of a name",
        responses={200: m.RetryAllResult, 404: E},
    ),
    Route(
        "POST",
        "/api/v1/queues/{name}/drain",
        drain,
        "Remove every waiting job of a name",
        responses={200: m.Drained, 404: E},
    ),
    Route(
        "DELETE",
        "/api/v1/queues/{name}",
        obliterate,
        "Obliterate a name's queue, records and totals",
        query=m.ObliterateQuery,
        responses={200: m.Drained, 400: E, 404: E, 409: E, 422: E},
    ),
    Route(
        "GET",
        "/healthz",
        healthz,
        "Liveness and store reachability",
        responses={200: m.Health, 503: m.Health},
        auth=False,
    ),
]
