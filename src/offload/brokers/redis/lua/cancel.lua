-- cancel: ARGV = K, now, id, then follow-up envelopes. A waiting job ends cancelled and its
-- follow-ups are stored (checked first: a bad one fails the call and cancels nothing); a
-- running one is only flagged for its worker (no feed entry, as nothing the API shows
-- changed; its worker settles it with the follow-ups). Returns {'ok', row} or {'missing'} or
-- {'final', state}.
local now, id = ARGV[2], ARGV[3]
local jk = K .. 'job:' .. id
local row = hget_map(jk)
if row.state == nil then return {'missing'} end
if row.state == 'queued' or row.state == 'retrying' then
  local plan = check_envelopes(4, (#ARGV - 3) / ENVELOPE_WIDTH, {})
  local flat = cancel_waiting(id, row, now)
  local created, woken = {}, {}
  store_envelopes(4, plan, now, created, woken)
  announce_changes()
  announce_work(woken)
  return {'ok', flat}
end
if row.state == 'running' then
  redis.call('HSET', jk, 'cancel_requested', '1')
  return {'ok', redis.call('HGETALL', jk)}
end
return {'final', row.state}
