-- Reserves the worst case of one call of a job against the batch budget, or denies it.
-- KEYS[1] batch hash, KEYS[2] reservations (job id -> nanos)
-- ARGV[1] job id, ARGV[2] nanos, ARGV[3] now (seconds)
-- Returns {-1} batch missing, {0} no budget, {1} granted, {2, spent, reserved, budget} denied.
--
-- Lua numbers are doubles: nano amounts are exact up to 2^53 (about $9M per batch).
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end

-- Whatever this job held belongs to an earlier run that was lost mid-call (a job calls one
-- model at a time), so it goes in every outcome, or it would hold budget forever.
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved_nanos') or '0')
local old = redis.call('HGET', KEYS[2], ARGV[1])
if old then
  reserved = reserved - tonumber(old)
  redis.call('HDEL', KEYS[2], ARGV[1])
  redis.call('HSET', KEYS[1], 'reserved_nanos', string.format('%.0f', reserved))
end

-- Same rounding as the Rust side's `f64::round` (half away from zero), which
-- `math.floor(x + 0.5)` misses by one nano when the addition itself rounds up.
local function round(x)
  if x ~= x then return 0 end
  local a = math.abs(x)
  local f = math.floor(a)
  if a - f >= 0.5 then f = f + 1 end
  if x < 0 then return -f end
  return f
end

local budget_usd = tonumber(redis.call('HGET', KEYS[1], 'budget_usd') or '')
if budget_usd == nil then return {0} end
local budget = round(budget_usd * 1e9)

local spent = tonumber(redis.call('HGET', KEYS[1], 'spent_nanos') or '0')
local nanos = tonumber(ARGV[2])
if spent + reserved + nanos <= budget then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[1], 'reserved_nanos', string.format('%.0f', reserved + nanos))
  return {1}
end
-- Exhausted only when the call can't fit even once every call in flight has settled; until
-- then the caller waits for them.
if spent + nanos > budget then
  redis.call('HSETNX', KEYS[1], 'budget_exhausted_at', ARGV[3])
end
return {2, spent, reserved, budget}
