-- claim_gated: ARGV = K, now, token, expires, worker, limit, promote_max, scan_max, queue...
-- `claim` within the limits of the claimed queues' kinds (see kind_gates): a held-back
-- kind's jobs are passed over (at most `scan_max` ready entries read per queue), each
-- limited kind gets at most its allowance, and its leased jobs and starts are logged.
-- Returns {claimed rows, 1 when a limit holds jobs back now (else 0), the time a start is
-- next due by a rate ('' for none), the limited kinds with their queues (flat pairs)}.
local now, token, expires, worker = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local limit, promote_max, scan_max = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local queues, open = {}, {}
for i = 9, #ARGV do
  if redis.call('SISMEMBER', K .. 'paused', ARGV[i]) == 0 then
    queues[#queues + 1] = ARGV[i]
    open[ARGV[i]] = true
  end
end
if #queues == 0 then return {{}, 0, '', {}} end

for _, queue in ipairs(queues) do
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

local gates = kind_gates(open, now)
local left = {}
for kind, g in pairs(gates) do left[kind] = g.allow end

-- The eligible ready entries of each queue, in its order, then merged (score, member).
local eligible = {}
for _, queue in ipairs(queues) do
  local key, taken, offset = K .. 'ready:' .. queue, 0, 0
  while taken < limit and offset < scan_max do
    local page = redis.call('ZRANGE', key, offset, offset + 199, 'WITHSCORES')
    if #page == 0 then break end
    offset = offset + #page / 2
    for i = 1, #page, 2 do
      local kind = redis.call('HGET', K .. 'job:' .. member_id(page[i]), 'kind')
      local n = left[kind]
      if taken < limit and (n == nil or n > 0) then
        if n ~= nil then left[kind] = n - 1 end
        eligible[#eligible + 1] = {page[i], queue, tonumber(page[i + 1])}
        taken = taken + 1
      end
    end
  end
end
table.sort(eligible, function(a, b)
  if a[3] ~= b[3] then return a[3] < b[3] end
  return a[1] < b[1]
end)
local picked = {}
for i = 1, math.min(limit, #eligible) do picked[i] = eligible[i] end

local out, taken = lease_picked(picked, now, token, expires, worker)
for _, t in ipairs(taken) do
  local g = gates[t[2]]
  if g ~= nil then
    redis.call('SADD', K .. 'krun:' .. t[2], t[1])
    if g.lim.rate ~= cjson.null then
      redis.call('ZADD', K .. 'kstarts:' .. t[2], now, t[1] .. '@' .. now)
    end
  end
end

-- What holds jobs back now (this claim's starts counted).
local held, next_due, kinds = 0, nil, {}
for kind, g in pairs(kind_gates(open, now)) do
  kinds[#kinds + 1] = kind
  kinds[#kinds + 1] = g.lim.queue
  if g.allow <= 0 then held = 1 end
  if g.due ~= nil and (next_due == nil or g.due < next_due) then next_due = g.due end
end
announce_changes()
return {out, held, next_due and string.format('%.6f', next_due) or '', kinds}
