-- Replaces a job's reservation with the actual cost of its call.
-- KEYS[1] batch hash, KEYS[2] reservations; ARGV[1] job id, ARGV[2] actual nanos
-- Returns -1 when the batch is missing, 1 otherwise.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  redis.call('HDEL', KEYS[2], ARGV[1])
  local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved_nanos') or '0') - tonumber(old)
  redis.call('HSET', KEYS[1], 'reserved_nanos', string.format('%.0f', reserved))
end
-- No reservation still counts: the call happened (unbudgeted, or its run was interrupted).
redis.call('HINCRBY', KEYS[1], 'spent_nanos', ARGV[2])
return 1
