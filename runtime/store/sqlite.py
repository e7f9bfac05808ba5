"""The job store on SQLite: one `b3_jobs` table is the records, the queue and the leases.

A waiting job is queued by its state; `dequeue` picks the first by (priority, enqueue sequence)
and leases it in the same transaction. Huey's connection and lock are shared, so one process
serialises its writers; several processes coordinate through SQLite's own locking (WAL).
"""

from __future__ import annotations

import builtins
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from huey.storage import SqliteStorage

from runtime.core.errors import B3JobsError, InvalidState, JobNotFound
from runtime.core.manifest import Keep
from runtime.core.records import (
    ACTIVE,
    COMPLETED,
    DELAYED,
    FAILED,
    STATES,
    WAITING,
    JobRecord,
    checked_record,
    corrupt_record,
    decode_json,
    encode_json,
)
from runtime.store.base import (
    METRICS,
    STAGED_MAX_S,
    STALLED_TOO_OFTEN,
    TICK_KEEP_S,
    ChildOutcome,
    Dequeued,
    JobStore,
    Lease,
    Limits,
    NewJob,
    Reaped,
)

_COLUMNS = (
    "id",
    "name",
    "state",
    "payload",
    "attempts",
    "max_attempts",
    "stalls",
    "max_stalls",
    "worker",
    "progress",
    "result",
    "error",
    "traceback",
    "priority",
    "created_at",
    "started_at",
    "finished_at",
    "run_at",
    "delay_reason",
    "parent_id",
    "children",
)
_JSON = ("payload", "progress", "result", "children")
_SELECT = "select %s from b3_jobs" % ", ".join(_COLUMNS)


class B3SqliteStorage(SqliteStorage):  # type: ignore[misc]  # Huey is untyped
    """Huey's SQLite storage with b3-jobs' tables added to its schema."""

    def initialize_schema(self) -> None:
        # Migrate in place what can be: a store from before staging gets its column (all queued).
        with self.db(commit=True) as curs:
            columns = {r[1] for r in curs.execute("pragma table_info(b3_jobs)").fetchall()}
            if "lease_token" in columns and "staged" not in columns:
                curs.execute("alter table b3_jobs add column staged integer not null default 0")
        super().initialize_schema()

    def _create_connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection = super()._create_connection()  # Huey's, untyped
        # WAL with synchronous=NORMAL: a crash (kill -9) cannot corrupt the database or lose a
        # committed transaction; only a power loss may lose the last ones. FULL fsyncs every commit.
        conn.execute("pragma synchronous=NORMAL")
        return conn

    ddl: ClassVar[list[str]] = [
        *SqliteStorage.ddl,
        "create table if not exists b3_jobs ("
        " id text primary key, name text not null, state text not null, payload text not null,"
        " attempts integer not null default 0, max_attempts integer not null default 1,"
        " stalls integer not null default 0, max_stalls integer not null default 3, worker text,"
        " progress text, result text, error text, traceback text, priority integer,"
        " created_at real not null, started_at real, finished_at real, run_at real,"
        " delay_reason text, parent_id text, children text not null default '[]', state_ts real not null,"
        " msg blob not null, prio_rank integer not null default 0, enq_seq integer not null default 0,"
        " lease_until real, dedupe_key text, rate_key text not null default '', children_done integer not null default 0,"
        " pending integer not null default 0, lease_token text, staged integer not null default 0)",
        "create unique index if not exists b3_jobs_dedupe on b3_jobs (dedupe_key)"
        " where dedupe_key is not null and state in ('waiting', 'delayed', 'active', 'waiting-children')",
        "create index if not exists b3_jobs_parent on b3_jobs (parent_id) where parent_id is not null",
        "create table if not exists b3_outcomes (parent text not null, child text not null, state text not null,"
        " detail text not null, primary key (parent, child))",
        "create table if not exists b3_rate (name text not null, key text not null, ts real not null, id text not null)",
        "create index if not exists b3_rate_window on b3_rate (name, key, ts)",
        "create table if not exists b3_ratecal (name text not null, key text not null, slot real not null,"
        " id text primary key)",
        "create index if not exists b3_jobs_name_state_ts on b3_jobs (name, state, state_ts)",
        "create index if not exists b3_jobs_state_ts on b3_jobs (state, state_ts)",
        # The queue: waiting jobs a worker may take (not staged behind their job:waiting event).
        "drop index if exists b3_jobs_queue",
        "create index if not exists b3_jobs_ready on b3_jobs (prio_rank, enq_seq) where state = 'waiting' and staged = 0",
        "create index if not exists b3_jobs_staged on b3_jobs (created_at) where staged = 1",
        "create index if not exists b3_jobs_leases on b3_jobs (lease_until) where state = 'active'",
        "create table if not exists b3_ticks (name text not null, tick real not null, primary key (name, tick))",
        "create table if not exists b3_paused (name text primary key)",
        "create table if not exists b3_consumers (owner text primary key, seen real not null)",
        "create table if not exists b3_stats (name text not null, metric text not null, value integer not null,"
        " primary key (name, metric))",
    ]


def _count(curs: sqlite3.Cursor, name: str, metric: str) -> None:
    curs.execute(
        "insert into b3_stats (name, metric, value) values (?, ?, 1)"
        " on conflict (name, metric) do update set value = value + 1",
        (name, metric),
    )


def _row_to_record(row: tuple[Any, ...]) -> JobRecord:
    """The record in a row; one that cannot be read comes back as a `corrupt_record` (listings go on)."""
    values = dict(zip(_COLUMNS, row))
    try:
        return checked_record({c: decode_json(v) if c in _JSON else v for c, v in values.items() if v is not None})
    except (ValueError, TypeError) as exc:
        return corrupt_record(
            str(values.get("id")),
            values.get("name"),
            values.get("state"),
            values.get("created_at"),
            "%s: %s" % (type(exc).__name__, exc),
        )


class SqliteJobStore(JobStore):
    def __init__(self, storage: B3SqliteStorage):
        self.storage = storage
        columns = {r[1] for r in storage.sql("pragma table_info(b3_jobs)", results=True)}
        if "lease_token" not in columns:
            raise B3JobsError(
                "%s was created by an older b3-jobs (before leases and limits); move it away to start afresh"
                % storage.filename
            )
        # Same-process enqueues wake idle workers at once; other processes are seen by polling.
        self._wake = threading.Condition()
        self._finishes: dict[tuple[str, str], int] = {}  # finishes per (name, state), to space out `_trim`

    def _tx(self) -> AbstractContextManager[sqlite3.Cursor]:
        tx: AbstractContextManager[sqlite3.Cursor] = self.storage.db(commit=True)  # Huey's, untyped
        return tx

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _state_of(self, curs: sqlite3.Cursor, job_id: str) -> tuple[str, str] | None:
        row = curs.execute("select state, name from b3_jobs where id = ?", (job_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def create(
        self, record: JobRecord, message: bytes, *, dedupe_key: str = "", rate_key: str = ""
    ) -> tuple[JobRecord, bool]:
        data = record.to_dict()
        values = [encode_json(data[c]) if c in _JSON else data[c] for c in _COLUMNS]
        state_ts = record.run_at if record.state == DELAYED and record.run_at else record.created_at
        columns = ", ".join(_COLUMNS)
        with self._tx() as curs:
            if dedupe_key:
                other = curs.execute(
                    "select id from b3_jobs where dedupe_key = ?"
                    " and state in ('waiting', 'delayed', 'active', 'waiting-children')",
                    (dedupe_key,),
                ).fetchone()
                if other is not None:
                    existing_id = other[0]
                    created = False
            if not dedupe_key or other is None:
                curs.execute(
                    "insert or ignore into b3_jobs (%s, state_ts, msg, prio_rank, enq_seq, dedupe_key, rate_key)"
                    " values (%s)" % (columns, ", ".join("?" * (len(_COLUMNS) + 6))),
                    (*values, state_ts, message, record.priority or 0, time.time_ns(), dedupe_key or None, rate_key),
                )
                created = curs.rowcount == 1
                existing_id = record.id
        if created:
            self._notify()
            return record, True
        existing = self.get(existing_id)
        return (
            (existing, False)
            if existing is not None
            else self.create(record, message, dedupe_key=dedupe_key, rate_key=rate_key)
        )

    def create_many(self, jobs: list[NewJob], *, staged: bool = False) -> list[tuple[JobRecord, bool]]:
        columns = ", ".join(_COLUMNS)
        insert = (
            "insert or ignore into b3_jobs (%s, state_ts, msg, prio_rank, enq_seq, dedupe_key, rate_key, staged)"
            " values (%s)" % (columns, ", ".join("?" * (len(_COLUMNS) + 7)))
        )
        outcomes: list[str | None] = []  # None: created; else the id of the job returned instead
        seq = time.time_ns()
        with self._tx() as curs:
            for n, job in enumerate(jobs):
                record = job.record
                if job.dedupe_key:
                    other = curs.execute(
                        "select id from b3_jobs where dedupe_key = ?"
                        " and state in ('waiting', 'delayed', 'active', 'waiting-children')",
                        (job.dedupe_key,),
                    ).fetchone()
                    if other is not None:
                        outcomes.append(other[0])
                        continue
                data = record.to_dict()
                values = [encode_json(data[c]) if c in _JSON else data[c] for c in _COLUMNS]
                state_ts = record.run_at if record.state == DELAYED and record.run_at else record.created_at
                park = int(staged and record.state == WAITING)
                curs.execute(
                    insert,
                    (
                        *values,
                        state_ts,
                        job.message,
                        record.priority or 0,
                        seq + n,
                        job.dedupe_key or None,
                        job.rate_key,
                        park,
                    ),
                )
                outcomes.append(None if curs.rowcount == 1 else record.id)
        if any(o is None for o in outcomes) and not staged:
            self._notify()
        out: list[tuple[JobRecord, bool]] = []
        for job, other_id in zip(jobs, outcomes):
            if other_id is None:
                out.append((job.record, True))
                continue
            existing = self.get(other_id)
            if existing is None:  # removed or finished meanwhile: create it on its own
                out.append(self.create(job.record, job.message, dedupe_key=job.dedupe_key, rate_key=job.rate_key))
            else:
                out.append((existing, False))
        return out

    def release_staged(self, job_ids: list[str]) -> int:
        if not job_ids:
            return 0
        released = 0
        with self._tx() as curs:
            for start in range(0, len(job_ids), 500):
                part = job_ids[start : start + 500]
                curs.execute(
                    "update b3_jobs set staged = 0 where staged = 1 and id in (%s)" % ", ".join("?" * len(part)), part
                )
                released += curs.rowcount
        if released:
            self._notify()
        return released

    def _release_stale_staged(self, curs: sqlite3.Cursor) -> int:
        curs.execute(
            "update b3_jobs set staged = 0 where staged = 1 and created_at <= ?", (time.time() - STAGED_MAX_S,)
        )
        return curs.rowcount

    def _window(self, curs: sqlite3.Cursor, name: str, key: str, window_s: float, now: float) -> tuple[int, float]:
        """Starts of (name, key) in the last `window_s` seconds, and seconds until the oldest leaves."""
        curs.execute("delete from b3_rate where name = ? and key = ? and ts <= ?", (name, key, now - window_s))
        count, oldest = curs.execute(
            "select count(*), min(ts) from b3_rate where name = ? and key = ?", (name, key)
        ).fetchone()
        return int(count), (oldest + window_s - now) if oldest is not None else 0.0

    def _rate_delay(self, curs: sqlite3.Cursor, job_id: str, name: str, key: str, limits: Limits, now: float) -> None:
        # Book the first window with room, so the jobs of one key spread out instead of all waking at once.
        assert limits.rate_limit is not None and limits.rate_window_s is not None
        window_s = limits.rate_window_s
        curs.execute("delete from b3_ratecal where name = ? and key = ? and slot < ?", (name, key, now - window_s))
        slot = now + self._window(curs, name, key, window_s, now)[1]
        last = curs.execute("select max(slot) from b3_ratecal where name = ? and key = ?", (name, key)).fetchone()[0]
        if last is not None and last >= slot:
            slot = last
            booked = curs.execute(
                "select count(*) from b3_ratecal where name = ? and key = ? and slot = ?", (name, key, slot)
            ).fetchone()[0]
            if booked >= limits.rate_limit:
                slot += window_s
        curs.execute(
            "insert or replace into b3_ratecal (name, key, slot, id) values (?, ?, ?, ?)", (name, key, slot, job_id)
        )
        curs.execute(
            "update b3_jobs set state = 'delayed', run_at = ?, state_ts = ?, delay_reason = ? where id = ?",
            (slot, slot, "rate limit: %d per %gs for %s" % (limits.rate_limit, window_s, key), job_id),
        )

    def _blocked(self, curs: sqlite3.Cursor, now: float) -> tuple[set[str], float]:
        """Names no job may start of now (paused, at concurrency, unkeyed rate limit full), and when to look again."""
        blocked = {r[0] for r in curs.execute("select name from b3_paused").fetchall()}
        free_in_s = 0.0
        for name, limits in self.limits.items():
            if limits.concurrency is not None:
                active = curs.execute(
                    "select count(*) from b3_jobs where name = ? and state = 'active'", (name,)
                ).fetchone()[0]
                if active >= limits.concurrency:
                    blocked.add(name)
            if limits.rate_limit and limits.rate_window_s and not limits.rate_keyed:
                count, room_in_s = self._window(curs, name, "", limits.rate_window_s, now)
                if count >= limits.rate_limit:
                    blocked.add(name)
                    free_in_s = room_in_s if free_in_s == 0 else min(free_in_s, room_in_s)
        return blocked, free_in_s

    def _take(self, owner: str, lease_s: float) -> tuple[Dequeued | None, float]:
        with self._tx() as curs:
            return self._take_in(curs, owner, lease_s)

    def _take_in(self, curs: sqlite3.Cursor, owner: str, lease_s: float) -> tuple[Dequeued | None, float]:
        # The clock is read holding the write lock, so start times are in the order jobs
        # really started: the rate-limit window depends on it.
        now = time.time()
        blocked, free_in_s = self._blocked(curs, now)
        exclude = " and name not in (%s)" % ", ".join("?" * len(blocked)) if blocked else ""
        for _ in range(200):
            # INDEXED BY: left to itself the planner picks the state index and sorts every
            # waiting row, which makes a drain O(backlog^2).
            row = curs.execute(
                "select id, name, msg, rate_key, children_done from b3_jobs indexed by b3_jobs_ready"
                " where state = 'waiting' and staged = 0%s order by prio_rank, enq_seq limit 1" % exclude,
                tuple(blocked),
            ).fetchone()
            if row is None:
                return None, free_in_s
            job_id, name, msg, rate_key, children_done = row
            limits = self.limits.get(name)
            key = rate_key if limits is not None and limits.rate_keyed else ""
            if (
                limits is not None
                and limits.rate_limit
                and limits.rate_window_s
                and limits.rate_keyed
                and self._window(curs, name, key, limits.rate_window_s, now)[0] >= limits.rate_limit
            ):
                self._rate_delay(curs, job_id, name, key, limits, now)
                continue
            token = uuid.uuid4().hex
            attempt = curs.execute(
                "update b3_jobs set state = 'active', started_at = ?, state_ts = ?, attempts = attempts + 1,"
                " worker = ?, lease_until = ?, lease_token = ?, delay_reason = null where id = ? returning attempts",
                (now, now, owner, now + lease_s, token, job_id),
            ).fetchone()[0]
            if limits is not None and limits.rate_limit:
                curs.execute("insert into b3_rate (name, key, ts, id) values (?, ?, ?, ?)", (name, key, now, job_id))
                curs.execute("delete from b3_ratecal where id = ?", (job_id,))
            _count(curs, name, "started")
            return Dequeued(job_id, name, bytes(msg), Lease(owner, int(attempt), token), bool(children_done)), free_in_s
        return None, free_in_s

    def dequeue(self, owner: str, now: float, lease_s: float, wait_s: float) -> Dequeued | None:
        got, free_in_s = self._take(owner, lease_s)
        if got is None and wait_s > 0:
            # other processes are seen by polling
            block_s = min(wait_s, 0.2, free_in_s) if free_in_s > 0 else min(wait_s, 0.2)
            with self._wake:
                self._wake.wait(block_s)
            got, _ = self._take(owner, lease_s)
        return got

    def renew(self, owner: str, job_ids: list[str], now: float | None, lease_s: float) -> int:
        now = time.time() if now is None else now
        with self._tx() as curs:
            held = 0
            for job_id in job_ids:
                curs.execute(
                    "update b3_jobs set lease_until = ? where id = ? and state = 'active' and worker = ?",
                    (now + lease_s, job_id, owner),
                )
                held += curs.rowcount
            curs.execute("insert or replace into b3_consumers (owner, seen) values (?, ?)", (owner, now))
        return held

    def reap(self, now: float | None, limit: int = 100) -> list[Reaped]:
        now = time.time() if now is None else now
        out = []
        with self._tx() as curs:
            if self._release_stale_staged(curs):
                self._notify()
            rows = curs.execute(
                "select id, name, stalls, max_stalls from b3_jobs where state = 'active' and lease_until <= ? limit ?",
                (now, limit),
            ).fetchall()
            for job_id, name, stalls, max_stalls in rows:
                stalls += 1
                if stalls > max_stalls:
                    curs.execute(
                        "update b3_jobs set state = 'failed', stalls = ?, attempts = attempts - 1, children_done = 0, worker = null,"
                        " lease_until = null, lease_token = null, finished_at = ?, state_ts = ?, error = ?, traceback = '' where id = ?",
                        (stalls, now, now, STALLED_TOO_OFTEN % stalls, job_id),
                    )
                else:
                    curs.execute(
                        "update b3_jobs set state = 'waiting', stalls = ?, attempts = attempts - 1, worker = null,"
                        " lease_until = null, lease_token = null, state_ts = ? where id = ?",
                        (stalls, now, job_id),
                    )
                out.append(Reaped(job_id, name, stalls, stalls > max_stalls))
                _count(curs, name, "stalled")
                if stalls > max_stalls:
                    _count(curs, name, "failed")
                    self._finished(curs, job_id, FAILED, STALLED_TOO_OFTEN % stalls, now)
        if out:
            self._notify()
        return out

    def _holds(self, curs: sqlite3.Cursor, job_id: str, lease: Lease) -> str | None:
        row = curs.execute(
            "select name from b3_jobs where id = ? and state = 'active' and lease_token = ? and attempts = ?",
            (job_id, lease.token, lease.attempt),
        ).fetchone()
        return row[0] if row else None

    def release(self, job_id: str, lease: Lease) -> bool:
        with self._tx() as curs:
            if self._holds(curs, job_id, lease) is None:
                return False
            curs.execute(
                "update b3_jobs set state = 'waiting', attempts = attempts - 1, worker = null, lease_until = null, lease_token = null,"
                " state_ts = ? where id = ?",
                (time.time(), job_id),
            )
        self._notify()
        return True

    def promote_due(self, names: list[str], now: float, limit: int = 1000) -> list[tuple[str, str]]:
        with self._tx() as curs:
            rows = curs.execute(
                "update b3_jobs set state = 'waiting', run_at = null, state_ts = ?, enq_seq = ?"
                " where id in (select id from b3_jobs where state = 'delayed' and state_ts <= ? limit ?)"
                " returning id, name",
                (now, time.time_ns(), now, limit),
            ).fetchall()
        if rows:
            self._notify()
        return [(r[0], r[1]) for r in rows]

    def set_progress(self, job_id: str, lease: Lease, progress_json: bytes) -> bool:
        with self._tx() as curs:
            curs.execute(
                "update b3_jobs set progress = ? where id = ? and state = 'active' and lease_token = ? and attempts = ?",
                (progress_json, job_id, lease.token, lease.attempt),
            )
            return curs.rowcount == 1

    def _trim(self, curs: sqlite3.Cursor, name: str, state: str, now: float, keep: Keep) -> None:
        # Trimming reads past the `keep.count` newest records, so it runs once per tenth of
        # `keep.count` finishes (O(1) per finish, amortised): at most 10 % more records are kept meanwhile.
        every = max(1, (keep.count or 0) // 10)
        done = self._finishes[(name, state)] = self._finishes.get((name, state), 0) + 1
        if done % every:
            return
        if keep.count is not None:
            curs.execute(
                "delete from b3_jobs where id in (select id from b3_jobs where name = ? and state = ?"
                " order by state_ts desc limit -1 offset ?)",
                (name, state, keep.count),
            )
        if keep.age is not None:
            curs.execute(
                "delete from b3_jobs where name = ? and state = ? and state_ts < ?", (name, state, now - keep.age)
            )

    def _finished(self, curs: sqlite3.Cursor, job_id: str, state: str, detail: str, now: float) -> None:
        """A job ended (or was removed): tell its parent, once. Its dedupe key frees itself (see the index)."""
        parent = curs.execute(
            "select p.id from b3_jobs c join b3_jobs p on p.id = c.parent_id where c.id = ?", (job_id,)
        ).fetchone()
        if parent is not None:
            curs.execute(
                "insert or ignore into b3_outcomes (parent, child, state, detail) values (?, ?, ?, ?)",
                (parent[0], job_id, state, detail),
            )
            if curs.rowcount == 0:  # a retried child ending again: update, do not count it twice
                curs.execute(
                    "update b3_outcomes set state = ?, detail = ? where parent = ? and child = ?",
                    (state, detail, parent[0], job_id),
                )
            else:
                left = curs.execute(
                    "update b3_jobs set pending = pending - 1 where id = ? returning pending, state", (parent[0],)
                ).fetchone()
                if left[0] <= 0 and left[1] == "waiting-children":
                    curs.execute(
                        "update b3_jobs set state = 'waiting', children_done = 1, state_ts = ?, enq_seq = ? where id = ?",
                        (now, time.time_ns(), parent[0]),
                    )
                    self._notify()
        curs.execute("delete from b3_outcomes where parent = ?", (job_id,))

    def _finish(
        self, job_id: str, lease: Lease, state: str, now: float, keep: Keep, detail: str, **fields: Any
    ) -> bool:
        with self._tx() as curs:
            return self._finish_in(curs, job_id, lease, state, now, keep, detail, **fields)

    def _finish_in(
        self,
        curs: sqlite3.Cursor,
        job_id: str,
        lease: Lease,
        state: str,
        now: float,
        keep: Keep,
        detail: str,
        **fields: Any,
    ) -> bool:
        sets = ", ".join("%s = ?" % f for f in fields)
        name = self._holds(curs, job_id, lease)
        if name is None:
            return False
        curs.execute(
            "update b3_jobs set state = ?, finished_at = ?, state_ts = ?, worker = null, lease_until = null, lease_token = null,"
            " children_done = 0, pending = 0, %s"
            " where id = ?" % sets,
            (state, now, now, *fields.values(), job_id),
        )
        self._finished(curs, job_id, state, detail, now)
        self._trim(curs, name, state, now, keep)
        _count(curs, name, state)
        return True

    def complete(self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep) -> bool:
        return self._finish(job_id, lease, COMPLETED, now, keep, result_json.decode(), result=result_json)

    def complete_and_take(
        self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep, owner: str, lease_s: float
    ) -> tuple[bool, Dequeued | None]:
        with self._tx() as curs:
            done = self._finish_in(curs, job_id, lease, COMPLETED, now, keep, result_json.decode(), result=result_json)
            got, _ = self._take_in(curs, owner, lease_s)
        return done, got

    def fail(self, job_id: str, lease: Lease, error: str, traceback: str, now: float, keep: Keep) -> bool:
        return self._finish(job_id, lease, FAILED, now, keep, error, error=error, traceback=traceback)

    def retry_later(self, job_id: str, lease: Lease, error: str, traceback: str, run_at: float) -> bool:
        with self._tx() as curs:
            name = self._holds(curs, job_id, lease)
            if name is None:
                return False
            _count(curs, name, "retried")
            curs.execute(
                "update b3_jobs set state = 'delayed', run_at = ?, state_ts = ?, error = ?, traceback = ?,"
                " worker = null, lease_until = null where id = ?",
                (run_at, run_at, error, traceback, job_id),
            )
            return True

    def _to_waiting(self, job_id: str, from_state: str, operation: str, now: float, reset: str = "") -> JobRecord:
        with self._tx() as curs:
            found = self._state_of(curs, job_id)
            if found is None:
                raise JobNotFound(job_id)
            if found[0] != from_state:
                raise InvalidState(job_id, found[0], operation, (from_state,))
            curs.execute(
                "update b3_jobs set state = 'waiting', run_at = null, state_ts = ?, enq_seq = ?%s where id = ?" % reset,
                (now, time.time_ns(), job_id),
            )
        self._notify()
        record = self.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def requeue_failed(self, job_id: str, now: float) -> JobRecord:
        reset = (
            ", attempts = 0, stalls = 0, error = null, traceback = null, result = null,"
            " started_at = null, finished_at = null"
        )
        try:
            return self._to_waiting(job_id, FAILED, "retry", now, reset)
        except sqlite3.IntegrityError:  # the dedupe index: an equal job is live
            raise InvalidState(
                job_id, "a duplicate of a live job", "retry", ("the only live one of its dedupe key",)
            ) from None

    def promote(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, DELAYED, "promote", now)

    def remove(self, job_id: str) -> bool:
        with self._tx() as curs:
            found = self._state_of(curs, job_id)
            if found is None:
                return False
            if found[0] == ACTIVE:
                raise InvalidState(job_id, found[0], "remove", (WAITING, DELAYED, COMPLETED, FAILED))
            if found[0] not in (COMPLETED, FAILED):
                self._finished(curs, job_id, FAILED, "removed", time.time())
            curs.execute("delete from b3_jobs where id = ?", (job_id,))
            curs.execute("delete from b3_outcomes where parent = ?", (job_id,))
            return True

    def spawn(self, parent_id: str, lease: Lease, children: list[NewJob], now: float) -> int:
        created_ids = []
        with self._tx() as curs:
            if self._holds(curs, parent_id, lease) is None:
                raise InvalidState(parent_id, "not held by this worker", "spawn children of", (ACTIVE,))
            for child in children:
                data = child.record.to_dict()
                values = [encode_json(data[c]) if c in _JSON else data[c] for c in _COLUMNS]
                curs.execute(
                    "insert or ignore into b3_jobs (%s, state_ts, msg, prio_rank, enq_seq, rate_key) values (%s)"
                    % (", ".join(_COLUMNS), ", ".join("?" * (len(_COLUMNS) + 5))),
                    (*values, now, child.message, child.record.priority or 0, time.time_ns(), child.rate_key),
                )
                if curs.rowcount == 1:
                    created_ids.append(child.record.id)
                else:
                    # Spawned again (a parent rerun after a crash or a retry): if the child already
                    # ended without its parent knowing, record how.
                    curs.execute(
                        "insert or ignore into b3_outcomes (parent, child, state, detail)"
                        " select ?, id, state, case state when 'completed' then result else coalesce(error, '') end"
                        " from b3_jobs where id = ? and state in ('completed', 'failed')",
                        (parent_id, child.record.id),
                    )
            row = curs.execute("select children from b3_jobs where id = ?", (parent_id,)).fetchone()
            known = decode_json(row[0])
            curs.execute(
                "update b3_jobs set children = ?, pending = pending + ? where id = ?",
                (encode_json(known + created_ids), len(created_ids), parent_id),
            )
        self._notify()
        return len(created_ids)

    def wait_children(self, parent_id: str, lease: Lease, now: float) -> str | None:
        with self._tx() as curs:
            if self._holds(curs, parent_id, lease) is None:
                return None
            pending = curs.execute("select pending from b3_jobs where id = ?", (parent_id,)).fetchone()[0]
            state = "waiting" if pending <= 0 else "waiting-children"
            curs.execute(
                "update b3_jobs set state = ?, children_done = ?, state_ts = ?, enq_seq = ?, attempts = attempts - 1,"
                " worker = null, lease_until = null, lease_token = null where id = ?",
                (state, int(state == "waiting"), now, time.time_ns(), parent_id),
            )
        if state == "waiting":
            self._notify()
        return state

    def child_outcomes(self, parent_id: str) -> list[ChildOutcome]:
        rows = self.storage.sql(
            "select child, state, detail from b3_outcomes where parent = ?", (parent_id,), results=True
        )
        return [ChildOutcome(child, state, detail) for child, state, detail in rows]

    def drain(self, name: str) -> int:
        with self._tx() as curs:
            ids = [r[0] for r in curs.execute("select id from b3_jobs where name = ? and state = 'waiting'", (name,))]
            for job_id in ids:
                self._finished(curs, job_id, FAILED, "removed", time.time())
            curs.execute("delete from b3_jobs where name = ? and state = 'waiting'", (name,))
            return curs.rowcount

    def obliterate(self, name: str, force: bool = False) -> int:
        with self._tx() as curs:
            active = curs.execute(
                "select count(*) from b3_jobs where name = ? and state = 'active'", (name,)
            ).fetchone()[0]
            if active and not force:
                raise InvalidState(name, "%d job(s) active" % active, "obliterate", ("no active jobs",))
            for (job_id,) in curs.execute(
                "select id from b3_jobs where name = ? and state not in ('completed', 'failed')", (name,)
            ).fetchall():
                self._finished(curs, job_id, FAILED, "removed", time.time())
            curs.execute("delete from b3_outcomes where parent in (select id from b3_jobs where name = ?)", (name,))
            curs.execute("delete from b3_jobs where name = ?", (name,))
            removed = curs.rowcount
            for table in ("b3_stats", "b3_paused", "b3_rate", "b3_ratecal", "b3_ticks"):
                curs.execute("delete from %s where name = ?" % table, (name,))
            return removed

    def clean(self, name: str, state: str, cutoff_ts: float, limit: int) -> int:
        with self._tx() as curs:
            if state not in (COMPLETED, FAILED):
                for (job_id,) in curs.execute(
                    "select id from b3_jobs where name = ? and state = ? and state_ts < ? order by state_ts limit ?",
                    (name, state, cutoff_ts, limit),
                ).fetchall():
                    self._finished(curs, job_id, FAILED, "removed", time.time())
            curs.execute(
                "delete from b3_jobs where id in (select id from b3_jobs where name = ? and state = ? and state_ts < ?"
                " order by state_ts limit ?)",
                (name, state, cutoff_ts, limit),
            )
            return curs.rowcount

    def pause(self, name: str) -> bool:
        with self._tx() as curs:
            curs.execute("insert or ignore into b3_paused (name) values (?)", (name,))
            return curs.rowcount == 1

    def resume(self, name: str) -> int:
        with self._tx() as curs:
            curs.execute("delete from b3_paused where name = ?", (name,))
            waiting = curs.execute(
                "select count(*) from b3_jobs where name = ? and state = 'waiting'", (name,)
            ).fetchone()[0]
        self._notify()
        return int(waiting)

    def paused(self) -> set[str]:
        return {r[0] for r in self.storage.sql("select name from b3_paused", results=True)}

    def _select(self, where: str, params: tuple[Any, ...]) -> Iterator[JobRecord]:
        rows = self.storage.sql("%s %s" % (_SELECT, where), params, results=True)
        return (_row_to_record(r) for r in rows)

    def get(self, job_id: str) -> JobRecord | None:
        return next(self._select("where id = ?", (job_id,)), None)

    def get_many(self, job_ids: builtins.list[str]) -> builtins.list[JobRecord | None]:
        found: dict[str, JobRecord] = {}
        for start in range(0, len(job_ids), 500):
            part = job_ids[start : start + 500]
            found.update((r.id, r) for r in self._select("where id in (%s)" % ", ".join("?" * len(part)), tuple(part)))
        return [found.get(job_id) for job_id in job_ids]

    def list(self, state: str | None, name: str | None, offset: int, limit: int) -> list[JobRecord]:
        clauses, params = [], []
        if state:
            clauses.append("state = ?")
            params.append(state)
        if name:
            clauses.append("name = ?")
            params.append(name)
        where = ("where " + " and ".join(clauses)) if clauses else ""
        return list(
            self._select("%s order by state_ts desc, rowid desc limit ? offset ?" % where, (*params, limit, offset))
        )

    def ids_in_state(self, name: str, state: str) -> builtins.list[str]:
        rows = self.storage.sql("select id from b3_jobs where name = ? and state = ?", (name, state), results=True)
        return [r[0] for r in rows]

    def counts(self, names: builtins.list[str]) -> dict[str, dict[str, int]]:
        rows = self.storage.sql("select name, state, count(*) from b3_jobs group by name, state", results=True)
        seen = sorted(set(names) | {r[0] for r in rows})
        out = {n: {s: 0 for s in STATES} for n in seen}
        for name, state, count in rows:
            out[name][state] = count
        return out

    def stats(self, names: builtins.list[str]) -> dict[str, dict[str, int]]:
        rows = self.storage.sql("select name, metric, value from b3_stats", results=True)
        seen = (
            set(names)
            | {r[0] for r in rows}
            | {r[0] for r in self.storage.sql("select distinct name from b3_jobs", results=True)}
        )
        out = {n: dict.fromkeys(METRICS, 0) for n in sorted(seen)}
        for name, metric, value in rows:
            out[name][metric] = value
        return out

    def consumers(self, since_ts: float) -> dict[str, float]:
        with self._tx() as curs:
            curs.execute("delete from b3_consumers where seen < ?", (since_ts - 86400,))
            rows = curs.execute("select owner, seen from b3_consumers where seen >= ?", (since_ts,)).fetchall()
        return {owner: seen for owner, seen in rows}

    def claim_tick(self, job: str, tick_ts: float) -> bool:
        with self._tx() as curs:
            curs.execute("insert or ignore into b3_ticks (name, tick) values (?, ?)", (job, tick_ts))
            claimed = curs.rowcount == 1
            if claimed:
                curs.execute("delete from b3_ticks where name = ? and tick < ?", (job, tick_ts - TICK_KEEP_S))
            return claimed

    def last_tick(self, job: str) -> float | None:
        rows = self.storage.sql("select max(tick) from b3_ticks where name = ?", (job,), results=True)
        return rows[0][0] if rows and rows[0][0] is not None else None

    def close(self) -> None:
        self.storage.close()

    def destroy(self) -> None:
        with self._tx() as curs:
            for table in (
                "b3_jobs",
                "b3_ticks",
                "b3_paused",
                "b3_consumers",
                "b3_stats",
                "b3_outcomes",
                "b3_rate",
                "b3_ratecal",
            ):
                curs.execute("delete from %s" % table)
