-- settle: ARGV = K, now (opt: none for the server's clock), n, lapsed ('1': a rescue's
-- decisions, applied only while the lease is still lapsed), resent ('1': this call's first
-- attempt may have run, its reply lost), then one JSON array (ENV): 9 fields per outcome
-- (id, token, state, result, error, run_at (opt: none for now), refund 0/1, max_attempts,
-- number of follow-ups), then the follow-up envelopes of all outcomes in order (of an
-- outcome that runs the job again: those of a cancelled end, stored only if it ends so).
-- Optional fields use opt(). Every lease and every follow-up of a held lease is checked
-- before anything is written, so a bad follow-up fails the whole call.
-- Returns 1/0 per outcome (0: the lease was stale; its follow-ups are dropped), 2 where a
-- job that would run again ended cancelled (a cancel asked for while it ran).
-- An applied outcome leaves its token on the job, marked spent (SPENT): in a resend, an
-- outcome whose first attempt applied finds the mark and answers 1, writing nothing.
local now, n, lapsed, resent = now_or_server(ARGV[2]), tonumber(ARGV[3]), ARGV[4] == '1', ARGV[5] == '1'
ENV = cjson.decode(ARGV[6])
local WIDTH = 9
local SPENT = lapsed and ':rescued' or ':settled'
local held, plans, starts, taken, seen, again = {}, {}, {}, {}, {}, {}
local cursor = 1 + n * WIDTH
for i = 1, n do
  local b = (i - 1) * WIDTH
  local id, token, follow = ENV[b + 1], ENV[b + 2], tonumber(ENV[b + 9])
  local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'lease_token', 'queue', 'priority',
    'lease_expires', 'cancel_requested')
  -- A second outcome for one job in this call finds it settled already: stale.
  if not taken[id] and job[1] == 'running' and job[2] == token
      and (not lapsed or tonumber(job[5]) < tonumber(now)) then
    taken[id] = true
    held[i] = job
    local state = ENV[b + 3]
    local keep = follow
    if (state == 'queued' or state == 'retrying') and job[6] ~= '1' then keep = 0 end
    plans[i] = check_envelopes(cursor, keep, seen)
  elseif resent and job[2] == token .. SPENT then
    again[i] = true
  end
  starts[i] = cursor
  cursor = cursor + follow * ENVELOPE_WIDTH
end

-- Collect a field for one HSET (a value) or one HDEL (nil).
local function field(set, del, name, value)
  if value == nil then
    del[#del + 1] = name
  else
    set[#set + 1] = name
    set[#set + 1] = value
  end
end

local out, woken, created = {}, {}, {}
local unleased, running, finished, now_in = {}, {}, {}, {}
for i = 1, n do
  local b = (i - 1) * WIDTH
  local job = held[i]
  if job then
    local id, state = ENV[b + 1], ENV[b + 3]
    local jk = K .. 'job:' .. id
    local queue = job[3]
    unleased[#unleased + 1] = id
    push(running, queue, id)
    local again = state == 'queued' or state == 'retrying'
    -- A cancel asked for while it ran, not yet seen by its worker: it ends cancelled
    -- rather than running again (its attempt, given back unspent, is refunded still).
    local refund = ENV[b + 7] == '1'
    local answer = 1
    if again and job[6] == '1' then
      state, again, answer = 'cancelled', false, 2
    end
    local set, del = {'state', state, 'lease_token', ENV[b + 2] .. SPENT}, {'lease_expires'}
    field(set, del, 'error', opt(ENV[b + 5]))
    local budget = opt(ENV[b + 8])
    if budget ~= nil then field(set, del, 'max_attempts', budget) end
    local run_at = opt(ENV[b + 6]) or now
    if again then
      field(set, del, 'run_at', run_at)
    else
      field(set, del, 'result', opt(ENV[b + 4]))
      field(set, del, 'finished_at', now)
    end
    redis.call('HDEL', jk, unpack(del))
    redis.call('HSET', jk, unpack(set))
    push(now_in, state, id)
    count_ending(queue, state, now)
    if refund and (again or state == 'cancelled') then
      redis.call('HINCRBY', jk, 'attempt', -1)
    end
    if again then
      put_waiting(id, queue, job[4], run_at, now)
      if newer_version(opt(ENV[b + 5])) then redis.call('SADD', K .. 'newer:' .. queue, id) end
      woken[queue] = true
    elseif state == 'dead' then
      redis.call('SADD', K .. 'dead:' .. queue, id)
    else
      finished[#finished + 1] = now
      finished[#finished + 1] = id
    end
    event(id)
    store_envelopes(starts[i], plans[i], now, created, woken)
    out[#out + 1] = answer
  elseif again[i] then
    -- (applied before, its reply lost: a job that ends cancelled where it was to run
    -- again is said so, its notifications stored then)
    local state = ENV[(i - 1) * WIDTH + 3]
    local ended = redis.call('HGET', K .. 'job:' .. ENV[(i - 1) * WIDTH + 1], 'state')
    out[#out + 1] = ((state == 'queued' or state == 'retrying') and ended == 'cancelled') and 2 or 1
  else
    out[#out + 1] = 0
  end
end
if #unleased > 0 then
  bulk('ZREM', K .. 'leases', unleased)
  bulk('ZREM', K .. 'st:running', unleased)
end
for state, ids in pairs(now_in) do
  local members = {}
  for _, id in ipairs(ids) do
    members[#members + 1] = 0
    members[#members + 1] = id
  end
  bulk('ZADD', K .. 'st:' .. state, members)
end
for queue, ids in pairs(running) do bulk('SREM', K .. 'running:' .. queue, ids) end
if #finished > 0 then bulk('ZADD', K .. 'finished', finished) end
announce_changes()
announce_work(woken)
return out
