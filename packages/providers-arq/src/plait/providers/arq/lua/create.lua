-- Stores a new flow and queues its start job, unless the flow id is taken; indexes it for listings and arms its
-- timer (its deadline), all at once.
--
-- When a worker of the workflow waits idle (claim.lua registered it), the start job is leased to it at once and
-- pushed to its inbox with the flow's state, instead of queued: the worker runs it without a claim of its own. An
-- idle worker is a member "<lease ms>:<owner>" of the idle set, scored by its free slots, and of the idle-until
-- set, scored by when its registration runs out (ms); the one with the most free slots gets the job. Not while
-- jobs are due in the workflow's queues, though: those go first (steps first, then flows in the order stored).
-- An inbox entry is "<lease end ms>\n<job id>\n<payload>\n<state>" (neither a job id nor JSON holds a newline).
--
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
local idle = KEYS[10]
local idle_until = KEYS[11]
local leases = KEYS[12]
local lease_info = KEYS[13]
local steps_queue = KEYS[14]
local index_parent = KEYS[15]  -- only for a child flow

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
local now_ms = tonumber(ARGV[12])
local inbox_prefix = ARGV[13]  -- an idle worker's inbox is prefix .. owner

local existing = redis.call('HGET', flow_key, 's')
if existing then return existing end
redis.call('HSET', flow_key, 's', state, 'v', '1', 'st', status, 'wf', workflow)
if ends_channel ~= '' then redis.call('HSET', flow_key, 'n', ends_channel) end
-- No expiry: a flow is kept while it has not ended, however long it waits; its retention starts when it ends.
redis.call('SET', job_key, payload, 'PX', retention_ms)
local handed = false
local idle_workers = redis.call('ZREVRANGE', idle, 0, 2)
if #idle_workers > 0 and (
  #redis.call('ZRANGEBYSCORE', queue, '-inf', due_ms, 'LIMIT', 0, 1) > 0
  or #redis.call('ZRANGEBYSCORE', steps_queue, '-inf', now_ms, 'LIMIT', 0, 1) > 0
) then
  idle_workers = {}  -- jobs are due: they go first
end
for _, member in ipairs(idle_workers) do
  local registered_until = tonumber(redis.call('ZSCORE', idle_until, member))
  local lease_ms, owner = string.match(member, '^(%d+):(.+)$')
  if lease_ms and registered_until and registered_until > now_ms then
    local lease_end_ms = now_ms + tonumber(lease_ms)
    redis.call('ZADD', leases, lease_end_ms, job_id)
    redis.call('HSET', lease_info, job_id, cjson.encode({queue, wake, owner}))  -- as Keys.lease_record writes it
    local inbox = inbox_prefix .. owner
    redis.call('RPUSH', inbox, lease_end_ms .. '\n' .. job_id .. '\n' .. payload .. '\n' .. state)
    -- A dead worker's inbox goes a minute after its last lease ran out (the reconciler hands those jobs back).
    redis.call('PEXPIRE', inbox, tonumber(lease_ms) + 60000)
    if tonumber(redis.call('ZINCRBY', idle, -1, member)) < 1 then
      redis.call('ZREM', idle, member)
      redis.call('ZREM', idle_until, member)
    end
    handed = true
    break
  end
  -- Its registration ran out (the worker died or hangs, or stopped waiting): never hand it a job.
  redis.call('ZREM', idle, member)
  redis.call('ZREM', idle_until, member)
end
if not handed then
  redis.call('ZADD', queue, due_ms, job_id)
  redis.call('LPUSH', wake, '1')
  redis.call('LTRIM', wake, 0, 63)
end
if wake_ms ~= '' then redis.call('ZADD', timers, wake_ms, flow_id) end
redis.call('ZADD', index_all, created_at, flow_id)
redis.call('ZADD', index_workflow, created_at, flow_id)
redis.call('ZADD', index_status, created_at, flow_id)
redis.call('ZADD', index_workflow_status, created_at, flow_id)
if index_parent then redis.call('ZADD', index_parent, created_at, flow_id) end
return false
