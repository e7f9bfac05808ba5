"""The HTTP API's request and response models; the OpenAPI document is generated from these."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.core.enqueue import CALLER_JOB_ID, MAX_DELAY_S
from runtime.core.manifest import MAX_PRIORITY
from runtime.core.records import State

MAX_OFFSET = 100_000  # how deep a listing may page: the stores read up to offset + limit ids per state
MAX_NAME_CHARS = 128


class Strict(BaseModel):
    """Query parameters: unknown ones are errors; values arrive as text and are converted."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class StrictBody(Strict):
    """A JSON body: unknown fields are errors, and so is a value of the wrong JSON type ("1" for 1)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


JobName = Field(default=None, min_length=1, max_length=MAX_NAME_CHARS, description="a job name")


class EnqueueBody(StrictBody):
    payload: dict[str, Any] = Field(default_factory=dict, description="the job's payload, validated against its model")
    delay: float | None = Field(default=None, ge=0, le=MAX_DELAY_S, description="seconds to wait before it may run")
    priority: int | None = Field(default=None, ge=1, le=MAX_PRIORITY, description="1 = most urgent")
    job_id: str | None = Field(
        default=None,
        pattern=CALLER_JOB_ID.pattern,
        description="your own id: 1-128 of A-Z a-z 0-9 _ . : - starting alphanumeric, not ending in `.<digits>` "
        "(reserved for cron ticks and flow children); an existing id of the same job returns that job, "
        "of another job is a 409",
    )


# Fields of runtime.core.records.JobRecord that the API's Job leaves out (the dashboard's JobDetail
# shows the first three); tests/test_models.py checks Job against the record field by field.
RECORD_ONLY = frozenset({"stalls", "max_stalls", "worker", "delay_reason"})


MAX_BULK = 10_000


class BulkBody(StrictBody):
    jobs: list[EnqueueBody] = Field(
        min_length=1, max_length=MAX_BULK, description="the jobs, each as a single enqueue's body"
    )


class BulkJob(BaseModel):
    id: str
    state: State
    deduplicated: bool = Field(description="true when the job existed (its id, or an equal job by `dedupe`)")


class BulkResult(BaseModel):
    """What became of each job of a bulk enqueue, in the order given."""

    created: int
    jobs: list[BulkJob]


class Job(BaseModel):
    """A job record (epoch-second times): `JobRecord` as the API shows it."""

    id: str
    name: str
    state: State
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    progress: Any = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    priority: int | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float | None = None
    parent_id: str | None = None
    children: list[str] = []
    deduplicated: bool | None = Field(default=None, description="present on enqueue: true when the job existed")


class JobPage(BaseModel):
    jobs: list[Job]
    offset: int
    limit: int


class JobsQuery(Strict):
    state: State | None = None
    name: str | None = JobName
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
    limit: int = Field(default=50, ge=1, le=500)


class Counts(BaseModel):
    waiting: int
    delayed: int
    active: int
    waiting_children: int = Field(alias="waiting-children")
    completed: int
    failed: int


class Queue(BaseModel):
    name: str
    paused: bool
    counts: Counts


class Queues(BaseModel):
    queues: list[Queue]


class CleanBody(StrictBody):
    state: Literal["waiting", "delayed", "completed", "failed"] = "completed"
    age: float = Field(default=0, ge=0, description="only records older than this many seconds")
    limit: int = Field(default=1000, ge=1, le=100_000)


class Cleaned(BaseModel):
    name: str
    state: str
    removed: int


class PauseResult(BaseModel):
    name: str
    paused: bool
    changed: bool
    released: int | None = None


class RetryAllResult(BaseModel):
    name: str
    retried: int


class Removed(BaseModel):
    id: str
    removed: bool


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    backend: str
    bus: str
    store: str


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class Error(BaseModel):
    error: ErrorDetail


class Drained(BaseModel):
    name: str
    removed: int


class ObliterateQuery(Strict):
    confirm: bool = Field(default=False, description="must be true: this deletes every job and record of the name")
    force: bool = Field(default=False, description="also while jobs of the name are running")
