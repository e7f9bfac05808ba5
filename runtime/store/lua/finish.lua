-- finish.lua: end an active job as completed or failed, under the caller's lease; tell its parent;
-- trim the name's records in that state to what the manifest keeps.
--
-- Keys: key.job(job_id), key.index(name, state), key.leases, key.stats(name), key.outcomes(job_id),
--   and through `finished` the parent's keys, key.dedupe and key.wake
-- ARGV: job_id, token, attempt, state, now, keep_count, keep_age_s, detail, fields...
--   token, attempt: the lease the caller holds (see `holds`)
--   state: 'completed' or 'failed'
--   keep_count, keep_age_s: how many records in `state` to keep, and for how long (-1: no limit)
--   detail: what the parent sees of this end (the result JSON or the failure reason)
--   fields: field, value pairs to set (result; or error and traceback)
-- Returns 1, or 0 if the caller no longer holds the job.

local job_id = ARGV[1]
local token = ARGV[2]
local attempt = ARGV[3]
local state = ARGV[4]
local now = ARGV[5]
local keep_count = tonumber(ARGV[6])
local keep_age_s = tonumber(ARGV[7])
local detail = ARGV[8]
local fields = argv_from(9)

return finish_job(job_id, token, attempt, state, now, keep_count, keep_age_s, detail, fields)
