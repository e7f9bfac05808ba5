-- to_waiting.lua: queue a failed job again with a fresh set of attempts (retry), or a delayed one
-- now (promote).
--
-- Keys: key.job(job_id), key.dedupe(dedupe_key), key.index(name, state), key.queue(name), key.seq,
--   key.wake
-- ARGV: job_id, now, from_state
--   from_state: 'failed' or 'delayed', the state the job must be in
-- Returns 'ok'; nil if there is no such job; else why not: the state it is in, or 'a duplicate
-- of <id>' when a failed job's dedupe key is held by another live job.

local job_id = ARGV[1]
local now = ARGV[2]
local from_state = ARGV[3]

local job_key = key.job(job_id)
local s = redis.call('HMGET', job_key, 'state', 'name', 'priority', 'dedupe_key')
local state, name, priority, dedupe_key = s[1], s[2], s[3], s[4]
if not state then return false end
if state ~= from_state then return state end
if from_state == 'failed' and dedupe_key and dedupe_key ~= '' then
  local other = redis.call('GET', key.dedupe(dedupe_key))
  if other and other ~= job_id and live(redis.call('HGET', key.job(other), 'state')) then
    return 'a duplicate of ' .. other
  end
  redis.call('SET', key.dedupe(dedupe_key), job_id)
end
move(job_id, name, state, 'waiting', now)
if from_state == 'failed' then
  redis.call('HSET', job_key, 'attempts', 0, 'stalls', 0)
  redis.call('HDEL', job_key, 'error', 'traceback', 'finished_at', 'started_at', 'result')
end
redis.call('HSET', job_key, 'state', 'waiting', 'run_at', '')
redis.call('HDEL', job_key, 'delay_reason')
requeue(job_id, name, priority)
return 'ok'
