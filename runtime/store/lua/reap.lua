-- reap.lua: put the jobs of expired leases back on the queue, or fail those that stalled more
-- than their max_stalls times.
--
-- Keys: key.leases, key.job(job_id), key.index(name, state), key.queue(name), key.stats(name),
--   and through `finished` the parent's keys and key.dedupe
-- ARGV: now, limit, stalled_reason
--   now: '' for Redis's clock; leases are on it (see dequeue.lua), so expiry is judged by it
--     too, not by this consumer's (an explicit time is for tests)
--   limit: at most this many leases
--   stalled_reason: the failure reason, a format string given the stall count
-- Returns {job_id, name, stalls, failed (0/1)} for each job reaped.

local now = ARGV[1]
local limit = tonumber(ARGV[2])
local stalled_reason = ARGV[3]

if now == '' then now = string.format('%.6f', redis_now()) end
local out = {}
for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', key.leases, '-inf', now, 'LIMIT', 0, limit)) do
  redis.call('ZREM', key.leases, job_id)
  local job_key = key.job(job_id)
  local s = redis.call('HMGET', job_key, 'state', 'name', 'max_stalls', 'qscore', 'lease_until')
  local name = s[2]
  if s[1] == 'active' and tonumber(s[5] or '0') <= tonumber(now) then
    local stalls = redis.call('HINCRBY', job_key, 'stalls', 1)
    redis.call('HINCRBY', job_key, 'attempts', -1)
    redis.call('HDEL', job_key, 'worker', 'lease_until')
    count(name, 'stalled')
    if stalls > tonumber(s[3] or '3') then
      local reason = string.format(stalled_reason, stalls)
      move(job_id, name, 'active', 'failed', now)
      redis.call('HSET', job_key, 'state', 'failed', 'finished_at', now, 'error', reason, 'traceback', '')
      count(name, 'failed')
      finished(job_id, name, 'failed', reason, now)
      table.insert(out, {job_id, name, stalls, 1})
    else
      move(job_id, name, 'active', 'waiting', now)
      redis.call('HSET', job_key, 'state', 'waiting')
      queue(name, job_id, s[4])
      table.insert(out, {job_id, name, stalls, 0})
    end
  end
end
return out
