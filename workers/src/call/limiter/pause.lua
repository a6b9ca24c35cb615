-- Pauses the scope KEYS[1] for ARGV[3] µs (never shortens a longer pause).
local key = KEYS[1]
local till = now + tonumber(ARGV[3])
if num(key, 'pu', 0) < till then
  redis.call('HSET', key, 'pu', s(till))
end
ensure_ttl(key, till - now)
return 1
