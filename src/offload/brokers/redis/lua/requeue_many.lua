-- requeue_many: ARGV = K, now, id... Each dead, failed or cancelled job of the ids is queued
-- again with attempt 0, with its feed entry (as requeue does one); others are left alone.
-- Returns how many were re-queued.
local now = ARGV[2]
local n, woken = 0, {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local row = hget_map(K .. 'job:' .. id)
  if row.state == 'dead' or row.state == 'failed' or row.state == 'cancelled' then
    requeue_job(id, row, now)
    woken[row.queue] = true
    n = n + 1
  end
end
announce_changes()
announce_work(woken)
return n
