-- expired: ARGV = K, now (opt: none for the server's clock), skip, max. Facts only: the
-- running jobs whose lease lapsed before
-- `now`, oldest lapse first, as {entries scanned, {HGETALL of each lapsed job}}. No job
-- changes; stale entries of the lease index are repaired (dropped, or moved to the row's
-- own expiry) so that the next call does not scan them again.
-- `skip`: lapsed entries a previous call of the same read returned (they stay indexed).
local at = now_or_server(ARGV[2])
local now, skip, max = tonumber(at), tonumber(ARGV[3]), tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', K .. 'leases', '-inf', '(' .. at, 'LIMIT', skip, max)
local rows = {}
for _, id in ipairs(expired) do
  local jk = K .. 'job:' .. id
  local job = redis.call('HMGET', jk, 'state', 'lease_expires')
  if job[1] ~= 'running' or not job[2] then
    redis.call('ZREM', K .. 'leases', id)   -- a stale index entry
  elseif tonumber(job[2]) >= now then
    redis.call('ZADD', K .. 'leases', job[2], id)   -- index behind the row: repair it
  else
    rows[#rows + 1] = redis.call('HGETALL', jk)
  end
end
return {#expired, rows}
