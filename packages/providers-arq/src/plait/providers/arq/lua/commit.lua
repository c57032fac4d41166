-- One event of a flow, all at once or not at all: a compare-and-set of the flow's state on its version, which
-- also writes the for-each items the event changed, appends its events to the flow's stream, moves the flow
-- between the listing indexes of its old and new status, sets or clears its timer, finishes the job that
-- produced the event, creates the jobs the engine asked for (queued, or leased to the caller), deletes the jobs
-- it cancelled and tells their workers, and announces the flow's end (with its final state, when small). A flow
-- that ended expires after the retention (and is queued for the sweep of the listing indexes); one that has not
-- ended never expires.
--
-- Returns {1} on success, else {0, current state, current version} (false, false when the flow is gone).

local flow_key = KEYS[1]
local leases = KEYS[2]
local lease_info = KEYS[3]
local timers = KEYS[4]
local events = KEYS[5]
local expiring = KEYS[6]       -- ended flows by expiry time, for the sweep of the listing indexes
-- When the status changes: the listing indexes (all flows, the flow's workflow) of the old status and the new one.
local old_all_index = KEYS[7]
local old_workflow_index = KEYS[8]
local new_all_index = KEYS[9]
local new_workflow_index = KEYS[10]

local expected_version = ARGV[1]
local state = ARGV[2]
local status = ARGV[3]
local retention_ms = ARGV[4]    -- how long an ended flow, its events and job payloads are kept
local finished_job = ARGV[5]    -- '' when no job finishes with this event
local timer = ARGV[6]           -- '' keep it, '-' clear it, else the flow's next wake-up in ms
local flow_id = ARGV[7]
local done_channel = ARGV[8]    -- '' unless the flow ends
local cancel_channel = ARGV[9]
local cancelled = ARGV[10]      -- what to stop, a JSON object {"jobs": [ids], "fan_outs": [...]}, or ''
local lease_end_ms = ARGV[11]
local job_key_prefix = ARGV[12]
local created_at = ARGV[13]     -- the flow's score in the listing indexes (its creation time in seconds)
local events_maxlen = ARGV[14]
local expire_at_ms = ARGV[15]   -- when an ended flow expires; '-' running again after it ended; '' running on
local expiring_member = ARGV[16]  -- the flow in the expiring set
local item_count = tonumber(ARGV[17])
local event_count = tonumber(ARGV[18])
local job_count = tonumber(ARGV[19])
local FIRST_ITEM = 20           -- then per item: field, record; then per event: its JSON; then per job:
local JOB_FIELDS = 6            -- queue, job id, payload, due ms ('' = leased to the caller), wake-up list,
                                -- lease record (for a job leased to the caller)

local version = redis.call('HGET', flow_key, 'v')
if version ~= expected_version then
  if not version then return {0, false, false} end
  return {0, redis.call('HGET', flow_key, 's'), version}
end
redis.call('HSET', flow_key, 's', state, 'v', tostring(tonumber(version) + 1), 'st', status)
for i = 0, item_count - 1 do
  local at = FIRST_ITEM + i * 2
  local field = ARGV[at]
  local record = ARGV[at + 1]
  redis.call('HSET', flow_key, field, record)
end

local first_event = FIRST_ITEM + item_count * 2
if event_count > 0 then
  for i = 0, event_count - 1 do
    local event = ARGV[first_event + i]
    redis.call('XADD', events, 'MAXLEN', '~', events_maxlen, '*', 'e', event)
  end
end
if expire_at_ms == '-' then
  -- Running again (a completed flow being undone, say): kept until it ends again.
  redis.call('PERSIST', flow_key)
  redis.call('PERSIST', events)
  redis.call('ZREM', expiring, expiring_member)
elseif expire_at_ms ~= '' then
  redis.call('PEXPIRE', flow_key, retention_ms)
  redis.call('PEXPIRE', events, retention_ms)
  redis.call('ZADD', expiring, expire_at_ms, expiring_member)
end

if new_workflow_index then
  redis.call('ZREM', old_all_index, flow_id)
  redis.call('ZREM', old_workflow_index, flow_id)
  redis.call('ZADD', new_all_index, created_at, flow_id)
  redis.call('ZADD', new_workflow_index, created_at, flow_id)
end

if finished_job ~= '' then
  redis.call('DEL', job_key_prefix .. finished_job)
  redis.call('ZREM', leases, finished_job)
  redis.call('HDEL', lease_info, finished_job)
end

if timer == '-' then
  redis.call('ZREM', timers, flow_id)
elseif timer ~= '' then
  redis.call('ZADD', timers, timer, flow_id)
end

if cancelled ~= '' then
  for _, job_id in ipairs(cjson.decode(cancelled)['jobs']) do redis.call('DEL', job_key_prefix .. job_id) end
  -- The same JSON object: whoever runs one of these jobs, or an item of these fan-outs, stops it.
  redis.call('PUBLISH', cancel_channel, cancelled)
end

local first_job = first_event + event_count
for i = 0, job_count - 1 do
  local base = first_job + i * JOB_FIELDS
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

-- The end is announced with the final state when it is small (result() then needs no read of its own), else with
-- the status alone (a burst of large states could overrun a subscriber's output buffer); on the flow's channel,
-- and after its id on the channel of the provider that started it.
if done_channel ~= '' then
  local announcement = (#state <= 65536) and state or status
  redis.call('PUBLISH', done_channel, announcement)
  local ends_channel = redis.call('HGET', flow_key, 'n')
  if ends_channel then redis.call('PUBLISH', ends_channel, flow_id .. '\n' .. announcement) end
end
return {1}
