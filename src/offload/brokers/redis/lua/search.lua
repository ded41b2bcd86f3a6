-- search: ARGV = K, mode ('rows' or 'count'), index, state, kind, queue, owner, after, until,
-- low, high, text, states, before, limit, budget (state … before optional; `states` is a
-- space-separated list). Walks the lexicographic id index `index` (ids, own:<o>, kind:<k>,
-- qids:<q> or st:<s>) newest first, below `before` and within [low, high), reading at most
-- `budget` entries, and checks every other filter on the job's hash (the text as a plain,
-- ASCII-case-insensitive substring of its payload). Returns {cursor, n, row...}: cursor is ''
-- once the range is exhausted, else the last id read; n the matches found; rows (mode 'rows',
-- at most `limit`) the matching jobs' HGETALL arrays.
local mode, index = ARGV[2], K .. ARGV[3]
local state, kind, queue, owner = opt(ARGV[4]), opt(ARGV[5]), opt(ARGV[6]), opt(ARGV[7])
local after, upto = opt(ARGV[8]), opt(ARGV[9])
local low, high, text = opt(ARGV[10]), opt(ARGV[11]), opt(ARGV[12])
local states_arg, before = opt(ARGV[13]), opt(ARGV[14])
local limit, budget = tonumber(ARGV[15]), tonumber(ARGV[16])
local states = nil
if states_arg then
  states = {}
  for s in string.gmatch(states_arg, '%S+') do states[s] = true end
end
if text then text = string.lower(text) end
after = after and tonumber(after)
upto = upto and tonumber(upto)

local function matches(id, job)
  if not job[1] then return false end
  if (state and job[1] ~= state) or (states and not states[job[1]]) then return false end
  if (kind and job[2] ~= kind) or (queue and job[3] ~= queue) then return false end
  if owner and job[4] ~= owner then return false end
  local created = tonumber(job[5])
  if (after and created < after) or (upto and created >= upto) then return false end
  if text then
    local payload = redis.call('HGET', K .. 'job:' .. id, 'payload') or ''
    return string.find(string.lower(payload), text, 1, true) ~= nil
  end
  return true
end

-- The upper bound: the smaller of the cursor and the prefix's end (both exclusive).
local top = before
if high and (top == nil or high < top) then top = high end
local max = top and ('(' .. top) or '+'
local min = low and ('[' .. low) or '-'
local out = {'', 0}
local read = 0
while read < budget do
  local ids = redis.call('ZREVRANGEBYLEX', index, max, min, 'LIMIT', 0, math.min(100, budget - read))
  if #ids == 0 then return out end
  for _, id in ipairs(ids) do
    read = read + 1
    max = '(' .. id
    local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'kind', 'queue', 'owner',
      'enqueued_at')
    if matches(id, job) then
      out[2] = out[2] + 1
      if mode == 'rows' then out[#out + 1] = redis.call('HGETALL', K .. 'job:' .. id) end
      if out[2] >= limit then
        out[1] = id
        return out
      end
    end
  end
end
out[1] = string.sub(max, 2)
return out
