-- Leases up to `limit` due jobs of one workflow to the caller, step jobs first, with each job's flow state.
--
-- A job whose payload is not an arq job naming a flow (bad JSON, no argument list, a first argument that is not
-- a string) is deleted here and reported, never leased: one garbage job must not fail the whole claim. The
-- caller checks the rest of each job and drops, through release.lua, those it cannot run.
--
-- A worker that waits for work next also takes what create.lua handed it in its inbox (already leased to it),
-- and, when no ready job is left and it has slots free, registers as idle for create.lua to hand it new flows'
-- start jobs: as the member "<lease ms>:<owner>" of the idle set, scored by its free slots, and of the
-- idle-until set, scored by when the registration runs out. A worker with no slot left is unregistered.
--
-- Returns {jobs, rejected, due, handed}:
--   jobs: {job id, payload, state, version, workflow, queue number (1: steps queue, 2: flow queue), item} per
--         leased job; state, version and workflow are false when the flow no longer exists; item is the record of
--         the for-each item a step or rollback job names (false for other jobs)
--   rejected: {job id, reason} per job deleted here
--   due: when no ready job is left, the score of the next job (ms), else false
--   handed: the entries taken from the caller's inbox (see create.lua), oldest first

local steps_queue = KEYS[1]
local flow_queue = KEYS[2]
local wake = KEYS[3]
local leases = KEYS[4]
local lease_info = KEYS[5]
local idle = KEYS[6]  -- these three only for a worker that waits for work next
local idle_until = KEYS[7]
local inbox = KEYS[8]

local now_ms = tonumber(ARGV[1])
local left = tonumber(ARGV[2])
local lease_end_ms = ARGV[3]
local job_key_prefix = ARGV[4]
local flow_key_prefix = ARGV[5]  -- a flow's key is prefix .. flow id .. suffix
local flow_key_suffix = ARGV[6]
local steps_record = ARGV[7]  -- the lease record of a job from the steps queue, and from the flow queue
local flow_record = ARGV[8]
local item_field_prefix = ARGV[9]  -- a for-each item's field in its flow's hash is prefix .. node .. ':' .. index
local idle_member = ARGV[10]  -- with idle: "<lease ms>:<owner>", and when its registration runs out (ms)
local idle_until_ms = ARGV[11]

local handed = {}
if inbox then
  handed = redis.call('LRANGE', inbox, 0, -1)
  if #handed > 0 then redis.call('DEL', inbox) end
  left = left - #handed
end

-- Garbage does not use up `left`, so a flood of it is bounded separately.
local rejects_left = 1000

-- The flow a job names, and the field of the for-each item it names (nil for other jobs).
local function flow_id_of(payload)
  local ok, job = pcall(cjson.decode, payload)
  if not ok then return nil, 'not JSON' end
  if type(job) ~= 'table' or type(job['a']) ~= 'table' then return nil, 'not an arq job (no argument list)' end
  local args = job['a']
  local flow_id = args[1]
  if type(flow_id) ~= 'string' then return nil, 'its first argument is not a flow id' end
  local extra = args[5]
  if type(extra) == 'table' and type(extra['i']) == 'number' and type(args[3]) == 'string' then
    return flow_id, nil, item_field_prefix .. args[3] .. ':' .. string.format('%d', extra['i'])
  end
  return flow_id
end

local jobs = {}
local rejected = {}
local queues = {steps_queue, flow_queue}
local records = {steps_record, flow_record}
for number = 1, 2 do
  local queue = queues[number]
  while left > 0 and rejects_left > 0 do
    local ids = redis.call('ZRANGEBYSCORE', queue, '-inf', now_ms, 'LIMIT', 0, left)
    if #ids == 0 then break end
    for _, job_id in ipairs(ids) do
      redis.call('ZREM', queue, job_id)
      local job_key = job_key_prefix .. job_id
      local payload = redis.call('GET', job_key)
      -- No payload: the job was cancelled or has expired; there is nothing to run.
      if payload then
        local flow_id, reason, item_field = flow_id_of(payload)
        if flow_id then
          local flow_key = flow_key_prefix .. flow_id .. flow_key_suffix
          local flow = redis.call('HMGET', flow_key, 's', 'v', 'wf')
          local item = false
          if item_field then item = redis.call('HGET', flow_key, item_field) end
          redis.call('ZADD', leases, lease_end_ms, job_id)
          redis.call('HSET', lease_info, job_id, records[number])
          jobs[#jobs + 1] = {job_id, payload, flow[1], flow[2], flow[3], number, item}
          left = left - 1
        else
          redis.call('DEL', job_key)
          rejected[#rejected + 1] = {job_id, reason}
          rejects_left = rejects_left - 1
        end
      end
    end
  end
end

local due = false
if left > 0 then
  -- Nothing ready is left: stale wake-up tokens would only wake idle workers for nothing.
  redis.call('DEL', wake)
  for number = 1, 2 do
    local first = redis.call('ZRANGE', queues[number], 0, 0, 'WITHSCORES')
    if first[2] and (not due or tonumber(first[2]) < tonumber(due)) then due = first[2] end
  end
end
if idle then
  if left > 0 then
    redis.call('ZADD', idle, left, idle_member)
    redis.call('ZADD', idle_until, idle_until_ms, idle_member)
  else
    redis.call('ZREM', idle, idle_member)
    redis.call('ZREM', idle_until, idle_member)
  end
  -- Registrations that ran out (their workers died) go too, a few at a time.
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', idle_until, '-inf', now_ms, 'LIMIT', 0, 8)) do
    redis.call('ZREM', idle, member)
    redis.call('ZREM', idle_until, member)
  end
end
return {jobs, rejected, due, handed}
