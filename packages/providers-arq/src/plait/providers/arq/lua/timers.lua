-- Takes the flows whose timer is due (a sleep's end, a signal's timeout, a deadline) from the timers of some
-- workflows, moving each one's timer a lease ahead: whoever took it applies the tick and sets the timer anew, and
-- if it dies meanwhile, another worker takes the flow once the lease has passed.
--
-- Returns {due, next}: due has one list of flow ids per workflow, in KEYS order; next is the earliest timer left
-- (ms), or false.

local now_ms = tonumber(ARGV[1])
local lease_ms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])

local due = {}
local next_ms = false
for i, timers in ipairs(KEYS) do
  local flows = redis.call('ZRANGEBYSCORE', timers, '-inf', now_ms, 'LIMIT', 0, limit)
  for _, flow_id in ipairs(flows) do redis.call('ZADD', timers, 'XX', now_ms + lease_ms, flow_id) end
  due[i] = flows
  local first = redis.call('ZRANGE', timers, 0, 0, 'WITHSCORES')
  if first[2] and (not next_ms or tonumber(first[2]) < tonumber(next_ms)) then next_ms = first[2] end
end
return {due, next_ms}
