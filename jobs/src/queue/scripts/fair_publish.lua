#!lua
-- Publishes a sealed batch's staged jobs: its staging list becomes its backlog and joins
-- the claim order, which the refill script draws from. Idempotent: a backlog already in the
-- claim order stays as it is, so publishing again after a timeout changes nothing.
-- A backlog joins its tenant's set at the lowest virtual time there, and a tenant joins its
-- priority level at the level's virtual time (or its own, if later): coming back after a
-- pause gains no credit, and a new batch is served from its first pick.
-- KEYS[1] the staging list, KEYS[2] fair:b, KEYS[3] fair:w, KEYS[4] fair:n,
-- KEYS[5] fair:prios, KEYS[6] fair:vt
-- ARGV[1] staging id, ARGV[2] priority, ARGV[3] tenant, ARGV[4] weight (0: keep the known
-- one, else 1), ARGV[5] the prefix of the per-level keys (`by:{q}:fair:`, same slot)
-- Returns the jobs in the backlog (0: nothing to publish).
local sid, prio, tenant, base = ARGV[1], ARGV[2], ARGV[3], ARGV[5]
local weight = tonumber(ARGV[4])
if weight > 0 then
  redis.call('HSET', KEYS[3], tenant, weight)
else
  redis.call('HSETNX', KEYS[3], tenant, 1)
end
local n = redis.call('LLEN', KEYS[1])
if redis.call('HEXISTS', KEYS[2], sid) == 1 or n == 0 then
  return n
end
redis.call('HSET', KEYS[2], sid, prio .. '|' .. tenant)
redis.call('INCRBY', KEYS[4], n)
local mine = base .. 'pt:' .. prio .. ':' .. tenant
local first = redis.call('ZRANGE', mine, 0, 0, 'WITHSCORES')
redis.call('ZADD', mine, tonumber(first[2] or '0'), sid)
local level = base .. 'p:' .. prio
if not redis.call('ZSCORE', level, tenant) then
  local lowest = redis.call('ZRANGE', level, 0, 0, 'WITHSCORES')
  local now = tonumber(lowest[2] or redis.call('HGET', KEYS[6], 'p:' .. prio) or '0')
  local own = tonumber(redis.call('HGET', KEYS[6], 't:' .. prio .. ':' .. tenant) or '0')
  redis.call('ZADD', level, math.max(now, own), tenant)
end
redis.call('ZADD', KEYS[5], prio, prio)
return n
