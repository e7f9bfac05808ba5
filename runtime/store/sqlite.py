"""The job store on SQLite: one `b3_jobs` table is the records, the queue and the leases.

A waiting job is queued by its state; `dequeue` picks the first by (priority, enqueue sequence)
and leases it in the same transaction. Huey's connection and lock are shared, so one process
serialises its writers; several processes coordinate through SQLite's own locking (WAL).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from typing import Any, Iterator

from huey.storage import SqliteStorage

from runtime.errors import InvalidState, JobNotFound
from runtime.manifest import Keep
from runtime.records import ACTIVE, COMPLETED, DELAYED, FAILED, STATES, WAITING, JobRecord, decode_json, encode_json
from runtime.store.base import METRICS, STALLED_TOO_OFTEN, Dequeued, JobStore, Lease, Reaped

_COLUMNS = (
    "id", "name", "state", "payload", "attempts", "max_attempts", "stalls", "max_stalls", "worker", "progress",
    "result", "error", "traceback", "priority", "created_at", "started_at", "finished_at", "run_at", "parent_id",
    "children",
)
_JSON = ("payload", "progress", "result", "children")
_SELECT = "select %s from b3_jobs" % ", ".join(_COLUMNS)


class B3SqliteStorage(SqliteStorage):
    """Huey's SQLite storage with b3-jobs' tables added to its schema."""

    ddl = SqliteStorage.ddl + [
        "create table if not exists b3_jobs ("
        " id text primary key, name text not null, state text not null, payload text not null,"
        " attempts integer not null default 0, max_attempts integer not null default 1,"
        " stalls integer not null default 0, max_stalls integer not null default 3, worker text,"
        " progress text, result text, error text, traceback text, priority integer,"
        " created_at real not null, started_at real, finished_at real, run_at real,"
        " parent_id text, children text not null default '[]', state_ts real not null,"
        " msg blob not null, prio_rank integer not null default 0, enq_seq integer not null default 0,"
        " lease_until real)",
        "create index if not exists b3_jobs_name_state_ts on b3_jobs (name, state, state_ts)",
        "create index if not exists b3_jobs_state_ts on b3_jobs (state, state_ts)",
        "create index if not exists b3_jobs_queue on b3_jobs (prio_rank, enq_seq) where state = 'waiting'",
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
    values = {}
    for column, value in zip(_COLUMNS, row):
        if value is None:
            continue
        values[column] = decode_json(value) if column in _JSON else value
    return JobRecord(**values)


class SqliteJobStore(JobStore):
    def __init__(self, storage: B3SqliteStorage):
        self.storage = storage
        # Same-process enqueues wake idle workers at once; other processes are seen by polling.
        self._wake = threading.Condition()

    def _tx(self) -> Any:
        return self.storage.db(commit=True)

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _state_of(self, curs: sqlite3.Cursor, job_id: str) -> tuple[str, str] | None:
        row = curs.execute("select state, name from b3_jobs where id = ?", (job_id,)).fetchone()
        return (row[0], row[1]) if row else None

    def create(self, record: JobRecord, message: bytes) -> tuple[JobRecord, bool]:
        data = record.to_dict()
        values = [encode_json(data[c]) if c in _JSON else data[c] for c in _COLUMNS]
        state_ts = record.run_at if record.state == DELAYED and record.run_at else record.created_at
        columns = ", ".join(_COLUMNS)
        with self._tx() as curs:
            curs.execute(
                "insert or ignore into b3_jobs (%s, state_ts, msg, prio_rank, enq_seq) values (%s)"
                % (columns, ", ".join("?" * (len(_COLUMNS) + 4))),
                (*values, state_ts, message, record.priority or 0, time.time_ns()),
            )
            created = curs.rowcount == 1
        if created:
            self._notify()
            return record, True
        existing = self.get(record.id)
        return (existing, False) if existing is not None else self.create(record, message)

    def _take(self, owner: str, now: float, lease_s: float) -> Dequeued | None:
        with self._tx() as curs:
            row = curs.execute(
                "select id, name, msg from b3_jobs where state = 'waiting'"
                " and name not in (select name from b3_paused) order by prio_rank, enq_seq limit 1"
            ).fetchone()
            if row is None:
                return None
            attempt = curs.execute(
                "update b3_jobs set state = 'active', started_at = ?, state_ts = ?, attempts = attempts + 1,"
                " worker = ?, lease_until = ? where id = ? returning attempts",
                (now, now, owner, now + lease_s, row[0]),
            ).fetchone()[0]
            _count(curs, row[1], "started")
        return Dequeued(row[0], row[1], bytes(row[2]), Lease(owner, int(attempt)))

    def dequeue(self, owner: str, now: float, lease_s: float, wait_s: float) -> Dequeued | None:
        got = self._take(owner, now, lease_s)
        if got is None and wait_s > 0:
            with self._wake:
                self._wake.wait(min(wait_s, 0.2))  # other processes' enqueues are seen by polling
            now = time.time()
            got = self._take(owner, now, lease_s)
        return got

    def renew(self, owner: str, job_ids: list[str], now: float, lease_s: float) -> int:
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

    def reap(self, now: float, limit: int = 100) -> list[Reaped]:
        out = []
        with self._tx() as curs:
            rows = curs.execute(
                "select id, name, stalls, max_stalls from b3_jobs where state = 'active' and lease_until <= ? limit ?",
                (now, limit),
            ).fetchall()
            for job_id, name, stalls, max_stalls in rows:
                stalls += 1
                if stalls > max_stalls:
                    curs.execute(
                        "update b3_jobs set state = 'failed', stalls = ?, attempts = attempts - 1, worker = null,"
                        " lease_until = null, finished_at = ?, state_ts = ?, error = ?, traceback = '' where id = ?",
                        (stalls, now, now, STALLED_TOO_OFTEN % stalls, job_id),
                    )
                else:
                    curs.execute(
                        "update b3_jobs set state = 'waiting', stalls = ?, attempts = attempts - 1, worker = null,"
                        " lease_until = null, state_ts = ? where id = ?",
                        (stalls, now, job_id),
                    )
                out.append(Reaped(job_id, name, stalls, stalls > max_stalls))
                _count(curs, name, "stalled")
                if stalls > max_stalls:
                    _count(curs, name, "failed")
        if out:
            self._notify()
        return out

    def _holds(self, curs: sqlite3.Cursor, job_id: str, lease: Lease) -> str | None:
        row = curs.execute(
            "select name from b3_jobs where id = ? and state = 'active' and worker = ? and attempts = ?",
            (job_id, lease.owner, lease.attempt),
        ).fetchone()
        return row[0] if row else None

    def release(self, job_id: str, lease: Lease) -> bool:
        with self._tx() as curs:
            if self._holds(curs, job_id, lease) is None:
                return False
            curs.execute(
                "update b3_jobs set state = 'waiting', attempts = attempts - 1, worker = null, lease_until = null,"
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
                "update b3_jobs set progress = ? where id = ? and state = 'active' and worker = ? and attempts = ?",
                (progress_json, job_id, lease.owner, lease.attempt),
            )
            return curs.rowcount == 1

    def _trim(self, curs: sqlite3.Cursor, name: str, state: str, now: float, keep: Keep) -> None:
        if keep.count is not None:
            curs.execute(
                "delete from b3_jobs where id in (select id from b3_jobs where name = ? and state = ?"
                " order by state_ts desc limit -1 offset ?)",
                (name, state, keep.count),
            )
        if keep.age is not None:
            curs.execute("delete from b3_jobs where name = ? and state = ? and state_ts < ?", (name, state, now - keep.age))

    def _finish(self, job_id: str, lease: Lease, state: str, now: float, keep: Keep, **fields: Any) -> bool:
        sets = ", ".join("%s = ?" % f for f in fields)
        with self._tx() as curs:
            name = self._holds(curs, job_id, lease)
            if name is None:
                return False
            curs.execute(
                "update b3_jobs set state = ?, finished_at = ?, state_ts = ?, worker = null, lease_until = null, %s"
                " where id = ?" % sets,
                (state, now, now, *fields.values(), job_id),
            )
            self._trim(curs, name, state, now, keep)
            _count(curs, name, state)
            return True

    def complete(self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep) -> bool:
        return self._finish(job_id, lease, COMPLETED, now, keep, result=result_json)

    def fail(self, job_id: str, lease: Lease, error: str, traceback: str, now: float, keep: Keep) -> bool:
        return self._finish(job_id, lease, FAILED, now, keep, error=error, traceback=traceback)

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
        reset = (", attempts = 0, stalls = 0, error = null, traceback = null, result = null,"
                 " started_at = null, finished_at = null")
        return self._to_waiting(job_id, FAILED, "retry", now, reset)

    def promote(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, DELAYED, "promote", now)

    def remove(self, job_id: str) -> bool:
        with self._tx() as curs:
            found = self._state_of(curs, job_id)
            if found is None:
                return False
            if found[0] == ACTIVE:
                raise InvalidState(job_id, found[0], "remove", (WAITING, DELAYED, COMPLETED, FAILED))
            curs.execute("delete from b3_jobs where id = ?", (job_id,))
            return True

    def clean(self, name: str, state: str, older_than: float, limit: int) -> int:
        with self._tx() as curs:
            curs.execute(
                "delete from b3_jobs where id in (select id from b3_jobs where name = ? and state = ? and state_ts < ?"
                " order by state_ts limit ?)",
                (name, state, older_than, limit),
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

    def list(self, state: str | None, name: str | None, offset: int, limit: int) -> list[JobRecord]:
        clauses, params = [], []
        if state:
            clauses.append("state = ?")
            params.append(state)
        if name:
            clauses.append("name = ?")
            params.append(name)
        where = ("where " + " and ".join(clauses)) if clauses else ""
        return list(self._select("%s order by state_ts desc, rowid desc limit ? offset ?" % where, (*params, limit, offset)))

    def ids_in_state(self, name: str, state: str) -> list[str]:
        rows = self.storage.sql("select id from b3_jobs where name = ? and state = ?", (name, state), results=True)
        return [r[0] for r in rows]

    def counts(self, names: list[str]) -> dict[str, dict[str, int]]:
        rows = self.storage.sql("select name, state, count(*) from b3_jobs group by name, state", results=True)
        seen = sorted(set(names) | {r[0] for r in rows})
        out = {n: {s: 0 for s in STATES} for n in seen}
        for name, state, count in rows:
            out[name][state] = count
        return out

    def stats(self, names: list[str]) -> dict[str, dict[str, int]]:
        rows = self.storage.sql("select name, metric, value from b3_stats", results=True)
        seen = set(names) | {r[0] for r in rows} | {r[0] for r in self.storage.sql("select distinct name from b3_jobs", results=True)}
        out = {n: dict.fromkeys(METRICS, 0) for n in sorted(seen)}
        for name, metric, value in rows:
            out[name][metric] = value
        return out

    def consumers(self, since: float) -> dict[str, float]:
        with self._tx() as curs:
            curs.execute("delete from b3_consumers where seen < ?", (since - 86400,))
            rows = curs.execute("select owner, seen from b3_consumers where seen >= ?", (since,)).fetchall()
        return {owner: seen for owner, seen in rows}

    def claim_tick(self, job: str, tick: float) -> bool:
        with self._tx() as curs:
            curs.execute("insert or ignore into b3_ticks (name, tick) values (?, ?)", (job, tick))
            claimed = curs.rowcount == 1
            if claimed:
                curs.execute("delete from b3_ticks where name = ? and tick < ?", (job, tick - 86400 * 7))
            return claimed

    def last_tick(self, job: str) -> float | None:
        rows = self.storage.sql("select max(tick) from b3_ticks where name = ?", (job,), results=True)
        return rows[0][0] if rows and rows[0][0] is not None else None

    def close(self) -> None:
        self.storage.close()

    def destroy(self) -> None:
        with self._tx() as curs:
            for table in ("b3_jobs", "b3_ticks", "b3_paused", "b3_consumers", "b3_stats"):
                curs.execute("delete from %s" % table)
