-- An atomic snapshot of the queue's counts: {pending, in flight, delayed, dead}. Pending
-- counts the stream's undelivered entries and the jobs of published backlogs.
-- KEYS[1] stream, KEYS[2] delayed, KEYS[3] dead, KEYS[4] fair:n (backlog jobs)
-- ARGV[1] group, ARGV[2] retention ms
local len = redis.call('XLEN', KEYS[1])
local in_flight = 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and summary.err == nil then
  in_flight = summary[1]
end
local backlog = math.max(tonumber(redis.call('GET', KEYS[4]) or '0') or 0, 0)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dead = redis.call('ZCOUNT', KEYS[3], now - tonumber(ARGV[2]), '+inf')
return {len - in_flight + backlog, in_flight, redis.call('ZCARD', KEYS[2]), dead}
