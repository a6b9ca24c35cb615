-- One step of a submission's life (see `SubmitStep`). Returns 1 when applied, 0 when the
-- batch is not in a state the step applies to, -1 when there is no such batch.
-- KEYS[1] batch hash, KEYS[2] settlement bitmap, KEYS[3] reservations, KEYS[4] lease
-- ARGV[1] step, ARGV[2] ms (lease end, or now for `interrupted`), ARGV[3] now (s),
-- ARGV[4] message (the staging id for `replaying`)
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local state = redis.call('HGET', KEYS[1], 'state')
local sealed = redis.call('HGET', KEYS[1], 'sealed') == '1'
local step = ARGV[1]
if step == 'renew' then
  if state == 'validating' or (sealed and redis.call('HEXISTS', KEYS[1], 'fingerprint') == 1) then
    redis.call('HSET', KEYS[1], 'submit_lease_until_ms', ARGV[2])
    return 1
  end
  return 0
elseif step == 'seal' then
  if state ~= 'validating' then return 0 end
  redis.call('HSET', KEYS[1], 'state', 'in_progress', 'in_progress_at', ARGV[3],
    'sealed', '1', 'submit_lease_until_ms', ARGV[2])
  return 1
elseif step == 'published' then
  redis.call('HDEL', KEYS[1], 'fingerprint', 'sealed', 'submit_lease_until_ms', 'staging')
  return 1
elseif step == 'replaying' then
  -- A replay reopened the batch and staged its jobs under ARGV[4]: sealed from the start.
  if state ~= 'in_progress' then return 0 end
  redis.call('HSET', KEYS[1], 'fingerprint', 'replay', 'sealed', '1',
    'submit_lease_until_ms', ARGV[2], 'staging', ARGV[4])
  return 1
elseif step == 'interrupted' then
  if state ~= 'validating' then return 0 end
  local lease = tonumber(redis.call('HGET', KEYS[1], 'submit_lease_until_ms') or '0')
  if lease > tonumber(ARGV[2]) then return 0 end
  -- The fingerprint stays, so `--resume` can still check its input.
  redis.call('HSET', KEYS[1], 'state', 'failed', 'completed_at', ARGV[3],
    'failure_code', 'submit_interrupted', 'failure_message', ARGV[4])
  redis.call('HDEL', KEYS[1], 'submit_lease_until_ms', 'reserved_nanos')
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  return 1
elseif step == 'resume' then
  local interrupted = state == 'failed'
    and redis.call('HGET', KEYS[1], 'failure_code') == 'submit_interrupted'
  if state ~= 'validating' and not interrupted then return 0 end
  -- Nothing of an unsealed batch ran: only bad lines were settled, and resuming settles
  -- them again, so the counts start over.
  redis.call('HSET', KEYS[1], 'state', 'validating', 'submit_lease_until_ms', ARGV[2],
    'completed', '0', 'failed', '0', 'spent_nanos', '0')
  redis.call('HDEL', KEYS[1], 'failure_code', 'failure_message', 'completed_at',
    'finalizing_at', 'sealed')
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
  return 1
end
return redis.error_reply('unknown submit step ' .. step)
