-- Stores a new flow and queues its start job, unless the flow id is taken; indexes it for listings and arms its
-- timer (its deadline), all at once.
-- Returns false, or the existing flow's state when the id is taken (the caller compares it).

local flow_key = KEYS[1]
local queue = KEYS[2]
local job_key = KEYS[3]
local wake = KEYS[4]
local timers = KEYS[5]
local index_all = KEYS[6]
local index_workflow = KEYS[7]
local index_status = KEYS[8]
local index_workflow_status = KEYS[9]
local index_parent = KEYS[10]  -- only for a child flow

local state = ARGV[1]
local workflow = ARGV[2]
local job_id = ARGV[3]
local payload = ARGV[4]
local due_ms = ARGV[5]
local retention_ms = ARGV[6]  -- how long the start job's payload is kept
local wake_ms = ARGV[7]  -- '' when the flow has no timer
local flow_id = ARGV[8]
local status = ARGV[9]
local created_at = ARGV[10]  -- the flow's score in the listing indexes (its creation time in seconds)
local ends_channel = ARGV[11]  -- where the provider that started it awaits its end ('' none)

local existing = redis.call('HGET', flow_key, 's')
if existing then return existing end
redis.call('HSET', flow_key, 's', state, 'v', '1', 'st', status, 'wf', workflow)
if ends_channel ~= '' then redis.call('HSET', flow_key, 'n', ends_channel) end
-- No expiry: a flow is kept while it has not ended, however long it waits; its retention starts when it ends.
redis.call('SET', job_key, payload, 'PX', retention_ms)
redis.call('ZADD', queue, due_ms, job_id)
redis.call('LPUSH', wake, '1')
redis.call('LTRIM', wake, 0, 63)
if wake_ms ~= '' then redis.call('ZADD', timers, wake_ms, flow_id) end
redis.call('ZADD', index_all, created_at, flow_id)
redis.call('ZADD', index_workflow, created_at, flow_id)
redis.call('ZADD', index_status, created_at, flow_id)
redis.call('ZADD', index_workflow_status, created_at, flow_id)
if index_parent then redis.call('ZADD', index_parent, created_at, flow_id) end
return false
