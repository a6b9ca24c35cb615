-- Moves a running batch to cancelling; returns the state it is in afterwards (redis.rs).
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'validating' and redis.call('HGET', KEYS[1], 'sealed') ~= '1' then
  -- Still being submitted: nothing of it is visible to workers, so it ends now.
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'completed_at', ARGV[1])
  redis.call('HSETNX', KEYS[1], 'cancel_requested_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'submit_lease_until_ms')
  return 'cancelled'
end
if state == 'validating' or state == 'in_progress' or state == 'cancelling' then
  redis.call('HSET', KEYS[1], 'state', 'cancelling')
  redis.call('HSETNX', KEYS[1], 'cancel_requested_at', ARGV[1])
  return 'cancelling'
end
return state
