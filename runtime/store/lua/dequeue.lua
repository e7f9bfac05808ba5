-- dequeue.lua: take the next startable waiting job (priority, then FIFO, across names), mark it
-- active and lease it.
--
-- A name is skipped while paused, at its concurrency or out of room in its (unkeyed) rate
-- window. A job whose own rate key is out of room is delayed to the first window with room
-- (no attempt spent) and the next one is tried, up to 200.
--
-- Keys: key.names, key.paused, key.index(name, state), key.queue(name), key.job(job_id),
--   key.leases, key.stats(name), key.rate_window(name, rate_key), key.rate_calendar(name, rate_key)
-- ARGV: owner, lease_s, limits_json, token
--   owner: the consumer taking the job
--   lease_s: how long the lease runs before it must be renewed
--   limits_json: {name: {concurrency, limit, window_s, keyed}}, the names that have limits
--   token: new for every dequeue, the lease's token (see `holds`)
-- Returns {job_id, name, msg, attempt, children_done}, or {seconds until a rate-limited name has
-- room (0: none is waiting on a window)} when there is nothing to take.

local owner = ARGV[1]
local lease_s = tonumber(ARGV[2])
local limits_json = ARGV[3]
local token = ARGV[4]

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
  if not best then return {tostring(free_in_s)} end
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
return {tostring(free_in_s)}
