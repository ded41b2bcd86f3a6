-- progress: ARGV = K, id, token, fraction, message (both optional). 1, or 0 when stale.
local id, token = ARGV[2], ARGV[3]
local jk = K .. 'job:' .. id
local job = redis.call('HMGET', jk, 'state', 'lease_token')
if job[1] ~= 'running' or job[2] ~= token then return 0 end
set_or_del(jk, 'progress_fraction', opt(ARGV[4]))
set_or_del(jk, 'progress_message', opt(ARGV[5]))
event(id)
announce_changes()
return 1
