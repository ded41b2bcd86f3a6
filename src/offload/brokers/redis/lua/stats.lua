-- stats: ARGV = K, now. Per queue with waiting, running or dead jobs: name, queued (ready
-- now), scheduled, running, dead, and the run_at of the oldest ready job ('' when none).
local now = ARGV[2]
local out = {}
for _, queue in ipairs(redis.call('SMEMBERS', K .. 'queues')) do
  local waiting = K .. 'waiting:' .. queue
  local ready = redis.call('ZCOUNT', waiting, '-inf', now)
  local later = redis.call('ZCOUNT', waiting, '(' .. now, '+inf')
  local running = redis.call('SCARD', K .. 'running:' .. queue)
  local dead = redis.call('SCARD', K .. 'dead:' .. queue)
  if ready + later + running + dead > 0 then
    local oldest = ''
    if ready > 0 then oldest = redis.call('ZRANGE', waiting, 0, 0, 'WITHSCORES')[2] end
    out[#out + 1] = {queue, ready, later, running, dead, oldest}
  end
end
return out
