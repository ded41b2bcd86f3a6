-- purge: ARGV = K, queue, max, cap, offset. Deletes, of the `max` waiting jobs of the
-- queue from rank `offset` on, those enqueued at or before `cap` (the purge's start: jobs
-- enqueued since are kept, and counted in the next call's offset), with their feed entries
-- and effects (as prune does a finished job's: else they stayed for good).
-- Returns {deleted, read}.
local queue, max, cap = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local offset = tonumber(ARGV[5])
local ids = redis.call('ZRANGE', K .. 'waiting:' .. queue, offset, offset + max - 1)
local deleted = 0
for _, id in ipairs(ids) do
  local row = hget_map(K .. 'job:' .. id)
  if row.enqueued_at == nil or tonumber(row.enqueued_at) <= cap then
    if row.run_at ~= nil then
      drop_waiting(id, queue, row.run_at)
      forget(id, row)
    else
      redis.call('ZREM', K .. 'waiting:' .. queue, id)
    end
    drop_history(id)
    deleted = deleted + 1
  end
end
return {deleted, #ids}
