"""The job store on Redis: a hash per job, sorted sets for queues, states and leases; a Lua script per move.

What it keeps, under the namespace `ns` (`keys.py` names every key and what it holds):
  - each job's hash: its record's fields, its Huey message, and the store's own (`_INTERNAL`);
  - per job name: a queue of waiting ids (priority, then FIFO), an index of ids per state scored
    by when they entered it, running totals, and its rate-limit windows and booked slots;
  - the leases of active jobs, scored by deadline on Redis's clock, and each consumer's last heartbeat;
  - the dedupe keys of live jobs, and each flow parent's finished children's outcomes;
  - the job names seen and paused, the enqueue sequence, and the wake-up list idle consumers block on;
  - claimed cron ticks (each kept `TICK_KEEP_S`) and each job name's last claimed tick.

Every state change is one Lua script from `lua/` (see `scripts.py`): one round trip, atomic.
The scripts build their keys from the namespace, so Redis Cluster is not supported.
"""

from __future__ import annotations

import builtins
import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

from runtime.core.errors import InvalidState, JobNotFound
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
from runtime.store.keys import Keys
from runtime.store.scripts import Scripts

# The job hash's fields that are the store's, not the record's: `msg` (the Huey message), `qscore`
# (its queue score), `lease_until` and `lease_token`, `dedupe_key` and `rate_key` (as created),
# `capped` (its name has a concurrency limit: a finish wakes a consumer), and a flow parent's
# `pending` (children not ended) and `children_done` (back from waiting-children).
IDLE_STALE_S = 30.0  # an idle listing older than this is a dead consumer's: `reap` drops it
_INTERNAL = {
    "msg",
    "qscore",
    "lease_until",
    "lease_token",
    "dedupe_key",
    "rate_key",
    "children_done",
    "pending",
    "capped",
}
_JSON_FIELDS = ("payload", "progress", "result", "children")


def _dequeued(owner: str, token: str, got: list[Any]) -> Dequeued | None:
    """A dequeue script's answer: the job taken, or None (the answer is then the seconds to wait)."""
    if len(got) == 1:
        return None
    job_id, name, message, attempt, children_done = got
    return Dequeued(
        job_id.decode(), name.decode(), bytes(message), Lease(owner, int(attempt), token), children_done == b"1"
    )


def _as_text(value: Any) -> str:
    """A hash field's value as the text redis-py would send (for fields passed through JSON to Lua,
    whose cjson would round floats to 14 digits)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, float):
        return repr(value)
    return str(value)


_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "run_at")
_INT_FIELDS = ("attempts", "max_attempts", "priority", "stalls", "max_stalls")


def _record_from_hash(job_id: str, h: dict[bytes, bytes], found_in: tuple[str, str, float] | None = None) -> JobRecord:
    """The record in a job's hash; one that cannot be read comes back as a `corrupt_record`, under the
    (name, state, score) of the index it was `found_in`, else what its hash says."""
    try:
        values: dict[str, Any] = {"id": job_id}
        for key, raw in h.items():
            field = key.decode()
            if field in _INTERNAL or raw == b"":
                continue
            if field in _JSON_FIELDS:
                values[field] = decode_json(raw)
            elif field in _FLOAT_FIELDS:
                values[field] = float(raw)
            elif field in _INT_FIELDS:
                values[field] = int(raw)
            else:
                values[field] = raw.decode()
        return checked_record(values)
    except (ValueError, TypeError) as exc:
        name, state, ts = found_in or (_text(h.get(b"name")), _text(h.get(b"state")), 0.0)
        return corrupt_record(job_id, name, state, ts, "%s: %s" % (type(exc).__name__, exc))


def _text(raw: bytes | None) -> str:
    return (raw or b"").decode(errors="replace")


def _held(lease: Lease) -> dict[str, Any]:
    """The arguments a script checks a lease by (see `holds` in lua/common.lua)."""
    return {"token": lease.token, "attempt": lease.attempt}


class RedisJobStore(JobStore):
    def __init__(self, client: Any, namespace: str):
        self.r = client
        self.ns = namespace
        self.keys = Keys(namespace)
        self.lua = Scripts(client, namespace)
        self._limits_cache = "{}"  # the limits as dequeue takes them, made once per set_limits

    def _fields(self, record: JobRecord) -> list[Any]:
        limits = self.limits.get(record.name)
        fields: list[Any] = ["capped", 1] if limits is not None and limits.concurrency else []
        for field, value in record.to_dict().items():
            if field == "id" or value is None:
                continue
            fields.append(field)
            fields.append(encode_json(value) if field in _JSON_FIELDS else value)
        return fields

    def create(
        self, record: JobRecord, message: bytes, *, dedupe_key: str = "", rate_key: str = ""
    ) -> tuple[JobRecord, bool]:
        outcome = self.lua.create(
            job_id=record.id,
            name=record.name,
            state=record.state,
            index_score=record.run_at if record.state == DELAYED and record.run_at else record.created_at,
            priority=record.priority or 0,
            dedupe_key=dedupe_key,
            fields=["msg", message, "rate_key", rate_key, *self._fields(record)],
        )
        if outcome == 1:
            return record, True
        existing = self.get(record.id if outcome == 0 else outcome.decode())
        if existing is None:  # removed or finished between the two calls: try once more
            return self.create(record, message, dedupe_key=dedupe_key, rate_key=rate_key)
        return existing, False

    def create_many(self, jobs: list[NewJob], *, staged: bool = False) -> list[tuple[JobRecord, bool]]:
        flat: list[Any] = []
        for job in jobs:
            record = job.record
            fields = ["msg", job.message, "rate_key", job.rate_key, *self._fields(record)]
            flat += [
                record.id,
                record.name,
                record.state,
                record.run_at if record.state == DELAYED and record.run_at else record.created_at,
                record.priority or 0,
                job.dedupe_key,
                json.dumps([_as_text(f) for f in fields]),
            ]
        outcomes = self.lua.create_many(staged=int(staged), jobs=flat)
        out: list[tuple[JobRecord, bool]] = []
        for job, outcome in zip(jobs, outcomes):
            if outcome == 1:
                out.append((job.record, True))
                continue
            existing = self.get(job.record.id if outcome == 0 else outcome.decode())
            if existing is None:  # removed or finished between the two calls: create it on its own
                out.append(self.create(job.record, job.message, dedupe_key=job.dedupe_key, rate_key=job.rate_key))
            else:
                out.append((existing, False))
        return out

    def release_staged(self, job_ids: list[str]) -> int:
        return int(self.lua.release_staged(job_ids=job_ids)) if job_ids else 0

    def _release_stale_staged(self) -> int:
        stale = [
            i.decode() for i in self.r.zrangebyscore(self.keys.staged, "-inf", time.time() - STAGED_MAX_S, 0, 1000)
        ]
        return self.release_staged(stale)

    def set_limits(self, limits: Mapping[str, Limits]) -> None:
        super().set_limits(limits)
        self._limits_cache = self._limits_config()

    def _limits_json(self) -> str:
        return self._limits_cache

    def _limits_config(self) -> str:
        config = {}
        for name, limits in self.limits.items():
            entry: dict[str, Any] = {}
            if limits.concurrency:
                entry["concurrency"] = limits.concurrency
            if limits.rate_limit:
                entry.update(limit=limits.rate_limit, window_s=limits.rate_window_s, keyed=limits.rate_keyed)
            if entry:
                config[name] = entry
        return json.dumps(config) if config else "{}"

    def dequeue(self, owner: str, now: float, lease_s: float, wait_s: float) -> Dequeued | None:
        # `now` is not used: the script starts jobs and gives leases on Redis's clock.
        limits_json = self._limits_json()
        token = uuid.uuid4().hex
        will_wait = wait_s > 0
        got = self.lua.dequeue(
            owner=owner, lease_s=lease_s, limits_json=limits_json, token=token, was_idle=0, may_wait=int(will_wait)
        )
        if len(got) == 1 and will_wait:
            # Nothing to take: block until an enqueue or a freed slot pushes a wake-up token, or
            # until a rate-limit window opens, whichever is first; then try once more.
            free_in_s = float(got[0])
            block_s = min(wait_s, free_in_s) if free_in_s > 0 else wait_s
            if block_s >= 0.01:
                self.r.blpop([self.keys.wake], timeout=block_s)
            got = self.lua.dequeue(
                owner=owner, lease_s=lease_s, limits_json=limits_json, token=token, was_idle=1, may_wait=0
            )
        return _dequeued(owner, token, got)

    def pin_connection(self) -> None:
        self.lua.clients.pin()

    def complete_and_take(
        self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep, owner: str, lease_s: float
    ) -> tuple[bool, Dequeued | None]:
        token = uuid.uuid4().hex
        got = self.lua.finish_take(
            job_id=job_id,
            **_held(lease),
            state=COMPLETED,
            now=now,
            keep_count=-1 if keep.count is None else keep.count,
            keep_age_s=-1 if keep.age is None else keep.age,
            detail=result_json,
            owner=owner,
            lease_s=lease_s,
            limits_json=self._limits_json(),
            next_token=token,
            fields=["result", result_json],
        )
        return bool(got[0]), _dequeued(owner, token, got[1:])

    def renew(self, owner: str, job_ids: list[str], now: float | None, lease_s: float) -> int:
        clock: Any = "" if now is None else now
        deadline: Any = "" if now is None else now + lease_s
        return int(self.lua.renew(owner=owner, now=clock, deadline=deadline, lease_s=lease_s, job_ids=job_ids))

    def reap(self, now: float | None, limit: int = 100) -> list[Reaped]:
        self._release_stale_staged()
        # A consumer listed idle is back within its wait (at most a few seconds) unless it died.
        self.r.zremrangebyscore(self.keys.idle, "-inf", float(self.r.time()[0]) - IDLE_STALE_S)
        rows = self.lua.reap(now="" if now is None else now, limit=limit, stalled_reason=STALLED_TOO_OFTEN)
        return [Reaped(i.decode(), n.decode(), int(stalls), bool(failed)) for i, n, stalls, failed in rows]

    def release(self, job_id: str, lease: Lease) -> bool:
        return bool(self.lua.release(job_id=job_id, **_held(lease), now=time.time()))

    def promote_due(self, names: list[str], now: float, limit: int = 1000) -> list[tuple[str, str]]:
        rows = self.lua.promote_due(now=now, limit=limit, names=names)
        return [(i.decode(), n.decode()) for i, n in rows]

    def set_progress(self, job_id: str, lease: Lease, progress_json: bytes) -> bool:
        return bool(self.lua.set_progress(job_id=job_id, **_held(lease), progress_json=progress_json))

    def complete(self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep) -> bool:
        return self._run_finish(job_id, lease, COMPLETED, now, keep, result_json, ["result", result_json])

    def fail(self, job_id: str, lease: Lease, error: str, traceback: str, now: float, keep: Keep) -> bool:
        return self._run_finish(job_id, lease, FAILED, now, keep, error, ["error", error, "traceback", traceback])

    def _run_finish(
        self, job_id: str, lease: Lease, state: str, now: float, keep: Keep, detail: Any, fields: list[Any]
    ) -> bool:
        return bool(
            self.lua.finish(
                job_id=job_id,
                **_held(lease),
                state=state,
                now=now,
                keep_count=-1 if keep.count is None else keep.count,
                keep_age_s=-1 if keep.age is None else keep.age,
                detail=detail,
                fields=fields,
            )
        )

    def retry_later(self, job_id: str, lease: Lease, error: str, traceback: str, run_at: float) -> bool:
        done = self.lua.retry_later(job_id=job_id, **_held(lease), run_at=run_at, reason=error, traceback=traceback)
        return bool(done)

    def _to_waiting(self, job_id: str, from_state: str, operation: str, now: float) -> JobRecord:
        outcome = self.lua.to_waiting(job_id=job_id, now=now, from_state=from_state)
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome != b"ok":
            expected = ("the only live one of its dedupe key",) if outcome.startswith(b"a duplicate") else (from_state,)
            raise InvalidState(job_id, outcome.decode(), operation, expected)
        record = self.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def requeue_failed(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, FAILED, "retry", now)

    def promote(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, DELAYED, "promote", now)

    def remove(self, job_id: str) -> bool:
        outcome = self.lua.remove(job_id=job_id, now=time.time())
        if outcome is None:
            return False
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), "remove", (WAITING, DELAYED, COMPLETED, FAILED))
        return True

    def clean(self, name: str, state: str, cutoff_ts: float, limit: int) -> int:
        return int(self.lua.clean(name=name, state=state, cutoff_ts=cutoff_ts, limit=limit, now=time.time()))

    def pause(self, name: str) -> bool:
        return bool(self.r.sadd(self.keys.paused, name))

    def resume(self, name: str) -> int:
        with self.r.pipeline() as pipe:
            pipe.srem(self.keys.paused, name)
            pipe.zcard(self.keys.queue(name))
            pipe.lpush(self.keys.wake, *([1] * 8))
            pipe.ltrim(self.keys.wake, 0, 63)
            _, waiting, _, _ = pipe.execute()
        return int(waiting)

    def spawn(self, parent_id: str, lease: Lease, children: list[NewJob], now: float) -> int:
        flat: list[Any] = []
        for child in children:
            fields = [_as_text(f) for f in self._fields(child.record)]
            flat += [
                child.record.id,
                child.record.name,
                child.message,
                child.record.priority or 0,
                child.rate_key,
                json.dumps(fields),
            ]
        created = int(self.lua.spawn(parent_id=parent_id, **_held(lease), now=now, children=flat))
        if created < 0:
            raise InvalidState(parent_id, "not held by this worker", "spawn children of", (ACTIVE,))
        return created

    def wait_children(self, parent_id: str, lease: Lease, now: float) -> str | None:
        state = self.lua.wait_children(job_id=parent_id, **_held(lease), now=now)
        return state.decode() if state else None

    def child_outcomes(self, parent_id: str) -> list[ChildOutcome]:
        rows = self.r.hgetall(self.keys.outcomes(parent_id))
        out = []
        for child_id, raw in rows.items():
            state, _, detail = raw.decode().partition("\n")
            out.append(ChildOutcome(child_id.decode(), state, detail))
        return out

    def drain(self, name: str) -> int:
        removed = 0
        for job_id in self.ids_in_state(name, WAITING):
            try:
                removed += self.remove(job_id)
            except InvalidState:
                continue  # started meanwhile
        return removed

    def obliterate(self, name: str, force: bool = False) -> int:
        removed = int(self.lua.obliterate(name=name, force=1 if force else 0, now=time.time()))
        if removed < 0:
            raise InvalidState(name, "%d job(s) active" % -removed, "obliterate", ("no active jobs",))
        return removed

    def paused(self) -> set[str]:
        return {n.decode() for n in self.r.smembers(self.keys.paused)}

    def get(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(self.keys.job(job_id))
        return _record_from_hash(job_id, h) if h else None

    def get_many(self, job_ids: builtins.list[str]) -> builtins.list[JobRecord | None]:
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                pipe.hgetall(self.keys.job(job_id))
            hashes = pipe.execute()
        return [_record_from_hash(i, h) if h else None for i, h in zip(job_ids, hashes)]

    def _get_many(self, ids: list[str], found_in: list[tuple[str, str, float]]) -> list[JobRecord]:
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.keys.job(job_id))
            hashes = pipe.execute()
        return [_record_from_hash(i, h, where) for i, h, where in zip(ids, hashes, found_in) if h]

    def _names(self) -> list[str]:
        return sorted(n.decode() for n in self.r.smembers(self.keys.names))

    def list(self, state: str | None, name: str | None, offset: int, limit: int) -> list[JobRecord]:
        names = [name] if name else self._names()
        states = [state] if state else list(STATES)
        with self.r.pipeline(transaction=False) as pipe:
            indexes = [(n, s) for n in names for s in states]
            for n, s in indexes:
                pipe.zrevrange(self.keys.index(n, s), 0, offset + limit - 1, withscores=True)
            ranges = pipe.execute()
        merged = sorted(
            ((score, i.decode(), n, s) for (n, s), r in zip(indexes, ranges) for i, score in r), reverse=True
        )
        page = merged[offset : offset + limit]
        return self._get_many([i for _, i, _, _ in page], [(n, s, score) for score, _, n, s in page])

    def ids_in_state(self, name: str, state: str) -> builtins.list[str]:
        return [i.decode() for i in self.r.zrange(self.keys.index(name, state), 0, -1)]

    def counts(self, names: builtins.list[str]) -> dict[str, dict[str, int]]:
        all_names = sorted(set(names) | set(self._names()))
        with self.r.pipeline(transaction=False) as pipe:
            for n in all_names:
                for s in STATES:
                    pipe.zcard(self.keys.index(n, s))
            sizes = iter(pipe.execute())
        return {n: {s: next(sizes) for s in STATES} for n in all_names}

    def stats(self, names: builtins.list[str]) -> dict[str, dict[str, int]]:
        all_names = sorted(set(names) | set(self._names()))
        with self.r.pipeline(transaction=False) as pipe:
            for n in all_names:
                pipe.hgetall(self.keys.stats(n))
            rows = pipe.execute()
        return {
            n: {**dict.fromkeys(METRICS, 0), **{k.decode(): int(v) for k, v in row.items()}}
            for n, row in zip(all_names, rows)
        }

    def consumers(self, since_ts: float) -> dict[str, float]:
        self.r.zremrangebyscore(self.keys.consumers, "-inf", since_ts - 86400)  # forget consumers gone for a day
        seen = self.r.zrangebyscore(self.keys.consumers, since_ts, "+inf", withscores=True)
        return {owner.decode(): float(ts) for owner, ts in seen}

    def claim_tick(self, job: str, tick_ts: float) -> bool:
        claimed = self.r.set(self.keys.tick(job, tick_ts), 1, nx=True, ex=TICK_KEEP_S)
        if claimed:
            self.r.set(self.keys.last_tick(job), tick_ts)
        return bool(claimed)

    def last_tick(self, job: str) -> float | None:
        value = self.r.get(self.keys.last_tick(job))
        return float(value) if value is not None else None

    def close(self) -> None:
        self.r.connection_pool.disconnect()

    def destroy(self) -> None:
        keys = list(self.r.scan_iter(match=self.keys.everything, count=1000))
        for start in range(0, len(keys), 500):
            self.r.delete(*keys[start : start + 500])
