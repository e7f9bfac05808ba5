"""The job record: what b3-jobs knows about one job, in the shape scripts rely on."""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

import msgspec

# The six states of a job, defined once: the API's models, the CLI and the dashboard use these.
State = Literal["waiting", "delayed", "active", "waiting-children", "completed", "failed"]
STATES: Final[tuple[str, ...]] = get_args(State)
WAITING, DELAYED, ACTIVE, WAITING_CHILDREN, COMPLETED, FAILED = STATES
FINISHED = (COMPLETED, FAILED)


class JobRecord(msgspec.Struct, kw_only=True):
    """One job. Times are epoch seconds (float); `error` is the failure reason, `traceback` its stack."""

    id: str
    name: str
    state: str
    payload: dict[str, Any]
    attempts: int = 0
    max_attempts: int = 1
    stalls: int = 0  # times its worker died (or stopped heartbeating) while running it
    max_stalls: int = 3
    worker: str | None = None  # the consumer holding the lease while active
    progress: Any = None
    result: Any = None
    error: str | None = None
    traceback: str | None = None
    priority: int | None = None
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    run_at: float | None = None  # when a delayed job becomes due
    delay_reason: str | None = None  # why it is delayed: a backoff, an enqueue delay, a rate limit
    parent_id: str | None = None
    children: list[str] = []

    def to_dict(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


def checked_record(values: dict[str, Any]) -> JobRecord:
    """A record from a store's fields, with their types checked and a known state; ValueError if not."""
    record = msgspec.convert(values, JobRecord)
    if record.state not in STATES:
        raise ValueError("state %r is not one of %s" % (record.state, ", ".join(STATES)))
    return record


def corrupt_record(job_id: str, name: Any, state: Any, created_at: Any, problem: str) -> JobRecord:
    """What a store shows for a record it cannot read, so one bad record does not break a listing:
    its id, the name and state it was found under, and the problem as its `error`."""
    return JobRecord(
        id=job_id,
        name=name if isinstance(name, str) else "?",
        state=state if state in STATES else FAILED,
        payload={},
        created_at=float(created_at) if isinstance(created_at, (int, float)) else 0.0,
        error="corrupt record: %s" % problem,
    )


def encode_json(value: Any) -> bytes:
    """Encode a handler's result or progress; pydantic models and dataclasses become plain JSON."""
    return msgspec.json.encode(value, enc_hook=_enc_hook)


def _enc_hook(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    raise TypeError("cannot encode %s as JSON" % type(value).__name__)


decode_json = msgspec.json.decode
