-- common.lua: what every script shares; runtime/store/scripts.py puts it in front of each one.
--
-- Keys: every script gets one, KEYS[1], the store's namespace `ns`; it builds the keys it
-- touches from it with `key`, whose names mirror runtime/store/keys.py (tests/test_store_lua.py
-- checks the two agree).
-- ARGV: the script's own, read into named locals at its top (`argv_from` for a variable tail).

local ns = KEYS[1]

local key = {
  job = function(job_id) return ns .. ':job:' .. job_id end,
  queue = function(name) return ns .. ':queue:' .. name end,
  index = function(name, state) return ns .. ':idx:' .. name .. ':' .. state end,
  stats = function(name) return ns .. ':stats:' .. name end,
  dedupe = function(dedupe_key) return ns .. ':dedupe:' .. dedupe_key end,
  outcomes = function(parent_id) return ns .. ':outcomes:' .. parent_id end,
  rate_window = function(name, rate_key) return ns .. ':rl:' .. name .. ':' .. rate_key end,
  rate_calendar = function(name, rate_key) return ns .. ':rlcal:' .. name .. ':' .. rate_key end,
  seq = ns .. ':seq',
  wake = ns .. ':wake',
  leases = ns .. ':leases',
  names = ns .. ':names',
  paused = ns .. ':paused',
  consumers = ns .. ':consumers',
  staged = ns .. ':staged',
}

-- ARGV from position `first` on, as a list. A loop, not unpack: unpack stops at about 8000 values.
local function argv_from(first)
  local out = {}
  for i = first, #ARGV do out[#out + 1] = ARGV[i] end
  return out
end

-- Redis's clock, in seconds: the one leases and rate windows are kept on.
local function redis_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end

-- A state a dedupe key counts in: the job may still run.
local function live(state)
  return state == 'waiting' or state == 'delayed' or state == 'active' or state == 'waiting-children'
end

local function move(job_id, name, from_state, to_state, score)
  redis.call('ZREM', key.index(name, from_state), job_id)
  redis.call('ZADD', key.index(name, to_state), score, job_id)
end

local function wake()
  redis.call('LPUSH', key.wake, 1)
  redis.call('LTRIM', key.wake, 0, 63)
end

local function queue(name, job_id, qscore)
  redis.call('ZADD', key.queue(name), qscore, job_id)
  wake()
end

-- Priority first, then FIFO: priority * 2^32 + the enqueue sequence.
local function new_qscore(priority)
  local seq = redis.call('INCR', key.seq) % 4294967296
  return string.format('%.0f', (tonumber(priority) or 0) * 4294967296 + seq)
end

local function requeue(job_id, name, priority)
  local qscore = new_qscore(priority)
  redis.call('HSET', key.job(job_id), 'qscore', qscore)
  queue(name, job_id, qscore)
end

local function count(name, metric)
  redis.call('HINCRBY', key.stats(name), metric, 1)
end

-- Keep at most `keep_count` records of a name in a finished state, none older than `keep_age_s`
-- (-1: no limit).
local function trim(name, state, now, keep_count, keep_age_s)
  local z = key.index(name, state)
  if keep_count >= 0 then
    local extra = redis.call('ZCARD', z) - keep_count
    if extra > 0 then
      for _, old in ipairs(redis.call('ZRANGE', z, 0, extra - 1)) do
        redis.call('DEL', key.job(old), key.outcomes(old))
      end
      redis.call('ZREMRANGEBYRANK', z, 0, extra - 1)
    end
  end
  if keep_age_s >= 0 then
    for _, old in ipairs(redis.call('ZRANGEBYSCORE', z, '-inf', now - keep_age_s, 'LIMIT', 0, 1000)) do
      redis.call('DEL', key.job(old), key.outcomes(old))
      redis.call('ZREM', z, old)
    end
  end
end

local function unlease(job_key, job_id)
  redis.call('ZREM', key.leases, job_id)
  redis.call('HDEL', job_key, 'worker', 'lease_until', 'lease_token')
end

-- The lease check every finish makes: still active, same owner, same attempt; returns the job's name.
-- A lease token is new for every dequeue, so a process that gets its own job back after a
-- reap still cannot finish the older run in the newer one's place.
local function holds(job_key, token, attempt)
  local s = redis.call('HMGET', job_key, 'state', 'lease_token', 'attempts', 'name')
  if s[1] ~= 'active' or s[2] ~= token or s[3] ~= attempt then return nil end
  return s[4]
end

-- A job reached completed or failed: free its dedupe key, tell its parent, wake a consumer
-- if more of its name wait (a concurrency slot just freed).
local function finished(job_id, name, state, detail, now)
  local job_key = key.job(job_id)
  local f = redis.call('HMGET', job_key, 'dedupe_key', 'parent_id', 'capped')
  if f[1] and f[1] ~= '' and redis.call('GET', key.dedupe(f[1])) == job_id then
    redis.call('DEL', key.dedupe(f[1]))
  end
  if f[2] and f[2] ~= '' and redis.call('EXISTS', key.job(f[2])) == 1 then
    local parent = f[2]
    -- Counted once per child: a child retried and finishing again only updates its outcome.
    local first = redis.call('HSET', key.outcomes(parent), job_id, state .. '\n' .. (detail or ''))
    local parent_key = key.job(parent)
    if first == 1 and redis.call('HINCRBY', parent_key, 'pending', -1) <= 0 then
      local ps = redis.call('HMGET', parent_key, 'state', 'name', 'priority')
      if ps[1] == 'waiting-children' then
        move(parent, ps[2], 'waiting-children', 'waiting', now)
        redis.call('HSET', parent_key, 'state', 'waiting', 'children_done', 1)
        requeue(parent, ps[2], ps[3])
      end
    end
  end
  redis.call('DEL', key.outcomes(job_id))
  redis.call('HDEL', job_key, 'children_done', 'pending')
  -- Only a concurrency slot freeing up makes a waiting job startable; a rate-limited name is
  -- woken by the time its window opens (the wait dequeue returns), not by every finish.
  if f[3] == '1' and redis.call('ZCARD', key.queue(name)) > 0 then wake() end
end
