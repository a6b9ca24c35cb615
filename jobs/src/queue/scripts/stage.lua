#!lua
-- Stages one chunk of a batch being submitted, at most once per (batch, chunk). Staged jobs
-- wait in a list of their own, invisible to workers, until the whole input is staged.
-- The shebang makes Redis refuse the whole script up front at maxmemory, so a chunk is
-- never half-staged.
-- KEYS[1] the batch's staging list, KEYS[2] per-batch high-water marks (hash)
-- ARGV[1] batch id, ARGV[2] chunk number, ARGV[3..] job JSON
-- Returns the number of jobs staged, or -1 when the chunk was already applied.
local hwm = redis.call('HGET', KEYS[2], ARGV[1])
if hwm and tonumber(hwm) >= tonumber(ARGV[2]) then
  return -1
end
for i = 3, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return #ARGV - 2
