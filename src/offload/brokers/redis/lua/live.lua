-- live: ARGV = K, now (opt: none for the server's clock), within_s. The kinds and versions
-- (JSON) of every worker recorded within_s before now or later.
local since = tonumber(now_or_server(ARGV[2])) - tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', K .. 'workers:seen', since, '+inf')
if #ids == 0 then return {} end
local out = {}
for i = 1, #ids, 4000 do
  local part = redis.call('HMGET', K .. 'workers', unpack(ids, i, math.min(i + 3999, #ids)))
  for _, kinds in ipairs(part) do
    if kinds then out[#out + 1] = kinds end
  end
end
return out
