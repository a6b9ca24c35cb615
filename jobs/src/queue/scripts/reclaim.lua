-- Takes over entries idle longer than the visibility timeout.
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] max entries
-- Returns {id, deliveries (counting this one), job JSON or ''} per entry taken.
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], '-', '+', ARGV[4])
local out = {}
for _, p in ipairs(pending) do
  local id = p[1]
  local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], id)
  local entry = claimed[1]
  if entry and entry[2] then
    local fields = entry[2]
    local job = ''
    for k = 1, #fields, 2 do
      if fields[k] == 'j' then
        job = fields[k + 1]
        break
      end
    end
    -- XCLAIM counted this delivery: the count read by XPENDING plus one.
    out[#out + 1] = {id, p[4] + 1, job}
  else
    -- The entry itself is gone: drop the dangling pending record.
    redis.call('XACK', KEYS[1], ARGV[1], id)
  end
end
return out
