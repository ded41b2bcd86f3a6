-- workers: ARGV = K, now, worker id, its kinds (opt: JSON of kind -> [versions]; none
-- deletes its entry), forget_before. Entries last recorded before forget_before (workers
-- that died) are deleted on the way. Returns how many of those there were.
local now, id, kinds, before = ARGV[2], ARGV[3], opt(ARGV[4]), ARGV[5]
local gone = redis.call('ZRANGEBYSCORE', K .. 'workers:seen', '-inf', '(' .. before)
if #gone > 0 then
  bulk('HDEL', K .. 'workers', gone)
  bulk('ZREM', K .. 'workers:seen', gone)
end
if kinds == nil then
  redis.call('HDEL', K .. 'workers', id)
  redis.call('ZREM', K .. 'workers:seen', id)
else
  redis.call('HSET', K .. 'workers', id, kinds)
  redis.call('ZADD', K .. 'workers:seen', now, id)
end
return #gone
