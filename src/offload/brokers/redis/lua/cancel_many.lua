-- cancel_many: ARGV = K, now, n, then n pairs (id, number of its follow-ups), then the
-- follow-up envelopes of all of them in order. Each waiting job ends cancelled with its feed
-- entry and its follow-ups (all checked before anything is written: a bad one fails the call
-- and changes nothing); each running one not flagged yet is flagged for its worker (no feed
-- entry, as for one job); final ones are left alone. Returns how many changed.
local now, n = ARGV[2], tonumber(ARGV[3])
local rows, plans, starts, seen = {}, {}, {}, {}
local cursor = 4 + n * 2
for i = 1, n do
  local id, follow = ARGV[2 + i * 2], tonumber(ARGV[3 + i * 2])
  local row = hget_map(K .. 'job:' .. id)
  rows[i] = row
  if row.state == 'queued' or row.state == 'retrying' then
    plans[i] = check_envelopes(cursor, follow, seen)
  end
  starts[i] = cursor
  cursor = cursor + follow * ENVELOPE_WIDTH
end
local changed, created, woken = 0, {}, {}
for i = 1, n do
  local id, row = ARGV[2 + i * 2], rows[i]
  if plans[i] then
    cancel_waiting(id, row, now)
    store_envelopes(starts[i], plans[i], now, created, woken)
    changed = changed + 1
  elseif row.state == 'running' and row.cancel_requested ~= '1' then
    redis.call('HSET', K .. 'job:' .. id, 'cancel_requested', '1')
    changed = changed + 1
  end
end
announce_changes()
announce_work(woken)
return changed
