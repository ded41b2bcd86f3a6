-- stats: ARGV = K, now. Per queue with waiting, running or dead jobs: name, queued (ready
-- now), scheduled, running, dead, the run_at of the oldest ready job ('' when none), and
-- how many waiting jobs were given back for a worker that knows their newer version.
local now = ARGV[2]

-- Count the members of newer:<queue> still waiting so; drop those that are neither that nor
-- running (claimed by a worker that may give them back again): settled otherwise, cancelled,
-- purged or pruned. The set only ever holds such jobs, never the whole queue.
local function awaiting_newer(queue)
  local key = K .. 'newer:' .. queue
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', key)) do
    local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'error')
    local state = job[1]
    if (state == 'queued' or state == 'retrying') and newer_version(job[2]) then
      n = n + 1
    elseif state ~= 'running' then
      redis.call('SREM', key, id)
    end
  end
  return n
end

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
    out[#out + 1] = {queue, ready, later, running, dead, oldest, awaiting_newer(queue)}
  end
end
return out
