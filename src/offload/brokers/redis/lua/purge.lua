-- purge: ARGV = K, queue, max. Deletes up to `max` waiting jobs of the queue, with their
-- feed entries and effects (as prune does a finished job's: else they stayed for good).
-- Returns how many were deleted.
local queue, max = ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGE', K .. 'waiting:' .. queue, 0, max - 1)
for _, id in ipairs(ids) do
  local row = hget_map(K .. 'job:' .. id)
  if row.run_at ~= nil then
    drop_waiting(id, queue, row.run_at)
    forget(id, row)
  else
    redis.call('ZREM', K .. 'waiting:' .. queue, id)
  end
  drop_history(id)
end
return #ids
