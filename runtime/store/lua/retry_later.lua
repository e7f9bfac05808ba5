-- retry_later.lua: an attempt failed and another is due at run_at: keep the reason, delay the job.
--
-- Keys: key.job(job_id), key.index(name, state), key.leases, key.stats(name)
-- ARGV: job_id, token, attempt, run_at, reason, traceback
--   token, attempt: the lease the caller holds (see `holds`)
--   reason, traceback: how the attempt failed (the record's error and traceback)
-- Returns 1, or 0 if the caller no longer holds the job.

local job_id = ARGV[1]
local token = ARGV[2]
local attempt = ARGV[3]
local run_at = ARGV[4]
local reason = ARGV[5]
local traceback = ARGV[6]

local job_key = key.job(job_id)
local name = holds(job_key, token, attempt)
if not name then return 0 end
move(job_id, name, 'active', 'delayed', run_at)
unlease(job_key, job_id)
redis.call('HSET', job_key, 'state', 'delayed', 'run_at', run_at, 'error', reason, 'traceback', traceback,
  'delay_reason', 'backoff')
count(name, 'retried')
return 1
