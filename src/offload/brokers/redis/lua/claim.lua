-- claim: ARGV = K, now (opt: none for the server's clock), token, lease_for (seconds),
-- worker, limit, promote_max, halt (opt: the halt key of a blocked waiter), queue...
-- Promotes due scheduled jobs, then leases the `limit` best ready jobs across the queues
-- (lowest priority, then run_at, then id). Returns the claimed jobs' lease rows (lease_row).
-- The leased ids are noted under the token for as long as the lease: a claim whose token
-- noted some (sent again, its first reply lost; or sent once more after the client gave up
-- on it, while an attempt of it still waited at a stalled server) answers the noted jobs
-- still leased to the token, and claims no more: whichever attempt runs first claims.
-- A claim sent behind a waiter's BLPOP (wait_and_claim) takes nothing once its halt key
-- is set (its worker stopping made the BLPOP return), and drops the key. A claim that took
-- `limit` jobs and left ready ones behind wakes one more blocked worker.
local now, token, worker = now_or_server(ARGV[2]), ARGV[3], ARGV[5]
local expires = seconds_after(now, ARGV[4])
local limit, promote_max = tonumber(ARGV[6]), tonumber(ARGV[7])
local noted = noted_claim(token)
if noted then return noted end
local halt = opt(ARGV[8])
if halt and redis.call('DEL', K .. 'halt:' .. halt) == 1 then return {} end
local queues = {}
for i = 9, #ARGV do   -- a paused queue gives nothing (one set lookup per queue)
  if redis.call('SISMEMBER', K .. 'paused', ARGV[i]) == 0 then queues[#queues + 1] = ARGV[i] end
end
if #queues == 0 then return {} end

for _, queue in ipairs(queues) do
  gather_fair(queue, promote_max)   -- (one EXISTS, unless a fair claim spread it once)
  local sched = K .. 'sched:' .. queue
  local due = redis.call('ZRANGEBYSCORE', sched, '-inf', now, 'LIMIT', 0, promote_max)
  for _, id in ipairs(due) do
    local job = redis.call('HMGET', K .. 'job:' .. id, 'priority', 'run_at')
    if job[1] then
      redis.call('ZADD', K .. 'ready:' .. queue, job[1], ready_member(job[2], id))
    end
    redis.call('ZREM', sched, id)
  end
end

-- The best `limit` of each queue, merged in Redis's own order (score, then member bytes).
local picked = {}   -- member -> queue
local merge = nil
if #queues == 1 then
  for _, m in ipairs(redis.call('ZRANGE', K .. 'ready:' .. queues[1], 0, limit - 1)) do
    picked[#picked + 1] = {m, queues[1]}
  end
else
  merge = K .. 'tmp:claim'
  redis.call('DEL', merge)   -- scratch space of this call only
  local origin = {}
  for _, queue in ipairs(queues) do
    local best = redis.call('ZRANGE', K .. 'ready:' .. queue, 0, limit - 1, 'WITHSCORES')
    for i = 1, #best, 2 do
      redis.call('ZADD', merge, best[i + 1], best[i])
      origin[best[i]] = queue
    end
  end
  for _, m in ipairs(redis.call('ZRANGE', merge, 0, limit - 1)) do
    picked[#picked + 1] = {m, origin[m]}
  end
  redis.call('DEL', merge)
end

local out = lease_picked(picked, now, token, expires, worker)
if #picked >= limit then
  for _, queue in ipairs(queues) do
    if redis.call('ZCARD', K .. 'ready:' .. queue) > 0 then wake_one(queue) end
  end
end
announce_changes()
return out
