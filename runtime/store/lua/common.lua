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
  idle = ns .. ':idle',
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

-- Wake one consumer blocked waiting for work, if any is: a busy system pays nothing per job.
local function wake()
  if redis.call('ZCARD', key.idle) > 0 then
    redis.call('LPUSH', key.wake, 1)
    redis.call('LTRIM', key.wake, 0, 63)
  end
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

-- finish_job: end an active job as completed or failed under the caller's lease; see finish.lua.
-- Returns 1, or 0 if the caller no longer holds the job.
local function finish_job(job_id, token, attempt, state, now, keep_count, keep_age_s, detail, fields)
  local job_key = key.job(job_id)
  local name = holds(job_key, token, attempt)
  if not name then return 0 end
  move(job_id, name, 'active', state, now)
  unlease(job_key, job_id)
  redis.call('HSET', job_key, 'state', state, 'finished_at', now, unpack(fields))
  count(name, state)
  finished(job_id, name, state, detail, now)
  trim(name, state, tonumber(now), keep_count, keep_age_s)
  return 1
end

-- take: the next startable waiting job (priority, then FIFO, across names), marked active and
-- leased; see dequeue.lua. Returns {job_id, name, msg, attempt, children_done}, or {seconds until a
-- rate-limited name has room (0: none is waiting on a window)} when there is nothing to take.
-- take's answer when there is nothing to take: list the caller as idle if it will wait.
local function nothing(owner, may_wait, free_in_s)
  if may_wait == '1' then redis.call('ZADD', key.idle, redis_now(), owner) end
  return {tostring(free_in_s)}
end

local function take(owner, lease_s, limits_json, token, was_idle, may_wait)
  -- A consumer that will block on key.wake when there is nothing is listed in key.idle until it
  -- comes back, so that `wake` knows someone listens.
  if was_idle == '1' then redis.call('ZREM', key.idle, owner) end
  local limits = cjson.decode(limits_json)
  -- One clock for every consumer: Redis's. Start times then order as jobs really started, which
  -- the rate-limit window depends on.
  local now = redis_now()
  local started = string.format('%.6f', now)
  local deadline = string.format('%.6f', now + lease_s)
  local free_in_s = 0

  -- Forget the starts that left the window; returns the window's key and how many it holds.
  local function window(name, rate_key, window_s)
    local rl = key.rate_window(name, rate_key)
    redis.call('ZREMRANGEBYSCORE', rl, '-inf', now - window_s)
    return rl, redis.call('ZCARD', rl)
  end

  -- Seconds until the oldest start leaves the window.
  local function room_in(rl, window_s)
    local oldest = redis.call('ZRANGE', rl, 0, 0, 'WITHSCORES')
    return tonumber(oldest[2]) + window_s - now
  end

  -- A keyed limit is full for this job's key: delay the job to the first window with room,
  -- booking windows so the jobs of one key spread out instead of all waking at once.
  local function rate_delay(job_id, name, rate_key, limit, rl)
    local calendar = key.rate_calendar(name, rate_key)
    redis.call('ZREMRANGEBYSCORE', calendar, '-inf', now - limit.window_s)
    local slot = now + room_in(rl, limit.window_s)
    local last = redis.call('ZREVRANGE', calendar, 0, 0, 'WITHSCORES')
    if #last > 0 and tonumber(last[2]) >= slot then
      slot = tonumber(last[2])
      if redis.call('ZCOUNT', calendar, slot, slot) >= limit.limit then slot = slot + limit.window_s end
    end
    redis.call('ZADD', calendar, slot, job_id)
    move(job_id, name, 'waiting', 'delayed', slot)
    redis.call('HSET', key.job(job_id), 'state', 'delayed', 'run_at', slot,
      'delay_reason', 'rate limit: ' .. limit.limit .. ' per ' .. limit.window_s .. 's for ' .. rate_key)
  end

  for _ = 1, 200 do
    local best, best_score = nil, nil
    for _, name in ipairs(redis.call('SMEMBERS', key.names)) do
      local limit = limits[name] or {}
      local ok = redis.call('SISMEMBER', key.paused, name) == 0
      if ok and limit.concurrency and redis.call('ZCARD', key.index(name, 'active')) >= limit.concurrency then ok = false end
      if ok and limit.limit and not limit.keyed then
        local rl, started_in_window = window(name, '', limit.window_s)
        if started_in_window >= limit.limit then
          ok = false
          local wait_s = room_in(rl, limit.window_s)
          if free_in_s == 0 or wait_s < free_in_s then free_in_s = wait_s end
        end
      end
      if ok then
        local head = redis.call('ZRANGE', key.queue(name), 0, 0, 'WITHSCORES')
        if #head > 0 and (best_score == nil or tonumber(head[2]) < best_score) then
          best, best_score = name, tonumber(head[2])
        end
      end
    end
    if not best then return nothing(owner, may_wait, free_in_s) end
    local job_id = redis.call('ZPOPMIN', key.queue(best))[1]
    local job_key = key.job(job_id)
    local s = redis.call('HMGET', job_key, 'state', 'msg', 'rate_key', 'children_done')
    if s[1] == 'waiting' then
      local limit = limits[best] or {}
      local rate_key = limit.keyed and (s[3] or '') or ''
      local rl = nil
      local room = true
      if limit.limit then
        local started_in_window
        rl, started_in_window = window(best, rate_key, limit.window_s)
        if started_in_window >= limit.limit then
          room = false
          rate_delay(job_id, best, rate_key, limit, rl)
        end
      end
      if room then
        move(job_id, best, 'waiting', 'active', started)
        local attempt = redis.call('HINCRBY', job_key, 'attempts', 1)
        redis.call('HSET', job_key, 'state', 'active', 'started_at', started, 'worker', owner, 'lease_until', deadline,
          'lease_token', token)
        redis.call('HDEL', job_key, 'delay_reason')
        redis.call('ZADD', key.leases, deadline, job_id)
        if rl then
          redis.call('ZADD', rl, started, job_id)
          redis.call('ZREM', key.rate_calendar(best, rate_key), job_id)
        end
        count(best, 'started')
        return {job_id, best, s[2], attempt, s[4] or ''}
      end
    end
  end
  return nothing(owner, may_wait, free_in_s)
end
