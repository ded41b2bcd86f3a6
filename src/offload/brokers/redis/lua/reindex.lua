-- reindex: ARGV = K, after, max. Puts up to `max` jobs (in id order, after the id `after`;
-- '' from the start) into the id indexes of the jobs page (st:<state>, kind:<kind>,
-- qids:<queue>), which jobs stored before those indexes existed are missing. Idempotent.
-- Returns the last id handled ('' once every job was).
local after, max = opt(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYLEX', K .. 'ids', after and ('(' .. after) or '-', '+',
  'LIMIT', 0, max)
for _, id in ipairs(ids) do
  local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'kind', 'queue')
  if job[1] then
    redis.call('ZADD', K .. 'st:' .. job[1], 0, id)
    redis.call('ZADD', K .. 'kind:' .. job[2], 0, id)
    redis.call('ZADD', K .. 'qids:' .. job[3], 0, id)
  end
end
if #ids < max then return '' end
return ids[#ids]
