-- Ends leases the caller still holds: hands each job back to its queue (due at the given time), drops it for
-- good, or only ends the lease and leaves the job alone (a job found on the wrong queue is another queue's).
-- A lease the caller no longer holds (it ran out and the job went to another worker) is left alone.
--
-- A lease record is the JSON array [queue, wake-up list, owner], written when the job was leased.
-- Returns how many leases were ended.

local leases = KEYS[1]
local lease_info = KEYS[2]

local job_key_prefix = ARGV[1]
local owner = ARGV[2]
local FIRST_JOB = 3  -- then per job: job id, due ms ('' = drop the job, '-' = leave it)

local ended = 0
for i = FIRST_JOB, #ARGV, 2 do
  local job_id = ARGV[i]
  local due_ms = ARGV[i + 1]
  local raw = redis.call('HGET', lease_info, job_id)
  local ok, record = false, nil
  if raw then ok, record = pcall(cjson.decode, raw) end
  if ok and type(record) == 'table' and record[3] == owner then
    redis.call('ZREM', leases, job_id)
    redis.call('HDEL', lease_info, job_id)
    local job_key = job_key_prefix .. job_id
    if due_ms == '' then
      redis.call('DEL', job_key)
    elseif due_ms ~= '-' and redis.call('EXISTS', job_key) == 1 then
      redis.call('ZADD', record[1], due_ms, job_id)
      redis.call('LPUSH', record[2], '1')
      redis.call('LTRIM', record[2], 0, 63)
    end
    ended = ended + 1
  end
end
return ended
