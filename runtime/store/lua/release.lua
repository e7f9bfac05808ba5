-- release.lua: hand back a job its owner will not finish (shutdown): waiting again, at its old
-- place in the queue, the attempt not counted.
--
-- Keys: key.job(job_id), key.index(name, state), key.leases, key.queue(name), key.wake
-- ARGV: job_id, token, attempt, now
--   token, attempt: the lease the caller holds (see `holds`)
-- Returns 1, or 0 if the caller no longer holds the job.

local job_id = ARGV[1]
local token = ARGV[2]
local attempt = ARGV[3]
local now = ARGV[4]

local job_key = key.job(job_id)
local name = holds(job_key, token, attempt)
if not name then return 0 end
move(job_id, name, 'active', 'waiting', now)
redis.call('HINCRBY', job_key, 'attempts', -1)
unlease(job_key, job_id)
redis.call('HSET', job_key, 'state', 'waiting')
queue(name, job_id, redis.call('HGET', job_key, 'qscore'))
return 1
