"""Every error b3-jobs raises on purpose, under one base class."""

from __future__ import annotations

from typing import Any


class B3JobsError(Exception):
    """Base of every error b3-jobs raises on purpose."""


class ManifestError(B3JobsError):
    """The manifest has problems; `problems` lists each one with its path."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("manifest has %d problem(s):\n  %s" % (len(problems), "\n  ".join(problems)))


class UnknownJob(B3JobsError):
    """A job name that the manifest does not declare."""

    def __init__(self, name: str, known: list[str]):
        self.name = name
        self.known = known
        super().__init__("unknown job %r; the manifest declares: %s" % (name, ", ".join(known) or "none"))


class PayloadError(B3JobsError):
    """A payload that does not validate against the job's model; `errors` holds each field problem."""

    def __init__(self, job: str, errors: list[dict[str, Any]]):
        self.job = job
        self.errors = errors
        lines = ["%s: %s" % (e["loc"] or "payload", e["msg"]) for e in errors]
        super().__init__("invalid payload for %s: %s" % (job, "; ".join(lines)))


class JobNotFound(B3JobsError):
    """No job record with that id."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        super().__init__("no job with id %r" % job_id)


class InvalidState(B3JobsError):
    """The job is not in a state that allows the operation."""

    def __init__(self, job_id: str, state: str, operation: str, allowed: tuple[str, ...]):
        self.job_id, self.state, self.operation = job_id, state, operation
        super().__init__("cannot %s job %s: it is %s, expected %s" % (operation, job_id, state, " or ".join(allowed)))


class JobIdTaken(B3JobsError):
    """An explicit job id that a job of another name already has."""

    def __init__(self, job_id: str, name: str, wanted: str):
        self.job_id, self.name, self.wanted = job_id, name, wanted
        super().__init__("job id %r belongs to a %s job, not %s; choose another id" % (job_id, name, wanted))


class JobTimeout(B3JobsError):
    """An attempt ran past its job's `timeout`."""


class UnrecoverableError(B3JobsError):
    """Raised by a handler to fail the job at once, without spending its remaining retries."""


class Retry(B3JobsError):
    """Raised by a handler to ask for another attempt, after `delay` seconds (default: the job's backoff).

    It spends an attempt like any failure, so attempts stay bounded by `retries`.
    """

    def __init__(self, reason: str = "retry requested", delay: float | None = None):
        if delay is not None and delay < 0:
            raise ValueError("Retry delay must be >= 0 seconds, got %r" % delay)
        self.delay = delay
        super().__init__(reason)


class InvalidArgument(B3JobsError):
    """A request argument outside its allowed values."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__("%s: %s" % (field, message))
