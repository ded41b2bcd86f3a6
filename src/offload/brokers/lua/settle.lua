-- settle: ARGV = K, now, n, then 9 fields per outcome (id, token, state, result, error,
-- run_at, refund 0/1, max_attempts, number of follow-ups), then the follow-up envelopes of
-- all outcomes in order. Optional fields use opt(). Every lease and every follow-up of a
-- held lease is checked before anything is written, so a bad follow-up fails the whole call.
-- Returns 1/0 per outcome (0: the lease was stale; its follow-ups are dropped).
local now, n = ARGV[2], tonumber(ARGV[3])
local WIDTH = 9
local held, plans, starts, taken, seen = {}, {}, {}, {}, {}
local cursor = 4 + n * WIDTH
for i = 1, n do
  local b = 3 + (i - 1) * WIDTH
  local id, token, follow = ARGV[b + 1], ARGV[b + 2], tonumber(ARGV[b + 9])
  local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'lease_token')
  -- A second outcome for one job in this call finds it settled already: stale.
  if not taken[id] and job[1] == 'running' and job[2] == token then
    taken[id] = true
    held[i] = true
    plans[i] = check_envelopes(cursor, follow, seen)
  end
  starts[i] = cursor
  cursor = cursor + follow * ENVELOPE_WIDTH
end

local out, woken, created = {}, {}, {}
for i = 1, n do
  local b = 3 + (i - 1) * WIDTH
  if held[i] then
    local id, state = ARGV[b + 1], ARGV[b + 3]
    local jk = K .. 'job:' .. id
    local job = redis.call('HMGET', jk, 'queue', 'priority')
    local queue = job[1]
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
      put_waiting(id, queue, job[2], run_at, now)
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
    store_envelopes(starts[i], plans[i], now, created, woken)
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
announce_changes()
announce_work(woken)
return out
