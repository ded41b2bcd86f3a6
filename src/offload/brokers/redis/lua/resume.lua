-- resume: ARGV = K, queue. The queue is no longer paused, and work is announced on it: its
-- waiting workers wake as for an enqueue. Returns 1 when it was paused, else 0. A script,
-- not a transaction: over maxmemory Redis refuses every transaction, and this one's first
-- write frees memory (`first_write_frees`), so an operator can resume a queue to drain it.
local queue = ARGV[2]
local removed = redis.call('SREM', K .. 'paused', queue)
announce_work({[queue] = true})
return removed
