-- Deletes consumers with nothing pending that have been idle a long time, and drops
-- dead letters past retention. Both bounded per call.
-- KEYS[1] stream, KEYS[2] dead
-- ARGV[1] group, ARGV[2] min idle ms, ARGV[3] max consumers to delete, ARGV[4] retention ms
-- Returns {consumers deleted, dead letters dropped}.
local deleted = 0
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) == 'table' and consumers.err == nil then
  for _, c in ipairs(consumers) do
    local name, pending, idle
    for k = 1, #c, 2 do
      if c[k] == 'name' then
        name = c[k + 1]
      elseif c[k] == 'pending' then
        pending = c[k + 1]
      elseif c[k] == 'idle' then
        idle = c[k + 1]
      end
    end
    -- Atomic with the check: a consumer deleted here has nothing pending, so nothing is lost.
    if name and pending == 0 and idle and idle >= tonumber(ARGV[2]) then
      redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], name)
      deleted = deleted + 1
      if deleted >= tonumber(ARGV[3]) then
        break
      end
    end
  end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - tonumber(ARGV[4])), 'LIMIT', 0, 1000)
for _, m in ipairs(old) do
  redis.call('ZREM', KEYS[2], m)
end
return {deleted, #old}
