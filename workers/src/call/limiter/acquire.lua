-- One admission, all or nothing, against every scope in KEYS.
-- ARGV[3]: estimated tokens; then 6 per key: request limit, unit_us, capacity_us,
-- token limit, unit_us, capacity_us (a limit of 0: none).
-- Reply: {1, now_us, bucket} when granted; {0, wait_us} when not (nothing was taken).
local tokens = tonumber(ARGV[3])
local wait = 0
local function need(us)
  if us > wait then
    wait = us
  end
end

local function check(key, m, limit, unit, capus, w)
  if w <= 0 then
    return
  end
  local cu = num(key, m .. 'cu', 0)
  if cu > now and num(key, m .. 'cap', 0) < w then
    need(cu - now)
  end
  if limit <= 0 then
    return
  end
  evict(key, m)
  -- The pacer (GCRA); a call bigger than the burst waits for it to be idle.
  local level = math.max(num(key, m .. 'tat', now) - now, 0)
  local cost = w * unit
  if cost <= capus then
    need(level + cost - capus)
  else
    need(level)
  end
  -- The guard: wait until enough old buckets leave the window.
  local sum = num(key, m .. 'sum', 0)
  if sum + w > limit then
    local over = sum + w - limit
    local at = nil
    for i = keep, cur do
      local v = num(key, m .. 'b' .. s(i), 0)
      if v >= over then
        at = (i + nb + 1) * bw
        break
      end
      over = over - v
    end
    if at then
      need(at - now)
    else
      need(bw)
    end
  end
end

local function commit(key, m, limit, unit, w)
  if w <= 0 then
    return 0
  end
  if num(key, m .. 'cu', 0) > now then
    redis.call('HINCRBY', key, m .. 'cap', s(-w))
  end
  if limit <= 0 then
    return 0
  end
  local tat = math.max(num(key, m .. 'tat', now), now) + w * unit
  redis.call('HSET', key, m .. 'tat', s(tat))
  redis.call('HINCRBY', key, m .. 'b' .. s(cur), s(w))
  redis.call('HINCRBY', key, m .. 'sum', s(w))
  return tat - now
end

for k = 1, #KEYS do
  local key = KEYS[k]
  local a = 3 + (k - 1) * 6
  need(num(key, 'pu', 0) - now)
  check(key, 'r', tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3]), 1)
  check(key, 't', tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tonumber(ARGV[a + 6]), tokens)
end

local span = (nb + 1) * bw
if wait > 0 then
  for k = 1, #KEYS do
    ensure_ttl(KEYS[k], span)
  end
  return {0, math.ceil(wait)}
end

for k = 1, #KEYS do
  local key = KEYS[k]
  local a = 3 + (k - 1) * 6
  local lr = commit(key, 'r', tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), 1)
  local lt = commit(key, 't', tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), tokens)
  ensure_ttl(key, math.max(span, lr, lt))
end
return {1, now, cur}
