-- periodic: ARGV = K, now, schedule name, spec (JSON), n, then n ticks (oldest first), then
-- the n envelopes. Stores the envelopes whose tick is after the schedule's stored last tick
-- (every one checked before anything is written) and records the newest as the state:
-- periodic (hash: schedule name -> JSON {last_tick, last_job_id, fired_at, spec}, times as
-- the strings Python sent). Returns per envelope {id, 1 created / 0 repeat}, or {'', -1}
-- where the stored last tick was already at or after its tick.
local now, name, spec, n = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local state = redis.call('HGET', K .. 'periodic', name)
local last = nil
if state then last = tonumber(cjson.decode(state)['last_tick']) end
local first = 6 + n
local plans, seen = {}, {}
for i = 1, n do
  if last == nil or tonumber(ARGV[5 + i]) > last then
    local at = first + (i - 1) * ENVELOPE_WIDTH
    plans[i] = check_envelopes(at, 1, seen)
  end
end
local out, queues = {}, {}
local newest_tick, newest_id = nil, nil
for i = 1, n do
  if plans[i] then
    store_envelopes(first + (i - 1) * ENVELOPE_WIDTH, plans[i], now, out, queues)
    newest_tick, newest_id = ARGV[5 + i], out[#out - 1]
  else
    out[#out + 1] = ''
    out[#out + 1] = -1
  end
end
if newest_tick ~= nil then
  redis.call('HSET', K .. 'periodic', name, cjson.encode({
    last_tick = newest_tick, last_job_id = newest_id, fired_at = now, spec = spec}))
end
announce_changes()
announce_work(queues)
return out
