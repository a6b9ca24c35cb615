-- The provider's report for KEYS[1]: ARGV[3] requests and ARGV[4] tokens remaining ('' when
-- not reported) until ARGV[5] µs from now. The latest report replaces an older one; the
-- scope's own limits still apply on top, so a report can only tighten.
local key = KEYS[1]
local till = now + tonumber(ARGV[5])
if ARGV[3] ~= '' then
  redis.call('HSET', key, 'rcap', ARGV[3], 'rcu', s(till))
end
if ARGV[4] ~= '' then
  redis.call('HSET', key, 'tcap', ARGV[4], 'tcu', s(till))
end
ensure_ttl(key, till - now)
return 1
