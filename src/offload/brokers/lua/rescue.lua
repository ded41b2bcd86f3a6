-- rescue: ARGV = K, now, error, max. Running jobs whose lease expired before `now` go back
-- to retrying (run now); they end cancelled when cancellation was requested, dead when their
-- budget is spent. Returns {entries scanned, {rows of the rescued jobs after the sweep}}.
local now, err, max = ARGV[2], ARGV[3], tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', K .. 'leases', '-inf', '(' .. now, 'LIMIT', 0, max)
local rows = {}
local woken = {}
for _, id in ipairs(expired) do
  local jk = K .. 'job:' .. id
  local job = redis.call('HMGET', jk, 'state', 'attempt', 'max_attempts', 'queue', 'priority',
    'lease_expires', 'cancel_requested')
  if job[1] ~= 'running' then
    redis.call('ZREM', K .. 'leases', id)   -- a stale index entry
  elseif tonumber(job[6]) >= tonumber(now) then
    redis.call('ZADD', K .. 'leases', job[6], id)   -- index behind the row: repair it
  else
    local queue = job[4]
    redis.call('ZREM', K .. 'leases', id)
    redis.call('SREM', K .. 'running:' .. queue, id)
    redis.call('HDEL', jk, 'lease_token', 'lease_expires')
    redis.call('HSET', jk, 'run_at', now, 'error', err)
    if job[7] == '1' then
      redis.call('HSET', jk, 'state', 'cancelled', 'finished_at', now)
      redis.call('ZADD', K .. 'finished', now, id)
    elseif tonumber(job[2]) >= tonumber(job[3]) then
      redis.call('HSET', jk, 'state', 'dead', 'finished_at', now)
      redis.call('SADD', K .. 'dead:' .. queue, id)
    else
      redis.call('HSET', jk, 'state', 'retrying')
      redis.call('HDEL', jk, 'finished_at')
      put_waiting(id, queue, job[5], now, now)
      woken[queue] = true
    end
    rows[#rows + 1] = event(id)
  end
end
announce_changes()
announce_work(woken)
return {#expired, rows}
