-- extend: ARGV = K, now (opt: none for the server's clock), lease_for (seconds), then
-- (id, token) pairs. Returns per pair: 0 (not held), 1 (held), 2 (held, and cancellation
-- was requested).
local expires = seconds_after(now_or_server(ARGV[2]), ARGV[3])
local out = {}
for i = 4, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local jk = K .. 'job:' .. id
  local job = redis.call('HMGET', jk, 'state', 'lease_token', 'cancel_requested')
  if job[1] == 'running' and job[2] == token then
    first_write_frees(K .. 'leases', id)  -- (so a heartbeat runs over maxmemory too)
    redis.call('HSET', jk, 'lease_expires', expires)
    redis.call('ZADD', K .. 'leases', expires, id)
    out[#out + 1] = job[3] == '1' and 2 or 1
  else
    out[#out + 1] = 0
  end
end
return out
