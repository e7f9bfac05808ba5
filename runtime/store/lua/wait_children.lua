-- wait_children.lua: the parent's handler returned after spawning: wait for the children without
-- holding a worker, or go straight back to the queue if they are all done.
--
-- Keys: key.job(job_id), key.index(name, state), key.leases, key.queue(name), key.seq, key.wake
-- ARGV: job_id, token, attempt, now
--   token, attempt: the lease the caller holds (see `holds`)
-- Returns the parent's new state ('waiting' or 'waiting-children'), or nil if the caller no
-- longer holds it.

local job_id = ARGV[1]
local token = ARGV[2]
local attempt = ARGV[3]
local now = ARGV[4]

local job_key = key.job(job_id)
local name = holds(job_key, token, attempt)
if not name then return false end
unlease(job_key, job_id)
redis.call('HINCRBY', job_key, 'attempts', -1)
if tonumber(redis.call('HGET', job_key, 'pending') or '0') <= 0 then
  move(job_id, name, 'active', 'waiting', now)
  redis.call('HSET', job_key, 'state', 'waiting', 'children_done', 1)
  requeue(job_id, name, redis.call('HGET', job_key, 'priority'))
  return 'waiting'
end
move(job_id, name, 'active', 'waiting-children', now)
redis.call('HSET', job_key, 'state', 'waiting-children')
return 'waiting-children'
