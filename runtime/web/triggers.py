"""HTTP triggers: a route for each job whose manifest table declares `http`, as a serverless function
declares an http event.

The request's path parameters, and its JSON body when the request model has fields beyond them,
are validated by the request model (`http.request`, else the job's payload model): 422 with every
field problem. Its fields are the payload; the job is enqueued and the answer is 202
`{"jobId", "status": "queued", ...the validated request, computed fields included}`.
"""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from runtime.core.errors import PayloadError
from runtime.core.manifest import Job, Manifest
from runtime.web import models as m
from runtime.web.api import RUNTIME, Route, _field_error, blocking, read_json, respond

QueuedStatus = Literal["queued"]  # the status field of every 202 answer


def trigger_routes(manifest: Manifest) -> list[Route]:
    """One route per job with an `http` trigger, in manifest order."""
    return [_route(job) for job in manifest.jobs.values() if job.spec.http is not None]


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("-"))


def _body_model(job: Job, model: type[BaseModel], in_path: list[str]) -> type[BaseModel] | None:
    """The JSON body the request model takes besides its path parameters (for the OpenAPI document); None if none."""
    fields: dict[str, Any] = {n: (f.annotation, f) for n, f in model.model_fields.items() if n not in in_path}
    if not fields:
        return None
    return create_model(_camel(job.name) + "Body", __config__=ConfigDict(extra="forbid"), **fields)


def _queued_model(job: Job, model: type[BaseModel]) -> type[BaseModel]:
    """The 202 answer: the job's id, "queued", and the validated request."""
    echo: dict[str, Any] = {n: (f.annotation, ...) for n, f in model.model_fields.items()}
    echo.update({n: (c.return_type, ...) for n, c in model.model_computed_fields.items()})
    return create_model(
        _camel(job.name) + "Queued",
        __doc__="The %s job, queued." % job.name,
        __config__=ConfigDict(populate_by_name=True),
        job_id=(str, Field(alias="jobId")),
        status=(QueuedStatus, "queued"),
        **echo,
    )


def _route(job: Job) -> Route:
    http, model = job.spec.http, job.request_model
    assert http is not None and model is not None  # the manifest resolves a request model for every trigger
    body = _body_model(job, model, http.params)
    queued = _queued_model(job, model)

    async def trigger(request: web.Request) -> web.Response:
        data = await read_json(request) if body is not None else {}
        if isinstance(data, dict):
            data = {**data, **request.match_info}
        try:
            validated = model.model_validate(data)
        except ValidationError as exc:
            raise PayloadError(job.name, [_field_error(e) for e in exc.errors()]) from None
        payload = validated.model_dump(mode="json", include=set(model.model_fields))
        record, _ = await blocking(request.app[RUNTIME].enqueue, job.name, payload)
        return respond(queued(jobId=record.id, **validated.model_dump()), 202)

    trigger.__name__ = "queue_" + job.name.replace("-", "_")  # the OpenAPI operationId
    responses: dict[int, type[BaseModel] | None] = {202: queued, 422: m.Error}
    if body is not None:
        responses.update({400: m.Error, 413: m.Error})
    what = job.spec.description
    summary = "Queue %s: %s" % (job.name, what[:1].lower() + what[1:]) if what else "Queue %s" % job.name
    return Route(http.method, http.path, trigger, summary, body=body, responses=responses)
