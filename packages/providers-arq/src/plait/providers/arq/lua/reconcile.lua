-- Hands the jobs whose lease ran out (their worker died, hung or lost Redis) back to their queues. It runs only
-- for the caller that takes the lock, so one worker does it at a time; an idle scan takes no lock.
--
-- Returns {handed back, dropped}.

local leases = KEYS[1]
local lease_info = KEYS[2]
local lock = KEYS[3]

local now_ms = ARGV[1]
local lock_ms = ARGV[2]
local owner = ARGV[3]
local job_key_prefix = ARGV[4]
local limit = tonumber(ARGV[5])

local handed_back = 0
local dropped = 0
local stalled = redis.call('ZRANGEBYSCORE', leases, '-inf', now_ms, 'LIMIT', 0, limit)
if #stalled > 0 and redis.call('SET', lock, owner, 'NX', 'PX', lock_ms) then
  for _, job_id in ipairs(stalled) do
    local raw = redis.call('HGET', lease_info, job_id)
    redis.call('ZREM', leases, job_id)
    redis.call('HDEL', lease_info, job_id)
    local ok, record = false, nil
    if raw then ok, record = pcall(cjson.decode, raw) end
    if ok and type(record) == 'table' and type(record[1]) == 'string' and type(record[2]) == 'string' then
      if redis.call('EXISTS', job_key_prefix .. job_id) == 1 then
        -- The wake-up list comes from the lease record: this script never makes up a key name.
        redis.call('ZADD', record[1], now_ms, job_id)
        redis.call('LPUSH', record[2], '1')
        redis.call('LTRIM', record[2], 0, 63)
        handed_back = handed_back + 1
      end
    else
      dropped = dropped + 1
    end
  end
end

return {handed_back, dropped}
