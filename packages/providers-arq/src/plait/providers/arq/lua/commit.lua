-- One event of a flow, all at once or not at all: a compare-and-set of the flow's state on its version, which
-- also finishes the job that produced the event, creates the jobs the engine asked for (queued, or leased to
-- the caller), deletes the jobs of cancelled steps and tells their workers, and announces the flow's end.
--
-- Returns {1} on success, else {0, current state, current version} (false, false when the flow is gone).

local flow_key = KEYS[1]
local leases = KEYS[2]
local lease_info = KEYS[3]
local deadlines = KEYS[4]

local expected_version = ARGV[1]
local state = ARGV[2]
local status = ARGV[3]
local retention_ms = ARGV[4]
local finished_job = ARGV[5]    -- '' when no job finishes with this event
local deadline = ARGV[6]        -- '' keep it, '-' stop watching it, else the deadline in ms
local flow_id = ARGV[7]
local done_channel = ARGV[8]    -- '' unless the flow ends
local cancel_channel = ARGV[9]
local cancelled = ARGV[10]      -- a JSON array of job ids, or ''
local lease_end_ms = ARGV[11]
local job_key_prefix = ARGV[12]
local job_count = tonumber(ARGV[13])
local JOB_FIELDS = 6            -- then per job: queue, job id, payload, due ms ('' = leased to the caller),
local FIRST_JOB = 14            -- wake-up list, lease record (for a job leased to the caller)

local version = redis.call('HGET', flow_key, 'v')
if version ~= expected_version then
  if not version then return {0, false, false} end
  return {0, redis.call('HGET', flow_key, 's'), version}
end
redis.call('HSET', flow_key, 's', state, 'v', tostring(tonumber(version) + 1), 'st', status)
redis.call('PEXPIRE', flow_key, retention_ms)

if finished_job ~= '' then
  redis.call('DEL', job_key_prefix .. finished_job)
  redis.call('ZREM', leases, finished_job)
  redis.call('HDEL', lease_info, finished_job)
end

if deadline == '-' then
  redis.call('ZREM', deadlines, flow_id)
elseif deadline ~= '' then
  redis.call('ZADD', deadlines, deadline, flow_id)
end

if cancelled ~= '' then
  for _, job_id in ipairs(cjson.decode(cancelled)) do redis.call('DEL', job_key_prefix .. job_id) end
  -- The same JSON array: whoever runs one of these jobs stops it.
  redis.call('PUBLISH', cancel_channel, cancelled)
end

for i = 0, job_count - 1 do
  local base = FIRST_JOB + i * JOB_FIELDS
  local queue = ARGV[base]
  local job_id = ARGV[base + 1]
  local payload = ARGV[base + 2]
  local due_ms = ARGV[base + 3]
  local wake = ARGV[base + 4]
  local record = ARGV[base + 5]
  redis.call('SET', job_key_prefix .. job_id, payload, 'PX', retention_ms)
  if due_ms == '' then
    redis.call('ZADD', leases, lease_end_ms, job_id)
    redis.call('HSET', lease_info, job_id, record)
  else
    redis.call('ZADD', queue, due_ms, job_id)
    redis.call('LPUSH', wake, '1')
    redis.call('LTRIM', wake, 0, 63)
  end
end

if done_channel ~= '' then redis.call('PUBLISH', done_channel, status) end
return {1}
