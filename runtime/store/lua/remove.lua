-- remove.lua: delete a job that is not active; one that had not ended counts as failed
-- ('removed') for its parent.
--
-- Keys: key.job(job_id), key.index(name, state), key.queue(name), key.outcomes(job_id),
--   and through `finished` the parent's keys, key.dedupe and key.wake
-- ARGV: job_id, now
-- Returns 'ok'; nil if there is no such job; 'active' if it is running.

local job_id = ARGV[1]
local now = ARGV[2]

local job_key = key.job(job_id)
local s = redis.call('HMGET', job_key, 'state', 'name')
local state, name = s[1], s[2]
if not state then return false end
if state == 'active' then return state end
if state ~= 'completed' and state ~= 'failed' then finished(job_id, name, 'failed', 'removed', now) end
redis.call('ZREM', key.index(name, state), job_id)
redis.call('ZREM', key.queue(name), job_id)
redis.call('DEL', job_key, key.outcomes(job_id))
return 'ok'
