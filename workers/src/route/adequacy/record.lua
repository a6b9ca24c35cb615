-- Counts one answer at the task level and at its bucket's level, halving a level's counts
-- when they exceed the cap (the same rule as `Evidence::add`).
-- KEYS[1]: the task's hash. ARGV: model, bucket, 'p' or 'f', max evidence.
local function count(level)
  local base = level .. '|' .. ARGV[1] .. '|'
  local mine = base .. ARGV[3]
  local other = base .. (ARGV[3] == 'p' and 'f' or 'p')
  local n = tonumber(redis.call('HINCRBYFLOAT', KEYS[1], mine, 1))
  local o = tonumber(redis.call('HGET', KEYS[1], other) or '0') or 0
  if n + o > tonumber(ARGV[4]) then
    -- %.17g round-trips a double, so halving here matches halving in Rust.
    redis.call('HSET', KEYS[1],
      mine, string.format('%.17g', n / 2),
      other, string.format('%.17g', o / 2))
  end
end
count('all')
count(ARGV[2])
return 1
