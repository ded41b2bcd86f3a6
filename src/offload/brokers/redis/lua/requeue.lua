-- requeue: ARGV = K, now, id. A dead, failed or cancelled job is queued again with attempt 0.
-- Returns {'ok', row} or {'missing'} or {'invalid', state}.
local now, id = ARGV[2], ARGV[3]
local jk = K .. 'job:' .. id
local row = hget_map(jk)
if row.state == nil then return {'missing'} end
if row.state ~= 'dead' and row.state ~= 'failed' and row.state ~= 'cancelled' then
  return {'invalid', row.state}
end
local flat = requeue_job(id, row, now)
announce_changes()
announce_work({[row.queue] = true})
return {'ok', flat}
