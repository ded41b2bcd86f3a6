-- registry: ARGV = K, now (opt: none for the server's clock). Returns now, then for every
-- worker with a registry entry: its id, when it last recorded, and its entry (JSON).
local out = {now_or_server(ARGV[2])}
local flat = redis.call('HGETALL', K .. 'workers:info')
for i = 1, #flat, 2 do
  local seen = redis.call('ZSCORE', K .. 'workers:seen', flat[i])
  if seen then
    out[#out + 1] = flat[i]
    out[#out + 1] = seen
    out[#out + 1] = flat[i + 1]
  end
end
return out
