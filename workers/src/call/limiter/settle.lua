-- Corrects one grant's tokens by diff = actual - estimate in every scope in KEYS.
-- ARGV[3]: diff; ARGV[4]: the grant's guard bucket; then 2 per key: token unit_us, token
-- limit (0: the scope has no TPM, only a provider report to correct).
local diff = tonumber(ARGV[3])
local bucket = tonumber(ARGV[4])
for k = 1, #KEYS do
  local key = KEYS[k]
  local unit = tonumber(ARGV[3 + 2 * k])
  local limit = tonumber(ARGV[4 + 2 * k])
  if num(key, 'tcu', 0) > now then
    redis.call('HSET', key, 'tcap', s(math.max(num(key, 'tcap', 0) - diff, 0)))
  end
  if limit > 0 then
    evict(key, 't')
    -- The pacer: a refund is usable at once; a charge pushes later calls back.
    local tat = num(key, 'ttat', nil)
    local level = 0
    if tat then
      redis.call('HSET', key, 'ttat', s(tat + diff * unit))
      level = tat + diff * unit - now
    end
    -- The guard: correct the bucket the call was counted in, if still in the window.
    local f = 'tb' .. s(bucket)
    local v = num(key, f, nil)
    if v then
      local nv = math.max(v + diff, 0)
      redis.call('HSET', key, f, s(nv))
      redis.call('HINCRBY', key, 'tsum', s(nv - v))
    elseif diff > 0 then
      redis.call('HINCRBY', key, 'tb' .. s(cur), s(diff))
      redis.call('HINCRBY', key, 'tsum', s(diff))
    end
    ensure_ttl(key, math.max((nb + 1) * bw, level))
  end
end
return 1
