-- spawn.lua: create the children of a running parent, each once.
--
-- Children's ids are derived from the parent's, so a parent run again after a crash or a retry
-- does not create them twice; a child that already ended without its parent knowing gets its
-- outcome recorded.
--
-- Keys: key.job(parent_id), key.job(child id), key.outcomes(parent_id), key.index(name, state),
--   key.names, key.queue(name), key.seq, key.wake
-- ARGV: parent_id, token, attempt, now, children...
--   token, attempt: the lease the caller holds on the parent (see `holds`)
--   children: six values per child: id, name, msg, priority, rate_key, fields (a JSON list of
--     field, value pairs for its hash)
-- Returns how many children were new, or -1 if the caller no longer holds the parent.

local parent_id = ARGV[1]
local token = ARGV[2]
local attempt = ARGV[3]
local now = ARGV[4]
local children = argv_from(5)

local parent_key = key.job(parent_id)
if not holds(parent_key, token, attempt) then return -1 end
local child_ids = cjson.decode(redis.call('HGET', parent_key, 'children') or '[]')
local outcomes = key.outcomes(parent_id)
local created = 0
for i = 1, #children, 6 do
  local child_id, name, msg, priority, rate_key, fields_json = unpack(children, i, i + 5)
  local child_key = key.job(child_id)
  if redis.call('EXISTS', child_key) == 1 then
    -- Spawned again (a parent rerun after a crash or a retry): keep the child, and if it has
    -- already ended without its parent knowing, record how.
    local c = redis.call('HMGET', child_key, 'state', 'result', 'error')
    if (c[1] == 'completed' or c[1] == 'failed') and redis.call('HEXISTS', outcomes, child_id) == 0 then
      redis.call('HSET', outcomes, child_id, c[1] .. '\n' .. ((c[1] == 'completed' and c[2]) or c[3] or ''))
    end
  else
    local qscore = new_qscore(priority)
    redis.call('HSET', child_key, 'qscore', qscore, 'msg', msg, 'rate_key', rate_key, unpack(cjson.decode(fields_json)))
    redis.call('ZADD', key.index(name, 'waiting'), now, child_id)
    redis.call('SADD', key.names, name)
    queue(name, child_id, qscore)
    table.insert(child_ids, child_id)
    created = created + 1
  end
end
redis.call('HSET', parent_key, 'children', cjson.encode(child_ids))
redis.call('HINCRBY', parent_key, 'pending', created)
return created
