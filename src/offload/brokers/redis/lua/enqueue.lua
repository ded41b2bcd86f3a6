-- enqueue: ARGV = K, now, then the envelopes. All or nothing: every envelope is checked
-- before anything is written. Returns {id, created (1/0)} pairs.
local now = ARGV[2]
local n = (#ARGV - 2) / ENVELOPE_WIDTH
local plan = check_envelopes(3, n, {})
local out, queues = {}, {}
store_envelopes(3, plan, now, out, queues)
announce_changes()
announce_work(queues)
return out
