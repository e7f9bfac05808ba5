-- create_many.lua: store many new jobs in one call (a bulk enqueue, or jobs to stage behind their
-- events); each as create.lua would, with one difference: a waiting job that is `staged` is not
-- queued yet but parked in key.staged, until release_staged.lua queues it (the runtime does so
-- once the job's job:waiting event is on the bus, so no worker's job:active can overtake it).
--
-- Keys: key.job(job_id), key.dedupe(dedupe_key), key.index(name, state), key.names,
--   key.queue(name), key.staged, key.seq, key.wake
-- ARGV: staged, jobs...
--   staged: '1' to stage waiting jobs (parked scored by their index_score, their creation
--     time: reap releases those parked too long), '0' to queue them at once
--   jobs: seven values per job: job_id, name, state, index_score, priority, dedupe_key,
--     fields (a JSON list of field, value pairs for its hash: its record, message and rate key)
-- Returns, per job in order: 1 created, 0 the id exists, or the id of the live job that holds
-- its dedupe key.

local staged = ARGV[1]
local jobs = argv_from(2)

local out = {}
local queued = false
for i = 1, #jobs, 7 do
  local job_id, name, state, index_score, priority, dedupe_key, fields_json = unpack(jobs, i, i + 6)
  local job_key = key.job(job_id)
  local outcome = 1
  if redis.call('EXISTS', job_key) == 1 then
    outcome = 0
  elseif dedupe_key ~= '' then
    local other = redis.call('GET', key.dedupe(dedupe_key))
    if other and live(redis.call('HGET', key.job(other), 'state')) then
      outcome = other
    else
      redis.call('SET', key.dedupe(dedupe_key), job_id)
    end
  end
  if outcome == 1 then
    local qscore = new_qscore(priority)
    redis.call('HSET', job_key, 'qscore', qscore, 'dedupe_key', dedupe_key, unpack(cjson.decode(fields_json)))
    redis.call('ZADD', key.index(name, state), index_score, job_id)
    redis.call('SADD', key.names, name)
    if state == 'waiting' then
      if staged == '1' then
        redis.call('ZADD', key.staged, index_score, job_id)
      else
        redis.call('ZADD', key.queue(name), qscore, job_id)
        queued = true
      end
    end
  end
  out[#out + 1] = outcome
end
if queued then wake() end
return out
