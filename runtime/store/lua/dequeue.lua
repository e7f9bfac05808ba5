-- dequeue.lua: take the next startable waiting job (priority, then FIFO, across names), mark it
-- active and lease it.
--
-- A name is skipped while paused, at its concurrency or out of room in its (unkeyed) rate
-- window. A job whose own rate key is out of room is delayed to the first window with room
-- (no attempt spent) and the next one is tried, up to 200.
--
-- Keys: key.names, key.paused, key.index(name, state), key.queue(name), key.job(job_id),
--   key.leases, key.stats(name), key.rate_window(name, rate_key), key.rate_calendar(name, rate_key)
-- ARGV: owner, lease_s, limits_json, token, was_idle, may_wait
--   owner: the consumer taking the job
--   lease_s: how long the lease runs before it must be renewed
--   limits_json: {name: {concurrency, limit, window_s, keyed}}, the names that have limits
--   token: new for every dequeue, the lease's token (see `holds`)
--   was_idle: '1' when the caller comes back from waiting on key.wake (it is listed idle no more)
--   may_wait: '1' when the caller will wait on key.wake if there is nothing (list it idle meanwhile)
-- Returns {job_id, name, msg, attempt, children_done}, or {seconds until a rate-limited name has
-- room (0: none is waiting on a window)} when there is nothing to take.

local owner = ARGV[1]
local lease_s = tonumber(ARGV[2])
local limits_json = ARGV[3]
local token = ARGV[4]
local was_idle = ARGV[5]
local may_wait = ARGV[6]

return take(owner, lease_s, limits_json, token, was_idle, may_wait)
