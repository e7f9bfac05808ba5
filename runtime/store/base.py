"""The job store: job records, their state indexes and the queue, kept together and atomic.

One interface, two implementations (Redis, SQLite). The queue holds job ids; each record holds
its Huey message. Every move between states is one atomic step (a Lua script, a transaction),
so nothing is lost or half-written whatever process is killed when.

Delivery is at least once. `dequeue` hands a job out under a lease (owner, deadline) in the same
step that marks it active; the owner renews its leases while the job runs; `reap` puts the jobs of
expired leases back on the queue (or fails them once they stalled more than `max_stalls` times).
Every finish is fenced by the lease: a late finisher whose job was handed to someone else
changes nothing.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from runtime.manifest import Keep
from runtime.records import JobRecord


@dataclass(frozen=True)
class Lease:
    """Who runs an attempt. Every finish presents it; a mismatch means the job moved on."""

    owner: str
    attempt: int


@dataclass(frozen=True)
class Dequeued:
    job_id: str
    name: str
    message: bytes
    lease: Lease


@dataclass(frozen=True)
class Reaped:
    """A job whose lease expired: back to waiting, or failed once it stalled too often."""

    job_id: str
    name: str
    stalls: int
    failed: bool


METRICS = ("started", "completed", "failed", "retried", "stalled")  # running totals per job name
STALLED_TOO_OFTEN = "stalled too often: its worker died or stopped heartbeating %d time(s) while running it"


class JobStore(ABC):
    """Job records and their queue, on one backend."""

    @abstractmethod
    def create(self, record: JobRecord, message: bytes) -> tuple[JobRecord, bool]:
        """Store a new job: queued when waiting, due at `run_at` when delayed.

        If the id exists, change nothing and return (existing, False).
        """

    @abstractmethod
    def dequeue(self, owner: str, now: float, lease_s: float, wait_s: float) -> Dequeued | None:
        """Take the next waiting job (priority, then FIFO), mark it active and lease it to `owner`.

        Jobs of paused names are skipped. Waits up to `wait_s` for one when the queue is empty.
        """

    @abstractmethod
    def renew(self, owner: str, job_ids: list[str], now: float, lease_s: float) -> int:
        """Extend the leases `owner` holds on these running jobs; returns how many it still holds."""

    @abstractmethod
    def reap(self, now: float, limit: int = 100) -> list[Reaped]:
        """Requeue (or fail, past max_stalls) jobs whose lease expired."""

    @abstractmethod
    def release(self, job_id: str, lease: Lease) -> bool:
        """Hand back a job its owner will not finish (shutdown): waiting again, the attempt not counted."""

    @abstractmethod
    def promote_due(self, names: list[str], now: float, limit: int = 1000) -> list[tuple[str, str]]:
        """Move delayed jobs whose time has come to the queue; returns their (id, name)."""

    @abstractmethod
    def set_progress(self, job_id: str, lease: Lease, progress_json: bytes) -> bool:
        """Record an active job's progress."""

    @abstractmethod
    def complete(self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep) -> bool:
        """Finish an active job with its result, trimming completed records to `keep`."""

    @abstractmethod
    def fail(self, job_id: str, lease: Lease, error: str, traceback: str, now: float, keep: Keep) -> bool:
        """Finish an active job as failed with its reason, trimming failed records to `keep`."""

    @abstractmethod
    def retry_later(self, job_id: str, lease: Lease, error: str, traceback: str, run_at: float) -> bool:
        """An attempt failed and another is due at `run_at`: keep the reason, delay the job."""

    @abstractmethod
    def requeue_failed(self, job_id: str, now: float) -> JobRecord:
        """Give a failed job a fresh set of attempts and queue it (raises JobNotFound / InvalidState)."""

    @abstractmethod
    def promote(self, job_id: str, now: float) -> JobRecord:
        """Run a delayed job now (raises JobNotFound / InvalidState)."""

    @abstractmethod
    def remove(self, job_id: str) -> bool:
        """Delete a job that is not active; False if there is none."""

    @abstractmethod
    def clean(self, name: str, state: str, older_than: float, limit: int) -> int:
        """Delete up to `limit` records of a name in a state that entered it before `older_than`."""

    @abstractmethod
    def pause(self, name: str) -> bool:
        """Stop every consumer from starting jobs of this name; False if it was paused already."""

    @abstractmethod
    def resume(self, name: str) -> int:
        """Let jobs of this name start again; returns how many waiting jobs it released."""

    @abstractmethod
    def paused(self) -> set[str]: ...

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
    def stats(self, names: list[str]) -> dict[str, dict[str, int]]:
        """Running totals per job name: attempts started, completed, failed, retried, stalled."""

    @abstractmethod
    def consumers(self, since: float) -> dict[str, float]:
        """Consumer processes whose lease heartbeat was seen since `since`, with when."""

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
