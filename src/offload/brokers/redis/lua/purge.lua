-- purge: ARGV = K, queue, cursor, count. One step of a ZSCAN of the queue's waiting jobs
-- from `cursor`: deletes those it returns that still wait there, with their feed entries
-- and effects (as prune does a finished job's: else they stayed for good). A full scan
-- returns every job that waited through it, wherever its run_at sorts it (a scheduled or
-- retrying one behind new ready ones included); one enqueued meanwhile may go too.
-- Returns {the next cursor ('0': done), how many were deleted}.
local queue, cursor, count = ARGV[2], ARGV[3], ARGV[4]
local waiting = K .. 'waiting:' .. queue
local step = redis.call('ZSCAN', waiting, cursor, 'COUNT', count)
local deleted = 0
local found = step[2]
for i = 1, #found, 2 do
  local id = found[i]
  if redis.call('ZSCORE', waiting, id) then   -- (a scan may return one twice)
    local row = hget_map(K .. 'job:' .. id)
    if row.run_at ~= nil then
      drop_waiting(id, queue, row.run_at)
      forget(id, row)
    else
      redis.call('ZREM', waiting, id)
    end
    drop_history(id)
    deleted = deleted + 1
  end
end
return {step[1], deleted}
