-- Adds one chunk of a batch's jobs, at most once per (batch, chunk).
-- KEYS[1] stream, KEYS[2] per-batch high-water marks (hash)
-- ARGV[1] batch id, ARGV[2] chunk number, ARGV[3..] job JSON
-- Returns the number of entries added, or -1 when the chunk was already applied.
-- ARGV is walked with a loop, never unpacked, so chunks of any size work.
local hwm = redis.call('HGET', KEYS[2], ARGV[1])
if hwm and tonumber(hwm) >= tonumber(ARGV[2]) then
  return -1
end
for i = 3, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'j', ARGV[i])
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return #ARGV - 2
