-- Moves at most ARGV[1] due delayed jobs into the stream, oldest due first.
-- KEYS[1] delayed (zset, score = due epoch ms, member = '<handle>|<job JSON>'), KEYS[2] stream
-- Returns the number moved. Uses the server clock, so worker clocks do not matter.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  local sep = string.find(m, '|', 1, true)
  local job = m
  if sep then
    job = string.sub(m, sep + 1)
  end
  redis.call('XADD', KEYS[2], '*', 'j', job)
  redis.call('ZREM', KEYS[1], m)
end
return #due
