-- Shared head of the limiter's scripts (prepended to each one).
-- ARGV[1]: the guard's bucket width in µs; ARGV[2]: buckets per window.
-- Time is the Redis server's own (TIME), never a worker's clock.
-- Fields of a scope's hash, per meter m ('r' requests, 't' tokens):
--   m..'tat'  the pacer's theoretical arrival time (µs)
--   m..'b'..i units admitted in guard bucket i;  m..'sum' their sum;  m..'lo' oldest bucket
--   m..'cap', m..'cu'  the provider's last report: units remaining until µs
--   'pu'      paused until µs
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local bw = tonumber(ARGV[1])
local nb = tonumber(ARGV[2])
local cur = math.floor(now / bw)
local keep = cur - nb

-- Numbers go to Redis as plain integers (never in exponent form).
local function s(x)
  return string.format('%.0f', x)
end

local function num(key, field, default)
  local v = redis.call('HGET', key, field)
  if v then
    return tonumber(v)
  end
  return default
end

-- Drops guard buckets older than the window. All buckets lie in [lo, lo + nb].
local function evict(key, m)
  local lo = num(key, m .. 'lo', nil)
  if lo == nil then
    redis.call('HSET', key, m .. 'lo', s(keep))
    return
  end
  if lo >= keep then
    return
  end
  local sum = num(key, m .. 'sum', 0)
  for i = lo, math.min(keep - 1, lo + nb) do
    local f = m .. 'b' .. s(i)
    local v = redis.call('HGET', key, f)
    if v then
      sum = sum - tonumber(v)
      redis.call('HDEL', key, f)
    end
  end
  if sum < 0 then
    sum = 0
  end
  redis.call('HSET', key, m .. 'sum', s(sum), m .. 'lo', s(keep))
end

-- Keeps the key at least `us` more (plus a second), so idle scopes vanish by themselves.
local function ensure_ttl(key, us)
  local want = math.ceil(us / 1000) + 1000
  if redis.call('PTTL', key) < want then
    redis.call('PEXPIRE', key, s(want))
  end
end

