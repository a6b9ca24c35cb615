-- Acks and deletes one entry and parks its job for the offload lane.
-- KEYS[1] stream, KEYS[2] parked hash of the batch
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] job id, ARGV[4] job JSON
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
return 1
