-- release_staged.lua: queue staged jobs (see create_many.lua) now that their event is out.
--
-- A staged job removed, drained or otherwise moved on meanwhile is only unparked.
--
-- Keys: key.staged, key.job(job_id), key.queue(name), key.wake
-- ARGV: job_ids...
-- Returns how many jobs were queued.

local job_ids = argv_from(1)

local released = 0
for _, job_id in ipairs(job_ids) do
  if redis.call('ZREM', key.staged, job_id) == 1 then
    local s = redis.call('HMGET', key.job(job_id), 'state', 'name', 'qscore')
    if s[1] == 'waiting' then
      redis.call('ZADD', key.queue(s[2]), s[3], job_id)
      released = released + 1
    end
  end
end
if released > 0 then wake() end
return released
