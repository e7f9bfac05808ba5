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

import builtins
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from runtime.core.manifest import Keep
from runtime.core.records import JobRecord


@dataclass(frozen=True)
class Lease:
    """Who runs an attempt. Every finish presents it; a mismatch means the job moved on.

    `token` is new for every dequeue: a process that gets its own job back after a reap holds a
    different lease than the run it is still finishing.
    """

    owner: str
    attempt: int
    token: str = ""


@dataclass(frozen=True)
class Dequeued:
    job_id: str
    name: str
    message: bytes
    lease: Lease
    children_done: bool = False  # a flow parent back from waiting-children: its children's outcomes are ready


@dataclass(frozen=True)
class Limits:
    """What a job name's manifest table says about starting its jobs, for `dequeue`."""

    concurrency: int | None = None  # at most this many active at once
    rate_limit: int | None = None  # at most this many starts per rate window
    rate_window_s: float | None = None  # the rate window's length
    rate_keyed: bool = False  # the limit holds per rate key (a payload field's value), not per name


@dataclass(frozen=True)
class NewJob:
    """A validated job for the store to create: its record, its message and the keys its limits use."""

    record: JobRecord
    message: bytes
    rate_key: str = ""  # the payload value its keyed rate limit counts by ('' when unkeyed)
    dedupe_key: str = ""  # two live jobs with one dedupe key are one job ('' for none)


@dataclass(frozen=True)
class ChildOutcome:
    """A child job's end, as its parent sees it: `detail` is the result JSON or the failure reason."""

    id: str
    state: str
    detail: str


@dataclass(frozen=True)
class Reaped:
    """A job whose lease expired: back to waiting, or failed once it stalled too often."""

    job_id: str
    name: str
    stalls: int
    failed: bool


METRICS = ("started", "completed", "failed", "retried", "stalled")  # running totals per job name
TICK_KEEP_S = 7 * 86400  # how long a claimed cron tick is remembered (and claiming it again refused)
STAGED_MAX_S = 5.0  # a staged job whose release never came (its process died) is queued by `reap` after this
STALLED_TOO_OFTEN = "stalled too often: its worker died or stopped heartbeating %d time(s) while running it"


class JobStore(ABC):
    """Job records and their queue, on one backend."""

    limits: Mapping[str, Limits] = MappingProxyType({})  # none until set_limits; read-only, shared

    def set_limits(self, limits: Mapping[str, Limits]) -> None:
        """The manifest's concurrency and rate limits, enforced by `dequeue` across all consumers."""
        self.limits = limits

    @abstractmethod
    def create(
        self, record: JobRecord, message: bytes, *, dedupe_key: str = "", rate_key: str = ""
    ) -> tuple[JobRecord, bool]:
        """Store a new job: queued when waiting, due at `run_at` when delayed.

        If the id exists, or `dedupe_key` names an equal job that is waiting, delayed or active,
        change nothing and return (that job, False).
        """

    def get_many(self, job_ids: builtins.list[str]) -> builtins.list[JobRecord | None]:
        """`get` for many ids in one round trip where the backend allows it; None for an unknown id."""
        return [self.get(job_id) for job_id in job_ids]

    def pin_connection(self) -> None:
        """The calling thread is a long-lived worker: give it a connection of its own, if the backend has any."""
        return None  # SQLite: each thread has its own connection already

    def complete_and_take(
        self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep, owner: str, lease_s: float
    ) -> tuple[bool, Dequeued | None]:
        """`complete`, then `dequeue` for `owner` without waiting, in one atomic step (one round trip on
        Redis, one commit on SQLite): what a busy worker does between two jobs. (completed, next job)."""
        return self.complete(job_id, lease, result_json, now, keep), self.dequeue(owner, now, lease_s, wait_s=0)

    @abstractmethod
    def create_many(self, jobs: list[NewJob], *, staged: bool = False) -> list[tuple[JobRecord, bool]]:
        """`create` for many jobs in one atomic step; (record, created) per job, in order.

        With `staged`, new waiting jobs are parked, not queued: no worker takes them until
        `release_staged` (or, should that never come, `reap` after STAGED_MAX_S).
        """

    @abstractmethod
    def release_staged(self, job_ids: list[str]) -> int:
        """Queue these staged jobs (those still waiting); returns how many were queued."""

    @abstractmethod
    def spawn(self, parent_id: str, lease: Lease, children: list[NewJob], now: float) -> int:
        """Create children of a running parent (each once, whatever reruns); returns how many were new."""

    @abstractmethod
    def wait_children(self, parent_id: str, lease: Lease, now: float) -> str | None:
        """The parent's handler returned after spawning: `waiting-children` (or `waiting` if all are done)."""

    @abstractmethod
    def child_outcomes(self, parent_id: str) -> list[ChildOutcome]:
        """How each finished child of a parent ended."""

    @abstractmethod
    def drain(self, name: str) -> int:
        """Remove every waiting job of a name; returns how many."""

    @abstractmethod
    def obliterate(self, name: str, force: bool = False) -> int:
        """Remove a name's queue, records and totals; refuses (InvalidState) while jobs are active unless forced."""

    @abstractmethod
    def dequeue(self, owner: str, now: float, lease_s: float, wait_s: float) -> Dequeued | None:
        """Take the next waiting job (priority, then FIFO), mark it active and lease it to `owner`.

        Names that are paused, at their concurrency, or out of rate-limit room are skipped; a job
        whose rate-limit key is out of room is delayed to the first window with room (no attempt
        spent). Waits up to `wait_s` for a job when there is none to take.
        """

    @abstractmethod
    def renew(self, owner: str, job_ids: list[str], now: float | None, lease_s: float) -> int:
        """Extend the leases `owner` holds on these running jobs; returns how many it still holds.

        `now` None: the store's own clock (Redis's), the one leases were given on.
        """

    @abstractmethod
    def reap(self, now: float | None, limit: int = 100) -> list[Reaped]:
        """Requeue (or fail, past max_stalls) jobs whose lease expired (`now` None: the store's clock)."""

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
    def clean(self, name: str, state: str, cutoff_ts: float, limit: int) -> int:
        """Delete up to `limit` records of a name in a state that entered it before `cutoff_ts`."""

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
    def ids_in_state(self, name: str, state: str) -> builtins.list[str]: ...

    @abstractmethod
    def counts(self, names: builtins.list[str]) -> dict[str, dict[str, int]]:
        """For each job name (the given ones and any the store has seen), the number of jobs per state."""

    @abstractmethod
    def stats(self, names: builtins.list[str]) -> dict[str, dict[str, int]]:
        """Running totals per job name: attempts started, completed, failed, retried, stalled."""

    @abstractmethod
    def consumers(self, since_ts: float) -> dict[str, float]:
        """Consumer processes whose lease heartbeat was seen since `since_ts`, with when."""

    @abstractmethod
    def claim_tick(self, job: str, tick_ts: float) -> bool:
        """Claim a cron tick for this job; True for exactly one claimant."""

    @abstractmethod
    def last_tick(self, job: str) -> float | None: ...

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def destroy(self) -> None:
        """Delete everything this store's namespace holds (tests and `obliterate`)."""
