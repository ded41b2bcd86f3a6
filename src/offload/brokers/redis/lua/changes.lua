-- changes: ARGV = K, after, job_id, owner (both optional), limit, budget. Feed entries after
-- position `after`: for one job through its index jf:<id>; else the feed filtered by owner,
-- reading at most `budget` entries. Returns {cursor, entry...} (cursor '' when done, else the
-- last position read); each entry is {stream id, fields}.
local after, job_id, owner = tonumber(ARGV[2]), opt(ARGV[3]), opt(ARGV[4])
local limit, budget = tonumber(ARGV[5]), tonumber(ARGV[6])
local out = {''}
local function keep(entry)
  if owner == nil then return true end
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'owner' then return fields[i + 1] == owner end
  end
  return false
end
if job_id ~= nil then
  local seqs = redis.call('ZRANGEBYSCORE', K .. 'jf:' .. job_id, '(' .. after, '+inf',
    'LIMIT', 0, limit)
  for _, seq in ipairs(seqs) do
    local entry = redis.call('XRANGE', K .. 'feed', seq .. '-0', seq .. '-0')[1]
    if entry and keep(entry) then
      out[#out + 1] = entry
      if #out - 1 >= limit then return out end
    end
  end
  return out
end
local read = 0
local from = after + 1
while read < budget do
  local entries = redis.call('XRANGE', K .. 'feed', from .. '-0', '+', 'COUNT',
    math.min(200, budget - read))
  if #entries == 0 then return out end
  for _, entry in ipairs(entries) do
    read = read + 1
    local seq = tonumber(string.sub(entry[1], 1, -3))
    from = seq + 1
    if keep(entry) then
      out[#out + 1] = entry
      if #out - 1 >= limit then
        out[1] = seq
        return out
      end
    end
  end
end
out[1] = from - 1
return out
