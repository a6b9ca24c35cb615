-- Moves a parked job back into the stream, once: nothing is added when it was not parked.
-- KEYS[1] parked hash of the batch, KEYS[2] stream
-- ARGV[1] job id, ARGV[2] job JSON (as it should run now)
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  redis.call('XADD', KEYS[2], '*', 'j', ARGV[2])
  return 1
end
return 0
