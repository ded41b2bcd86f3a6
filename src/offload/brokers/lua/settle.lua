-- settle: ARGV = K, now, then 8 fields per outcome: id, token, state, result, error, run_at,
-- refund (0/1), max_attempts. Optional fields use opt(). Returns 1/0 per outcome (0: stale).
local now = ARGV[2]
local WIDTH = 8
local out = {}
local woken = {}
for b = 2, #ARGV - 1, WIDTH do
  local id, token, state = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  local jk = K .. 'job:' .. id
  local job = redis.call('HMGET', jk, 'state', 'lease_token', 'queue', 'priority')
  if job[1] == 'running' and job[2] == token then
    local queue = job[3]
    redis.call('ZREM', K .. 'leases', id)
    redis.call('SREM', K .. 'running:' .. queue, id)
    redis.call('HDEL', jk, 'lease_token', 'lease_expires')
    redis.call('HSET', jk, 'state', state)
    set_or_del(jk, 'error', opt(ARGV[b + 5]))
    local budget = opt(ARGV[b + 8])
    if budget ~= nil then redis.call('HSET', jk, 'max_attempts', budget) end
    if state == 'queued' or state == 'retrying' then
      local run_at = ARGV[b + 6]
      redis.call('HSET', jk, 'run_at', run_at)
      if ARGV[b + 7] == '1' then redis.call('HINCRBY', jk, 'attempt', -1) end
      put_waiting(id, queue, job[4], run_at, now)
      woken[queue] = true
    else
      set_or_del(jk, 'result', opt(ARGV[b + 4]))
      redis.call('HSET', jk, 'finished_at', now)
      if state == 'dead' then
        redis.call('SADD', K .. 'dead:' .. queue, id)
      else
        redis.call('ZADD', K .. 'finished', now, id)
      end
    end
    event(id)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
announce_changes()
announce_work(woken)
return out
