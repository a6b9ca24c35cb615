#!lua
-- Moves at most ARGV[1] staged jobs of a sealed batch into the stream, oldest first.
-- Refused whole at maxmemory (shebang), and it trims only what it added, so a step that
-- fails moves nothing and a repeated step moves each job once.
-- KEYS[1] the batch's staging list, KEYS[2] stream
-- Returns the number moved; 0 when nothing is left.
local n = tonumber(ARGV[1])
local jobs = redis.call('LRANGE', KEYS[1], 0, n - 1)
for _, job in ipairs(jobs) do
  redis.call('XADD', KEYS[2], '*', 'j', job)
end
if #jobs > 0 then
  redis.call('LTRIM', KEYS[1], #jobs, -1)
end
return #jobs
