-- renew.lua: extend the leases an owner still holds, and note the owner as seen (its heartbeat).
--
-- Keys: key.job(job_id), key.leases, key.consumers
-- ARGV: owner, now, deadline, lease_s, job_ids...
--   now, deadline: the caller's clock and the new lease deadline, or both '' for Redis's clock
--     (the one leases were given on); the deadline is then now + lease_s
--   job_ids: the jobs the owner is running
-- Returns how many of the jobs the owner still holds.

local owner = ARGV[1]
local now = ARGV[2]
local deadline = ARGV[3]
local lease_s = ARGV[4]
local job_ids = argv_from(5)

if now == '' then
  local clock = redis_now()
  now = string.format('%.6f', clock)
  deadline = string.format('%.6f', clock + tonumber(lease_s))
end
local held = 0
for _, job_id in ipairs(job_ids) do
  local job_key = key.job(job_id)
  local s = redis.call('HMGET', job_key, 'state', 'worker')
  if s[1] == 'active' and s[2] == owner then
    redis.call('HSET', job_key, 'lease_until', deadline)
    redis.call('ZADD', key.leases, deadline, job_id)
    held = held + 1
  end
end
redis.call('ZADD', key.consumers, now, owner)
return held
