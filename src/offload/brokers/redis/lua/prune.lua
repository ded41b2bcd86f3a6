-- prune: ARGV = K, cutoff, max. Deletes up to `max` succeeded, failed and cancelled jobs that
-- finished before `cutoff`, with their feed entries and effects. Returns how many.
local cutoff, max = ARGV[2], tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', K .. 'finished', '-inf', '(' .. cutoff, 'LIMIT', 0, max)
for _, id in ipairs(ids) do
  redis.call('ZREM', K .. 'finished', id)
  local row = hget_map(K .. 'job:' .. id)
  if row.owner ~= nil then forget(id, row) end
  drop_history(id)
end
return #ids
