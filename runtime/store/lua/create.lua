-- create.lua: store a new job, and queue it if it is waiting (a delayed one waits in its index
-- until promote_due).
--
-- Keys: key.job(job_id), key.dedupe(dedupe_key), key.index(name, state), key.names, key.queue(name),
--   key.seq, key.wake
-- ARGV: job_id, name, state, index_score, priority, dedupe_key, fields...
--   index_score: when the job entered its state (a delayed job: its run_at)
--   priority: lower runs sooner; 0 for none
--   dedupe_key: '' for none; else a live job holding the same key is returned instead
--   fields: field, value pairs for the job's hash (its record, message and rate key)
-- Returns 1 created, 0 the id exists, or the id of the live job that holds the dedupe key.

local job_id = ARGV[1]
local name = ARGV[2]
local state = ARGV[3]
local index_score = ARGV[4]
local priority = ARGV[5]
local dedupe_key = ARGV[6]
local fields = argv_from(7)

local job_key = key.job(job_id)
if redis.call('EXISTS', job_key) == 1 then return 0 end
if dedupe_key ~= '' then
  local other = redis.call('GET', key.dedupe(dedupe_key))
  if other and live(redis.call('HGET', key.job(other), 'state')) then return other end
  redis.call('SET', key.dedupe(dedupe_key), job_id)
end
local qscore = new_qscore(priority)
redis.call('HSET', job_key, 'qscore', qscore, 'dedupe_key', dedupe_key, unpack(fields))
redis.call('ZADD', key.index(name, state), index_score, job_id)
redis.call('SADD', key.names, name)
if state == 'waiting' then queue(name, job_id, qscore) end
return 1
