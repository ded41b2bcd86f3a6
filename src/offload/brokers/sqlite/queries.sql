-- name: schema
CREATE TABLE IF NOT EXISTS offload_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS offload_jobs (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    queue TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    run_at REAL NOT NULL,
    enqueued_at REAL NOT NULL,
    idempotency_key TEXT,
    owner TEXT NOT NULL,
    trace TEXT,
    timeout REAL,
    options TEXT,
    lease_token TEXT,
    lease_expires REAL,
    worker TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    progress_fraction REAL,
    progress_message TEXT,
    result TEXT,
    error TEXT,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS offload_jobs_ready
    ON offload_jobs (queue, priority, run_at, id) WHERE state IN ('queued', 'retrying');
CREATE INDEX IF NOT EXISTS offload_jobs_state ON offload_jobs (state, queue, run_at);
CREATE INDEX IF NOT EXISTS offload_jobs_lease
    ON offload_jobs (lease_expires) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS offload_jobs_owner ON offload_jobs (owner, id);
CREATE UNIQUE INDEX IF NOT EXISTS offload_jobs_idem
    ON offload_jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- Waiting jobs a worker gave back for one that knows their newer version (base.NEWER_VERSION).
CREATE INDEX IF NOT EXISTS offload_jobs_newer ON offload_jobs (queue)
    WHERE state IN ('queued', 'retrying') AND json_extract(error, '$.type') = 'NewerVersion';
CREATE TABLE IF NOT EXISTS offload_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS offload_events_job ON offload_events (job_id, seq);
CREATE TABLE IF NOT EXISTS offload_effects (
    job_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    PRIMARY KEY (job_id, key)
);
-- The kinds and versions each worker runs (JSON: kind -> [version, ...]), as of seen_at.
CREATE TABLE IF NOT EXISTS offload_workers (
    id TEXT PRIMARY KEY,
    kinds TEXT NOT NULL,
    seen_at REAL NOT NULL
);
-- Periodic schedules (App.periodic): the newest tick enqueued, its job, and the schedule's
-- spec (JSON) as of then. Older code ignores it: no new schema version.
CREATE TABLE IF NOT EXISTS offload_schedules (
    name TEXT PRIMARY KEY,
    last_tick REAL NOT NULL,
    last_job_id TEXT NOT NULL,
    fired_at REAL NOT NULL,
    spec TEXT NOT NULL
);
-- Fleet-wide limits per kind (App.handles(max_running=, rate=)), as the latest worker to
-- start declared them, and the start times of rate-limited kinds within their window (a
-- sliding window log). Older code ignores both (and so the limits): no new schema version.
CREATE TABLE IF NOT EXISTS offload_limits (
    kind TEXT PRIMARY KEY,
    queue TEXT NOT NULL,
    max_running INTEGER,
    rate INTEGER,
    per_s REAL
);
CREATE TABLE IF NOT EXISTS offload_starts (
    kind TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS offload_starts_kind ON offload_starts (kind, at);
-- Fair queues (App.message(fair=True)): the waiting jobs of each owner of a queue in claim
-- order (one range per owner), and each owner's last turn at a fair claim of the queue.
CREATE INDEX IF NOT EXISTS offload_jobs_fair
    ON offload_jobs (queue, owner, priority, run_at, id) WHERE state IN ('queued', 'retrying');
CREATE TABLE IF NOT EXISTS offload_fair (
    queue TEXT NOT NULL,
    owner TEXT NOT NULL,
    turn INTEGER NOT NULL,
    PRIMARY KEY (queue, owner)
);

-- name: has_schema
-- Whether an existing file is an offload database (opening it read-only checks first).
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'offload_meta'

-- name: insert_job
INSERT INTO offload_jobs (
    id, kind, version, queue, priority, payload, state, attempt, max_attempts, run_at,
    enqueued_at, idempotency_key, owner, trace, timeout, options, unique_key, unique_mode)
VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING

-- name: find_idem
SELECT id FROM offload_jobs WHERE owner = ? AND idempotency_key = ?

-- name: find_unique
-- The job holding a unique key (its WHERE is offload_jobs_unique's: see migration_4).
SELECT id FROM offload_jobs
WHERE unique_key = ? AND (
    state IN ('queued', 'retrying') AND started_at IS NULL
    OR unique_mode = 'active' AND state IN ('queued', 'retrying', 'running'))

-- name: claim_ids_one
-- The ready jobs of ONE queue, in claim order, straight off offload_jobs_ready. claim_ids
-- unions one of these per queue: a single query over several queues would sort every
-- ready row of them all on each claim, and cost would grow with the backlog.
SELECT id, priority, run_at FROM (
    SELECT id, priority, run_at FROM offload_jobs
    WHERE state IN ('queued', 'retrying') AND queue = ? AND run_at <= ?
        -- a paused queue has none (its name again: one primary-key probe per claim)
        AND NOT EXISTS (SELECT 1 FROM offload_paused WHERE queue = ?)
    ORDER BY priority, run_at, id
    LIMIT ?
)

-- name: claim
UPDATE offload_jobs
SET state = 'running', attempt = attempt + 1, lease_token = ?, lease_expires = ?,
    worker = ?, started_at = ?, finished_at = NULL, cancel_requested = 0,
    progress_fraction = NULL, progress_message = NULL
-- `+state`: look rows up by id; an index on state would scan every queued row.
WHERE id IN ({ids}) AND +state IN ('queued', 'retrying')
RETURNING *

-- name: extend
UPDATE offload_jobs SET lease_expires = ?
WHERE state = 'running' AND (id, lease_token) IN (VALUES {pairs})
RETURNING id, cancel_requested

-- The last two parameters of settle_final and settle_again fence a rescue: (0, now) for
-- a worker's own settle; (1, now) applies only while the lease is still lapsed.
-- name: settle_final
UPDATE offload_jobs
SET state = ?, result = ?, error = ?, finished_at = ?, lease_token = NULL, lease_expires = NULL,
    max_attempts = coalesce(?, max_attempts)
WHERE id = ? AND lease_token = ? AND state = 'running' AND (? = 0 OR lease_expires < ?)
RETURNING id

-- name: settle_again
-- A cancel asked for while it ran, not yet seen by its worker: the job ends cancelled
-- rather than running again (an attempt given back unspent is refunded still).
UPDATE offload_jobs
SET state = CASE WHEN cancel_requested THEN 'cancelled' ELSE ? END, error = ?,
    run_at = CASE WHEN cancel_requested THEN run_at ELSE ? END,
    finished_at = CASE WHEN cancel_requested THEN ? ELSE finished_at END,
    attempt = attempt - ?, lease_token = NULL,
    lease_expires = NULL, max_attempts = coalesce(?, max_attempts)
WHERE id = ? AND lease_token = ? AND state = 'running' AND (? = 0 OR lease_expires < ?)
RETURNING id, state

-- name: expired
SELECT * FROM offload_jobs
WHERE state = 'running' AND lease_expires < ?
ORDER BY lease_expires
LIMIT ?

-- name: progress
-- Its feed entry: the connection's trigger (backend._progress_feed_trigger).
UPDATE offload_jobs SET progress_fraction = ?, progress_message = ?
WHERE id = ? AND lease_token = ? AND state = 'running'

-- name: get
SELECT * FROM offload_jobs WHERE id = ?

-- name: cancel_waiting
UPDATE offload_jobs SET state = 'cancelled', finished_at = ?
WHERE id = ? AND state IN ('queued', 'retrying')
RETURNING *

-- name: cancel_running
UPDATE offload_jobs SET cancel_requested = 1
WHERE id = ? AND state = 'running'
RETURNING *

-- name: requeue
UPDATE offload_jobs
SET state = 'queued', attempt = 0, run_at = ?, result = NULL, started_at = NULL,
    finished_at = NULL, progress_fraction = NULL, progress_message = NULL, worker = NULL,
    cancel_requested = 0, unique_key = NULL
WHERE id = ? AND state IN ('dead', 'failed', 'cancelled')
RETURNING *

-- name: insert_events
-- Feed entries of the jobs named by the JSON array parameter, in its order, one statement
-- per batch: each carries the row's fields a status record shows (as PostgreSQL's schema 2
-- does); the web tier presents them. Times go in with every digit (json_object writes a
-- REAL with 15, 10 µs at today's epoch seconds, which moved one near a millisecond's end
-- to the next: the entry then showed another time than the row).
INSERT INTO offload_events (job_id, owner, record)
SELECT j.id, j.owner, json_object(
    'id', j.id, 'kind', j.kind, 'version', j.version, 'queue', j.queue, 'state', j.state,
    'priority', j.priority, 'attempt', j.attempt, 'max_attempts', j.max_attempts,
    'progress_fraction', j.progress_fraction, 'progress_message', j.progress_message,
    'result', json(j.result), 'error', json(j.error), 'worker', j.worker,
    'enqueued_at', json(printf('%!.17g', j.enqueued_at)),
    'run_at', json(printf('%!.17g', j.run_at)),
    'started_at', CASE WHEN j.started_at IS NOT NULL THEN json(printf('%!.17g', j.started_at)) END,
    'finished_at', CASE WHEN j.finished_at IS NOT NULL THEN json(printf('%!.17g', j.finished_at)) END)
FROM json_each(?) AS k JOIN offload_jobs AS j ON j.id = k.value
ORDER BY k.key

-- name: insert_entries
-- Feed entries whose records the caller made from what it wrote: a new job's from its
-- envelope (backend._new_entry), a transition's from the row its statement returned
-- (backend._entry), so no row is read back.
INSERT INTO offload_events (job_id, owner, record) VALUES (?, ?, ?)

-- name: stats
SELECT queue, state, count(*) AS n, sum(run_at <= ?) AS ready, min(run_at) AS oldest
FROM offload_jobs
WHERE state IN ('queued', 'retrying', 'running', 'dead')
GROUP BY queue, state

-- name: oldest_ready
SELECT queue, min(run_at) AS oldest FROM offload_jobs
WHERE state IN ('queued', 'retrying') AND run_at <= ?
GROUP BY queue

-- name: newer_waiting
-- Read off the small partial index alone (its WHERE is this one), not every waiting row:
-- without INDEXED BY the planner prefers offload_jobs_state and reads each row's error.
SELECT queue, count(*) FROM offload_jobs INDEXED BY offload_jobs_newer
WHERE state IN ('queued', 'retrying') AND json_extract(error, '$.type') = 'NewerVersion'
GROUP BY queue

-- name: newest_waiting
SELECT max(enqueued_at) FROM offload_jobs WHERE queue = ? AND state IN ('queued', 'retrying')

-- name: purge_chunk
-- One chunk (the LIMIT) of a queue's waiting jobs that waited when the purge began, read off
-- offload_jobs_ready (their feed entries and step results go with them).
DELETE FROM offload_jobs WHERE id IN (
    SELECT id FROM offload_jobs
    WHERE queue = ? AND state IN ('queued', 'retrying') AND enqueued_at <= ?
    LIMIT ?)
RETURNING id

-- name: next_run_at
-- Not of a paused queue: its due jobs would wake the claim loop at once, again and again.
SELECT min(run_at) FROM offload_jobs
WHERE state IN ('queued', 'retrying') AND queue IN ({queues})
    AND queue NOT IN (SELECT queue FROM offload_paused)

-- name: remember
-- Kept only while the job exists: one deleted meanwhile (a delivery or a step that ended
-- after it) would leave a record that nothing deletes.
INSERT INTO offload_effects (job_id, key, value)
SELECT :id, :key, :value WHERE EXISTS (SELECT 1 FROM offload_jobs WHERE id = :id)
ON CONFLICT (job_id, key) DO UPDATE SET value = excluded.value

-- name: remember_first
INSERT INTO offload_effects (job_id, key, value)
SELECT :id, :key, :value WHERE EXISTS (SELECT 1 FROM offload_jobs WHERE id = :id)
ON CONFLICT (job_id, key) DO NOTHING

-- name: recall
SELECT value FROM offload_effects WHERE job_id = ? AND key = ?

-- name: prune_ended
-- One chunk (the LIMIT) of the succeeded and failed jobs that ended before the cutoff, read
-- off offload_jobs_history (its WHERE repeated, so that the planner may use it) from where
-- the chunk before stopped: the index holds the dead jobs too, kept for good, and a chunk
-- read from its start walked past every old dead job again (a prune of a long history then
-- took minutes, each chunk holding the write lock longer than the last).
DELETE FROM offload_jobs WHERE id IN (
    SELECT id FROM offload_jobs INDEXED BY offload_jobs_history
    WHERE state IN ('succeeded', 'failed', 'dead') AND state <> 'dead'
        AND finished_at >= ? AND finished_at < ?
    ORDER BY finished_at
    LIMIT ?)
RETURNING id, finished_at

-- name: prune_cancelled
DELETE FROM offload_jobs WHERE id IN (
    SELECT id FROM offload_jobs WHERE state = 'cancelled' AND finished_at < ? LIMIT ?)
RETURNING id

-- name: prune_events
DELETE FROM offload_events WHERE job_id IN (SELECT value FROM json_each(?))



-- name: forget_worker
DELETE FROM offload_workers WHERE id = ?

-- name: forget_workers
DELETE FROM offload_workers WHERE seen_at < ?

-- name: live_workers
SELECT kinds FROM offload_workers WHERE seen_at >= ?

-- name: migration_3
-- Schema 3: each worker's registry entry (JSON: WorkerInfo.entry), and the paused queues,
-- which every claim reads (older code would not: hence the new version).
ALTER TABLE offload_workers ADD COLUMN info TEXT;
CREATE TABLE IF NOT EXISTS offload_paused (
    queue TEXT PRIMARY KEY,
    paused_at REAL NOT NULL
)

-- name: migration_4
-- Schema 4: unique jobs. A job of a unique kind holds its key (kind, owner, chosen fields:
-- _unique.unique_key) while it waits for its first start, or, in mode 'active', while it
-- waits or runs: the partial index admits one holder per key, and a job leaves it by the
-- very transition that takes it out of those states (the claim, a settle, a cancel...), so
-- no transition has a key to clear. A requeue drops its job's key (requeue, requeue_many).
-- Older code would requeue a job back into the index: hence the new version.
ALTER TABLE offload_jobs ADD COLUMN unique_key TEXT;
ALTER TABLE offload_jobs ADD COLUMN unique_mode TEXT;
CREATE UNIQUE INDEX IF NOT EXISTS offload_jobs_unique ON offload_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND (
        state IN ('queued', 'retrying') AND started_at IS NULL
        OR unique_mode = 'active' AND state IN ('queued', 'retrying', 'running'))

-- name: migration_5
-- Schema 5: two indexes of the jobs page go, each a page more for every enqueue to write for
-- a page no faster (bench/RESULTS.md, "sqlite-index-cost"): on (enqueued_at, id), whose date
-- range the id bounds serve, and on (kind, id).
-- No semicolon in these comments: the statements are split on it.
DROP INDEX IF EXISTS offload_jobs_created;
DROP INDEX IF EXISTS offload_jobs_kind_id

-- name: record_worker
INSERT INTO offload_workers (id, kinds, seen_at, info) VALUES (?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE
SET kinds = excluded.kinds, seen_at = excluded.seen_at, info = excluded.info

-- name: registry
-- Entries recorded before schema 3 carry no info: their workers are gone (or record anew).
SELECT info, seen_at FROM offload_workers WHERE info IS NOT NULL

-- name: pause
INSERT INTO offload_paused (queue, paused_at) VALUES (?, ?) ON CONFLICT (queue) DO NOTHING

-- name: resume
DELETE FROM offload_paused WHERE queue = ?

-- name: paused
SELECT queue FROM offload_paused
-- name: search_indexes
-- The operators' jobs page (JobFilter): newest first by id within each filter, so a page of
-- any one filter reads its index backwards and stops after a page, and state with kind (the
-- dead jobs of one kind) is one range, counted off the index. A date range reads its stretch
-- of the primary key (ids are UUIDv7: JobFilter.id_bounds), `history` serves the per-minute
-- throughput (covering: read off the index alone). Made on open like the rest of the schema
-- (older code ignores them, SQLite keeps them up to date). A kind without a state is read
-- off state_kind_id one state at a time (search.py), a date range off the primary key.
-- No semicolon in these comments: the statements are split on it.
CREATE INDEX IF NOT EXISTS offload_jobs_state_id ON offload_jobs (state, id);
CREATE INDEX IF NOT EXISTS offload_jobs_state_kind_id ON offload_jobs (state, kind, id);
CREATE INDEX IF NOT EXISTS offload_jobs_queue_id ON offload_jobs (queue, id);
CREATE INDEX IF NOT EXISTS offload_jobs_history ON offload_jobs (finished_at, queue, state)
    WHERE state IN ('succeeded', 'failed', 'dead')

-- name: requeue_many
UPDATE offload_jobs
SET state = 'queued', attempt = 0, run_at = ?, result = NULL, started_at = NULL,
    finished_at = NULL, progress_fraction = NULL, progress_message = NULL, worker = NULL,
    cancel_requested = 0, unique_key = NULL
WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('dead', 'failed', 'cancelled')
RETURNING id

-- name: cancel_many_waiting
UPDATE offload_jobs SET state = 'cancelled', finished_at = ?
WHERE id IN (SELECT value FROM json_each(?)) AND state IN ('queued', 'retrying')
RETURNING id

-- name: cancel_many_running
UPDATE offload_jobs SET cancel_requested = 1
WHERE id IN (SELECT value FROM json_each(?)) AND state = 'running' AND cancel_requested = 0

-- name: delete_many
DELETE FROM offload_jobs
WHERE id IN (SELECT value FROM json_each(?))
  AND state IN ('succeeded', 'failed', 'cancelled', 'dead')
RETURNING id

-- name: silence_many
-- Jobs whose deliveries must send nothing (an erasure): their delivery options go, and the
-- mark that no target is to be told of them takes their place.
UPDATE offload_jobs SET options = '{"silenced": true}'
WHERE id IN (SELECT value FROM json_each(?))

-- name: forget_owner
-- An owner's turns at the fair queues' claims (an erasure's last step): her next job takes
-- its turn as a new owner's would.
DELETE FROM offload_fair WHERE owner = ?

-- name: delete_effects
DELETE FROM offload_effects WHERE job_id IN (SELECT value FROM json_each(?))

-- name: history
SELECT CAST(finished_at / 60 AS INTEGER) * 60 AS minute, queue, state, count(*)
FROM offload_jobs INDEXED BY offload_jobs_history
WHERE finished_at >= ? AND state IN ('succeeded', 'failed', 'dead')
GROUP BY minute, queue, state

-- name: schedule_last
SELECT last_tick FROM offload_schedules WHERE name = ?

-- name: record_fire
INSERT INTO offload_schedules (name, last_tick, last_job_id, fired_at, spec)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO UPDATE
SET last_tick = excluded.last_tick, last_job_id = excluded.last_job_id,
    fired_at = excluded.fired_at, spec = excluded.spec
WHERE excluded.last_tick > offload_schedules.last_tick

-- name: schedule_states
SELECT name, last_tick, last_job_id, fired_at, spec FROM offload_schedules


-- name: declare_limit
INSERT INTO offload_limits (kind, queue, max_running, rate, per_s) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (kind) DO UPDATE
SET queue = excluded.queue, max_running = excluded.max_running, rate = excluded.rate,
    per_s = excluded.per_s

-- name: drop_limit
DELETE FROM offload_limits WHERE kind = ?

-- name: limits
SELECT kind, queue, max_running, rate, per_s FROM offload_limits

-- name: limits_of_queues
SELECT kind, queue, max_running, rate, per_s FROM offload_limits
WHERE queue IN (SELECT value FROM json_each(?))

-- name: running_of_kinds
-- Off offload_jobs_state_kind_id: one range per kind.
SELECT kind, count(*) FROM offload_jobs
WHERE state = 'running' AND kind IN (SELECT value FROM json_each(?))
GROUP BY kind

-- name: forget_starts
DELETE FROM offload_starts WHERE kind = ? AND at <= ?

-- name: starts_of_kind
-- The kind's starts within its window (after :since), and the :rate-th newest of them.
SELECT (SELECT count(*) FROM offload_starts WHERE kind = :kind AND at > :since),
    (SELECT at FROM offload_starts WHERE kind = :kind AND at > :since
     ORDER BY at DESC LIMIT 1 OFFSET :rate - 1)

-- name: record_start
INSERT INTO offload_starts (kind, at) VALUES (?, ?)

-- name: gated_ids_one
-- claim_ids_one for a gated claim: with each row's kind, and none of the kinds in the JSON
-- array parameter (held back by their limits).
SELECT id, kind, priority, run_at FROM (
    SELECT id, kind, priority, run_at FROM offload_jobs
    WHERE state IN ('queued', 'retrying') AND queue = ? AND run_at <= ?
        AND NOT EXISTS (SELECT 1 FROM offload_paused WHERE queue = ?)
        AND kind NOT IN (SELECT value FROM json_each(?))
        AND id NOT IN (SELECT value FROM json_each(?))
    ORDER BY priority, run_at, id
    LIMIT ?
)

-- name: fair_owners
-- The owners with waiting jobs in a queue (a skip scan of offload_jobs_fair: one probe per
-- owner, not one per job), least recently served first.
WITH RECURSIVE o(owner) AS (
    SELECT (SELECT min(owner) FROM offload_jobs
            WHERE state IN ('queued', 'retrying') AND queue = :queue)
    UNION ALL
    SELECT (SELECT min(owner) FROM offload_jobs
            WHERE state IN ('queued', 'retrying') AND queue = :queue AND owner > o.owner)
    FROM o WHERE o.owner IS NOT NULL
)
SELECT o.owner FROM o LEFT JOIN offload_fair f ON f.queue = :queue AND f.owner = o.owner
WHERE o.owner IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM offload_paused WHERE queue = :queue)
ORDER BY coalesce(f.turn, 0), o.owner
LIMIT :limit

-- name: fair_jobs
-- Up to :n ready jobs (after :skip_n) of each owner in :owners (a JSON array), in that order
-- then claim order, none of a kind held back (:blocked).
SELECT j.id, j.kind, j.owner FROM json_each(:owners) AS o
JOIN offload_jobs AS j ON j.id IN (
    SELECT id FROM offload_jobs
    WHERE state IN ('queued', 'retrying') AND queue = :queue AND owner = o.value
        AND run_at <= :now AND kind NOT IN (SELECT value FROM json_each(:blocked))
    ORDER BY priority, run_at, id
    LIMIT :n OFFSET :skip_n)
ORDER BY o.key, j.priority, j.run_at, j.id

-- name: fair_turn
-- Each owner in :owners (a JSON array, in the order served) takes the newest turns of :queue.
INSERT INTO offload_fair (queue, owner, turn)
SELECT :queue, o.value,
    (SELECT coalesce(max(turn), 0) + 1 FROM offload_fair WHERE queue = :queue) + o.key
FROM json_each(:owners) AS o WHERE true
ON CONFLICT (queue, owner) DO UPDATE SET turn = excluded.turn

-- name: stall_paid_until
SELECT value FROM offload_meta WHERE key = 'stall_paid_until'

-- name: pay_stall
INSERT INTO offload_meta (key, value) VALUES ('stall_paid_until', ?)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: pause_leases
-- Leases live when a writer began waiting for the lock get the wait back (stalls.py).
UPDATE offload_jobs SET lease_expires = lease_expires + ?
WHERE state = 'running' AND lease_expires >= ?

-- name: storage_probe
-- While the disk is full, readiness writes this much (then nothing) to see room again.
INSERT INTO offload_meta (key, value) VALUES ('storage_probe', zeroblob(?))
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: storage_unprobe
DELETE FROM offload_meta WHERE key = 'storage_probe'
