"""The job store on SQLite: a `b3_jobs` table next to Huey's own tables, in the same file.

Every state move is one transaction on Huey's connection that updates the record and inserts or
moves the message in Huey's `task` or `schedule` table, so the two never disagree.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from typing import Any, Iterator

from huey.storage import SqliteStorage

from runtime.errors import InvalidState, JobNotFound
from runtime.manifest import Keep
from runtime.records import ACTIVE, COMPLETED, DELAYED, FAILED, STATES, WAITING, JobRecord, decode_json, encode_json
from runtime.store.base import PARKED, JobStore, Outbound

_COLUMNS = (
    "id", "name", "state", "payload", "attempts", "max_attempts", "progress", "result", "error",
    "traceback", "priority", "created_at", "started_at", "finished_at", "run_at", "parent_id", "children",
)
_JSON = ("payload", "progress", "result", "children")


class B3SqliteStorage(SqliteStorage):
    """Huey's SQLite storage with b3-jobs' tables added to its schema."""

    ddl = SqliteStorage.ddl + [
        "create table if not exists b3_jobs ("
        " id text primary key, name text not null, state text not null, payload text not null,"
        " attempts integer not null default 0, max_attempts integer not null default 1,"
        " progress text, result text, error text, traceback text, priority integer,"
        " created_at real not null, started_at real, finished_at real, run_at real,"
        " parent_id text, children text not null default '[]', state_ts real not null)",
        "create index if not exists b3_jobs_name_state_ts on b3_jobs (name, state, state_ts)",
        "create index if not exists b3_jobs_state_ts on b3_jobs (state, state_ts)",
        "create table if not exists b3_ticks (name text not null, tick real not null, primary key (name, tick))",
        "create table if not exists b3_paused (name text primary key)",
        "create table if not exists b3_parked (id integer primary key, name text not null, data blob not null,"
        " priority real not null)",
    ]


def _row_to_record(row: sqlite3.Row | tuple[Any, ...]) -> JobRecord:
    values = {}
    for column, value in zip(_COLUMNS, row):
        if value is None:
            continue
        values[column] = decode_json(value) if column in _JSON else value
    return JobRecord(**values)


class SqliteJobStore(JobStore):
    def __init__(self, huey: Any):
        self.huey = huey
        self.storage: B3SqliteStorage = huey.storage
        self.queue = self.storage.name

    def _tx(self) -> Any:
        return self.storage.db(commit=True)

    def _place(self, curs: sqlite3.Cursor, message: Outbound) -> None:
        if message.run_at is None:
            curs.execute(
                "insert into task (queue, data, priority) values (?, ?, ?)", (self.queue, message.data, message.priority)
            )
        else:
            # Huey compares naive UTC datetimes' .timestamp(); store the schedule the same way.
            naive = dt.datetime.fromtimestamp(message.run_at, dt.timezone.utc).replace(tzinfo=None)
            curs.execute(
                "insert into schedule (queue, data, timestamp) values (?, ?, ?)", (self.queue, message.data, naive.timestamp())
            )

    def _state_of(self, curs: sqlite3.Cursor, job_id: str) -> str | None:
        row = curs.execute("select state from b3_jobs where id = ?", (job_id,)).fetchone()
        return row[0] if row else None

    def create(self, record: JobRecord, message: Outbound) -> tuple[JobRecord, bool]:
        data = record.to_dict()
        values = [encode_json(data[c]) if c in _JSON else data[c] for c in _COLUMNS]
        state_ts = message.run_at if message.run_at is not None else record.created_at
        with self._tx() as curs:
            curs.execute(
                "insert or ignore into b3_jobs (%s, state_ts) values (%s)" % (", ".join(_COLUMNS), ", ".join("?" * (len(_COLUMNS) + 1))),
                (*values, state_ts),
            )
            if curs.rowcount == 1:
                self._place(curs, message)
                return record, True
        existing = self.get(record.id)
        return (existing, False) if existing is not None else self.create(record, message)

    def make_due(self, job_id: str, message: Outbound) -> bool:
        with self._tx() as curs:
            now = time.time()
            # A schedule entry left behind by `promote` must not end a later delay early.
            curs.execute(
                "update b3_jobs set state = 'waiting', run_at = null, state_ts = ?"
                " where id = ? and state = 'delayed' and run_at <= ?",
                (now, job_id, now + 0.5),
            )
            if curs.rowcount != 1:
                return False
            self._place(curs, message)
            return True

    def activate(self, job_id: str, now: float, message: Outbound) -> int | None:
        with self._tx() as curs:
            row = curs.execute(
                "select name from b3_jobs where id = ? and state = 'waiting'", (job_id,)
            ).fetchone()
            if row is None:
                return None
            if curs.execute("select 1 from b3_paused where name = ?", (row[0],)).fetchone():
                curs.execute(
                    "insert into b3_parked (name, data, priority) values (?, ?, ?)", (row[0], message.data, message.priority)
                )
                return PARKED
            attempts = curs.execute(
                "update b3_jobs set state = 'active', started_at = ?, state_ts = ?, attempts = attempts + 1"
                " where id = ? returning attempts",
                (now, now, job_id),
            ).fetchone()
        return int(attempts[0])

    def promote(self, job_id: str, message: Outbound, now: float) -> JobRecord:
        with self._tx() as curs:
            state = self._state_of(curs, job_id)
            if state is None:
                raise JobNotFound(job_id)
            if state != DELAYED:
                raise InvalidState(job_id, state, "promote", (DELAYED,))
            curs.execute(
                "update b3_jobs set state = 'waiting', run_at = null, state_ts = ? where id = ?", (now, job_id)
            )
            self._place(curs, message)
        record = self.get(job_id)
        assert record is not None
        return record

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
            curs.execute(
                "insert into task (queue, data, priority) select ?, data, priority from b3_parked where name = ?"
                " order by id",
                (self.queue, name),
            )
            moved = curs.rowcount
            curs.execute("delete from b3_parked where name = ?", (name,))
            return moved

    def paused(self) -> set[str]:
        return {r[0] for r in self.storage.sql("select name from b3_paused", results=True)}

    def set_progress(self, job_id: str, progress_json: bytes) -> None:
        with self._tx() as curs:
            curs.execute("update b3_jobs set progress = ? where id = ? and state = 'active'", (progress_json, job_id))

    def _trim(self, curs: sqlite3.Cursor, name: str, state: str, now: float, keep: Keep) -> None:
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

    def _finish(self, job_id: str, state: str, now: float, keep: Keep, **fields: Any) -> bool:
        sets = ", ".join("%s = ?" % f for f in fields)
        with self._tx() as curs:
            row = curs.execute(
                "update b3_jobs set state = ?, finished_at = ?, state_ts = ?, %s where id = ? and state = 'active'"
                " returning name" % sets,
                (state, now, now, *fields.values(), job_id),
            ).fetchone()
            if row is None:
                return False
            self._trim(curs, row[0], state, now, keep)
            return True

    def complete(self, job_id: str, result_json: bytes, now: float, keep: Keep) -> bool:
        return self._finish(job_id, COMPLETED, now, keep, result=result_json)

    def fail(self, job_id: str, error: str, traceback: str, now: float, keep: Keep) -> bool:
        return self._finish(job_id, FAILED, now, keep, error=error, traceback=traceback)

    def retry_later(self, job_id: str, error: str, traceback: str, message: Outbound) -> bool:
        with self._tx() as curs:
            curs.execute(
                "update b3_jobs set state = 'delayed', run_at = ?, state_ts = ?, error = ?, traceback = ?"
                " where id = ? and state = 'active'",
                (message.run_at, message.run_at, error, traceback, job_id),
            )
            if curs.rowcount != 1:
                return False
            self._place(curs, message)
            return True

    def requeue_failed(self, job_id: str, message: Outbound, now: float) -> JobRecord:
        with self._tx() as curs:
            state = self._state_of(curs, job_id)
            if state is None:
                raise JobNotFound(job_id)
            if state != FAILED:
                raise InvalidState(job_id, state, "retry", (FAILED,))
            curs.execute(
                "update b3_jobs set state = 'waiting', attempts = 0, error = null, traceback = null, result = null,"
                " started_at = null, finished_at = null, run_at = null, state_ts = ? where id = ?",
                (now, job_id),
            )
            self._place(curs, message)
        record = self.get(job_id)
        assert record is not None
        return record

    def remove(self, job_id: str) -> bool:
        with self._tx() as curs:
            state = self._state_of(curs, job_id)
            if state is None:
                return False
            if state == ACTIVE:
                raise InvalidState(job_id, state, "remove", (WAITING, DELAYED, COMPLETED, FAILED))
            curs.execute("delete from b3_jobs where id = ?", (job_id,))
            return True

    def _select(self, where: str, params: tuple[Any, ...]) -> Iterator[JobRecord]:
        rows = self.storage.sql("select %s from b3_jobs %s" % (", ".join(_COLUMNS), where), params, results=True)
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

    def claim_tick(self, job: str, tick: float) -> bool:
        with self._tx() as curs:
            curs.execute("insert or ignore into b3_ticks (name, tick) values (?, ?)", (job, tick))
            claimed = curs.rowcount == 1
            if claimed:
                curs.execute("delete from b3_ticks where name = ? and tick < ?", (job, tick - 86400))
            return claimed

    def last_tick(self, job: str) -> float | None:
        rows = self.storage.sql("select max(tick) from b3_ticks where name = ?", (job,), results=True)
        return rows[0][0] if rows and rows[0][0] is not None else None

    def close(self) -> None:
        self.storage.close()

    def destroy(self) -> None:
        with self._tx() as curs:
            curs.execute("delete from b3_jobs")
            curs.execute("delete from b3_ticks")
            curs.execute("delete from b3_paused")
            curs.execute("delete from b3_parked")
            for table in ("task", "schedule", "kv", "counter"):
                curs.execute("delete from %s where queue = ?" % table, (self.queue,))
