-- workers: ARGV = K, now (opt: none for the server's clock), worker id, its kinds (opt: JSON
-- of kind -> [versions]; none deletes its entry), its registry entry (opt: JSON),
-- forget_after_s. Entries last recorded more than forget_after_s before now (workers that
-- died) are deleted on the way. Returns how many of those there were.
local now, id, kinds, info = now_or_server(ARGV[2]), ARGV[3], opt(ARGV[4]), opt(ARGV[5])
local before = tonumber(now) - tonumber(ARGV[6])
local gone = redis.call('ZRANGEBYSCORE', K .. 'workers:seen', '-inf', '(' .. before)
if #gone > 0 then
  bulk('HDEL', K .. 'workers', gone)
  bulk('HDEL', K .. 'workers:info', gone)
  bulk('ZREM', K .. 'workers:seen', gone)
end
if kinds == nil then
  redis.call('HDEL', K .. 'workers', id)
  redis.call('HDEL', K .. 'workers:info', id)
  redis.call('ZREM', K .. 'workers:seen', id)
else
  first_write_frees(K .. 'workers:seen', id)  -- (so it runs over maxmemory too)
  redis.call('HSET', K .. 'workers', id, kinds)
  set_or_del(K .. 'workers:info', id, info)
  redis.call('ZADD', K .. 'workers:seen', now, id)
end
return #gone
