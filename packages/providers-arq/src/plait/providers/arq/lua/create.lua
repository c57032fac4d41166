-- Stores a new flow and queues its start job, unless the flow id is taken.
-- Returns false, or the existing flow's state when the id is taken (the caller compares it).

local flow_key = KEYS[1]
local queue = KEYS[2]
local job_key = KEYS[3]
local wake = KEYS[4]
local deadlines = KEYS[5]

local state = ARGV[1]
local workflow = ARGV[2]
local job_id = ARGV[3]
local payload = ARGV[4]
local due_ms = ARGV[5]
local retention_ms = ARGV[6]
local deadline_ms = ARGV[7]  -- '' when the flow has no deadline yet
local flow_id = ARGV[8]

local existing = redis.call('HGET', flow_key, 's')
if existing then return existing end
redis.call('HSET', flow_key, 's', state, 'v', '1', 'st', 'pending', 'wf', workflow)
redis.call('PEXPIRE', flow_key, retention_ms)
redis.call('SET', job_key, payload, 'PX', retention_ms)
redis.call('ZADD', queue, due_ms, job_id)
redis.call('LPUSH', wake, '1')
redis.call('LTRIM', wake, 0, 63)
if deadline_ms ~= '' then redis.call('ZADD', deadlines, deadline_ms, flow_id) end
return false
