-- Acks and deletes one entry and keeps a dead letter; drops dead letters past retention.
-- KEYS[1] stream, KEYS[2] dead (zset, score = epoch ms)
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] retention ms, ARGV[4] dead letter JSON
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now, ARGV[4])
-- Bounded: at most 1000 expired letters per call; housekeeping removes the rest.
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[3])), 'LIMIT', 0, 1000)
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[2], m)
end
return 1
