-- Removes from listing indexes the flows created before a cutoff whose hash is gone (their retention expired),
-- at most `limit` per index. A flow created long ago that still runs keeps its place.
--
-- Returns how many entries it removed.

local cutoff = ARGV[1]  -- a creation time in seconds, as the indexes score flows
local limit = tonumber(ARGV[2])
local flow_key_prefix = ARGV[3]  -- a flow's key is prefix .. flow id .. suffix
local flow_key_suffix = ARGV[4]

local removed = 0
for _, index in ipairs(KEYS) do
  local old = redis.call('ZRANGEBYSCORE', index, '-inf', cutoff, 'LIMIT', 0, limit)
  for _, flow_id in ipairs(old) do
    if redis.call('EXISTS', flow_key_prefix .. flow_id .. flow_key_suffix) == 0 then
      redis.call('ZREM', index, flow_id)
      removed = removed + 1
    end
  end
end
return removed
