-- Sets (ARGV[1] = '1', ARGV[2] dollars) or removes (ARGV[1] = '0') the budget of a batch,
-- and lifts the exhausted mark so the batch dispatches again.
-- KEYS[1] batch hash. Returns -1 when the batch is missing, 1 otherwise.
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'budget_usd', ARGV[2])
else
  redis.call('HDEL', KEYS[1], 'budget_usd')
end
redis.call('HDEL', KEYS[1], 'budget_exhausted_at')
return 1
