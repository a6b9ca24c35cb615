-- Reopens a finished batch for a replay (redis.rs, REOPEN_LUA).
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'completed' and state ~= 'failed' and state ~= 'expired' and state ~= 'cancelled' then
  return {0, state or '', redis.call('HGET', KEYS[1], 'replay_id') or ''}
end
-- Floored at zero: a count that went negative would keep the batch from ever finishing.
local failed = tonumber(redis.call('HGET', KEYS[1], 'failed') or '0') or 0
local left = failed - tonumber(ARGV[1])
if left < 0 then left = 0 end
redis.call('HSET', KEYS[1], 'state', 'in_progress', 'failed', left,
  'replay_id', ARGV[2], 'replay_started_at', ARGV[3])
redis.call('HDEL', KEYS[1], 'finalizing_at', 'completed_at', 'cancel_requested_at',
  'reserved_nanos', 'expires_at')
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
return {1}
