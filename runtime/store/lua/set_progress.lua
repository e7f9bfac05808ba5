-- set_progress.lua: record an active job's progress, under the caller's lease.
--
-- Keys: key.job(job_id)
-- ARGV: job_id, token, attempt, progress_json
--   token, attempt: the lease the caller holds (see `holds`)
-- Returns 1, or 0 if the caller no longer holds the job.

local job_id = ARGV[1]
local token = ARGV[2]
local attempt = ARGV[3]
local progress_json = ARGV[4]

local job_key = key.job(job_id)
if not holds(job_key, token, attempt) then return 0 end
redis.call('HSET', job_key, 'progress', progress_json)
return 1
