"""The job store: job records, their state indexes and the Huey queue they travel on, kept together.

One interface, two implementations (Redis, SQLite). Every method that moves a job between states
also moves its message on Huey's queue or schedule in the same atomic step, so a record and its
message never disagree, whatever is killed when.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from huey import Huey

from runtime.manifest import Keep
from runtime.records import JobRecord


PARKED = -2  # activate(): the job's name is paused; its message was set aside


@dataclass(frozen=True)
class Outbound:
    """A Huey message ready to go on the queue (run_at None) or the schedule (run_at set)."""

    data: bytes
    priority: int  # Huey's priority: higher runs first
    run_at: float | None = None


class JobStore(ABC):
    """Job records and their queue, on one backend."""

    huey: Huey

    @abstractmethod
    def create(self, record: JobRecord, message: Outbound) -> tuple[JobRecord, bool]:
        """Store a new job and queue it; if its id exists, change nothing and return (existing, False)."""

    @abstractmethod
    def make_due(self, job_id: str, message: Outbound) -> bool:
        """A delayed job's time has come: move it to waiting and queue it. False if it is gone or not delayed."""

    @abstractmethod
    def activate(self, job_id: str, now: float, message: Outbound) -> int | None:
        """Mark a dequeued job active and count the attempt.

        Returns the attempt number; None when the job is gone or not waiting (a stale message);
        PARKED when its job name is paused: the message is set aside until `resume`.
        """

    @abstractmethod
    def promote(self, job_id: str, message: Outbound, now: float) -> JobRecord:
        """Run a delayed job now (raises JobNotFound / InvalidState)."""

    @abstractmethod
    def clean(self, name: str, state: str, older_than: float, limit: int) -> int:
        """Delete up to `limit` records of a job name in a state that entered it before `older_than`."""

    @abstractmethod
    def pause(self, name: str) -> bool:
        """Stop every consumer from starting jobs of this name; False if it was paused already."""

    @abstractmethod
    def resume(self, name: str) -> int:
        """Let jobs of this name start again; returns how many set-aside messages went back on the queue."""

    @abstractmethod
    def paused(self) -> set[str]: ...

    @abstractmethod
    def set_progress(self, job_id: str, progress_json: bytes) -> None:
        """Record an active job's progress."""

    @abstractmethod
    def complete(self, job_id: str, result_json: bytes, now: float, keep: Keep) -> bool:
        """Finish an active job with its result, trimming completed records to `keep`."""

    @abstractmethod
    def fail(self, job_id: str, error: str, traceback: str, now: float, keep: Keep) -> bool:
        """Finish a job as failed with its reason, trimming failed records to `keep`."""

    @abstractmethod
    def retry_later(self, job_id: str, error: str, traceback: str, message: Outbound) -> bool:
        """An attempt failed and another is due at `message.run_at`: keep the reason, schedule it."""

    @abstractmethod
    def requeue_failed(self, job_id: str, message: Outbound, now: float) -> JobRecord:
        """Give a failed job a fresh set of attempts and queue it (raises JobNotFound / InvalidState)."""

    @abstractmethod
    def remove(self, job_id: str) -> bool:
        """Delete a job that is not active; its queued message is skipped when dequeued."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None: ...

    @abstractmethod
    def list(self, state: str | None, name: str | None, offset: int, limit: int) -> list[JobRecord]:
        """Records newest first (by the time they entered their state), optionally by state and name."""

    @abstractmethod
    def ids_in_state(self, name: str, state: str) -> list[str]: ...

    @abstractmethod
    def counts(self, names: list[str]) -> dict[str, dict[str, int]]:
        """For each job name (the given ones and any the store has seen), the number of jobs per state."""

    @abstractmethod
    def claim_tick(self, job: str, tick: float) -> bool:
        """Claim a cron tick for this job; True for exactly one claimant."""

    @abstractmethod
    def last_tick(self, job: str) -> float | None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def destroy(self) -> None:
        """Delete everything this store's namespace holds (tests and `obliterate`)."""
