-- promote_due.lua: move the delayed jobs whose run_at has come to the queue.
--
-- Keys: key.index(name, state), key.job(job_id), key.queue(name), key.seq, key.wake
-- ARGV: now, limit, names...
--   limit: at most this many jobs per name
--   names: the job names to look at
-- Returns {job_id, name} for each job queued.

local now = ARGV[1]
local limit = tonumber(ARGV[2])
local names = argv_from(3)

local out = {}
for _, name in ipairs(names) do
  for _, job_id in ipairs(redis.call('ZRANGEBYSCORE', key.index(name, 'delayed'), '-inf', now, 'LIMIT', 0, limit)) do
    local job_key = key.job(job_id)
    move(job_id, name, 'delayed', 'waiting', now)
    redis.call('HSET', job_key, 'state', 'waiting', 'run_at', '')
    requeue(job_id, name, redis.call('HGET', job_key, 'priority'))
    table.insert(out, {job_id, name})
  end
end
return out
