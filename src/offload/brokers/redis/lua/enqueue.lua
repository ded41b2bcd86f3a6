-- enqueue: ARGV = K, now, resent ('1': this call's earlier attempt may have run, its reply
-- lost), then the envelopes packed as one JSON array of their arguments (ENV). All or
-- nothing: every envelope is checked before anything is written. Returns {id, created
-- (1/0)} pairs.
local now, resent = ARGV[2], ARGV[3] == '1'
ENV = cjson.decode(ARGV[4])
local n = #ENV / ENVELOPE_WIDTH
local plan = check_envelopes(1, n, {}, resent)
local out, queues = {}, {}
store_envelopes(1, plan, now, out, queues)
announce_changes()
announce_work(queues)
return out
