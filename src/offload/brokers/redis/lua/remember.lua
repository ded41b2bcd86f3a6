-- remember: ARGV = K, id, key, value, first ('1': only where none is kept yet).
-- A job's record is kept only while the job exists: one deleted meanwhile (a delivery
-- or a step that ended after it) would leave a record that nothing deletes.
local id = ARGV[2]
if redis.call('EXISTS', K .. 'job:' .. id) == 0 then return 0 end
if ARGV[5] == '1' then
  return redis.call('HSETNX', K .. 'fx:' .. id, ARGV[3], ARGV[4])
end
redis.call('HSET', K .. 'fx:' .. id, ARGV[3], ARGV[4])
return 1
