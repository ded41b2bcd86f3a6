-- claim_gated: ARGV = K, now (opt: none for the server's clock), token, lease_for
-- (seconds), worker, limit, promote_max, scan_max, turn, n_fair, then n_fair fair queues,
-- then the queues to claim from.
-- `claim` within the limits of the claimed queues' kinds (see kind_gates): a held-back
-- kind's jobs are passed over (at most `scan_max` entries read per queue), each limited
-- kind gets at most its allowance, and its leased jobs and starts are logged.
-- A fair queue's ready jobs move (as a claim first sees them) from ready:<q> to one zset
-- per owner, fready:<len(q)>:<q><owner> (same scores and members), with the owners in
-- fring:<q> (zset by each owner's last turn, from the counter fturn:<q>); the claim takes
-- one job of each owner in turn, least recently served first. Fair queues and the plain
-- ones (merged in claim order) take turns, those that hold jobs, from the one whose turn it
-- is (`turn`, the claimer's count of its claims: a claim of one job took from the first
-- every time).
-- The leased ids are noted under the token (lease_picked): a claim whose token noted some
-- (sent again, as `claim` is) answers the noted jobs still leased to the token, and claims
-- no more.
-- Returns {claimed rows in the order taken, 1 when a limit holds jobs back now (else 0),
-- the time a start is next due by a rate ('' for none), the limited kinds with their
-- queues (flat pairs)}.
local now, token, worker = now_or_server(ARGV[2]), ARGV[3], ARGV[5]
local expires = seconds_after(now, ARGV[4])
local limit, promote_max, scan_max = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local turn, n_fair = tonumber(ARGV[9]), tonumber(ARGV[10])
local fair = {}
for i = 11, 10 + n_fair do fair[ARGV[i]] = true end
local queues, open = {}, {}
for i = 11 + n_fair, #ARGV do
  if redis.call('SISMEMBER', K .. 'paused', ARGV[i]) == 0 then
    queues[#queues + 1] = ARGV[i]
    open[ARGV[i]] = true
  end
end

-- The answer: the claimed rows, with what holds jobs back now (their starts counted).
local function answer(out)
  local held, next_due, kinds = 0, nil, {}
  for kind, g in pairs(kind_gates(open, now)) do
    kinds[#kinds + 1] = kind
    kinds[#kinds + 1] = g.lim.queue
    if g.allow <= 0 then held = 1 end
    if g.due ~= nil and (next_due == nil or g.due < next_due) then next_due = g.due end
  end
  announce_changes()
  return {out, held, next_due and string.format('%.6f', next_due) or '', kinds}
end

local noted = noted_claim(token)
if noted then return answer(noted) end
if #queues == 0 then return {{}, 0, '', {}} end

for _, queue in ipairs(queues) do
  if not fair[queue] then gather_fair(queue, promote_max) end
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

-- Whether a job of `kind` may be taken (then counted against its kind's allowance).
local function admit(kind)
  local n = left[kind]
  if n == nil then return true end
  if n <= 0 then return false end
  left[kind] = n - 1
  return true
end

-- Move a fair queue's ready entries into its owners' zsets.
local function spread(queue)
  local ready = K .. 'ready:' .. queue
  local entries = redis.call('ZRANGE', ready, 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local owner = redis.call('HGET', K .. 'job:' .. member_id(entries[i]), 'owner')
    if owner then
      redis.call('ZADD', fair_key(queue, owner), entries[i + 1], entries[i])
      redis.call('ZADD', K .. 'fring:' .. queue, 'NX', 0, owner)
    end
  end
  if #entries > 0 then redis.call('DEL', ready) end
end

-- The next entry of an owner's zset at or after `offset` that a fair claim may take:
-- {member, kind} and the offset after it, or nil. Entries of jobs no longer waiting here
-- (cancelled, claimed or moved since) are dropped on the way.
local function next_entry(queue, key, offset, budget)
  while budget.n > 0 do
    local e = redis.call('ZRANGE', key, offset, offset)
    if #e == 0 then return nil, offset end
    budget.n = budget.n - 1
    local id = member_id(e[1])
    local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'queue', 'run_at', 'kind')
    if (job[1] == 'queued' or job[1] == 'retrying') and job[2] == queue
        and ready_member(job[3], id) == e[1] then
      if admit(job[4]) then return e[1], offset + 1 end
      offset = offset + 1
    else
      redis.call('ZREM', key, e[1])
    end
  end
  return nil, offset
end

-- A fair queue's candidates: {member, queue, owner key, owner}, one per owner in turn, the
-- `limit` least recently served owners that have one; an owner found with no job left here
-- (its jobs cancelled or purged since) leaves the ring.
local function fair_candidates(queue)
  spread(queue)
  local ring = K .. 'fring:' .. queue
  local owners, offsets, out = {}, {}, {}
  local budget = {n = scan_max}
  local at = 0
  while #owners < limit and budget.n > 0 do
    local page = redis.call('ZRANGE', ring, at, at)
    if #page == 0 then break end
    local owner = page[1]
    local key = fair_key(queue, owner)
    local member, offset = next_entry(queue, key, 0, budget)
    if member ~= nil then
      owners[#owners + 1] = owner
      offsets[#owners] = offset
      out[#out + 1] = {member, queue, key, owner}
      at = at + 1
    elseif redis.call('EXISTS', key) == 0 then
      redis.call('ZREM', ring, owner)
    else
      at = at + 1   -- only jobs of kinds held back by their limits
    end
  end
  local active = {}
  for i = 1, #owners do active[i] = true end
  local any = true
  while any and #out < limit do
    any = false
    for i, owner in ipairs(owners) do
      if active[i] and #out < limit then
        local key = fair_key(queue, owner)
        local member
        member, offsets[i] = next_entry(queue, key, offsets[i], budget)
        if member == nil then
          active[i] = false
        else
          out[#out + 1] = {member, queue, key, owner}
          any = true
        end
      end
    end
  end
  return out
end

-- The plain queues' candidates, each queue read in order, then merged (score, member).
local function plain_candidates()
  local eligible = {}
  for _, queue in ipairs(queues) do
    if not fair[queue] then
      local key, taken, offset = K .. 'ready:' .. queue, 0, 0
      while taken < limit and offset < scan_max do
        local page = redis.call('ZRANGE', key, offset, offset + 199, 'WITHSCORES')
        if #page == 0 then break end
        offset = offset + #page / 2
        for i = 1, #page, 2 do
          local kind = redis.call('HGET', K .. 'job:' .. member_id(page[i]), 'kind')
          if taken < limit and admit(kind) then
            eligible[#eligible + 1] = {page[i], queue, nil, nil, tonumber(page[i + 1])}
            taken = taken + 1
          end
        end
      end
    end
  end
  table.sort(eligible, function(a, b)
    if a[5] ~= b[5] then return a[5] < b[5] end
    return a[1] < b[1]
  end)
  return eligible
end

local offered = {plain_candidates()}
for _, queue in ipairs(queues) do
  if fair[queue] then offered[#offered + 1] = fair_candidates(queue) end
end
local sources = {}
for _, source in ipairs(offered) do
  if #source > 0 then sources[#sources + 1] = source end
end
if #sources > 1 then  -- from the one whose turn it is
  local first, turned = turn % #sources, {}
  for i = 1, #sources do turned[i] = sources[(first + i - 1) % #sources + 1] end
  sources = turned
end
local picked, round = {}, 1
while #picked < limit do
  local took = false
  for _, source in ipairs(sources) do
    if source[round] ~= nil and #picked < limit then
      picked[#picked + 1] = source[round]
      took = true
    end
  end
  if not took then break end
  round = round + 1
end

-- Fair picks leave their owners' zsets; each served owner's turn is the newest, in the
-- order of its last job taken.
local last_turn, served = {}, {}
for i, pick in ipairs(picked) do
  if pick[3] ~= nil then
    redis.call('ZREM', pick[3], pick[1])
    local ring = pick[2] .. '\0' .. pick[4]
    if last_turn[ring] == nil then served[#served + 1] = pick end
    last_turn[ring] = i
  end
end
table.sort(served, function(a, b)
  return last_turn[a[2] .. '\0' .. a[4]] < last_turn[b[2] .. '\0' .. b[4]]
end)
for _, pick in ipairs(served) do
  local ring = K .. 'fring:' .. pick[2]
  if redis.call('ZCARD', pick[3]) == 0 then
    redis.call('ZREM', ring, pick[4])
  else
    redis.call('ZADD', ring, 'XX', redis.call('INCR', K .. 'fturn:' .. pick[2]), pick[4])
  end
end

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

return answer(out)
