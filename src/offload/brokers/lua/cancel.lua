-- cancel: ARGV = K, now, id. A waiting job ends cancelled; a running one is flagged for its
-- worker (no feed entry, as nothing the API shows changed). Returns {'ok', row} or
-- {'missing'} or {'final', state}.
local now, id = ARGV[2], ARGV[3]
local jk = K .. 'job:' .. id
local row = hget_map(jk)
if row.state == nil then return {'missing'} end
if row.state == 'queued' or row.state == 'retrying' then
  drop_waiting(id, row.queue, row.run_at)
  redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', now)
  redis.call('ZADD', K .. 'finished', now, id)
  local flat = event(id)
  announce_changes()
  return {'ok', flat}
end
if row.state == 'running' then
  redis.call('HSET', jk, 'cancel_requested', '1')
  return {'ok', redis.call('HGETALL', jk)}
end
return {'final', row.state}
