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

import json
import time
import uuid
from typing import Any

from runtime.core.errors import InvalidState, JobNotFound
from runtime.core.manifest import Keep
from runtime.core.records import ACTIVE, COMPLETED, DELAYED, FAILED, STATES, WAITING, JobRecord, decode_json, encode_json
from runtime.store.base import METRICS, STALLED_TOO_OFTEN, ChildOutcome, Dequeued, JobStore, Lease, NewChild, Reaped

_LIB = """
local ns = ARGV[1]
local function jkey(id) return ns .. ':job:' .. id end
local function idx(name, state) return ns .. ':idx:' .. name .. ':' .. state end
local function move(id, name, from_state, to_state, score)
  redis.call('ZREM', idx(name, from_state), id)
  redis.call('ZADD', idx(name, to_state), score, id)
end
local function wake()
  redis.call('LPUSH', ns .. ':wake', 1)
  redis.call('LTRIM', ns .. ':wake', 0, 63)
end
local function queue(name, id, qscore)
  redis.call('ZADD', ns .. ':queue:' .. name, qscore, id)
  wake()
end
local function new_qscore(priority)
  local seq = redis.call('INCR', ns .. ':seq') % 4294967296
  return string.format('%.0f', (tonumber(priority) or 0) * 4294967296 + seq)
end
local function requeue(id, name, priority)
  local qscore = new_qscore(priority)
  redis.call('HSET', jkey(id), 'qscore', qscore)
  queue(name, id, qscore)
end
local function count(name, metric)
  redis.call('HINCRBY', ns .. ':stats:' .. name, metric, 1)
end
local function trim(name, state, now, keep_count, age)
  local z = idx(name, state)
  if keep_count >= 0 then
    local extra = redis.call('ZCARD', z) - keep_count
    if extra > 0 then
      for _, old in ipairs(redis.call('ZRANGE', z, 0, extra - 1)) do
        redis.call('DEL', jkey(old), ns .. ':outcomes:' .. old)
      end
      redis.call('ZREMRANGEBYRANK', z, 0, extra - 1)
    end
  end
  if age >= 0 then
    for _, old in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now - age, 'LIMIT', 0, 1000)) do
      redis.call('DEL', jkey(old), ns .. ':outcomes:' .. old)
      redis.call('ZREM', z, old)
    end
  end
end
local function unlease(key, id)
  redis.call('ZREM', ns .. ':leases', id)
  redis.call('HDEL', key, 'worker', 'lease_until', 'lease_token')
end
-- The lease check every finish makes: still active, same owner, same attempt.
-- A lease token is new for every dequeue, so a process that gets its own job back after a
-- reap still cannot finish the older run in the newer one's place.
local function holds(key, token, attempt)
  local s = redis.call('HMGET', key, 'state', 'lease_token', 'attempts', 'name')
  if s[1] ~= 'active' or s[2] ~= token or s[3] ~= attempt then return nil end
  return s[4]
end
-- A job reached completed or failed: free its dedupe key, tell its parent, wake a consumer
-- if more of its name wait (a concurrency slot just freed).
local function finished(id, name, state, detail, now)
  local key = jkey(id)
  local f = redis.call('HMGET', key, 'dedupe_key', 'parent_id', 'capped')
  if f[1] and f[1] ~= '' and redis.call('GET', ns .. ':dedupe:' .. f[1]) == id then
    redis.call('DEL', ns .. ':dedupe:' .. f[1])
  end
  if f[2] and f[2] ~= '' and redis.call('EXISTS', jkey(f[2])) == 1 then
    local parent = f[2]
    -- Counted once per child: a child retried and finishing again only updates its outcome.
    local first = redis.call('HSET', ns .. ':outcomes:' .. parent, id, state .. '\\n' .. (detail or ''))
    local pkey = jkey(parent)
    if first == 1 and redis.call('HINCRBY', pkey, 'pending', -1) <= 0 then
      local ps = redis.call('HMGET', pkey, 'state', 'name', 'priority')
      if ps[1] == 'waiting-children' then
        move(parent, ps[2], 'waiting-children', 'waiting', now)
        redis.call('HSET', pkey, 'state', 'waiting', 'children_done', 1)
        requeue(parent, ps[2], ps[3])
      end
    end
  end
  redis.call('DEL', ns .. ':outcomes:' .. id)
  redis.call('HDEL', key, 'children_done', 'pending')
  -- Only a concurrency slot freeing up makes a waiting job startable; a rate-limited name is
  -- woken by the time its window opens (dequeue's hint), not by every finish.
  if f[3] == '1' and redis.call('ZCARD', ns .. ':queue:' .. name) > 0 then wake() end
end
"""

# ARGV: ns, id, name, state, index score, priority, dedupe key, fields...
# Returns 1 created, 0 the id exists, or the id of the equal job a dedupe key points to.
CREATE = _LIB + """
local key = jkey(ARGV[2])
if redis.call('EXISTS', key) == 1 then return 0 end
if ARGV[7] ~= '' then
  local other = redis.call('GET', ns .. ':dedupe:' .. ARGV[7])
  if other then
    local st = redis.call('HGET', jkey(other), 'state')
    if st == 'waiting' or st == 'delayed' or st == 'active' or st == 'waiting-children' then return other end
  end
  redis.call('SET', ns .. ':dedupe:' .. ARGV[7], ARGV[2])
end
local qscore = new_qscore(ARGV[6])
redis.call('HSET', key, 'qscore', qscore, 'dedupe_key', ARGV[7], unpack(ARGV, 8))
redis.call('ZADD', idx(ARGV[3], ARGV[4]), ARGV[5], ARGV[2])
redis.call('SADD', ns .. ':names', ARGV[3])
if ARGV[4] == 'waiting' then queue(ARGV[3], ARGV[2], qscore) end
return 1
"""

# ARGV: ns, owner, now, lease deadline, limits (JSON: {name: {c: concurrency, l: limit, p: per, k: keyed}}), token.
# Returns {id, name, msg, attempt, children_done} or {seconds until a rate-limited name frees up (0: none)}.
DEQUEUE = _LIB + """
local cfg = cjson.decode(ARGV[5])
-- One clock for every consumer: Redis's. Start times then order as jobs really started, which
-- the rate-limit window depends on. (ARGV[3], the caller's clock, is only a fallback.)
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease_s = tonumber(ARGV[4]) - tonumber(ARGV[3])
local started = string.format('%.6f', now)
local deadline = string.format('%.6f', now + lease_s)
local hint = 0
local function window(name, kv, per)
  local rl = ns .. ':rl:' .. name .. ':' .. kv
  redis.call('ZREMRANGEBYSCORE', rl, '-inf', now - per)
  return rl, redis.call('ZCARD', rl)
end
local function free_in(rl, per)
  local oldest = redis.call('ZRANGE', rl, 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + per - now
end
-- A keyed limit is full for this job's key: delay the job to the first window with room,
-- booking windows so the jobs of one key spread out instead of all waking at once.
local function rate_delay(id, name, kv, c, rl)
  local cal = ns .. ':rlcal:' .. name .. ':' .. kv
  redis.call('ZREMRANGEBYSCORE', cal, '-inf', now - c.p)
  local slot = now + free_in(rl, c.p)
  local last = redis.call('ZREVRANGE', cal, 0, 0, 'WITHSCORES')
  if #last > 0 and tonumber(last[2]) >= slot then
    slot = tonumber(last[2])
    if redis.call('ZCOUNT', cal, slot, slot) >= c.l then slot = slot + c.p end
  end
  redis.call('ZADD', cal, slot, id)
  move(id, name, 'waiting', 'delayed', slot)
  redis.call('HSET', jkey(id), 'state', 'delayed', 'run_at', slot,
    'delay_reason', 'rate limit: ' .. c.l .. ' per ' .. c.p .. 's for ' .. kv)
end
for _ = 1, 200 do
  local best, best_score = nil, nil
  for _, name in ipairs(redis.call('SMEMBERS', ns .. ':names')) do
    local c = cfg[name] or {}
    local ok = redis.call('SISMEMBER', ns .. ':paused', name) == 0
    if ok and c.c and redis.call('ZCARD', idx(name, 'active')) >= c.c then ok = false end
    if ok and c.l and not c.k then
      local rl, n = window(name, '', c.p)
      if n >= c.l then
        ok = false
        local wait = free_in(rl, c.p)
        if hint == 0 or wait < hint then hint = wait end
      end
    end
    if ok then
      local head = redis.call('ZRANGE', ns .. ':queue:' .. name, 0, 0, 'WITHSCORES')
      if #head > 0 and (best_score == nil or tonumber(head[2]) < best_score) then
        best, best_score = name, tonumber(head[2])
      end
    end
  end
  if not best then return {tostring(hint)} end
  local id = redis.call('ZPOPMIN', ns .. ':queue:' .. best)[1]
  local key = jkey(id)
  local s = redis.call('HMGET', key, 'state', 'msg', 'rate_key', 'children_done')
  if s[1] == 'waiting' then
    local c = cfg[best] or {}
    local rl = nil
    local room = true
    if c.l then
      local kv = c.k and (s[3] or '') or ''
      local n
      rl, n = window(best, kv, c.p)
      if n >= c.l then
        room = false
        rate_delay(id, best, kv, c, rl)
      end
    end
    if room then
      move(id, best, 'waiting', 'active', started)
      local attempt = redis.call('HINCRBY', key, 'attempts', 1)
      redis.call('HSET', key, 'state', 'active', 'started_at', started, 'worker', ARGV[2], 'lease_until', deadline,
        'lease_token', ARGV[6])
      redis.call('HDEL', key, 'delay_reason')
      redis.call('ZADD', ns .. ':leases', deadline, id)
      if rl then
        redis.call('ZADD', rl, started, id)
        redis.call('ZREM', ns .. ':rlcal:' .. best .. ':' .. (c.k and (s[3] or '') or ''), id)
      end
      count(best, 'started')
      return {id, best, s[2], attempt, s[4] or ''}
    end
  end
end
return {tostring(hint)}
"""

# ARGV: ns, owner, now ('' = Redis's clock), deadline, lease seconds, ids...
RENEW = _LIB + """
if ARGV[3] == '' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  ARGV[3] = string.format('%.6f', now)
  ARGV[4] = string.format('%.6f', now + tonumber(ARGV[5]))
end
local held = 0
for i = 6, #ARGV do
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

# ARGV: ns, now, limit, message template. Returns {id, name, stalls, failed(0/1)} per reaped job.
REAP = _LIB + """
-- Leases are on Redis's clock (see DEQUEUE), so expiry is judged by it too, not by this
-- consumer's (an explicit time is for tests).
if ARGV[2] == '' then
  local t = redis.call('TIME')
  ARGV[2] = string.format('%.6f', tonumber(t[1]) + tonumber(t[2]) / 1000000)
end
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', ns .. ':leases', '-inf', ARGV[2], 'LIMIT', 0, tonumber(ARGV[3]))) do
  redis.call('ZREM', ns .. ':leases', id)
  local key = jkey(id)
  local s = redis.call('HMGET', key, 'state', 'name', 'max_stalls', 'qscore', 'lease_until')
  if s[1] == 'active' and tonumber(s[5] or '0') <= tonumber(ARGV[2]) then
    local stalls = redis.call('HINCRBY', key, 'stalls', 1)
    redis.call('HINCRBY', key, 'attempts', -1)
    redis.call('HDEL', key, 'worker', 'lease_until')
    count(s[2], 'stalled')
    if stalls > tonumber(s[3] or '3') then
      local reason = string.format(ARGV[4], stalls)
      move(id, s[2], 'active', 'failed', ARGV[2])
      redis.call('HSET', key, 'state', 'failed', 'finished_at', ARGV[2], 'error', reason, 'traceback', '')
      count(s[2], 'failed')
      finished(id, s[2], 'failed', reason, ARGV[2])
      table.insert(out, {id, s[2], stalls, 1})
    else
      move(id, s[2], 'active', 'waiting', ARGV[2])
      redis.call('HSET', key, 'state', 'waiting')
      queue(s[2], id, s[4])
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
unlease(key, ARGV[2])
redis.call('HSET', key, 'state', 'waiting')
queue(name, ARGV[2], redis.call('HGET', key, 'qscore'))
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
    requeue(id, name, redis.call('HGET', key, 'priority'))
    table.insert(out, {id, name})
  end
end
return out
"""

# ARGV: ns, id, owner, attempt, final state, now, keep count, keep age, outcome detail, fields...
FINISH = _LIB + """
local key = jkey(ARGV[2])
local name = holds(key, ARGV[3], ARGV[4])
if not name then return 0 end
move(ARGV[2], name, 'active', ARGV[5], ARGV[6])
unlease(key, ARGV[2])
redis.call('HSET', key, 'state', ARGV[5], 'finished_at', ARGV[6], unpack(ARGV, 10))
count(name, ARGV[5])
finished(ARGV[2], name, ARGV[5], ARGV[9], ARGV[6])
trim(name, ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]))
return 1
"""

# ARGV: ns, id, owner, attempt, run_at, error, traceback
RETRY_LATER = _LIB + """
local key = jkey(ARGV[2])
local name = holds(key, ARGV[3], ARGV[4])
if not name then return 0 end
move(ARGV[2], name, 'active', 'delayed', ARGV[5])
unlease(key, ARGV[2])
redis.call('HSET', key, 'state', 'delayed', 'run_at', ARGV[5], 'error', ARGV[6], 'traceback', ARGV[7], 'delay_reason', 'backoff')
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

# ARGV: ns, parent id, owner, attempt, now, then per child: id, name, msg, priority, rate key, fields (JSON list)
# Children are created once (their ids are derived from the parent's), so a parent run again after
# a crash does not create them twice. Returns how many were created.
SPAWN = _LIB + """
local pkey = jkey(ARGV[2])
if not holds(pkey, ARGV[3], ARGV[4]) then return -1 end
local children = cjson.decode(redis.call('HGET', pkey, 'children') or '[]')
local created = 0
for i = 6, #ARGV, 6 do
  local id, name = ARGV[i], ARGV[i + 1]
  local key = jkey(id)
  local outcomes = ns .. ':outcomes:' .. ARGV[2]
  if redis.call('EXISTS', key) == 1 then
    -- Spawned again (a parent rerun after a crash or a retry): keep the child, and if it has
    -- already ended without its parent knowing, record how.
    local c = redis.call('HMGET', key, 'state', 'result', 'error')
    if (c[1] == 'completed' or c[1] == 'failed') and redis.call('HEXISTS', outcomes, id) == 0 then
      redis.call('HSET', outcomes, id, c[1] .. '\\n' .. ((c[1] == 'completed' and c[2]) or c[3] or ''))
    end
  else
    local qscore = new_qscore(ARGV[i + 3])
    redis.call('HSET', key, 'qscore', qscore, 'msg', ARGV[i + 2], 'rate_key', ARGV[i + 4], unpack(cjson.decode(ARGV[i + 5])))
    redis.call('ZADD', idx(name, 'waiting'), ARGV[5], id)
    redis.call('SADD', ns .. ':names', name)
    queue(name, id, qscore)
    table.insert(children, id)
    created = created + 1
  end
end
redis.call('HSET', pkey, 'children', cjson.encode(children))
redis.call('HINCRBY', pkey, 'pending', created)
return created
"""

# ARGV: ns, id, owner, attempt, now. The parent's handler returned after spawning: wait for the
# children without holding a worker (or go straight back to the queue if they are all done).
WAIT_CHILDREN = _LIB + """
local key = jkey(ARGV[2])
local name = holds(key, ARGV[3], ARGV[4])
if not name then return false end
unlease(key, ARGV[2])
redis.call('HINCRBY', key, 'attempts', -1)
if tonumber(redis.call('HGET', key, 'pending') or '0') <= 0 then
  move(ARGV[2], name, 'active', 'waiting', ARGV[5])
  redis.call('HSET', key, 'state', 'waiting', 'children_done', 1)
  requeue(ARGV[2], name, redis.call('HGET', key, 'priority'))
  return 'waiting'
end
move(ARGV[2], name, 'active', 'waiting-children', ARGV[5])
redis.call('HSET', key, 'state', 'waiting-children')
return 'waiting-children'
"""

# ARGV: ns, id, now, from state. Moves a failed (retry) or delayed (promote) job to the queue.
TO_QUEUE = _LIB + """
local key = jkey(ARGV[2])
local s = redis.call('HMGET', key, 'state', 'name', 'priority', 'dedupe_key')
if not s[1] then return false end
if s[1] ~= ARGV[4] then return s[1] end
if ARGV[4] == 'failed' and s[4] and s[4] ~= '' then
  local other = redis.call('GET', ns .. ':dedupe:' .. s[4])
  if other and other ~= ARGV[2] then
    local st = redis.call('HGET', jkey(other), 'state')
    if st == 'waiting' or st == 'delayed' or st == 'active' or st == 'waiting-children' then return 'a duplicate of ' .. other end
  end
  redis.call('SET', ns .. ':dedupe:' .. s[4], ARGV[2])
end
move(ARGV[2], s[2], s[1], 'waiting', ARGV[3])
if ARGV[4] == 'failed' then
  redis.call('HSET', key, 'attempts', 0, 'stalls', 0)
  redis.call('HDEL', key, 'error', 'traceback', 'finished_at', 'started_at', 'result')
end
redis.call('HSET', key, 'state', 'waiting', 'run_at', '')
redis.call('HDEL', key, 'delay_reason')
requeue(ARGV[2], s[2], s[3])
return 'ok'
"""

# ARGV: ns, id, now
REMOVE = _LIB + """
local key = jkey(ARGV[2])
local s = redis.call('HMGET', key, 'state', 'name')
if not s[1] then return false end
if s[1] == 'active' then return s[1] end
if s[1] ~= 'completed' and s[1] ~= 'failed' then finished(ARGV[2], s[2], 'failed', 'removed', ARGV[3]) end
redis.call('ZREM', idx(s[2], s[1]), ARGV[2])
redis.call('ZREM', ns .. ':queue:' .. s[2], ARGV[2])
redis.call('DEL', key, ns .. ':outcomes:' .. ARGV[2])
return 'ok'
"""

# ARGV: ns, name, state, cutoff, limit, now
CLEAN = _LIB + """
local z = idx(ARGV[2], ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', z, '-inf', '(' .. ARGV[4], 'LIMIT', 0, tonumber(ARGV[5]))
for _, id in ipairs(ids) do
  if ARGV[3] ~= 'completed' and ARGV[3] ~= 'failed' then finished(id, ARGV[2], 'failed', 'removed', ARGV[6]) end
  redis.call('DEL', jkey(id), ns .. ':outcomes:' .. id)
  redis.call('ZREM', z, id)
  redis.call('ZREM', ns .. ':queue:' .. ARGV[2], id)
end
return #ids
"""

# ARGV: ns, name, force (0/1), now. Everything of one job name; refuses while jobs are active unless forced.
OBLITERATE = _LIB + """
local name = ARGV[2]
local active = redis.call('ZCARD', idx(name, 'active'))
if active > 0 and ARGV[3] ~= '1' then return -active end
local removed = 0
for _, state in ipairs({'waiting', 'delayed', 'active', 'waiting-children', 'completed', 'failed'}) do
  for _, id in ipairs(redis.call('ZRANGE', idx(name, state), 0, -1)) do
    if state ~= 'completed' and state ~= 'failed' then finished(id, name, 'failed', 'removed', ARGV[4]) end
    redis.call('DEL', jkey(id), ns .. ':outcomes:' .. id)
    redis.call('ZREM', ns .. ':leases', id)
    removed = removed + 1
  end
  redis.call('DEL', idx(name, state))
end
redis.call('DEL', ns .. ':queue:' .. name, ns .. ':stats:' .. name)
redis.call('SREM', ns .. ':paused', name)
redis.call('SREM', ns .. ':names', name)
return removed
"""

_INTERNAL = {"msg", "qscore", "lease_until", "lease_token", "dedupe_key", "rate_key", "children_done", "pending", "capped"}
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
        self._spawn, self._wait_children = register(SPAWN), register(WAIT_CHILDREN)
        self._obliterate = register(OBLITERATE)

    def _key(self, job_id: str) -> str:
        return "%s:job:%s" % (self.ns, job_id)

    def _idx(self, name: str, state: str) -> str:
        return "%s:idx:%s:%s" % (self.ns, name, state)

    def _fields(self, record: JobRecord) -> list[Any]:
        limits = self.limits.get(record.name)
        fields: list[Any] = ["capped", 1] if limits is not None and limits.concurrency else []
        for field, value in record.to_dict().items():
            if field == "id" or value is None:
                continue
            fields.append(field)
            fields.append(encode_json(value) if field in _JSON_FIELDS else value)
        return fields

    def create(self, record: JobRecord, message: bytes, *, dedupe_key: str = "", rate_key: str = "") -> tuple[JobRecord, bool]:
        fields = ["msg", message, "rate_key", rate_key, *self._fields(record)]
        index_score = record.run_at if record.state == DELAYED and record.run_at else record.created_at
        outcome = self._create(
            args=[self.ns, record.id, record.name, record.state, index_score, record.priority or 0, dedupe_key, *fields]
        )
        if outcome == 1:
            return record, True
        existing = self.get(record.id if outcome == 0 else outcome.decode())
        if existing is None:  # removed or finished between the two calls: try once more
            return self.create(record, message, dedupe_key=dedupe_key, rate_key=rate_key)
        return existing, False

    def _limits_json(self) -> str:
        config = {}
        for name, limits in self.limits.items():
            entry: dict[str, Any] = {}
            if limits.concurrency:
                entry["c"] = limits.concurrency
            if limits.rate_limit:
                entry.update(l=limits.rate_limit, p=limits.rate_per_s, k=limits.rate_keyed)
            if entry:
                config[name] = entry
        return json.dumps(config) if config else "{}"

    def dequeue(self, owner: str, now: float, lease_s: float, wait_s: float) -> Dequeued | None:
        config = self._limits_json()
        token = uuid.uuid4().hex
        got = self._dequeue(args=[self.ns, owner, now, now + lease_s, config, token])
        if len(got) == 1 and wait_s > 0:
            # Nothing to take: block until an enqueue or a freed slot pushes a wake-up token, or
            # until a rate-limit window opens, whichever is first; then try once more.
            hint = float(got[0])
            wait = min(wait_s, hint) if hint > 0 else wait_s
            if wait >= 0.01:
                self.r.blpop(["%s:wake" % self.ns], timeout=wait)
            now = time.time()
            got = self._dequeue(args=[self.ns, owner, now, now + lease_s, config, token])
        if len(got) == 1:
            return None
        job_id, name, message, attempt, children_done = got
        lease = Lease(owner, int(attempt), token)
        return Dequeued(job_id.decode(), name.decode(), bytes(message), lease, children_done == b"1")

    def renew(self, owner: str, job_ids: list[str], now: float | None, lease_s: float) -> int:
        clock: Any = "" if now is None else now
        deadline: Any = "" if now is None else now + lease_s
        return int(self._renew(args=[self.ns, owner, clock, deadline, lease_s, *job_ids]))

    def reap(self, now: float | None, limit: int = 100) -> list[Reaped]:
        rows = self._reap(args=[self.ns, "" if now is None else now, limit, STALLED_TOO_OFTEN])
        return [Reaped(i.decode(), n.decode(), int(stalls), bool(failed)) for i, n, stalls, failed in rows]

    def release(self, job_id: str, lease: Lease) -> bool:
        return bool(self._release(args=[self.ns, job_id, lease.token, lease.attempt, time.time()]))

    def promote_due(self, names: list[str], now: float, limit: int = 1000) -> list[tuple[str, str]]:
        rows = self._promote_due(args=[self.ns, now, limit, *names])
        return [(i.decode(), n.decode()) for i, n in rows]

    def set_progress(self, job_id: str, lease: Lease, progress_json: bytes) -> bool:
        return bool(self._progress(args=[self.ns, job_id, lease.token, lease.attempt, progress_json]))

    def complete(self, job_id: str, lease: Lease, result_json: bytes, now: float, keep: Keep) -> bool:
        return self._run_finish(job_id, lease, COMPLETED, now, keep, result_json, "result", result_json)

    def fail(self, job_id: str, lease: Lease, error: str, traceback: str, now: float, keep: Keep) -> bool:
        return self._run_finish(job_id, lease, FAILED, now, keep, error, "error", error, "traceback", traceback)

    def _run_finish(self, job_id: str, lease: Lease, state: str, now: float, keep: Keep, detail: Any, *fields: Any) -> bool:
        count = -1 if keep.count is None else keep.count
        age = -1 if keep.age is None else keep.age
        args = [self.ns, job_id, lease.token, lease.attempt, state, now, count, age, detail, *fields]
        return bool(self._finish_lua(args=args))

    def retry_later(self, job_id: str, lease: Lease, error: str, traceback: str, run_at: float) -> bool:
        return bool(self._retry_later(args=[self.ns, job_id, lease.token, lease.attempt, run_at, error, traceback]))

    def _to_waiting(self, job_id: str, from_state: str, operation: str, now: float) -> JobRecord:
        outcome = self._to_queue(args=[self.ns, job_id, now, from_state])
        if outcome is None:
            raise JobNotFound(job_id)
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), operation, (from_state,) if not outcome.startswith(b"a duplicate") else ("the only live one of its dedupe key",))
        record = self.get(job_id)
        if record is None:
            raise JobNotFound(job_id)
        return record

    def requeue_failed(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, FAILED, "retry", now)

    def promote(self, job_id: str, now: float) -> JobRecord:
        return self._to_waiting(job_id, DELAYED, "promote", now)

    def remove(self, job_id: str) -> bool:
        outcome = self._remove(args=[self.ns, job_id, time.time()])
        if outcome is None:
            return False
        if outcome != b"ok":
            raise InvalidState(job_id, outcome.decode(), "remove", (WAITING, DELAYED, COMPLETED, FAILED))
        return True

    def clean(self, name: str, state: str, older_than: float, limit: int) -> int:
        return int(self._clean(args=[self.ns, name, state, older_than, limit, time.time()]))

    def pause(self, name: str) -> bool:
        return bool(self.r.sadd("%s:paused" % self.ns, name))

    def resume(self, name: str) -> int:
        with self.r.pipeline() as pipe:
            pipe.srem("%s:paused" % self.ns, name)
            pipe.zcard("%s:queue:%s" % (self.ns, name))
            pipe.lpush("%s:wake" % self.ns, *([1] * 8))
            pipe.ltrim("%s:wake" % self.ns, 0, 63)
            _, waiting, _, _ = pipe.execute()
        return int(waiting)

    def spawn(self, parent_id: str, lease: Lease, children: list[NewChild], now: float) -> int:
        args: list[Any] = [self.ns, parent_id, lease.token, lease.attempt, now]
        for child in children:
            fields = [f.decode() if isinstance(f, bytes) else f for f in self._fields(child.record)]
            args += [child.record.id, child.record.name, child.message, child.record.priority or 0, child.rate_key,
                     json.dumps(fields)]
        created = int(self._spawn(args=args))
        if created < 0:
            raise InvalidState(parent_id, "not held by this worker", "spawn children of", (ACTIVE,))
        return created

    def wait_children(self, parent_id: str, lease: Lease, now: float) -> str | None:
        state = self._wait_children(args=[self.ns, parent_id, lease.token, lease.attempt, now])
        return state.decode() if state else None

    def child_outcomes(self, parent_id: str) -> list[ChildOutcome]:
        rows = self.r.hgetall("%s:outcomes:%s" % (self.ns, parent_id))
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
        removed = int(self._obliterate(args=[self.ns, name, 1 if force else 0, time.time()]))
        if removed < 0:
            raise InvalidState(name, "%d job(s) active" % -removed, "obliterate", ("no active jobs",))
        return removed

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
