-- enqueue: ARGV = K, now, then 15 fields per envelope (see RedisBackend._enqueue_args).
-- All or nothing: every envelope is checked before anything is written.
local now = ARGV[2]
local WIDTH = 15
local n = (#ARGV - 2) / WIDTH
local plan = {}      -- per envelope: true = create, or the id of the job it repeats
local batch_ids = {}
local batch_idem = {}
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local id, owner, key = ARGV[b + 1], ARGV[b + 12], opt(ARGV[b + 11])
  local first = nil
  if key ~= nil then
    local field = idem_field(owner, key)
    first = batch_idem[field] or redis.call('HGET', K .. 'idem', field)
    if not first then batch_idem[field] = id end
  end
  if first then
    plan[i] = first
  else
    if batch_ids[id] or redis.call('EXISTS', K .. 'job:' .. id) == 1 then
      return redis.error_reply('OFFLOAD job id ' .. id .. ' already exists; nothing was stored')
    end
    batch_ids[id] = true
    plan[i] = true
  end
end

local out = {}
local queues = {}
for i = 0, n - 1 do
  local b = 2 + i * WIDTH
  local id = ARGV[b + 1]
  if plan[i] == true then
    local queue, priority, run_at, owner = ARGV[b + 4], ARGV[b + 5], ARGV[b + 9], ARGV[b + 12]
    local key = opt(ARGV[b + 11])
    local jk = K .. 'job:' .. id
    redis.call('HSET', jk, 'id', id, 'kind', ARGV[b + 2], 'version', ARGV[b + 3],
      'queue', queue, 'priority', priority, 'payload', ARGV[b + 6], 'state', 'queued',
      'attempt', ARGV[b + 7], 'max_attempts', ARGV[b + 8], 'run_at', run_at,
      'enqueued_at', ARGV[b + 10], 'owner', owner, 'cancel_requested', '0')
    set_or_del(jk, 'idempotency_key', key)
    set_or_del(jk, 'trace', opt(ARGV[b + 13]))
    set_or_del(jk, 'timeout', opt(ARGV[b + 14]))
    set_or_del(jk, 'options', opt(ARGV[b + 15]))
    redis.call('ZADD', K .. 'ids', 0, id)
    redis.call('ZADD', K .. 'own:' .. owner, 0, id)
    if key ~= nil then redis.call('HSET', K .. 'idem', idem_field(owner, key), id) end
    redis.call('SADD', K .. 'queues', queue)
    put_waiting(id, queue, priority, run_at, now)
    event(id)
    queues[queue] = true
    out[#out + 1] = id
    out[#out + 1] = 1
  else
    out[#out + 1] = plan[i]
    out[#out + 1] = 0
  end
end
announce_changes()
announce_work(queues)
return out
