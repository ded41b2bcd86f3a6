-- list: ARGV = K, index, state, kind, before, limit, budget (state, kind, before optional).
-- Walks the index (ids, or own:<owner>) newest first from `before`, reading at most `budget`
-- entries. Returns {cursor, row...}: cursor is '' when the index is exhausted, else the last
-- id read (the caller continues from it).
local index, state, kind = K .. ARGV[2], opt(ARGV[3]), opt(ARGV[4])
local before, limit, budget = opt(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local out = {''}
local max = before and ('(' .. before) or '+'
local read = 0
while read < budget do
  local ids = redis.call('ZREVRANGEBYLEX', index, max, '-', 'LIMIT', 0, math.min(100, budget - read))
  if #ids == 0 then return out end
  for _, id in ipairs(ids) do
    read = read + 1
    local job = redis.call('HMGET', K .. 'job:' .. id, 'state', 'kind')
    if job[1] and (state == nil or job[1] == state) and (kind == nil or job[2] == kind) then
      out[#out + 1] = redis.call('HGETALL', K .. 'job:' .. id)
      if #out - 1 >= limit then
        out[1] = id
        return out
      end
    end
    max = '(' .. id
  end
end
out[1] = string.sub(max, 2)
return out
