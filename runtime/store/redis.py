"""The job store on Redis: a hash per job, sorted sets for the queue, states and leases; Lua for every move.

Keys, with `ns` the namespace:
  {ns}:job:{id}            hash: the record's fields, plus `msg` (the Huey message), `qscore`, `lease_until`
  {ns}:queue               zset of waiting job ids, scored priority * 2^32 + enqueue sequence
  {ns}:seq                 the enqueue sequence (FIFO within a priority)
  {ns}:wake                list of wake-up tokens idle consumers block on (BLPOP)
  {ns}:leases              zset of active job ids, scored by lease deadline
  {ns}:idx:{name}:{state}  zset of ids, scored by the time the job entered that state (delayed: its run_at)
  {ns}:parked:{name}       zset of waiting ids of a paused name, with their queue scores
  {ns}:names, {ns}:paused  sets of job names seen / paused
  {ns}:tick:{name}:{ts}    a claimed cron tick (expires after a day); {ns}:lasttick:{name}
Each move is one Lua script: one round trip, atomic. Keys are computed inside the scripts, so
Redis Cluster is not supported.
"""

from __future__ import annotations

import time
from typing import Any

from runtime.errors import InvalidState, JobNotFound
from runtime.manifest import Keep
from runtime.records import ACTIVE, COMPLETED, DELAYED, FAILED, STATES, WAITING, JobRecord, decode_json, encode_json
from runtime.store.base import METRICS, STALLED_TOO_OFTEN, Dequeued, JobStore, Lease, Reaped

_LIB = """
local ns = ARGV[1]
local function jkey(id) return ns .. ':job:' .. id end
local function idx(name, state) return ns .. ':idx:' .. name .. ':' .. state end
local function move(id, name, from_state, to_state, score)
  redis.call('ZREM', idx(name, from_state), id)
  redis.call('ZADD', idx(name, to_state), score, id)
end
local function queue(id, qscore)
  redis.call('ZADD', ns .. ':queue', qscore, id)
  redis.call('LPUSH', ns .. ':wake', 1)
  redis.call('LTRIM', ns .. ':wake', 0, 63)
end
local function new_qscore(priority)
  local seq = redis.call('INCR', ns .. ':seq') % 4294967296
  return string.format('%.0f', (tonumber(priority) or 0) * 4294967296 + seq)
end
local function count(name, metric)
  redis.call('HINCRBY', ns .. ':stats:' .. name, metric, 1)
end
local function trim(name, state, now, count, age)
  local z = idx(name, state)
  if count >= 0 then
    local extra = redis.call('ZCARD', z) - count
    if extra > 0 then
      for _, old in ipairs(redis.call('ZRANGE', z, 0, extra - 1)) do redis.call('DEL', jkey(old)) end
      redis.call('ZREMRANGEBYRANK', z, 0, extra - 1)
    end
  end
  if age >= 0 then
    for _, old in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now - age, 'LIMIT', 0, 1000)) do
      redis.call('DEL', jkey(old))
      redis.call('ZREM', z, old)
    end
  end
end
-- The lease check every finish makes: still active, same owner, same attempt.
local function holds(key, owner, attempt)
  local s = redis.call('HMGET', key, 'state', 'worker', 'attempts', 'name')
  if s[1] ~= 'active' or s[2] ~= owner or s[3] ~= attempt then return nil end
  return s[4]
end
"""

# ARGV: ns, id, name, state, index score, priority, fields...
CREATE = _LIB + """
local key = jkey(ARGV[2])
if redis.call('EXISTS', key) == 1 then return 0 end
local qscore = new_qscore(ARGV[6])
redis.call('HSET', key, 'qscore', qscore, unpack(ARGV, 7))
redis.call('ZADD', idx(ARGV[3], ARGV[4]), ARGV[5], ARGV[2])
redis.call('SADD', ns .. ':names', ARGV[3])
if ARGV[4] == 'waiting' then queue(ARGV[2], qscore) end
return 1
"""

# ARGV: ns, owner, now, lease deadline. Returns {id, name, msg, attempt} or nil.
DEQUEUE = _LIB + """
for _ = 1, 100 do
  local popped = redis.call('ZPOPMIN', ns .. ':queue')
  if #popped == 0 then return nil end
  local id, qscore = popped[1], popped[2]
  local key = jkey(id)
  local s = redis.call('HMGET', key, 'state', 'name', 'msg')
  if s[1] == 'waiting' then
    if redis.call('SISMEMBER', ns .. ':paused', s[2]) == 1 then
      redis.call('ZADD', ns .. ':parked:' .. s[2], qscore, id)
    else
      move(id, s[2], 'waiting', 'active', ARGV[3])
      local attempt = redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HSET', key, 'state', 'active', 'started_at', ARGV[3], 'worker', ARGV[2], 'lease_until', ARGV[4])
      redis.call('ZADD', ns .. ':leases', ARGV[4], id)
      count(s[2], 'started')
      return {id, s[2], s[3], attempt}
    end
  end
end
return nil
"""

# ARGV: ns, owner, now, deadline, ids...
RENEW = _LIB + """
local held = 0
for i = 5, #ARGV do
  local key = jkey(ARGV[i])
  local s = redis.call('HMGET', key, 'state', 'worker')
  if s[1] == 'active' and s[2] == ARGV[2] then
    redis.call('HSET', key, 'lease_until', ARGV[4])
    redis.call('ZADD', ns .. ':leases', ARGV[4], ARGV[i])
    held = held + 1
  end
end
redis.call('ZADD', ns .. ':consumers', ARGV[3], ARGV[2])
return held
"""

# ARGV: ns, now, limit. Returns {id, name, stalls, failed(0/1)} per reaped job.
REAP = _LIB + """
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ns .. ':leases', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  redis.call('ZREM', ns .. ':leases', id)
  local key = jkey(id)
  local s = redis.call('HMGET', key, 'state', 'name', 'max_stalls', 'qscore', 'lease_until')
  if s[1] == 'active' and tonumber(s[5] or '0') <= tonumber(ARGV[2]) then
    local stalls = redis.call('HINCRBY', key, 'stalls', 1)
    redis.call('HINCRBY', key, 'attempts', -1)
    redis.call('HDEL', key, 'worker', 'lease_until')
    if stalls > tonumber(s[3] or '3') then
      move(id, s[2], 'active', 'failed', ARGV[2])
      redis.call('HSET', key, 'state', 'failed', 'finished_at', ARGV[2], 'error', string.format(ARGV[4], stalls), 'traceback', '')
      count(s[2], 'stalled')
      count(s[2], 'failed')
      table.insert(out, {id, s[2], stalls, 1})
    else
      move(id, s[2], 'active', 'waiting', ARGV[2])
      redis.call('HSET', key, 'state', 'waiting')
      queue(id, s[4])
      count(s[2], 'stalled')
      table.insert(out, {id, s[2], stalls, 0})
    end
  end
end
return out
"""

# ARGV: ns, id, owner, attempt, now
RELEASE = _LIB + """
local key = jkey(ARGV[2])
local name = holds(key, ARGV[3], ARGV[4])
if not name then return 0 end
move(ARGV[2], name, 'active', 'waiting', ARGV[5])
redis.call('HINCRBY', key, 'attempts', -1)
redis.call('HDEL', key, 'worker', 'lease_until')
redis.call('HSET', key, 'state', 'waiting')
redis.call('ZREM', ns .. ':leases', ARGV[2])
queue(ARGV[2], redis.call('HGET', key, 'qscore'))
return 1
"""

# ARGV: ns, now, limit, names...  Returns {id, name} pairs moved to the queue.
PROMOTE_DUE = _LIB + """
local out = {}
for i = 4, #ARGV do
  local name = ARGV[i]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', idx(name, 'delayed'), '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
    local key = jkey(id)
    move(id, name, 'delayed', 'waiting', ARGV[2])
    redis.call('HSET', key, 'state', 'waiting', 'run_at', '')
    local qscore = new_qscore(redis.call('HGET', key, 'priority'))
    redis.call('HSET', key, 'qscore', qscore)
    queue(id, qscore)
    table.insert(out, {id, name})
  end
end
return out
"""

# ARGV: ns, id, owner, attempt, final state, now, keep count, keep age, fields...
FINISH = _LIB + """
local key = jkey(ARGV[2])
local name = holds(key, ARGV[3], ARGV[4])
if not name then return 0 end
move(ARGV[2], name, 'active', ARGV[5], ARGV[6])
redis.call('ZREM', ns .. ':leases', ARGV[2])
redis.call('HDEL', key, 'worker', 'lease_until')
redis.call('HSET', key, 'state', ARGV[5], 'finished_at', ARGV[6], unpack(ARGV, 9))
count(name, ARGV[5])
trim(name, ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
return 1
"""

# ARGV: ns, id, owner, attempt, run_at, error, traceback
RETRY_LATER = _LIB + """
local key = jkey(ARGV[2])
local name = holds(key, ARGV[3], ARGV[4])
if not name then return 0 end
move(ARGV[2], name, 'active', 'delayed', ARGV[5])
redis.call('ZREM', ns .. ':leases', ARGV[2])
redis.call('HDEL', key, 'worker', 'lease_until')
redis.call('HSET', key, 'state', 'delayed', 'run_at', ARGV[5], 'error', ARGV[6], 'traceback', ARGV[7])
count(name, 'retried')
return 1
"""

# ARGV: ns, id, owner, attempt, progress
PROGRESS = _LIB + """
local key = jkey(ARGV[2])
if not holds(key, ARGV[3], ARGV[4]) then return 0 end
redis.call('HSET', key, 'progress', ARGV[5])
return 1
"""

# ARGV: ns, id, now, from state, operation. Moves a failed (retry) or delayed (promote) job to the queue.
TO_QUEUE = _LIB + """
local key = jkey(ARGV[2])
local s = redis.call('HMGET', key, 'state', 'name', 'priority')
if not s[1] then return false end
if s[1] ~= ARGV[4] then return s[1] end
move(ARGV[2], s[2], s[1], 'waiting', ARGV[3])
if ARGV[4] == 'failed' then
  redis.call('HSET', key, 'attempts', 0, 'stalls', 0)
  redis.call('HDEL', key, 'error', 'traceback', 'finished_at', 'started_at', 'result')
end
redis.call('HSET', key, 'state', 'waiting', 'run_at', '')
local qscore = new_qscore(s[3])
redis.call('HSET', key, 'qscore', qscore)
queue(ARGV[2], qscore)
return 'ok'
"""

# ARGV: ns, id
REMOVE = _LIB + """
local key = jkey(ARGV[2])
local s = redis.call('HMGET', key, 'state', 'name')
if not s[1] then return false end
if s[1] == 'active' then return s[1] end
redis.call('ZREM', idx(s[2], s[1]), ARGV[2])
redis.call('ZREM', ns .. ':queue', ARGV[2])
redis.call('ZREM', ns .. ':parked:' .. s[2], ARGV[2])
redis.call('DEL', key)
return 'ok'
"""

# ARGV: ns, index key suffix (name), state, cutoff, limit
CLEAN = _LIB + """
local z = idx(ARGV[2], ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(ids) do
  redis.call('DEL', jkey(id))
  redis.call('ZREM', z, id)
  redis.call('ZREM', ns .. ':queue', id)
  redis.call('ZREM', ns .. ':parked:' .. ARGV[2], id)
end
return #ids
"""

# ARGV: ns, name
RESUME = _LIB + """
redis.call('SREM', ns .. ':paused', ARGV[2])
local parked = redis.call('ZRANGE', ns .. ':parked:' .. ARGV[2], 0, -1, 'WITHSCORES')
for i = 1, #parked, 2 do queue(parked[i], parked[i + 1]) end
redis.call('DEL', ns .. ':parked:' .. ARGV[2])
return #parked / 2
"""

_INTERNAL = {"msg", "qscore", "lease_until"}
_JSON_FIELDS = ("payload", "progress", "result", "children")
_FLOAT_FIELDS = ("created_at", "started_at", "finished_at", "run_at")
_INT_FIELDS = ("attempts", "max_attempts", "priority", "stalls", "max_stalls")


def _record_from_hash(job_id: str, h: dict[bytes, bytes]) -> JobRecord:
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
    return JobRecord(**values)


class RedisJobStore(JobStore):
    def __init__(self, client: Any, namespace: str):
        self.r = client
        self.ns = namespace
        register = self.r.register_script
        self._create, self._dequeue, self._renew = register(CREATE), register(DEQUEUE), register(RENEW)
        self._reap, self._release, self._promote_due = register(REAP), register(RELEASE), register(PROMOTE_DUE)
        self._finish_lua, self._retry_later, self._progress = register(FINISH), register(RETRY_LATER), register(PROGRESS)
        self._to_queue, self._remove, self._clean = register(TO_QUEUE), register(REMOVE), register(CLEAN)
        self._resume = register(RESUME)

    def _key(self, job_id: str) -> str:
        return "%s:job:%s" % (self.ns, job_id)

    def _idx(self, name: str, state: str) -> str:
        return "%s:idx:%s:%s" % (self.ns, name, state)

    def create(self, record: JobRecord, message: bytes) -> tuple[JobRecord, bool]:
        fields: list[Any] = ["msg", message]
        for field, value in record.to_dict().items():
            if field == "id" or value is None:
                continue
            fields.append(field)
            fields.append(encode_json(value) if field in _JSON_FIELDS else value)
        index_score = record.run_at if record.state == DELAYED and record.run_at else record.created_at
        created = self._create(
            args=[self.ns, record.id, record.name, record.state, index_score, record.priority or 0, *fields]
        )
        if created:
            return record, True
        existing = self.get(record.id)
        if existing is None:  # removed between the two calls: try once more
            return self.create(record, message)
        return existing, False

    def dequeue(self, owner: str, now: float, lease_s: float, wait_s: float) -> Dequeued | None:
        got = self._dequeue(args=[self.ns, owner, now, now + lease_s])
        if got is None and wait_s > 0:
            # Idle: block until an enqueue (or a requeue) pushes a wake-up token, then try again.
            if self.r.blpop(["%s:wake" % self.ns], timeout=wait_s) is not None:
                now = time.time()
                got = self._dequeue(args=[self.ns, owner, now, now + lease_s])
        if got is None:
            return None
        job_id, name, message, attempt = got
        return Dequeued(job_id.decode(), name.decode(), bytes(message), Lease(owner, int(attempt)))

    def renew(self, owner: str, job_ids: list[str], now: float, lease_s: float) -> int:
        return int(self._renew(args=[self.ns, owner, now, now + lease_s, *job_ids]))

    def reap(self, now: float, limit: int = 100) -> list[Reaped]:
        rows = self._reap(args=[self.ns, now, limit, STALLED_TOO_OFTEN])
        return [Reaped(i.decode(), n.decode(), int(stalls), bool(failed)) for i, n, stalls, failed in rows]

    def release(self, job_id: str, lease: Lease) -> bool:
        return bool(self._release(args=[self.ns, job_id, lease.owner, lease.attempt, time.time()]))

    def promote_due(self, names: list[str], now: float, limit: int = 1000) -> list[tuple[str, str]]:
        rows = self._promote_due(args=[self.ns, now, limit, *names])
        return [(i.decode(), n.decode()) for i, n in rows]

    def set_progress(self, job_id: str, lease: Lease, progress_json: bytes) -> bool:
        return bool(self._progress(args=[self.ns, job_id, lease.owner, lease.attempt, progress_json]))

    def complete(self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep) -> bool:
        return self._run_finish(job_id, lease, COMPLETED, now, keep, "result", result_json)

    def fail(self, job_id: str, lease: Lease, error: str, traceback: str, now: float, keep: Keep) -> bool:
        return self._run_finish(job_id, lease, FAILED, now, keep, "error", error, "traceback", traceback)

    def _run_finish(self, job_id: str, lease: Lease, state: str, now: float, keep: Keep, *fields: Any) -> bool:
        count = -1 if keep.count is None else keep.count
        age = -1 if keep.age is None else keep.age
        args = [self.ns, job_id, lease.owner, lease.attempt, state, now, count, age, *fields]
        return bool(self._finish_lua(args=args))

    def retry_later(self, job_id: str, lease: Lease, error: str, traceback: str, run_at: float) -> bool:
        return bool(self._retry_later(args=[self.ns, job_id, lease.owner, lease.attempt, run_at, error, traceback]))

    def _to_waiting(self, job_id: str, from_state: str, operation: str, now: float) -> JobRecord:
        outcome = self._to_queue(args=[self.ns, job_id, now, from_state])
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), operation, (from_state,))
        record = self.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def requeue_failed(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, FAILED, "retry", now)

    def promote(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, DELAYED, "promote", now)

    def remove(self, job_id: str) -> bool:
        outcome = self._remove(args=[self.ns, job_id])
        if outcome is None:
            return False
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), "remove", (WAITING, DELAYED, COMPLETED, FAILED))
        return True

    def clean(self, name: str, state: str, older_than: float, limit: int) -> int:
        return int(self._clean(args=[self.ns, name, state, older_than, limit]))

    def pause(self, name: str) -> bool:
        return bool(self.r.sadd("%s:paused" % self.ns, name))

    def resume(self, name: str) -> int:
        return int(self._resume(args=[self.ns, name]))

    def paused(self) -> set[str]:
        return {n.decode() for n in self.r.smembers("%s:paused" % self.ns)}

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

    def stats(self, names: list[str]) -> dict[str, dict[str, int]]:
        all_names = sorted(set(names) | set(self._names()))
        with self.r.pipeline(transaction=False) as pipe:
            for n in all_names:
                pipe.hgetall("%s:stats:%s" % (self.ns, n))
            rows = pipe.execute()
        return {n: {**dict.fromkeys(METRICS, 0), **{k.decode(): int(v) for k, v in row.items()}} for n, row in zip(all_names, rows)}

    def consumers(self, since: float) -> dict[str, float]:
        key = "%s:consumers" % self.ns
        self.r.zremrangebyscore(key, "-inf", since - 86400)  # forget consumers gone for a day
        return {o.decode(): float(t) for o, t in self.r.zrangebyscore(key, since, "+inf", withscores=True)}

    def claim_tick(self, job: str, tick: float) -> bool:
        claimed = self.r.set("%s:tick:%s:%d" % (self.ns, job, tick), 1, nx=True, ex=86400 * 7)
        if claimed:
            self.r.set("%s:lasttick:%s" % (self.ns, job), tick)
        return bool(claimed)

    def last_tick(self, job: str) -> float | None:
        value = self.r.get("%s:lasttick:%s" % (self.ns, job))
        return float(value) if value is not None else None

    def close(self) -> None:
        self.r.connection_pool.disconnect()

    def destroy(self) -> None:
        keys = list(self.r.scan_iter(match="%s:*" % self.ns, count=1000))
        for start in range(0, len(keys), 500):
            self.r.delete(*keys[start : start + 500])
