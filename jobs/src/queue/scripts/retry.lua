-- Acks and deletes one entry and schedules a job to be delivered after a delay.
-- KEYS[1] stream, KEYS[2] delayed
-- ARGV[1] group, ARGV[2] entry id, ARGV[3] delay ms, ARGV[4] member ('<handle>|<job JSON>')
redis.pcall('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[4])
return 1
