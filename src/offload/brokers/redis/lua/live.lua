-- live: ARGV = K, since. The kinds and versions (JSON) of every worker recorded at `since`
-- or later.
local ids = redis.call('ZRANGEBYSCORE', K .. 'workers:seen', ARGV[2], '+inf')
if #ids == 0 then return {} end
local out = {}
for i = 1, #ids, 4000 do
  local part = redis.call('HMGET', K .. 'workers', unpack(ids, i, math.min(i + 3999, #ids)))
  for _, kinds in ipairs(part) do
    if kinds then out[#out + 1] = kinds end
  end
end
return out
