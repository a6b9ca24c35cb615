-- Heartbeat: keeps deliveries this consumer still holds claimed for another visibility
-- timeout by resetting their idle time (XCLAIM ... JUSTID leaves the delivery count alone).
-- A delivery another consumer has reclaimed is left to it and reported as lost. One no
-- longer pending at all was acked (or retried, parked) since the caller looked: it is done,
-- not lost, and is skipped.
-- KEYS[1] stream; ARGV[1] group, ARGV[2] consumer, ARGV[3..] entry ids
-- Returns the ids another consumer holds now.
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #p == 1 then
    if p[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      table.insert(lost, ARGV[i])
    end
  end
end
return lost
