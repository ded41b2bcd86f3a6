-- The SQS broker's own queries, on the PostgreSQL schema (migration_9 made its outbox).

-- name: take_jobs
-- The outbox rows of these jobs, deleted in the caller's transaction: it commits after the
-- send, so a send that fails (or a crash) leaves them for the relay.
DELETE FROM offload_outbox WHERE id IN (
    SELECT id FROM offload_outbox WHERE job_id = ANY(%(ids)s::uuid[])
    ORDER BY id FOR UPDATE SKIP LOCKED)
RETURNING id, job_id::text, queue, extract(epoch FROM run_at)::float8

-- name: take_old
-- The relay's batch: rows older than `age` seconds, whose send was lost (or whose sender
-- has not committed yet: a duplicate then, which the fenced claim makes harmless).
DELETE FROM offload_outbox WHERE id IN (
    SELECT id FROM offload_outbox
    WHERE created_at < clock_timestamp() - make_interval(secs => %(age)s)
    ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING id, job_id::text, queue, extract(epoch FROM run_at)::float8

-- name: resend_stale
-- Jobs that have waited ready longer than `age` seconds (and as long since their last
-- resend), in a queue not paused (whose messages come back on their own), with no outbox
-- row: their message was lost. Marked resent now, committed before the send (no row stays
-- locked while SQS answers); their run_at stays. No change of state: no feed entry.
UPDATE offload_jobs j SET resent_at = coalesce(%(now)s, now())
WHERE j.id IN (
    SELECT k.id FROM offload_jobs k
    WHERE k.state IN ('queued', 'retrying')
        AND greatest(k.run_at, k.resent_at)
            < coalesce(%(now)s, now()) - make_interval(secs => %(age)s)
        AND NOT EXISTS (SELECT 1 FROM offload_paused p WHERE p.queue = k.queue)
        AND NOT EXISTS (SELECT 1 FROM offload_outbox o WHERE o.job_id = k.id)
    ORDER BY k.run_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING j.id::text, j.queue, extract(epoch FROM j.run_at)::float8

-- name: resend_undo
-- The resends a failed send did not make: tried again at the next relay pass.
UPDATE offload_jobs SET resent_at = NULL WHERE id = ANY(%(ids)s::uuid[])

-- name: claim_job
-- `claim` (postgres/queries.sql) of one job named by its message: only while it waits, is
-- due and its queue is not paused; one attempt spent, a fresh token. The SELECT list is
-- the claim's (`postgres.backend._LEASE_COLUMNS`).
WITH picked AS (
    SELECT j.id FROM offload_jobs j
    WHERE j.id = %(id)s AND j.state IN ('queued', 'retrying')
        AND j.run_at <= coalesce(%(now)s, now())
        AND NOT EXISTS (SELECT 1 FROM offload_paused p WHERE p.queue = j.queue)
    FOR UPDATE SKIP LOCKED
), upd AS (
    UPDATE offload_jobs j
    SET state = 'running', attempt = j.attempt + 1, lease_token = %(token)s,
        lease_expires = coalesce(%(now)s, now()) + make_interval(secs => %(lease_for)s),
        worker = %(worker)s, started_at = coalesce(%(now)s, now()), finished_at = NULL,
        cancel_requested = false, progress_fraction = NULL, progress_message = NULL
    FROM picked WHERE j.id = picked.id
    RETURNING j.*
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u
)
SELECT id::text, kind, version, payload, queue, priority, attempt, max_attempts,
    extract(epoch FROM run_at)::float8, extract(epoch FROM enqueued_at)::float8,
    idempotency_key, owner, trace, timeout, options, extract(epoch FROM lease_expires)::float8
FROM upd
