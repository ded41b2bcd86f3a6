-- delete_many: ARGV = K, id... Deletes each job of the ids that is in a final state
-- (succeeded, failed, cancelled, dead) with its feed entries and effects; a waiting or
-- running job is never deleted. Returns how many were deleted.
local n = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local row = hget_map(K .. 'job:' .. id)
  local s = row.state
  if s == 'succeeded' or s == 'failed' or s == 'cancelled' or s == 'dead' then
    redis.call('ZREM', K .. 'finished', id)
    redis.call('SREM', K .. 'dead:' .. row.queue, id)
    forget(id, row)
    drop_history(id)
    n = n + 1
  end
end
return n
