-- clean.lua: delete up to `limit` records of a name in a state that entered it before cutoff_ts;
-- a job that had not ended counts as failed ('removed') for its parent.
--
-- Keys: key.index(name, state), key.job(job_id), key.outcomes(job_id), key.queue(name),
--   and through `finished` the parent's keys, key.dedupe and key.wake
-- ARGV: name, state, cutoff_ts, limit, now
-- Returns how many records were deleted.

local name = ARGV[1]
local state = ARGV[2]
local cutoff_ts = ARGV[3]
local limit = tonumber(ARGV[4])
local now = ARGV[5]

local index = key.index(name, state)
local job_ids = redis.call('ZRANGEBYSCORE', index, '-inf', '(' .. cutoff_ts, 'LIMIT', 0, limit)
for _, job_id in ipairs(job_ids) do
  if state ~= 'completed' and state ~= 'failed' then finished(job_id, name, 'failed', 'removed', now) end
  redis.call('DEL', key.job(job_id), key.outcomes(job_id))
  redis.call('ZREM', index, job_id)
  redis.call('ZREM', key.queue(name), job_id)
end
return #job_ids
