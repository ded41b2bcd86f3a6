-- Shared by every script (prepended at load time). ARGV[1] is the key prefix K; every key
-- the scripts touch is K .. name, and K carries the hash tag, so all keys live in the slot
-- of KEYS[1] (K .. 'seq'), which each call declares for routing.
--
-- Keys: job:<id> (hash: the row), ids / own:<owner> (zsets, score 0: lexicographic id
-- indexes), idem (hash: owner+key -> id), queues (set), waiting:<q> (zset by run_at: every
-- queued/retrying job), ready:<q> (zset: score priority, member run_at..id, so claim order is
-- priority, run_at, id), sched:<q> (zset by run_at: waiting jobs not yet ready),
-- running:<q> / dead:<q> (sets), leases (zset by lease expiry), finished (zset by
-- finished_at: succeeded, failed, cancelled), seq (counter), feed (stream, ids <seq>-0:
-- the row after each transition), jf:<id> (zset of the job's feed positions), fx:<id> (hash:
-- Context.once effects), newer:<q> (set: jobs given back for a worker that knows their newer
-- version; stats drops the members that are no longer waiting so), workers (hash: worker id
-- -> JSON of the kinds and versions it runs), workers:info (hash: worker id -> JSON of its
-- registry entry), workers:seen (zset by each worker's last record), paused (set: the
-- paused queues, which claim skips), st:<state> / kind:<kind> / qids:<queue> (zsets,
-- score 0: lexicographic id indexes of the jobs page's filters, as `ids` is),
-- hist:<minute> (hash: state:queue -> jobs that ended so in that minute, kept
-- HISTORY_KEEP_S), uniq (hash: unique key -> id of the last job stored with it; that job
-- holds the key only while `holds_key` says so, so no transition has a key to clear: the
-- entry goes with its job, or with a requeue, which drops the job's key), wake:<q> (list:
-- wake-up tokens, one per announcement of work and one per claim that left ready jobs
-- behind, at most WAKE_TOKENS_MAX; a worker blocked in BLPOP on it takes one and claims in
-- the same round trip, RedisBackend.wait_and_claim), halt:<waiter> (a blocked waiter's
-- claim is to take nothing: its worker is stopping). Channels: work (a queue got work),
-- changes (the feed grew).
-- Every float arrives as a Python repr string and is stored verbatim (Lua's tostring keeps
-- only 14 digits), so only comparisons ever turn it into a number.
local K = ARGV[1]
local last_seq = nil

-- An optional argument: '' is nil, anything else carries a one-character '=' marker.
local function opt(s)
  if s == '' then return nil end
  return string.sub(s, 2)
end

-- Over `maxmemory` (noeviction), Redis refuses a script whose first write is one that may
-- grow memory (HSET, ZADD, ...), and lets a script that has written run to its end. A
-- script that keeps existing state current, and must run then, calls this first with a
-- key and a member it is about to write again: a heartbeat refused there let leases
-- lapse, and jobs still running were rescued and started again.
local function first_write_frees(zset, member)
  redis.call('ZREM', zset, member)
end

local function set_or_del(key, field, value)
  if value == nil then
    redis.call('HDEL', key, field)
  else
    redis.call('HSET', key, field, value)
  end
end

-- Fixed width, so that within one priority Redis's byte order of members is run_at, then id.
local function ready_member(run_at, id)
  return string.format('%020.6f', tonumber(run_at)) .. '|' .. id
end

-- One variadic command (ZREM, SREM, ZADD …) for many arguments, in chunks of an even size
-- that Lua's unpack can take: one call per batch instead of one per job.
local function bulk(cmd, key, args)
  for i = 1, #args, 4000 do
    redis.call(cmd, key, unpack(args, i, math.min(i + 3999, #args)))
  end
end

-- Append v to the list t[k] (made on first use).
local function push(t, k, v)
  local list = t[k]
  if list == nil then
    list = {}
    t[k] = list
  end
  list[#list + 1] = v
end

local function member_id(member)
  return string.sub(member, string.find(member, '|', 1, true) + 1)
end

-- A fair queue's owner's zset of ready entries (see claim_gated).
local function fair_key(queue, owner)
  return K .. 'fready:' .. string.len(queue) .. ':' .. queue .. owner
end

-- For a claim that reads `queue` as a plain one (no kind of it is fair any more: made
-- plain, or retired beside plain ones): the entries a fair claim had spread into its
-- owners' zsets go back to ready:<queue>, those still waiting there, at most `max` a call
-- (the rest follow with the next claims). Else only a fair claim would ever read them.
local function gather_fair(queue, max)
  local ring = K .. 'fring:' .. queue
  if redis.call('EXISTS', ring) == 0 then return end
  local moved = 0
  for _, owner in ipairs(redis.call('ZRANGE', ring, 0, 99)) do
    local key = fair_key(queue, owner)
    local entries = redis.call('ZRANGE', key, 0, max - moved - 1, 'WITHSCORES')
    for i = 1, #entries, 2 do
      local id = member_id(entries[i])
      local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'queue', 'run_at')
      if (job[1] == 'queued' or job[1] == 'retrying') and job[2] == queue
          and ready_member(job[3], id) == entries[i] then
        redis.call('ZADD', K .. 'ready:' .. queue, entries[i + 1], entries[i])
      end
      redis.call('ZREM', key, entries[i])
    end
    moved = moved + #entries / 2
    if redis.call('EXISTS', key) == 0 then redis.call('ZREM', ring, owner) end
    if moved >= max then return end
  end
end

-- A deleted job's feed entries (the stream's, through its index jf:<id>) and effects.
local function drop_history(id)
  for _, seq in ipairs(redis.call('ZRANGE', K .. 'jf:' .. id, 0, -1)) do
    redis.call('XDEL', K .. 'feed', seq .. '-0')
  end
  redis.call('DEL', K .. 'jf:' .. id, K .. 'fx:' .. id)
end

local function idem_field(owner, key)
  return string.len(owner) .. ':' .. owner .. key
end

-- Index a queued or retrying job: ready now, or scheduled for later.
local function put_waiting(id, queue, priority, run_at, now)
  redis.call('ZADD', K .. 'waiting:' .. queue, run_at, id)
  if tonumber(run_at) <= tonumber(now) then
    redis.call('ZADD', K .. 'ready:' .. queue, priority, ready_member(run_at, id))
  else
    redis.call('ZADD', K .. 'sched:' .. queue, run_at, id)
  end
end

local function drop_waiting(id, queue, run_at)
  redis.call('ZREM', K .. 'waiting:' .. queue, id)
  redis.call('ZREM', K .. 'ready:' .. queue, ready_member(run_at, id))
  redis.call('ZREM', K .. 'sched:' .. queue, id)
end

local function hget_map(key)
  local flat = redis.call('HGETALL', key)
  local map = {}
  for i = 1, #flat, 2 do map[flat[i]] = flat[i + 1] end
  return map, flat
end

-- Whether a stored error (JSON, or nil/false) is of type NewerVersion (base.NEWER_VERSION):
-- its job was given back for a worker that knows its newer version.
local function newer_version(err)
  if not err or not string.find(err, 'NewerVersion', 1, true) then return false end
  local ok, decoded = pcall(cjson.decode, err)
  return ok and type(decoded) == 'table' and decoded['type'] == 'NewerVersion'
end

-- Append the job's row (after its transition) to the change feed; returns the full row.
local function event_of(id, flat)
  local fields = {}
  for i = 1, #flat, 2 do
    local name = flat[i]
    if name ~= 'payload' and name ~= 'lease_token' then
      fields[#fields + 1] = name
      fields[#fields + 1] = flat[i + 1]
    end
  end
  local seq = redis.call('INCR', K .. 'seq')
  redis.call('XADD', K .. 'feed', seq .. '-0', unpack(fields))
  redis.call('ZADD', K .. 'jf:' .. id, seq, seq)
  last_seq = seq
  return flat
end

local function event(id)
  return event_of(id, redis.call('HGETALL', K .. 'job:' .. id))
end

-- Move a job between the state indexes (`from` nil: a new job).
local function restate(id, from, to)
  if from then redis.call('ZREM', K .. 'st:' .. from, id) end
  redis.call('ZADD', K .. 'st:' .. to, 0, id)
end

-- Seconds the per-minute counters of App.history are kept (a day and an hour).
local HISTORY_KEEP_S = 90000

-- Count a job that ended succeeded, failed or dead in the counters of its minute.
local function count_ending(queue, state, now)
  if state == 'succeeded' or state == 'failed' or state == 'dead' then
    local key = K .. 'hist:' .. string.format('%d', math.floor(tonumber(now) / 60) * 60)
    redis.call('HINCRBY', key, state .. ':' .. queue, 1)
    redis.call('EXPIRE', key, HISTORY_KEEP_S)
  end
end

local function announce_changes()
  if last_seq ~= nil then redis.call('PUBLISH', K .. 'changes', last_seq) end
end

-- Wake-up tokens kept per queue: enough for the workers blocked on it to wake one each;
-- a token nobody takes costs one claim that finds nothing.
local WAKE_TOKENS_MAX = 16

-- Wake one worker blocked on the queue's tokens (BLPOP: each token wakes one).
local function wake_one(queue)
  local key = K .. 'wake:' .. queue
  redis.call('LPUSH', key, '1')
  redis.call('LTRIM', key, 0, WAKE_TOKENS_MAX - 1)
end

local function announce_work(queues)
  for queue, _ in pairs(queues) do
    redis.call('PUBLISH', K .. 'work', queue)
    wake_one(queue)
  end
end

-- Drop the uniq entry of a job's unique key where it names that job.
local function drop_unique(id, key)
  if key and redis.call('HGET', K .. 'uniq', key) == id then
    redis.call('HDEL', K .. 'uniq', key)
  end
end

-- Whether job `id` holds its unique key: it waits and never started, or (mode 'active')
-- it waits or runs. A deleted job, or one whose key a requeue dropped, holds none.
local function holds_key(id)
  local f = redis.call('HMGET', K .. 'job:' .. id, 'state', 'started_at', 'unique_mode',
    'unique_key')
  local state, started, mode, key = f[1], f[2], f[3], f[4]
  if not key then return false end
  local waiting = state == 'queued' or state == 'retrying'
  if waiting and not started then return true end
  return mode == 'active' and (waiting or state == 'running')
end

-- Delete a job and every index entry that names it (not its feed entries or effects).
local function forget(id, row)
  drop_unique(id, row.unique_key)
  redis.call('DEL', K .. 'job:' .. id)
  redis.call('ZREM', K .. 'ids', id)
  redis.call('ZREM', K .. 'own:' .. row.owner, id)
  redis.call('ZREM', K .. 'kind:' .. row.kind, id)
  redis.call('ZREM', K .. 'qids:' .. row.queue, id)
  redis.call('ZREM', K .. 'st:' .. row.state, id)
  -- (given back once for a newer worker: `stats` drops only the ids of queues with work)
  redis.call('SREM', K .. 'newer:' .. row.queue, id)
  if row.idempotency_key ~= nil then
    local field = idem_field(row.owner, row.idempotency_key)
    if redis.call('HGET', K .. 'idem', field) == id then
      redis.call('HDEL', K .. 'idem', field)
    end
  end
end

-- Envelopes travel as ENVELOPE_WIDTH arguments each (see rows.envelope_args), in ENV: the
-- call's ARGV, or (enqueue, settle) the array its one packed argument decodes to, which
-- spares the client packing 17 arguments per job (9 per outcome a settle applies).
local ENVELOPE_WIDTH = 17
local ENV = ARGV

-- The job holding unique key `ukey` (nil: none): one planned earlier in this call, else
-- the uniq entry's job while it holds the key.
local function unique_holder(ukey, seen)
  local planned = seen['uniq:' .. ukey]
  if planned then return planned end
  local last = redis.call('HGET', K .. 'uniq', ukey)
  if last and holds_key(last) then return last end
  return nil
end

-- Check envelopes ARGV[first ..] (n of them) before anything is written: returns, per
-- envelope, true (store it), the id of the job its idempotency key names, {id} of the job
-- holding its unique key, or false (stored already by the lost first attempt of this
-- `resent` call: an id already stored, or a key naming the envelope's own id). An id
-- already stored (or repeated in this call) raises otherwise, so the whole call stores
-- nothing. `seen` carries ids, idempotency and unique keys across several checks of one
-- call (the first of a call's envelopes with one unique key wins).
local function check_envelopes(first, n, seen, resent)
  local plan = {}
  for i = 1, n do
    local b = first - 1 + (i - 1) * ENVELOPE_WIDTH
    local id, owner, key = ENV[b + 1], ENV[b + 12], opt(ENV[b + 11])
    local ukey = opt(ENV[b + 16])
    local repeats, holder = nil, nil
    if key ~= nil then
      local field = idem_field(owner, key)
      repeats = seen['idem:' .. field] or redis.call('HGET', K .. 'idem', field)
      if not repeats then seen['idem:' .. field] = id end
    end
    if resent and (repeats == id
        or (not repeats and redis.call('EXISTS', K .. 'job:' .. id) == 1)) then
      seen['id:' .. id] = true
      if ukey ~= nil then seen['uniq:' .. ukey] = id end
      plan[i] = false
    else
      if not repeats and ukey ~= nil then
        holder = unique_holder(ukey, seen)
        if not holder then seen['uniq:' .. ukey] = id end
      end
      if repeats then
        plan[i] = repeats
      elseif holder then
        plan[i] = {holder}
      else
        if seen['id:' .. id] or redis.call('EXISTS', K .. 'job:' .. id) == 1 then
          error(redis.error_reply('OFFLOAD job id ' .. id .. ' already exists; nothing was stored'))
        end
        seen['id:' .. id] = true
        plan[i] = true
      end
    end
  end
  return plan
end

-- Store the envelopes a check planned; appends {id, 1 created (now or by the lost attempt
-- of a resent call) / 0 idempotent repeat / 2 unique repeat} pairs to `out` and the queues
-- that got work to `queues`.
local function store_envelopes(first, plan, now, out, queues)
  for i = 1, #plan do
    local b = first - 1 + (i - 1) * ENVELOPE_WIDTH
    local id = ENV[b + 1]
    if plan[i] == true then
      local queue, priority, run_at, owner = ENV[b + 4], ENV[b + 5], ENV[b + 9], ENV[b + 12]
      local key = opt(ENV[b + 11])
      -- A new job (check_envelopes refused a stored id): one HSET of the fields it has,
      -- and its feed entry made from them, with no read back.
      local row = {'id', id, 'kind', ENV[b + 2], 'version', ENV[b + 3],
        'queue', queue, 'priority', priority, 'payload', ENV[b + 6], 'state', 'queued',
        'attempt', ENV[b + 7], 'max_attempts', ENV[b + 8], 'run_at', run_at,
        'enqueued_at', ENV[b + 10], 'owner', owner, 'cancel_requested', '0'}
      local ukey = opt(ENV[b + 16])
      local optional = {{'idempotency_key', key}, {'trace', opt(ENV[b + 13])},
        {'timeout', opt(ENV[b + 14])}, {'options', opt(ENV[b + 15])}, {'unique_key', ukey},
        {'unique_mode', opt(ENV[b + 17])}}
      for _, f in ipairs(optional) do
        if f[2] ~= nil then
          row[#row + 1] = f[1]
          row[#row + 1] = f[2]
        end
      end
      redis.call('HSET', K .. 'job:' .. id, unpack(row))
      if ukey ~= nil then redis.call('HSET', K .. 'uniq', ukey, id) end
      redis.call('ZADD', K .. 'ids', 0, id)
      redis.call('ZADD', K .. 'own:' .. owner, 0, id)
      redis.call('ZADD', K .. 'kind:' .. ENV[b + 2], 0, id)
      redis.call('ZADD', K .. 'qids:' .. queue, 0, id)
      restate(id, nil, 'queued')
      if key ~= nil then redis.call('HSET', K .. 'idem', idem_field(owner, key), id) end
      redis.call('SADD', K .. 'queues', queue)
      put_waiting(id, queue, priority, run_at, now)
      event_of(id, row)
      queues[queue] = true
      out[#out + 1] = id
      out[#out + 1] = 1
    elseif plan[i] == false then
      out[#out + 1] = id
      out[#out + 1] = 1
    elseif type(plan[i]) == 'table' then
      out[#out + 1] = plan[i][1]
      out[#out + 1] = 2
    else
      out[#out + 1] = plan[i]
      out[#out + 1] = 0
    end
  end
end

-- The time a script was given (an opt argument), else the server's clock, as epoch seconds:
-- the one clock that every host recording workers agrees on.
local function now_or_server(given)
  local t = opt(given)
  if t ~= nil then return t end
  local time = redis.call('TIME')
  return time[1] .. '.' .. string.format('%06d', tonumber(time[2]))
end

-- `seconds` (a string) after the time `t` (a string), as a string with microseconds.
local function seconds_after(t, seconds)
  return string.format('%.6f', tonumber(t) + tonumber(seconds))
end

-- Queue a dead, failed or cancelled job (its hash read as `row`) again with attempt 0.
local function requeue_job(id, row, now)
  local jk = K .. 'job:' .. id
  redis.call('SREM', K .. 'dead:' .. row.queue, id)
  redis.call('ZREM', K .. 'finished', id)
  redis.call('HSET', jk, 'state', 'queued', 'attempt', '0', 'run_at', now, 'cancel_requested', '0')
  redis.call('HDEL', jk, 'result', 'started_at', 'finished_at', 'progress_fraction',
    'progress_message', 'worker', 'unique_key')
  drop_unique(id, row.unique_key)
  restate(id, row.state, 'queued')
  put_waiting(id, row.queue, row.priority, now, now)
  return event(id)
end

-- End a waiting job (its hash read as `row`) cancelled.
local function cancel_waiting(id, row, now)
  drop_waiting(id, row.queue, row.run_at)
  redis.call('HSET', K .. 'job:' .. id, 'state', 'cancelled', 'finished_at', now)
  redis.call('ZADD', K .. 'finished', now, id)
  restate(id, row.state, 'cancelled')
  return event(id)
end

-- Note the ids a claim under `token` leased (for as long as its lease): a resend of that
-- claim (its first reply lost) answers them instead of leasing a second batch.
local function note_claim(token, ids, now, expires)
  if #ids == 0 then return end
  local ttl = math.max(1, math.ceil(tonumber(expires) - tonumber(now)))
  redis.call('SET', K .. 'claim:' .. token, table.concat(ids, ','), 'EX', ttl)
end

-- The rows (flat HGETALL arrays) of the jobs a claim under `token` noted that it still
-- leases, or nil when it noted none (the lost attempt leased nothing, or never ran).
-- What a claim answers per job: the fields of its lease, in this order (rows.LEASE_FIELDS).
-- Not the whole row: the client reads half as many strings, with no field names.
local LEASE_FIELDS = {'id', 'kind', 'version', 'payload', 'queue', 'priority', 'attempt',
  'max_attempts', 'run_at', 'enqueued_at', 'idempotency_key', 'owner', 'trace', 'timeout',
  'options', 'lease_expires'}

local function lease_row(id)
  return redis.call('HMGET', K .. 'job:' .. id, unpack(LEASE_FIELDS))
end

local function noted_claim(token)
  local noted = redis.call('GET', K .. 'claim:' .. token)
  if not noted then return nil end
  local out = {}
  for id in string.gmatch(noted, '[^,]+') do
    local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'lease_token')
    if job[1] == 'running' and job[2] == token then
      out[#out + 1] = lease_row(id)
    end
  end
  return out
end

-- Lease the picked ready members ({member, queue} pairs, in claim order) of a claim: each
-- still waiting becomes running under `token` until `expires`, and is noted under the token
-- (note_claim). Returns the claimed jobs' lease rows (lease_row) and the claimed ids with
-- their kinds ({id, kind} pairs).
local function lease_picked(picked, now, token, expires, worker)
  local out, ready, waiting, running, leases, was, taken = {}, {}, {}, {}, {}, {}, {}
  local now_running, ids = {}, {}
  for _, pick in ipairs(picked) do
    local member, queue = pick[1], pick[2]
    local id = member_id(member)
    local jk = K .. 'job:' .. id
    push(ready, queue, member)
    local job = redis.call('HMGET', jk, 'state', 'attempt', 'kind')
    if job[1] == 'queued' or job[1] == 'retrying' then
      push(waiting, queue, id)
      push(was, job[1], id)
      now_running[#now_running + 1] = 0
      now_running[#now_running + 1] = id
      redis.call('HSET', jk, 'state', 'running', 'attempt', tonumber(job[2]) + 1,
        'lease_token', token, 'lease_expires', expires, 'worker', worker, 'started_at', now,
        'cancel_requested', '0')
      redis.call('HDEL', jk, 'finished_at', 'progress_fraction', 'progress_message')
      leases[#leases + 1] = expires
      leases[#leases + 1] = id
      ids[#ids + 1] = id
      push(running, queue, id)
      taken[#taken + 1] = {id, job[3]}
      event(id)
      out[#out + 1] = lease_row(id)
    end
  end
  for queue, members in pairs(ready) do bulk('ZREM', K .. 'ready:' .. queue, members) end
  for queue, ids in pairs(waiting) do bulk('ZREM', K .. 'waiting:' .. queue, ids) end
  for queue, ids in pairs(running) do bulk('SADD', K .. 'running:' .. queue, ids) end
  if #leases > 0 then bulk('ZADD', K .. 'leases', leases) end
  for state, ids in pairs(was) do bulk('ZREM', K .. 'st:' .. state, ids) end
  if #now_running > 0 then bulk('ZADD', K .. 'st:running', now_running) end
  note_claim(token, ids, now, expires)
  return out, taken
end

-- Limits per kind: limits (hash: kind -> JSON {queue, max_running, rate, per_s}, as the
-- latest worker to start declared them), krun:<kind> (set: the kind's jobs a gated claim
-- leased; members no longer running are dropped as they are counted), kstarts:<kind> (zset
-- by start time: the kind's starts within its rate's window).

-- The kind's running jobs (dropping members that are not running any more).
local function kind_running(kind)
  local key = K .. 'krun:' .. kind
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', key)) do
    if redis.call('HGET', K .. 'job:' .. id, 'state') == 'running' then
      n = n + 1
    else
      redis.call('SREM', key, id)
    end
  end
  return n
end

-- The kind's starts within the window ending at `now` (dropping older ones), and, when
-- `rate` or more, the time the start that must leave before one more fits leaves.
local function kind_starts(kind, per_s, rate, now)
  local key = K .. 'kstarts:' .. kind
  redis.call('ZREMRANGEBYSCORE', key, '-inf', tonumber(now) - per_s)
  local n = redis.call('ZCARD', key)
  local due = nil
  if n >= rate then
    local at = redis.call('ZRANGE', key, n - rate, n - rate, 'WITHSCORES')[2]
    due = tonumber(at) + per_s
  end
  return n, due
end

-- Per limited kind of `queues` (a set): {limits, running, starts, allowance, due}.
local function kind_gates(queues, now)
  local gates = {}
  local flat = redis.call('HGETALL', K .. 'limits')
  for i = 1, #flat, 2 do
    local lim = cjson.decode(flat[i + 1])
    if queues == nil or queues[lim.queue] then
      local g = {lim = lim, running = kind_running(flat[i]), starts = 0, allow = math.huge}
      if lim.max_running ~= cjson.null then
        g.allow = math.min(g.allow, lim.max_running - g.running)
      end
      if lim.rate ~= cjson.null then
        g.starts, g.due = kind_starts(flat[i], lim.per_s, lim.rate, now)
        g.allow = math.min(g.allow, lim.rate - g.starts)
      end
      g.allow = math.max(0, g.allow)
      gates[flat[i]] = g
    end
  end
  return gates
end
