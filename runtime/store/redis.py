"""The job store on Redis: a hash per job, a sorted set per (job name, state), Lua for every move.

Keys, with `ns` the namespace:
  {ns}:job:{id}            hash: the record's fields
  {ns}:idx:{name}:{state}  zset of ids, scored by the time the job entered that state
  {ns}:names               set of job names seen
  {ns}:tick:{name}:{ts}    a claimed cron tick (expires after a day)
  {ns}:lasttick:{name}     the last claimed tick
Huey's queue (`huey.redis.{ns}`) and schedule (`huey.schedule.{ns}`) hold the messages.
Each state move is one Lua script, so it is one round trip and atomic.
"""

from __future__ import annotations

import datetime as dt
import struct
import time
from typing import Any

from huey.storage import PriorityRedisStorage

from runtime.errors import InvalidState, JobNotFound
from runtime.manifest import Keep
from runtime.records import DELAYED, FAILED, STATES, WAITING, JobRecord, decode_json, encode_json
from runtime.store.base import PARKED, JobStore, Outbound

# Moves the job from its current index to another; shared by the scripts below.
_LUA_MOVE = """
local function move(ns, id, name, from_state, to_state, score)
  redis.call('ZREM', ns .. ':idx:' .. name .. ':' .. from_state, id)
  redis.call('ZADD', ns .. ':idx:' .. name .. ':' .. to_state, score, id)
end
local function trim(ns, name, state, now, count, age)
  local z = ns .. ':idx:' .. name .. ':' .. state
  if count >= 0 then
    local extra = redis.call('ZCARD', z) - count
    if extra > 0 then
      for _, old in ipairs(redis.call('ZRANGE', z, 0, extra - 1)) do
        redis.call('DEL', ns .. ':job:' .. old)
      end
      redis.call('ZREMRANGEBYRANK', z, 0, extra - 1)
    end
  end
  if age >= 0 then
    local old_ids = redis.call('ZRANGEBYSCORE', z, '-inf', now - age, 'LIMIT', 0, 1000)
    for _, old in ipairs(old_ids) do
      redis.call('DEL', ns .. ':job:' .. old)
      redis.call('ZREM', z, old)
    end
  end
end
"""

# KEYS: job, index, queue-or-schedule, names. ARGV: id, name, index score, member, member score, fields...
CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[4])
redis.call('SADD', KEYS[4], ARGV[2])
return 1
"""

# KEYS: job, queue. ARGV: ns, id, now, member, member score
# A schedule entry left behind by `promote` must not make a later delay end early: check run_at.
MAKE_DUE = _LUA_MOVE + """
local s = redis.call('HMGET', KEYS[1], 'state', 'name', 'run_at')
if s[1] ~= 'delayed' or tonumber(s[3] or '0') > tonumber(ARGV[3]) + 0.5 then return 0 end
move(ARGV[1], ARGV[2], s[2], 'delayed', 'waiting', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'waiting', 'run_at', '')
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
return 1
"""

# KEYS: job, paused set. ARGV: ns, id, now, queue member, member score
ACTIVATE = _LUA_MOVE + """
local s = redis.call('HMGET', KEYS[1], 'state', 'name')
if s[1] ~= 'waiting' then return -1 end
if redis.call('SISMEMBER', KEYS[2], s[2]) == 1 then
  redis.call('ZADD', ARGV[1] .. ':parked:' .. s[2], ARGV[5], ARGV[4])
  return -2
end
move(ARGV[1], ARGV[2], s[2], 'waiting', 'active', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'active', 'started_at', ARGV[3])
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)
"""

# KEYS: job, queue. ARGV: ns, id, now, member, member score
PROMOTE = _LUA_MOVE + """
local s = redis.call('HMGET', KEYS[1], 'state', 'name')
if not s[1] then return false end
if s[1] ~= 'delayed' then return s[1] end
move(ARGV[1], ARGV[2], s[2], 'delayed', 'waiting', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'waiting', 'run_at', '')
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
return 'ok'
"""

# KEYS: index. ARGV: ns, cutoff, limit
CLEAN = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('DEL', ARGV[1] .. ':job:' .. id)
  redis.call('ZREM', KEYS[1], id)
end
return #ids
"""

# KEYS: paused set, parked zset, queue. ARGV: name
RESUME = """
redis.call('SREM', KEYS[1], ARGV[1])
local parked = redis.call('ZRANGE', KEYS[2], 0, -1, 'WITHSCORES')
for i = 1, #parked, 2 do
  redis.call('ZADD', KEYS[3], parked[i + 1], parked[i])
end
redis.call('DEL', KEYS[2])
return #parked / 2
"""

# KEYS: job. ARGV: ns, id, final state, now, keep count (-1 none), keep age (-1 none), fields...
FINISH = _LUA_MOVE + """
local s = redis.call('HMGET', KEYS[1], 'state', 'name')
if s[1] ~= 'active' then return 0 end
move(ARGV[1], ARGV[2], s[2], 'active', ARGV[3], ARGV[4])
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'finished_at', ARGV[4], unpack(ARGV, 7))
trim(ARGV[1], s[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]))
return 1
"""

# KEYS: job, schedule. ARGV: ns, id, run_at, member, error, traceback, schedule score
RETRY_LATER = _LUA_MOVE + """
local s = redis.call('HMGET', KEYS[1], 'state', 'name')
if s[1] ~= 'active' then return 0 end
move(ARGV[1], ARGV[2], s[2], 'active', 'delayed', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'delayed', 'run_at', ARGV[3], 'error', ARGV[5], 'traceback', ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[4])
return 1
"""

# KEYS: job, queue. ARGV: ns, id, now, member, member score
REQUEUE_FAILED = _LUA_MOVE + """
local s = redis.call('HMGET', KEYS[1], 'state', 'name')
if not s[1] then return false end
if s[1] ~= 'failed' then return s[1] end
move(ARGV[1], ARGV[2], s[2], 'failed', 'waiting', ARGV[3])
redis.call('HSET', KEYS[1], 'state', 'waiting', 'attempts', 0)
redis.call('HDEL', KEYS[1], 'error', 'traceback', 'finished_at', 'started_at', 'result', 'run_at')
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[4])
return 'ok'
"""

# KEYS: job. ARGV: ns, id
REMOVE = """
local s = redis.call('HMGET', KEYS[1], 'state', 'name')
if not s[1] then return false end
if s[1] == 'active' then return s[1] end
redis.call('ZREM', ARGV[1] .. ':idx:' .. s[2] .. ':' .. s[1], ARGV[2])
redis.call('DEL', KEYS[1])
return 'ok'
"""

# KEYS: job. ARGV: progress
PROGRESS = """
if redis.call('HGET', KEYS[1], 'state') ~= 'active' then return 0 end
redis.call('HSET', KEYS[1], 'progress', ARGV[1])
return 1
"""

_JSON_FIELDS = ("payload", "progress", "result", "children")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "run_at")
_INT_FIELDS = ("attempts", "max_attempts", "priority")


def _naive_utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).replace(tzinfo=None)


def _record_from_hash(job_id: str, h: dict[bytes, bytes]) -> JobRecord:
    values: dict[str, Any] = {"id": job_id}
    for key, raw in h.items():
        field = key.decode()
        text = raw.decode()
        if text == "":
            continue
        if field in _JSON_FIELDS:
            values[field] = decode_json(raw)
        elif field in _FLOAT_FIELDS:
            values[field] = float(text)
        elif field in _INT_FIELDS:
            values[field] = int(text)
        else:
            values[field] = text
    return JobRecord(**values)


class RedisJobStore(JobStore):
    def __init__(self, huey: Any, namespace: str):
        self.huey = huey
        self.storage: PriorityRedisStorage = huey.storage
        self.r = self.storage.conn
        self.ns = namespace
        self._create = self.r.register_script(CREATE)
        self._make_due = self.r.register_script(MAKE_DUE)
        self._activate = self.r.register_script(ACTIVATE)
        self._finish = self.r.register_script(FINISH)
        self._retry_later = self.r.register_script(RETRY_LATER)
        self._requeue_failed = self.r.register_script(REQUEUE_FAILED)
        self._remove = self.r.register_script(REMOVE)
        self._progress = self.r.register_script(PROGRESS)
        self._promote = self.r.register_script(PROMOTE)
        self._clean = self.r.register_script(CLEAN)
        self._resume = self.r.register_script(RESUME)
        self._paused_key = "%s:paused" % namespace

    def _key(self, job_id: str) -> str:
        return "%s:job:%s" % (self.ns, job_id)

    def _idx(self, name: str, state: str) -> str:
        return "%s:idx:%s:%s" % (self.ns, name, state)

    def _queue_member(self, message: Outbound) -> tuple[bytes, float]:
        # The same encoding PriorityRedisStorage.enqueue uses: a timestamp prefix keeps FIFO order.
        return struct.pack(">Q", int(time.time() * 1e6)) + message.data, -message.priority

    def _placement(self, message: Outbound) -> tuple[str, bytes, float]:
        if message.run_at is None:
            member, score = self._queue_member(message)
            return self.storage.queue_key, member, score
        return self.storage.schedule_key, message.data, self.storage.convert_ts(_naive_utc(message.run_at))

    def create(self, record: JobRecord, message: Outbound) -> tuple[JobRecord, bool]:
        fields: list[Any] = []
        for field, value in record.to_dict().items():
            if field == "id" or value is None:
                continue
            fields.append(field)
            fields.append(encode_json(value) if field in _JSON_FIELDS else value)
        target, member, score = self._placement(message)
        index_score = message.run_at if message.run_at is not None else record.created_at
        created = self._create(
            keys=[self._key(record.id), self._idx(record.name, record.state), target, "%s:names" % self.ns],
            args=[record.id, record.name, index_score, member, score, *fields],
        )
        if created:
            return record, True
        existing = self.get(record.id)
        if existing is None:  # removed between the two calls: try once more
            return self.create(record, message)
        return existing, False

    def make_due(self, job_id: str, message: Outbound) -> bool:
        member, score = self._queue_member(message)
        return bool(
            self._make_due(keys=[self._key(job_id), self.storage.queue_key], args=[self.ns, job_id, time.time(), member, score])
        )

    def activate(self, job_id: str, now: float, message: Outbound) -> int | None:
        member, score = self._queue_member(message)
        attempts = self._activate(keys=[self._key(job_id), self._paused_key], args=[self.ns, job_id, now, member, score])
        if attempts == PARKED:
            return PARKED
        return None if attempts < 0 else int(attempts)

    def promote(self, job_id: str, message: Outbound, now: float) -> JobRecord:
        member, score = self._queue_member(message)
        outcome = self._promote(keys=[self._key(job_id), self.storage.queue_key], args=[self.ns, job_id, now, member, score])
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), "promote", (DELAYED,))
        record = self.get(job_id)
        assert record is not None
        return record

    def clean(self, name: str, state: str, older_than: float, limit: int) -> int:
        return int(self._clean(keys=[self._idx(name, state)], args=[self.ns, older_than, limit]))

    def pause(self, name: str) -> bool:
        return bool(self.r.sadd(self._paused_key, name))

    def resume(self, name: str) -> int:
        parked = "%s:parked:%s" % (self.ns, name)
        return int(self._resume(keys=[self._paused_key, parked, self.storage.queue_key], args=[name]))

    def paused(self) -> set[str]:
        return {n.decode() for n in self.r.smembers(self._paused_key)}

    def set_progress(self, job_id: str, progress_json: bytes) -> None:
        self._progress(keys=[self._key(job_id)], args=[progress_json])

    def _keep_args(self, keep: Keep) -> list[float]:
        return [-1 if keep.count is None else keep.count, -1 if keep.age is None else keep.age]

    def complete(self, job_id: str, result_json: bytes, now: float, keep: Keep) -> bool:
        args = [self.ns, job_id, "completed", now, *self._keep_args(keep), "result", result_json]
        return bool(self._finish(keys=[self._key(job_id)], args=args))

    def fail(self, job_id: str, error: str, traceback: str, now: float, keep: Keep) -> bool:
        args = [self.ns, job_id, FAILED, now, *self._keep_args(keep), "error", error, "traceback", traceback]
        return bool(self._finish(keys=[self._key(job_id)], args=args))

    def retry_later(self, job_id: str, error: str, traceback: str, message: Outbound) -> bool:
        assert message.run_at is not None
        _, member, score = self._placement(message)
        keys = [self._key(job_id), self.storage.schedule_key]
        return bool(self._retry_later(keys=keys, args=[self.ns, job_id, message.run_at, member, error, traceback, score]))

    def requeue_failed(self, job_id: str, message: Outbound, now: float) -> JobRecord:
        member, score = self._queue_member(message)
        outcome = self._requeue_failed(keys=[self._key(job_id), self.storage.queue_key], args=[self.ns, job_id, now, member, score])
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), "retry", (FAILED,))
        record = self.get(job_id)
        assert record is not None
        return record

    def remove(self, job_id: str) -> bool:
        outcome = self._remove(keys=[self._key(job_id)], args=[self.ns, job_id])
        if outcome is None:
            return False
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), "remove", (WAITING, DELAYED, "completed", FAILED))
        return True

    def get(self, job_id: str) -> JobRecord | None:
        h = self.r.hgetall(self._key(job_id))
        return _record_from_hash(job_id, h) if h else None

    def _get_many(self, ids: list[str]) -> list[JobRecord]:
        with self.r.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self._key(job_id))
            hashes = pipe.execute()
        return [_record_from_hash(i, h) for i, h in zip(ids, hashes) if h]

    def _names(self) -> list[str]:
        return sorted(n.decode() for n in self.r.smembers("%s:names" % self.ns))

    def list(self, state: str | None, name: str | None, offset: int, limit: int) -> list[JobRecord]:
        names = [name] if name else self._names()
        states = [state] if state else list(STATES)
        with self.r.pipeline(transaction=False) as pipe:
            for n in names:
                for s in states:
                    pipe.zrevrange(self._idx(n, s), 0, offset + limit - 1, withscores=True)
            ranges = pipe.execute()
        merged = sorted(((score, i.decode()) for r in ranges for i, score in r), reverse=True)
        return self._get_many([i for _, i in merged[offset : offset + limit]])

    def ids_in_state(self, name: str, state: str) -> list[str]:
        return [i.decode() for i in self.r.zrange(self._idx(name, state), 0, -1)]

    def counts(self, names: list[str]) -> dict[str, dict[str, int]]:
        all_names = sorted(set(names) | set(self._names()))
        with self.r.pipeline(transaction=False) as pipe:
            for n in all_names:
                for s in STATES:
                    pipe.zcard(self._idx(n, s))
            sizes = iter(pipe.execute())
        return {n: {s: next(sizes) for s in STATES} for n in all_names}

    def claim_tick(self, job: str, tick: float) -> bool:
        claimed = self.r.set("%s:tick:%s:%d" % (self.ns, job, tick), 1, nx=True, ex=86400)
        if claimed:
            self.r.set("%s:lasttick:%s" % (self.ns, job), tick)
        return bool(claimed)

    def last_tick(self, job: str) -> float | None:
        value = self.r.get("%s:lasttick:%s" % (self.ns, job))
        return float(value) if value is not None else None

    def close(self) -> None:
        self.storage.pool.disconnect()

    def destroy(self) -> None:
        patterns = ["%s:*" % self.ns, self.storage.queue_key, self.storage.schedule_key,
                    self.storage.result_key, self.storage.counter_key]
        for pattern in patterns:
            keys = list(self.r.scan_iter(match=pattern, count=1000))
            for start in range(0, len(keys), 500):
                self.r.delete(*keys[start : start + 500])

