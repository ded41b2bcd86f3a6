-- forget_owner: ARGV = K, owner. Takes the owner out of each fair queue's ring (fring:<q>,
-- see claim_gated) where no job of hers waits any more: the entries of her zset
-- fready:… whose jobs no longer wait there (cancelled, deleted, claimed: a claim drops
-- them lazily) are dropped first, as a claim would. Where one still waits she keeps her
-- turn (out of the ring, it would wait for good). Returns how many rings she left.
local owner, n = ARGV[2], 0
local function waits(queue, member)
  local id = member_id(member)
  local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'queue', 'run_at')
  return (job[1] == 'queued' or job[1] == 'retrying') and job[2] == queue
    and ready_member(job[3], id) == member
end
for _, queue in ipairs(redis.call('SMEMBERS', K .. 'queues')) do
  local ring = K .. 'fring:' .. queue
  if redis.call('ZSCORE', ring, owner) then
    local key, live = fair_key(queue, owner), false
    while not live do
      local e = redis.call('ZRANGE', key, 0, 0)
      if #e == 0 then break end
      if waits(queue, e[1]) then live = true else redis.call('ZREM', key, e[1]) end
    end
    if not live then n = n + redis.call('ZREM', ring, owner) end
  end
end
return n
