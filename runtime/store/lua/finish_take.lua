-- finish_take.lua: end an active job (finish.lua) and take the caller's next one (dequeue.lua) in
-- one round trip: what a busy worker does between two jobs.
--
-- Keys: those of finish.lua and dequeue.lua
-- ARGV: job_id, token, attempt, state, now, keep_count, keep_age_s, detail, owner, lease_s, limits_json, next_token, fields...
--   job_id .. detail, fields: as finish.lua takes them
--   owner, lease_s, limits_json: as dequeue.lua takes them; next_token: the new lease's token
-- Returns {finished (1, or 0 if the caller no longer held the job), then dequeue.lua's answer...}.

local job_id = ARGV[1]
local token = ARGV[2]
local attempt = ARGV[3]
local state = ARGV[4]
local now = ARGV[5]
local keep_count = tonumber(ARGV[6])
local keep_age_s = tonumber(ARGV[7])
local detail = ARGV[8]
local owner = ARGV[9]
local lease_s = tonumber(ARGV[10])
local limits_json = ARGV[11]
local next_token = ARGV[12]
local fields = argv_from(13)

local done = finish_job(job_id, token, attempt, state, now, keep_count, keep_age_s, detail, fields)
local got = take(owner, lease_s, limits_json, next_token, '0', '0')
table.insert(got, 1, done)
return got
