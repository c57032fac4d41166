-- Sweeps the listing indexes of flows whose retention expired. For each flow named in ARGV (its id, then how many
-- of KEYS are its: its hash, then the indexes it may be in), in KEYS order: once its hash is gone, removes it from
-- those indexes and from the expiring set; a flow whose expiry moved (it ran again and ended later) is put back
-- at its new time, and one running again is dropped from the set (its next end adds it again).
--
-- Returns how many flows it removed from the indexes.

local expiring = KEYS[1]
local now_ms = tonumber(ARGV[1])

local removed = 0
local key_at = 2
local arg_at = 2
while arg_at <= #ARGV do
  local member = ARGV[arg_at]
  local flow_id = ARGV[arg_at + 1]
  local key_count = tonumber(ARGV[arg_at + 2])
  local flow_key = KEYS[key_at]
  local ttl_ms = redis.call('PTTL', flow_key)
  if ttl_ms == -2 then
    for i = key_at + 1, key_at + key_count - 1 do
      local index = KEYS[i]
      redis.call('ZREM', index, flow_id)
    end
    redis.call('ZREM', expiring, member)
    removed = removed + 1
  elseif ttl_ms == -1 then
    redis.call('ZREM', expiring, member)
  else
    redis.call('ZADD', expiring, now_ms + ttl_ms, member)
  end
  key_at = key_at + key_count
  arg_at = arg_at + 3
end
return removed
