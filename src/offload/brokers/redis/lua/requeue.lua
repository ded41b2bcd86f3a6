-- requeue: ARGV = K, now, id. A dead, failed or cancelled job is queued again with attempt 0.
-- Returns {'ok', row} or {'missing'} or {'invalid', state}.
local now, id = ARGV[2], ARGV[3]
local jk = K .. 'job:' .. id
local row = hget_map(jk)
if row.state == nil then return {'missing'} end
if row.state ~= 'dead' and row.state ~= 'failed' and row.state ~= 'cancelled' then
  return {'invalid', row.state}
end
redis.call('SREM', K .. 'dead:' .. row.queue, id)
redis.call('ZREM', K .. 'finished', id)
redis.call('HSET', jk, 'state', 'queued', 'attempt', '0', 'run_at', now, 'cancel_requested', '0')
redis.call('HDEL', jk, 'result', 'started_at', 'finished_at', 'progress_fraction',
  'progress_message', 'worker')
put_waiting(id, row.queue, row.priority, now, now)
local flat = event(id)
announce_changes()
announce_work({[row.queue] = true})
return {'ok', flat}
