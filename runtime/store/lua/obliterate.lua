-- obliterate.lua: delete everything of one job name: its jobs in every state, its queue and
-- totals; refuses while jobs are active unless forced.
--
-- Keys: key.index(name, state), key.job(job_id), key.outcomes(job_id), key.leases, key.queue(name),
--   key.stats(name), key.paused, key.names, and through `finished` the parents' keys and key.dedupe
-- ARGV: name, force, now
--   force: '1' to delete active jobs too
-- Returns how many jobs were deleted, or minus the number of active jobs when it refuses.

local name = ARGV[1]
local force = ARGV[2] == '1'
local now = ARGV[3]

local active = redis.call('ZCARD', key.index(name, 'active'))
if active > 0 and not force then return -active end
local removed = 0
for _, state in ipairs({'waiting', 'delayed', 'active', 'waiting-children', 'completed', 'failed'}) do
  for _, job_id in ipairs(redis.call('ZRANGE', key.index(name, state), 0, -1)) do
    if state ~= 'completed' and state ~= 'failed' then finished(job_id, name, 'failed', 'removed', now) end
    redis.call('DEL', key.job(job_id), key.outcomes(job_id))
    redis.call('ZREM', key.leases, job_id)
    removed = removed + 1
  end
  redis.call('DEL', key.index(name, state))
end
redis.call('DEL', key.queue(name), key.stats(name))
redis.call('SREM', key.paused, name)
redis.call('SREM', key.names, name)
return removed
