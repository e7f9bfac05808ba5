"""The API routes the dashboard needs beyond the core ones: overview, search, failures by reason, detail.

Everything here is built on the runtime's and store's public methods. The stores index jobs by
name, state and time only, so search and the failure groups read records page by page, newest
first, bounded per request and resumable by offset. A payload-field index and counters per
failure reason in the store would turn both into lookups.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field

from runtime.core.cron import cron_job_id
from runtime.core.records import FAILED, JobRecord, State
from runtime.engine import Runtime
from runtime.store.base import METRICS as TOTALS
from runtime.web import models as m
from runtime.web.api import RUNTIME, Route, blocking, job_out, parse_body, parse_query, respond
from runtime.web.metrics import METRICS, Activity, publisher_counts, take_snapshot

SCAN_PAGE = 500
MAX_SCAN_OFFSET = 1_000_000  # search resumes at most this deep (each page reads the ids before it)
MAX_CHILDREN_SHOWN = 200
RATE_WINDOW_MINUTES = 5


# -- models ---------------------------------------------------------------------------------------


class Totals(BaseModel):
    """Running totals of one job name, kept by the store (they agree across processes)."""

    started: int
    completed: int
    failed: int
    retried: int
    stalled: int


class Throughput(BaseModel):
    """Jobs finished over the last minutes, as this web process saw them on the bus."""

    window_s: float
    completed: int
    failed: int
    per_minute: float = Field(description="completed + failed per minute over the window")
    failure_rate: float | None = Field(description="failed / (completed + failed); null when none finished")
    series: list[tuple[int, int]] = Field(description="(completed, failed) per minute, oldest first, current last")


class CronSchedule(BaseModel):
    expression: str
    timezone: str
    enabled: bool
    misfire: str
    next_run: float | None = Field(description="epoch seconds of the next tick")
    last_run: float | None = Field(description="epoch seconds of the last tick claimed by a consumer")
    last_run_id: str | None = None
    last_run_state: str | None = Field(default=None, description="state of the last tick's job, if still kept")


class JobSummary(BaseModel):
    name: str
    description: str
    declared: bool = Field(description="false for names the store holds but the manifest no longer declares")
    paused: bool
    counts: m.Counts
    totals: Totals
    throughput: Throughput
    cron: CronSchedule | None = None
    retries: int | None = None
    timeout: float | None = None


class ConsumerSeen(BaseModel):
    id: str
    seen_at: float


class EventCounters(BaseModel):
    published: int
    dropped: int


class Overview(BaseModel):
    """Everything the dashboard's first screen shows, in one call."""

    generated_at: float
    backend: str
    live: bool = Field(description="whether this web process receives the bus (throughput needs it)")
    activity_since: float = Field(description="throughput counts events received since this time")
    consumers: list[ConsumerSeen]
    events: EventCounters | None = Field(description="this web process's publisher, when it keeps counts")
    jobs: list[JobSummary]


class SearchQuery(m.Strict):
    q: str = Field(min_length=1, max_length=200, description="an id (or part), field=value (e.g. user=42), or words")
    name: str | None = m.JobName
    state: State | None = None
    offset: int = Field(
        default=0, ge=0, le=MAX_SCAN_OFFSET, description="where to resume scanning: a previous answer's next_offset"
    )
    limit: int = Field(default=50, ge=1, le=200, description="matches to return")
    scan: int = Field(default=20_000, ge=1, le=100_000, description="records to examine at most in this call")


class SearchResults(BaseModel):
    """Matches newest first; `next_offset` continues the scan, null when every record was examined."""

    jobs: list[m.Job]
    q: str
    offset: int
    scanned: int
    next_offset: int | None


class FailuresQuery(m.Strict):
    name: str | None = m.JobName
    scan: int = Field(default=20_000, ge=1, le=200_000, description="failed records to examine at most")


class FailureGroup(BaseModel):
    name: str
    reason: str = Field(description="the error with numbers and hex ids masked: the group's key")
    example: str = Field(description="the newest error of the group, as recorded")
    count: int
    first_at: float
    last_at: float
    job_ids: list[str] = Field(description="the newest few, newest first")


class FailureGroups(BaseModel):
    """Failed jobs grouped by job name and reason, the biggest group first."""

    groups: list[FailureGroup]
    scanned: int
    truncated: bool


class RetryGroupBody(m.StrictBody):
    name: str = Field(min_length=1, max_length=m.MAX_NAME_CHARS)
    reason: str = Field(max_length=300, description="a group's `reason`, as /failures gives it")


class RetryGroupResult(BaseModel):
    name: str
    reason: str
    retried: int


class JobBrief(BaseModel):
    id: str
    name: str
    state: str
    progress: Any = None
    error: str | None = None


class JobDetail(m.Job):
    """A job record with what only the dashboard shows: stalls, worker, parent and children summaries."""

    stalls: int
    max_stalls: int
    worker: str | None = None
    parent: JobBrief | None = None
    children_shown: list[JobBrief] = []  # noqa: RUF012 (a pydantic model copies its defaults)
    children_total: int = 0


# -- overview -------------------------------------------------------------------------------------


def throughput(activity: Activity, name: str, now: float) -> Throughput:
    series = activity.series(name, now)
    recent = series[-RATE_WINDOW_MINUTES:]
    completed, failed = sum(c for c, _ in recent), sum(f for _, f in recent)
    # The current minute is partial: the window spans the whole minutes before it plus the part elapsed,
    # or less since the web process started; never under a minute, which would extrapolate a few jobs wildly.
    window_s = (RATE_WINDOW_MINUTES - 1) * 60 + (now % 60)
    window_s = max(60.0, min(window_s, now - activity.since))
    done = completed + failed
    return Throughput(
        window_s=round(window_s, 1),
        completed=completed,
        failed=failed,
        per_minute=round(done * 60 / window_s, 2),
        failure_rate=round(failed / done, 4) if done else None,
        series=series,
    )


def cron_schedule(runtime: Runtime, name: str, now: float) -> CronSchedule | None:
    job = runtime.manifest.jobs.get(name)
    if job is None or job.cron is None:
        return None
    next_run = job.cron.next_after(dt.datetime.fromtimestamp(now, dt.UTC), job.tz).timestamp()
    last = runtime.store.last_tick(name)
    last_id = last_state = None
    if last is not None:
        last_id = cron_job_id(name, last)
        record = runtime.store.get(last_id)
        last_state = record.state if record is not None else None
    return CronSchedule(
        expression=job.spec.cron or "",
        timezone=job.spec.timezone,
        enabled=job.spec.enabled,
        misfire=job.spec.misfire,
        next_run=next_run if job.spec.enabled else None,
        last_run=last,
        last_run_id=last_id,
        last_run_state=last_state,
    )


def build_overview(runtime: Runtime, activity: Activity, live: bool) -> Overview:
    now = time.time()
    snap = take_snapshot(runtime)
    totals, paused, consumers = snap.totals, snap.paused, snap.consumers
    events = publisher_counts(runtime.events)
    jobs = []
    for name, by_state in snap.counts.items():
        job = runtime.manifest.jobs.get(name)
        jobs.append(
            JobSummary(
                name=name,
                description=job.spec.description if job else "",
                declared=job is not None,
                paused=name in paused,
                counts=m.Counts.model_validate(by_state),
                totals=Totals(**totals.get(name, dict.fromkeys(TOTALS, 0))),
                throughput=throughput(activity, name, now),
                cron=cron_schedule(runtime, name, now),
                retries=job.spec.retries if job else None,
                timeout=job.spec.timeout if job else None,
            )
        )
    return Overview(
        generated_at=now,
        backend=runtime.settings.backend,
        live=live,
        activity_since=activity.since,
        consumers=[ConsumerSeen(id=owner, seen_at=seen) for owner, seen in sorted(consumers.items())],
        events=EventCounters(published=events[0], dropped=events[1]) if events else None,
        jobs=jobs,
    )


async def overview(request: web.Request) -> web.Response:
    bus = request.app[METRICS].bus
    result = await blocking(build_overview, request.app[RUNTIME], bus.activity, bus.fed)
    return respond(result)


# -- search ---------------------------------------------------------------------------------------


def _norm(value: Any) -> str:
    return str(value).strip().lower()


def _field(payload: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(payload, dict) or part not in payload:
            return None
        payload = payload[part]
    return payload


def _equals(found: Any, wanted: str) -> bool:
    if isinstance(found, list):
        return any(_equals(item, wanted) for item in found)
    if found is None or isinstance(found, dict):
        return False
    if isinstance(found, bool):
        return wanted in (str(found).lower(), "1" if found else "0")
    return _norm(found) == wanted


def compile_query(q: str) -> Callable[[JobRecord], bool]:
    """`user=42` matches a payload field (a list field matches when it holds the value; dots reach
    nested fields); any other word matches part of the id or of the error, or equals a payload value.
    Several terms must all match; case is ignored."""
    tests: list[Callable[[JobRecord], bool]] = []
    for term in q.split():
        key, eq, value = term.partition("=")
        tests.append(_field_equals(key, _norm(value)) if eq and key else _mentions(_norm(term)))
    return lambda record: all(test(record) for test in tests)


def _field_equals(key: str, wanted: str) -> Callable[[JobRecord], bool]:
    return lambda r: _equals(_field(r.payload, key), wanted)


def _mentions(word: str) -> Callable[[JobRecord], bool]:
    return lambda r: (
        word in r.id.lower()
        or (r.error is not None and word in r.error.lower())
        or any(_equals(v, word) for v in r.payload.values())
    )


def scan(
    runtime: Runtime, state: str | None, name: str | None, offset: int, most: int
) -> Iterator[tuple[int, JobRecord]]:
    """(position, record) newest first from `offset`, reading pages of SCAN_PAGE, at most `most` records."""
    position, end = offset, offset + most
    while position < end:
        want = min(SCAN_PAGE, end - position)
        page = runtime.list(state, name, position, want)
        for record in page:
            yield position, record
            position += 1
        if len(page) < want:
            return


def search(runtime: Runtime, q: SearchQuery) -> SearchResults:
    if q.name is not None:
        runtime.manifest.job(q.name)
    matches = compile_query(q.q)
    found: list[JobRecord] = []
    if q.offset == 0 and "=" not in q.q:
        exact = runtime.store.get(q.q.strip())  # an exact id first, wherever the scan would find it
        if exact is not None and q.name in (None, exact.name) and q.state in (None, exact.state):
            found.append(exact)
    seen = {r.id for r in found}
    scanned, next_offset = 0, None
    for position, record in scan(runtime, q.state, q.name, q.offset, q.scan):
        scanned += 1
        next_offset = position + 1
        if record.id not in seen and matches(record):
            found.append(record)
            if len(found) >= q.limit:
                break
    else:
        # The loop ran out: either every record was examined, or the scan budget was spent.
        next_offset = q.offset + scanned if scanned == q.scan else None
    return SearchResults(
        jobs=[job_out(r) for r in found], q=q.q, offset=q.offset, scanned=scanned, next_offset=next_offset
    )


async def search_jobs(request: web.Request) -> web.Response:
    q = parse_query(request, SearchQuery)
    return respond(await blocking(search, request.app[RUNTIME], q))


# -- failures by reason ---------------------------------------------------------------------------

# Ids, timestamps and measurements differ between the failures of one cause; small numbers (an
# HTTP status, an attempt) usually name the cause, so they stay.
_HEX_ID = re.compile(r"\b(?=[0-9a-f-]*\d)[0-9a-f]{8,}(-[0-9a-f]{4,})*\b", re.IGNORECASE)
_NUMBER = re.compile(r"(?<![\w.])(\d{4,}|\d+\.\d+)(?![\w.])")


def reason_of(error: str | None) -> str:
    """The group key of an error: its first line with long numbers and hex ids masked."""
    lines = (error or "").strip().splitlines()
    first = lines[0] if lines else "(no reason recorded)"
    return _NUMBER.sub("#", _HEX_ID.sub("…", first))[:300]


def failure_groups(runtime: Runtime, name: str | None, budget: int) -> FailureGroups:
    names = [runtime.manifest.job(name).name] if name else sorted(runtime.counts())
    groups: dict[tuple[str, str], FailureGroup] = {}
    scanned = 0
    truncated = False
    for job_name in names:
        for _, record in scan(runtime, FAILED, job_name, 0, budget - scanned):
            scanned += 1
            ts = record.finished_at or record.created_at
            key = (job_name, reason_of(record.error))
            group = groups.get(key)
            if group is None:
                groups[key] = FailureGroup(
                    name=job_name,
                    reason=key[1],
                    example=(record.error or "")[:2000],
                    count=1,
                    first_at=ts,
                    last_at=ts,
                    job_ids=[record.id],
                )
                continue
            group.count += 1
            group.first_at, group.last_at = min(group.first_at, ts), max(group.last_at, ts)
            if len(group.job_ids) < 10:
                group.job_ids.append(record.id)
        if scanned >= budget:
            truncated = True
            break
    ordered = sorted(groups.values(), key=lambda g: (-g.count, -g.last_at))
    return FailureGroups(groups=ordered, scanned=scanned, truncated=truncated)


async def failures(request: web.Request) -> web.Response:
    q = parse_query(request, FailuresQuery)
    return respond(await blocking(failure_groups, request.app[RUNTIME], q.name, q.scan))


def retry_group(runtime: Runtime, name: str, reason: str) -> int:
    runtime.manifest.job(name)
    return runtime.retry_many(
        [r.id for _, r in scan(runtime, FAILED, name, 0, 1_000_000) if reason_of(r.error) == reason]
    )


async def retry_failures(request: web.Request) -> web.Response:
    body = await parse_body(request, RetryGroupBody)
    retried = await blocking(retry_group, request.app[RUNTIME], body.name, body.reason)
    return respond(RetryGroupResult(name=body.name, reason=body.reason, retried=retried))


# -- job detail -----------------------------------------------------------------------------------


def _brief(record: JobRecord) -> JobBrief:
    return JobBrief(id=record.id, name=record.name, state=record.state, progress=record.progress, error=record.error)


def job_detail(runtime: Runtime, job_id: str) -> JobDetail:
    record = runtime.get(job_id)
    parent = runtime.store.get(record.parent_id) if record.parent_id else None
    children = [c for c in (runtime.store.get(i) for i in record.children[:MAX_CHILDREN_SHOWN]) if c is not None]
    return JobDetail(
        **record.to_dict(),
        parent=_brief(parent) if parent else None,
        children_shown=[_brief(c) for c in children],
        children_total=len(record.children),
    )


async def get_job_detail(request: web.Request) -> web.Response:
    return respond(await blocking(job_detail, request.app[RUNTIME], request.match_info["id"]))


E = m.Error
DASHBOARD_ROUTES = [
    Route(
        "GET",
        "/api/v1/dashboard/overview",
        overview,
        "Every job name: counts, paused, totals, throughput, cron; consumers alive",
        responses={200: Overview},
    ),
    Route(
        "GET",
        "/api/v1/dashboard/search",
        search_jobs,
        "Search jobs by id, payload field (user=42) or words, newest first, resumable",
        query=SearchQuery,
        responses={200: SearchResults, 404: E, 422: E},
    ),
    Route(
        "GET",
        "/api/v1/dashboard/failures",
        failures,
        "Failed jobs grouped by job name and reason",
        query=FailuresQuery,
        responses={200: FailureGroups, 404: E, 422: E},
    ),
    Route(
        "POST",
        "/api/v1/dashboard/failures/retry",
        retry_failures,
        "Retry the failed jobs of one reason group",
        body=RetryGroupBody,
        responses={200: RetryGroupResult, 404: E, 422: E},
    ),
    Route(
        "GET",
        "/api/v1/dashboard/jobs/{id}",
        get_job_detail,
        "A job with its stalls, worker, parent and children",
        responses={200: JobDetail, 404: E},
    ),
]
