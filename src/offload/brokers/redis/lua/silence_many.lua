-- silence_many: ARGV = K, id... Jobs whose deliveries must send nothing (an erasure): the
-- delivery options of each that exists go, and the mark that no target is to be told of
-- it takes their place. Returns how many were marked.
local n = 0
for i = 2, #ARGV do
  local key = K .. 'job:' .. ARGV[i]
  if redis.call('EXISTS', key) == 1 then
    redis.call('HSET', key, 'options', '{"silenced":true}')
    n = n + 1
  end
end
return n
