-- Fails, once, a flow whose stored state cannot be read: writes the terminal state the caller built in its place,
-- keeps the unreadable bytes in field 'unreadable' for whoever investigates, finishes the job that found it,
-- clears the flow's timer and announces its end. Like any ended flow, it expires after the retention.
--
-- A compare-and-set on the stored bytes themselves (the version may be unreadable too): returns 1 when done,
-- 0 when the state changed meanwhile (another worker failed it first, say).

local flow_key = KEYS[1]
local leases = KEYS[2]
local lease_info = KEYS[3]
local timers = KEYS[4]
local events = KEYS[5]
local expiring = KEYS[6]

local unreadable = ARGV[1]  -- the state as the caller read it
local state = ARGV[2]
local status = ARGV[3]
local retention_ms = ARGV[4]
local finished_job = ARGV[5]  -- '' when no job found it (a timeout did)
local flow_id = ARGV[6]
local done_channel = ARGV[7]
local job_key_prefix = ARGV[8]
local expire_at_ms = ARGV[9]
local expiring_member = ARGV[10]

if redis.call('HGET', flow_key, 's') ~= unreadable then return 0 end
local version = tonumber(redis.call('HGET', flow_key, 'v')) or 0
redis.call('HSET', flow_key, 's', state, 'v', tostring(version + 1), 'st', status, 'unreadable', unreadable)
redis.call('PEXPIRE', flow_key, retention_ms)
redis.call('PEXPIRE', events, retention_ms)
redis.call('ZADD', expiring, expire_at_ms, expiring_member)
if finished_job ~= '' then
  redis.call('DEL', job_key_prefix .. finished_job)
  redis.call('ZREM', leases, finished_job)
  redis.call('HDEL', lease_info, finished_job)
end
redis.call('ZREM', timers, flow_id)
redis.call('PUBLISH', done_channel, status)
local ends_channel = redis.call('HGET', flow_key, 'n')
if ends_channel then redis.call('PUBLISH', ends_channel, flow_id .. '\n' .. status) end
return 1
