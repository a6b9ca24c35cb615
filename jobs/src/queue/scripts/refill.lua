#!lua
-- Tops the stream up to ARGV[4] ready (undelivered) entries from the published backlogs,
-- at most ARGV[6] jobs per pick: the highest priority with work; at it, the tenant with the
-- lowest virtual time, which advances by 1/weight per job (weighted fair share); of that
-- tenant, the backlog with the lowest virtual time, which advances by 1 per job (fair across
-- its batches). A pick of a few jobs keeps the set updates off the per-job cost; the order
-- is exact to within one pick.
-- Each pick is a few O(log n) calls; a backlog that empties leaves the sets, so a batch with
-- nothing due costs nothing. Moves and counts are one atomic step: nothing is moved twice
-- or lost. Refused whole at maxmemory (shebang).
-- KEYS[1] stream, KEYS[2] fair:b, KEYS[3] fair:w, KEYS[4] fair:n, KEYS[5] fair:prios,
-- KEYS[6] fair:vt
-- ARGV[1] group, ARGV[2] the prefix of the per-level keys (`by:{q}:fair:`), ARGV[3] the
-- prefix of staging lists (`by:{q}:staged:`), ARGV[4] window, ARGV[5] at most this many
-- moves, ARGV[6] jobs per pick
-- Returns the number of jobs moved.
local waiting = tonumber(redis.call('GET', KEYS[4]) or '0')
if waiting <= 0 then
  return 0
end
local in_flight = 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and summary.err == nil then
  in_flight = summary[1]
end
local ready = redis.call('XLEN', KEYS[1]) - in_flight
local want = math.min(tonumber(ARGV[4]) - ready, tonumber(ARGV[5]))
if want <= 0 then
  return 0
end
local base, staged = ARGV[2], ARGV[3]
local quantum = math.max(tonumber(ARGV[6]) or 1, 1)
local weights, served = {}, {}
local moved, empty = 0, false
local function park_clock(field, vt)
  redis.call('HSET', KEYS[6], field, vt)
end
-- Bounded: each round moves a job or removes a member that has none.
for _ = 1, want * 3 + 16 do
  if moved >= want then
    break
  end
  local top = redis.call('ZREVRANGE', KEYS[5], 0, 0)
  if not top[1] then
    empty = true
    break
  end
  local prio = top[1]
  local level = base .. 'p:' .. prio
  local t = redis.call('ZRANGE', level, 0, 0, 'WITHSCORES')
  if not t[1] then
    redis.call('ZREM', KEYS[5], prio)
  else
    local tenant, tvt = t[1], tonumber(t[2])
    local mine = base .. 'pt:' .. prio .. ':' .. tenant
    local b = redis.call('ZRANGE', mine, 0, 0, 'WITHSCORES')
    if b[1] then
      local sid, bvt = b[1], tonumber(b[2])
      local list = staged .. sid
      local take = math.min(quantum, want - moved)
      local jobs = redis.call('LRANGE', list, 0, take - 1)
      local n = #jobs
      if n > 0 then
        redis.call('LTRIM', list, n, -1)
        for _, job in ipairs(jobs) do
          redis.call('XADD', KEYS[1], '*', 'j', job)
        end
        moved = moved + n
        served['b:' .. sid] = (served['b:' .. sid] or 0) + n
        served['t:' .. tenant] = (served['t:' .. tenant] or 0) + n
        if not weights[tenant] then
          weights[tenant] = tonumber(redis.call('HGET', KEYS[3], tenant) or '1') or 1
        end
        tvt = tvt + n / math.max(weights[tenant], 1)
      end
      if n > 0 and redis.call('LLEN', list) > 0 then
        redis.call('ZADD', mine, bvt + n, sid)
      else
        redis.call('ZREM', mine, sid)
        redis.call('HDEL', KEYS[2], sid)
      end
    end
    if redis.call('ZCARD', mine) > 0 then
      redis.call('ZADD', level, tvt, tenant)
    else
      redis.call('ZREM', level, tenant)
      park_clock('t:' .. prio .. ':' .. tenant, tvt)
      if redis.call('ZCARD', level) == 0 then
        redis.call('ZREM', KEYS[5], prio)
        park_clock('p:' .. prio, tvt)
      end
    end
  end
end
if empty then
  -- No backlog left: whatever the counter says, nothing waits (self-healing).
  redis.call('SET', KEYS[4], 0)
elseif moved > 0 then
  redis.call('DECRBY', KEYS[4], moved)
end
if moved > 0 then
  local t = redis.call('TIME')
  local slot = base .. 's:' .. math.floor(tonumber(t[1]) / 10)
  for field, count in pairs(served) do
    redis.call('HINCRBY', slot, field, count)
  end
  redis.call('EXPIRE', slot, 130)
end
return moved
