-- Extends the leases the caller still holds by one stall interval; returns the ids of the jobs whose lease it
-- no longer holds (it ran out and the job was handed back, or another worker has it now).

local leases = KEYS[1]
local lease_info = KEYS[2]

local lease_end_ms = ARGV[1]
local owner = ARGV[2]
local FIRST_JOB = 3  -- then the job ids

local lost = {}
for i = FIRST_JOB, #ARGV do
  local job_id = ARGV[i]
  local raw = redis.call('HGET', lease_info, job_id)
  local ok, record = false, nil
  if raw then ok, record = pcall(cjson.decode, raw) end
  if ok and type(record) == 'table' and record[3] == owner then
    redis.call('ZADD', leases, 'XX', lease_end_ms, job_id)
  else
    lost[#lost + 1] = job_id
  end
end
return lost
