-- name: migration_1
CREATE TABLE IF NOT EXISTS offload_jobs (
    id uuid PRIMARY KEY,
    kind text NOT NULL,
    version integer NOT NULL,
    queue text NOT NULL,
    priority integer NOT NULL DEFAULT 0,
    payload jsonb NOT NULL,
    state text NOT NULL,
    attempt integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    run_at timestamptz NOT NULL,
    enqueued_at timestamptz NOT NULL,
    idempotency_key text,
    owner text NOT NULL,
    trace jsonb,
    timeout double precision,
    options jsonb,
    lease_token text,
    lease_expires timestamptz,
    worker text,
    cancel_requested boolean NOT NULL DEFAULT false,
    progress_fraction double precision,
    progress_message text,
    result jsonb,
    error jsonb,
    started_at timestamptz,
    finished_at timestamptz
) WITH (fillfactor = 80, autovacuum_vacuum_scale_factor = 0.02,
        autovacuum_vacuum_insert_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.02);
CREATE INDEX IF NOT EXISTS offload_jobs_ready
    ON offload_jobs (queue, priority, run_at, id) WHERE state IN ('queued', 'retrying');
CREATE INDEX IF NOT EXISTS offload_jobs_lease
    ON offload_jobs (lease_expires) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS offload_jobs_owner ON offload_jobs (owner, id);
CREATE INDEX IF NOT EXISTS offload_jobs_finished
    ON offload_jobs (finished_at) WHERE state IN ('succeeded', 'failed', 'cancelled');
CREATE INDEX IF NOT EXISTS offload_jobs_dead ON offload_jobs (queue) WHERE state = 'dead';
CREATE UNIQUE INDEX IF NOT EXISTS offload_jobs_idem
    ON offload_jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS offload_events (
    seq bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    owner text NOT NULL,
    record jsonb NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02);
CREATE INDEX IF NOT EXISTS offload_events_job ON offload_events (job_id, seq);
CREATE INDEX IF NOT EXISTS offload_events_owner ON offload_events (owner, seq);
CREATE TABLE IF NOT EXISTS offload_effects (
    job_id text NOT NULL,
    key text NOT NULL,
    value jsonb,
    PRIMARY KEY (job_id, key)
);
CREATE OR REPLACE FUNCTION offload_ts(t timestamptz) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') $$;
CREATE OR REPLACE FUNCTION offload_record(j offload_jobs) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT jsonb_build_object(
        'id', j.id, 'kind', j.kind, 'version', j.version, 'queue', j.queue,
        'state', j.state, 'priority', j.priority, 'attempt', j.attempt,
        'max_attempts', j.max_attempts,
        'progress', CASE WHEN j.progress_fraction IS NULL AND j.progress_message IS NULL
                         THEN NULL
                         ELSE jsonb_build_object('fraction', j.progress_fraction,
                                                 'message', j.progress_message) END,
        'result', j.result, 'error', j.error,
        'created_at', offload_ts(j.enqueued_at), 'run_at', offload_ts(j.run_at),
        'started_at', offload_ts(j.started_at), 'finished_at', offload_ts(j.finished_at),
        'worker', j.worker,
        'links', jsonb_build_object('self', '/v1/jobs/' || j.id,
                                    'events', '/v1/jobs/' || j.id || '/events',
                                    'result', '/v1/jobs/' || j.id || '/result')) $$;
CREATE OR REPLACE FUNCTION offload_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('offload_work', q) FROM (SELECT DISTINCT queue AS q FROM new_rows) s;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION offload_notify_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('offload_feed', '');
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS offload_jobs_inserted ON offload_jobs;
CREATE TRIGGER offload_jobs_inserted AFTER INSERT ON offload_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION offload_notify_work();
DROP TRIGGER IF EXISTS offload_events_inserted ON offload_events;
CREATE TRIGGER offload_events_inserted AFTER INSERT ON offload_events
    FOR EACH STATEMENT EXECUTE FUNCTION offload_notify_feed()

-- name: migration_2
-- Feed entries carry the row's own fields (times as epoch seconds), made into the status
-- record when they are read (contract.status_record): building the whole record in SQL on
-- every transition cost about as much as the rest of an enqueue. Entries written before
-- this migration hold whole records and are read as they are.
CREATE OR REPLACE FUNCTION offload_change(j offload_jobs) RETURNS jsonb
    LANGUAGE sql STABLE PARALLEL SAFE
    AS $$ SELECT jsonb_build_object(
        'id', j.id, 'kind', j.kind, 'version', j.version, 'queue', j.queue,
        'state', j.state, 'priority', j.priority, 'attempt', j.attempt,
        'max_attempts', j.max_attempts, 'progress_fraction', j.progress_fraction,
        'progress_message', j.progress_message, 'result', j.result, 'error', j.error,
        'worker', j.worker, 'enqueued_at', date_part('epoch', j.enqueued_at),
        'run_at', date_part('epoch', j.run_at), 'started_at', date_part('epoch', j.started_at),
        'finished_at', date_part('epoch', j.finished_at)) $$

-- name: migration_3
-- The kinds and versions each worker runs (record_worker, live_versions); and the waiting
-- jobs a worker gave back for one that knows their newer version (base.NEWER_VERSION),
-- which stats counts per queue.
CREATE TABLE IF NOT EXISTS offload_workers (
    id text PRIMARY KEY,
    kinds jsonb NOT NULL,
    seen_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS offload_jobs_newer ON offload_jobs (queue)
    WHERE state IN ('queued', 'retrying') AND error->>'type' = 'NewerVersion'

-- name: migration_5
-- The operators' jobs page (JobFilter): newest first by id within each filter, so a page of
-- any one filter reads its index backwards and stops after a page, and state with kind (the
-- dead jobs of one kind) is one range; `created` serves the date
-- range (kind_id and created: dropped by migration_12); `history` the per-minute throughput of App.history (index-only where the visibility
-- map allows). Plain CREATE INDEX inside the migration's transaction: on a big table, run
-- `offload migrate` when writes may wait for it (about 2 s per index per million jobs).
CREATE INDEX IF NOT EXISTS offload_jobs_state_id ON offload_jobs (state, id);
CREATE INDEX IF NOT EXISTS offload_jobs_kind_id ON offload_jobs (kind, id);
CREATE INDEX IF NOT EXISTS offload_jobs_state_kind_id ON offload_jobs (state, kind, id);
CREATE INDEX IF NOT EXISTS offload_jobs_queue_id ON offload_jobs (queue, id);
CREATE INDEX IF NOT EXISTS offload_jobs_created ON offload_jobs (enqueued_at, id);
CREATE INDEX IF NOT EXISTS offload_jobs_history ON offload_jobs (finished_at, queue, state)
    WHERE state IN ('succeeded', 'failed', 'dead')

-- name: migration_6
-- Periodic schedules (App.periodic): the newest tick enqueued (epoch seconds, compared
-- exactly), its job, and the schedule's spec as of then.
CREATE TABLE IF NOT EXISTS offload_schedules (
    name text PRIMARY KEY,
    last_tick double precision NOT NULL,
    last_job_id text NOT NULL,
    fired_at timestamptz NOT NULL,
    spec jsonb NOT NULL
)

-- name: migration_7
-- Unique jobs. A job of a unique kind holds its key (kind, owner, chosen fields:
-- _unique.unique_key) while it waits for its first start, or, in mode 'active', while it
-- waits or runs: the partial index admits one holder per key, and a job leaves it by the
-- very transition that takes it out of those states (the claim, a settle, a cancel, a
-- rescue, a delete), so no transition has a key to clear. A requeue drops its job's key.
ALTER TABLE offload_jobs ADD COLUMN IF NOT EXISTS unique_key text,
    ADD COLUMN IF NOT EXISTS unique_mode text;
CREATE UNIQUE INDEX IF NOT EXISTS offload_jobs_unique ON offload_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND (
        state IN ('queued', 'retrying') AND started_at IS NULL
        OR unique_mode = 'active' AND state IN ('queued', 'retrying', 'running'))

-- name: migration_8
-- Fleet-wide limits per kind (App.handles(max_running=, rate=)) as the latest worker to
-- start declared them, and the start times (epoch seconds) of rate-limited kinds within
-- their window: a gated claim locks its kinds' rows, counts, and records its starts.
CREATE TABLE IF NOT EXISTS offload_limits (
    kind text PRIMARY KEY,
    queue text NOT NULL,
    max_running integer,
    rate integer,
    per_s double precision
);
CREATE TABLE IF NOT EXISTS offload_starts (
    kind text NOT NULL,
    at double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS offload_starts_kind ON offload_starts (kind, at);
-- Fair queues (App.message(fair=True)): the waiting jobs of each owner of a queue in claim
-- order (one range per owner), and each owner's last turn at a fair claim of the queue: the
-- claim's number (one nextval per claim, not one per owner) * 2^20 + the owner's place in
-- the order the claim served them (a claim serves at most its size, far under 2^20, owners).
CREATE INDEX IF NOT EXISTS offload_jobs_fair
    ON offload_jobs (queue, owner, priority, run_at, id) WHERE state IN ('queued', 'retrying');
CREATE TABLE IF NOT EXISTS offload_fair (
    queue text NOT NULL,
    owner text NOT NULL,
    turn bigint NOT NULL,
    PRIMARY KEY (queue, owner)
);
CREATE SEQUENCE IF NOT EXISTS offload_fair_turn

-- name: migration_9
-- The outbox of the SQS broker (brokers/sqs): every job a connection with the session
-- setting offload.outbox = 'on' makes waiting (stored, retried, released, rescued or
-- requeued) gets a row here in the same transaction, which the broker then sends to SQS
-- and deletes; rows left by a lost send are sent by its relay. Other connections (every
-- plain PostgreSQL deployment) write none.
CREATE TABLE IF NOT EXISTS offload_outbox (
    id bigserial PRIMARY KEY,
    job_id uuid NOT NULL,
    queue text NOT NULL,
    run_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS offload_outbox_job ON offload_outbox (job_id);
CREATE OR REPLACE FUNCTION offload_outbox_add() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO offload_outbox (job_id, queue, run_at) VALUES (NEW.id, NEW.queue, NEW.run_at);
    RETURN NULL;
END $$;
-- Row triggers whose WHEN (evaluated without calling the function) reads the setting: a
-- connection without it pays no function call and builds no transition table.
DROP TRIGGER IF EXISTS offload_jobs_outbox_inserted ON offload_jobs;
CREATE TRIGGER offload_jobs_outbox_inserted AFTER INSERT ON offload_jobs FOR EACH ROW
    WHEN (current_setting('offload.outbox', true) = 'on'
          AND NEW.state IN ('queued', 'retrying'))
    EXECUTE FUNCTION offload_outbox_add();
DROP TRIGGER IF EXISTS offload_jobs_outbox_updated ON offload_jobs;
CREATE TRIGGER offload_jobs_outbox_updated AFTER UPDATE OF state ON offload_jobs FOR EACH ROW
    WHEN (current_setting('offload.outbox', true) = 'on'
          AND NEW.state IN ('queued', 'retrying') AND OLD.state NOT IN ('queued', 'retrying'))
    EXECUTE FUNCTION offload_outbox_add()

-- name: migration_10
-- Wake-ups name their schema: the channels are database-wide, so offload schemas sharing a
-- database (apps, tenants, a Django project beside offload) woke each other's workers for
-- every job. The payload is the schema (quoted as quote_ident does), then ':' and the queue
-- on offload_work; the schema alone on offload_feed. A listener keeps only its own schema's.
CREATE OR REPLACE FUNCTION offload_schema() RETURNS text LANGUAGE sql STABLE
    AS $$ SELECT quote_ident(n.nspname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.oid = 'offload_jobs'::regclass $$;
CREATE OR REPLACE FUNCTION offload_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('offload_work', quote_ident(TG_TABLE_SCHEMA) || ':' || q)
    FROM (SELECT DISTINCT queue AS q FROM new_rows) s;
    RETURN NULL;
END $$;
-- A statement trigger fires for an insert of no rows too (a claim that found nothing writes
-- no feed entry): that one wakes no feed reader now.
CREATE OR REPLACE FUNCTION offload_notify_feed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT FROM new_rows) THEN
        PERFORM pg_notify('offload_feed', quote_ident(TG_TABLE_SCHEMA));
    END IF;
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS offload_events_inserted ON offload_events;
CREATE TRIGGER offload_events_inserted AFTER INSERT ON offload_events
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION offload_notify_feed()

-- name: migration_11
-- The claim as a function whose plan is cached generic (plan_cache_mode): as a plain
-- statement PostgreSQL planned it anew on every call (a custom plan, for the array of
-- queues and the limit), about a third of a claim's time (bench/pickup_stages.py). Its
-- plan has the same shape whatever the arguments: one index range per queue.
CREATE OR REPLACE FUNCTION offload_claim(
    p_queues text[], p_limit integer, p_token text, p_lease_for double precision,
    p_worker text, p_now timestamptz)
RETURNS TABLE (id text, kind text, version integer, payload jsonb, queue text,
    priority integer, attempt integer, max_attempts integer, run_at double precision,
    enqueued_at double precision, idempotency_key text, owner text, trace jsonb,
    timeout double precision, options jsonb, lease_expires double precision)
LANGUAGE plpgsql VOLATILE SET plan_cache_mode = force_generic_plan AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        SELECT c.id FROM unnest(p_queues) AS q(name)
        -- a paused queue has none (one primary-key probe per queue)
        CROSS JOIN LATERAL (SELECT NOT EXISTS (
            SELECT 1 FROM offload_paused p WHERE p.queue = q.name) AS open) AS o
        CROSS JOIN LATERAL (
            SELECT id, priority, run_at FROM offload_jobs
            WHERE o.open AND state IN ('queued', 'retrying') AND queue = q.name AND run_at <= coalesce(p_now, now())
            ORDER BY priority, run_at, id
            LIMIT p_limit
            FOR UPDATE SKIP LOCKED
        ) AS c
        ORDER BY c.priority, c.run_at, c.id
        LIMIT p_limit
    ), upd AS (
        UPDATE offload_jobs j
        SET state = 'running', attempt = j.attempt + 1, lease_token = p_token,
            lease_expires = coalesce(p_now, now()) + make_interval(secs => p_lease_for), worker = p_worker,
            started_at = coalesce(p_now, now()), finished_at = NULL, cancel_requested = false,
            progress_fraction = NULL, progress_message = NULL
        -- (an array of ids: the generic plan does not know the limit, and would join
        -- `picked` by a merge along the whole primary key)
        WHERE j.id = ANY (ARRAY(SELECT picked.id FROM picked))
        RETURNING j.*
    ), ev AS (
        INSERT INTO offload_events (job_id, owner, record)
        SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u
        ORDER BY u.priority, u.run_at, u.id
    )
    -- Only what a lease carries (not the last attempt's result or traceback), in claim order,
    -- times as epoch seconds: the columns `_LEASE_COLUMNS` in postgres.py names, in its order.
    SELECT id::text, kind, version, payload, queue, priority, attempt, max_attempts,
        extract(epoch FROM run_at)::float8, extract(epoch FROM enqueued_at)::float8,
        idempotency_key, owner, trace, timeout, options, extract(epoch FROM lease_expires)::float8
    FROM upd ORDER BY priority, run_at, id;
END $$

-- name: migration_12
-- Two of the jobs page's indexes go: a change of state is not a HOT update (state is
-- indexed), so each enters every index of the row anew, twice a job (bench/RESULTS.md,
-- "sqlite-index-cost"). A date range reads its stretch of the primary key (ids carry their
-- creation time), and a kind without a state reads offload_jobs_state_kind_id one state at
-- a time (search.py), as on SQLite. Only this schema's (where migration 5 made them): a bare
-- DROP INDEX IF EXISTS would look along the whole search_path and could drop another's.
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['offload_jobs_kind_id', 'offload_jobs_created'] LOOP
        IF to_regclass(format('%I.%I', current_schema(), name)) IS NOT NULL THEN
            EXECUTE format('DROP INDEX %I.%I', current_schema(), name);
        END IF;
    END LOOP;
END $$

-- name: migration_13
-- When the SQS broker's relay last sent a waiting job's message again, its first lost
-- (brokers/sqs, resend_stale): it sends one again once per `resend_after` at most, and the
-- job's own run_at (its order, its age) stays as it was. NULL on every other job.
ALTER TABLE offload_jobs ADD COLUMN IF NOT EXISTS resent_at timestamptz

-- Every query below takes %(now)s: NULL for the server's clock, or the time of a clock
-- injected into the backend (tests move it instead of sleeping).

-- name: enqueue
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS x(
        id uuid, kind text, version integer, queue text, priority integer, payload jsonb,
        attempt integer, max_attempts integer, run_at double precision,
        enqueued_at double precision, idempotency_key text, owner text, trace jsonb,
        timeout double precision, options jsonb, n integer)
), ins AS (
    INSERT INTO offload_jobs (id, kind, version, queue, priority, payload, state, attempt,
        max_attempts, run_at, enqueued_at, idempotency_key, owner, trace, timeout, options)
    SELECT id, kind, version, queue, priority, payload, 'queued', attempt, max_attempts,
        to_timestamp(run_at), to_timestamp(enqueued_at), idempotency_key, owner, trace,
        timeout, options
    FROM input ORDER BY n
    -- A stored id is an error that undoes the whole statement (all or nothing), but in a
    -- resend, which PostgresBackend runs with `ON CONFLICT DO NOTHING` (see `_resent`).
    ON CONFLICT (owner, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, owner, kind, version, queue, state, priority, attempt, max_attempts,
        enqueued_at, run_at
), ev AS (
    -- A new job's feed entry: offload_change's fields that an enqueue sets (the rest are
    -- NULL, and a reader takes an absent field as NULL: JobRow.of), built from the
    -- returned columns only. The whole row and offload_change cost a batch of 10,000 about
    -- a sixth of its time, its sort spilling to disk (bench/RESULTS.md, "pg-bulk-feed").
    INSERT INTO offload_events (job_id, owner, record)
    SELECT i.id, i.owner, jsonb_build_object('id', i.id, 'kind', i.kind,
        'version', i.version, 'queue', i.queue, 'state', i.state, 'priority', i.priority,
        'attempt', i.attempt, 'max_attempts', i.max_attempts,
        'enqueued_at', date_part('epoch', i.enqueued_at), 'run_at', date_part('epoch', i.run_at))
    FROM ins i ORDER BY i.id
)
SELECT id::text FROM ins

-- name: enqueue_feed
-- The feed entries of new jobs `ids`, as enqueue writes them: after the last chunk of a
-- streamed batch (enqueue_stream), just before its commit, whose chunks are enqueue without
-- its feed entries (`_without_feed`). A feed position taken by the first chunk would
-- otherwise stay uncommitted while the rest is stamped and sent, and a reader waits only
-- so long (gap_wait_s) for a position before it skips it.
INSERT INTO offload_events (job_id, owner, record)
SELECT j.id, j.owner, jsonb_build_object('id', j.id, 'kind', j.kind,
    'version', j.version, 'queue', j.queue, 'state', j.state, 'priority', j.priority,
    'attempt', j.attempt, 'max_attempts', j.max_attempts,
    'enqueued_at', date_part('epoch', j.enqueued_at), 'run_at', date_part('epoch', j.run_at))
FROM offload_jobs j WHERE j.id = ANY(%(ids)s::uuid[]) ORDER BY j.id

-- name: enqueue_unique
-- enqueue for a batch with unique jobs: any conflict skips its row, a held unique key's as
-- an idempotency key's, and a later row of the batch repeating an earlier one's key (the
-- first wins). The caller tells which conflict it was, in the same transaction. Rows go in
-- key order (then batch order: the first of a key still wins), so two batches holding the
-- same keys wait for each other's keys in one order and never deadlock.
WITH input AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS x(
        id uuid, kind text, version integer, queue text, priority integer, payload jsonb,
        attempt integer, max_attempts integer, run_at double precision,
        enqueued_at double precision, idempotency_key text, owner text, trace jsonb,
        timeout double precision, options jsonb, unique_key text, unique_mode text,
        n integer)
), ins AS (
    INSERT INTO offload_jobs (id, kind, version, queue, priority, payload, state, attempt,
        max_attempts, run_at, enqueued_at, idempotency_key, owner, trace, timeout, options,
        unique_key, unique_mode)
    SELECT id, kind, version, queue, priority, payload, 'queued', attempt, max_attempts,
        to_timestamp(run_at), to_timestamp(enqueued_at), idempotency_key, owner, trace,
        timeout, options, unique_key, unique_mode
    FROM input ORDER BY unique_key, n
    ON CONFLICT DO NOTHING
    RETURNING id, owner, kind, version, queue, state, priority, attempt, max_attempts,
        enqueued_at, run_at
), ev AS (
    -- (the new job's entry, as enqueue's)
    INSERT INTO offload_events (job_id, owner, record)
    SELECT i.id, i.owner, jsonb_build_object('id', i.id, 'kind', i.kind,
        'version', i.version, 'queue', i.queue, 'state', i.state, 'priority', i.priority,
        'attempt', i.attempt, 'max_attempts', i.max_attempts,
        'enqueued_at', date_part('epoch', i.enqueued_at), 'run_at', date_part('epoch', i.run_at))
    FROM ins i ORDER BY i.id
)
SELECT id::text FROM ins

-- name: find_idem
SELECT idempotency_key, id FROM offload_jobs
WHERE owner = %(owner)s AND idempotency_key = ANY(%(keys)s)

-- name: find_unique
-- The jobs holding these unique keys (the WHERE of offload_jobs_unique: migration_7).
SELECT unique_key, id FROM offload_jobs
WHERE unique_key = ANY(%(keys)s) AND (
    state IN ('queued', 'retrying') AND started_at IS NULL
    OR unique_mode = 'active' AND state IN ('queued', 'retrying', 'running'))

-- name: find_ids
SELECT id FROM offload_jobs WHERE id = ANY(%(ids)s::uuid[])

-- name: claim
-- A claim (migration_11): up to `limit` ready jobs of `queues`, leased to `token`.
SELECT * FROM offload_claim(%(queues)s::text[], %(limit)s::integer, %(token)s::text,
    %(lease_for)s::double precision, %(worker)s::text, %(now)s::timestamptz)

-- name: claimed
-- The jobs a claim leased, by its token: what a resent claim answers when the first
-- attempt's reply was lost (read from the index of running jobs, not the whole table).
SELECT id::text, kind, version, payload, queue, priority, attempt, max_attempts,
    extract(epoch FROM run_at)::float8, extract(epoch FROM enqueued_at)::float8,
    idempotency_key, owner, trace, timeout, options, extract(epoch FROM lease_expires)::float8
FROM offload_jobs
WHERE state = 'running' AND lease_expires IS NOT NULL AND lease_token = %(token)s
ORDER BY priority, run_at, id

-- name: extend
-- The rows are locked in id order first, as `settle` locks them: a worker's heartbeat and
-- its settle, on two connections, share rows, and in any order they deadlocked now and then.
-- A row another transaction holds is passed over here, not waited for (waiting, one row
-- locked past the lease held up every lease of the heartbeat, and they lapsed together):
-- the same statement without SKIP LOCKED (`_EXTEND_WAITING`) then waits a moment for those
-- (offload's own writes hold a row for less than a millisecond), and `still_held` reads
-- the ones still locked after it.
WITH locked AS (
    SELECT j.id FROM offload_jobs j
    JOIN unnest(%(ids)s::uuid[], %(tokens)s::text[]) AS l(id, token)
        ON j.id = l.id AND j.lease_token = l.token
    WHERE j.state = 'running'
    ORDER BY j.id
    FOR NO KEY UPDATE OF j SKIP LOCKED
)
UPDATE offload_jobs j SET lease_expires = coalesce(%(now)s, now()) + make_interval(secs => %(lease_for)s)
FROM locked
WHERE j.id = locked.id
RETURNING j.id, j.cancel_requested

-- name: still_held
-- Of the leases an `extend` did not renew, those still held (their rows locked by another
-- transaction: read without a lock), with their cancel flag.
SELECT j.id::text AS id, j.cancel_requested FROM offload_jobs j
JOIN unnest(%(ids)s::uuid[], %(tokens)s::text[]) AS l(id, token)
    ON j.id = l.id AND j.lease_token = l.token
WHERE j.state = 'running'

-- name: settle
WITH o AS (
    SELECT * FROM jsonb_to_recordset(%(batch)s::jsonb) AS x(
        id uuid, token text, state text, final boolean, result jsonb, error jsonb,
        run_at double precision, refund integer, max_attempts integer, lapsed boolean)
), locked AS (
    -- in id order, as `extend` locks them (see there)
    SELECT j.id FROM offload_jobs j JOIN o ON j.id = o.id
    WHERE j.lease_token = o.token AND j.state = 'running'
    ORDER BY j.id
    FOR NO KEY UPDATE OF j
), upd AS (
    UPDATE offload_jobs j
    -- A cancel asked for while it ran, not yet seen by its worker: a job that would run
    -- again ends cancelled (an attempt given back unspent is refunded still).
    SET state = CASE WHEN NOT o.final AND j.cancel_requested THEN 'cancelled' ELSE o.state END,
        result = CASE WHEN o.final THEN o.result ELSE j.result END,
        error = o.error,
        finished_at = CASE WHEN o.final OR j.cancel_requested THEN coalesce(%(now)s, now())
                           ELSE j.finished_at END,
        run_at = CASE WHEN o.final OR j.cancel_requested THEN j.run_at
                      ELSE coalesce(to_timestamp(o.run_at), coalesce(%(now)s, now())) END,
        attempt = j.attempt - o.refund,
        max_attempts = coalesce(o.max_attempts, j.max_attempts),
        -- the token stays, marked as spent by a settle or a rescue: a resent outcome
        -- whose first attempt applied (its reply lost) finds its mark in `again`
        lease_token = o.token || CASE WHEN o.lapsed THEN ':rescued' ELSE ':settled' END,
        lease_expires = NULL
    FROM o JOIN locked ON locked.id = o.id
    WHERE j.id = o.id AND j.lease_token = o.token AND j.state = 'running'
        -- a rescue's decision applies only while the lease is still lapsed
        AND (NOT o.lapsed OR j.lease_expires < coalesce(%(now)s, now()))
    RETURNING j.*
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u
), again AS (
    -- a resend's outcomes whose first attempt applied (read from the statement's snapshot,
    -- so never a row `upd` changes here); nothing, and no cost, in a first attempt
    SELECT j.id, j.state FROM offload_jobs j JOIN o ON j.id = o.id
    WHERE %(resent)s
        AND j.lease_token = o.token || CASE WHEN o.lapsed THEN ':rescued' ELSE ':settled' END
)
-- with the state each applied outcome left its job in, and whether it was written now (a
-- resend's outcome found applied is not: its follow-ups were stored then)
SELECT id::text, state, true FROM upd UNION ALL SELECT id::text, state, false FROM again

-- name: expired
-- Facts only: the lapsed leases, oldest lapse first, with what a lease carries (the
-- columns `_LEASE_COLUMNS` names, in its order) and its token, holder and cancel flag.
SELECT id::text, kind, version, payload, queue, priority, attempt, max_attempts,
    extract(epoch FROM run_at)::float8, extract(epoch FROM enqueued_at)::float8,
    idempotency_key, owner, trace, timeout, options, extract(epoch FROM lease_expires)::float8,
    lease_token, worker, cancel_requested
FROM offload_jobs
WHERE state = 'running' AND lease_expires < coalesce(%(now)s, now())
ORDER BY lease_expires
LIMIT %(limit)s

-- name: progress
WITH upd AS (
    UPDATE offload_jobs SET progress_fraction = %(fraction)s, progress_message = %(message)s
    WHERE id = %(id)s AND lease_token = %(token)s AND state = 'running'
    RETURNING *
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u
)
SELECT count(*) FROM upd

-- name: get
SELECT * FROM offload_jobs WHERE id = %(id)s

-- name: cancel_waiting
WITH upd AS (
    UPDATE offload_jobs SET state = 'cancelled', finished_at = coalesce(%(now)s, now())
    WHERE id = %(id)s AND state IN ('queued', 'retrying')
    RETURNING *
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u
)
SELECT * FROM upd

-- name: cancel_running
UPDATE offload_jobs SET cancel_requested = true
WHERE id = %(id)s AND state = 'running'
RETURNING *

-- name: requeue
WITH upd AS (
    UPDATE offload_jobs
    SET state = 'queued', attempt = 0, run_at = coalesce(%(now)s, now()), result = NULL, started_at = NULL,
        finished_at = NULL, progress_fraction = NULL, progress_message = NULL, worker = NULL,
        cancel_requested = false, unique_key = NULL
    WHERE id = %(id)s AND state IN ('dead', 'failed', 'cancelled')
    RETURNING *
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u
)
SELECT * FROM upd

-- name: stats
-- Each part reads its own index (the ready jobs', the leases', the dead jobs' partial
-- index, index-only): one scan of every waiting, running and dead row read the whole table
-- once dead jobs, kept for good, were a tenth of a large history.
WITH waiting AS (
    SELECT queue,
           count(*) FILTER (WHERE run_at <= coalesce(%(now)s, now())) AS queued,
           count(*) FILTER (WHERE run_at > coalesce(%(now)s, now())) AS scheduled,
           count(*) FILTER (WHERE error->>'type' = 'NewerVersion') AS awaiting_newer_worker,
           min(run_at) FILTER (WHERE run_at <= coalesce(%(now)s, now())) AS oldest
    FROM offload_jobs WHERE state IN ('queued', 'retrying') GROUP BY queue
), running AS (
    SELECT queue, count(*) AS running FROM offload_jobs WHERE state = 'running' GROUP BY queue
), dead AS (
    SELECT queue, count(*) AS dead FROM offload_jobs WHERE state = 'dead' GROUP BY queue
)
SELECT queue,
       coalesce(w.queued, 0) AS queued,
       coalesce(w.scheduled, 0) AS scheduled,
       coalesce(r.running, 0) AS running,
       coalesce(d.dead, 0) AS dead,
       coalesce(w.awaiting_newer_worker, 0) AS awaiting_newer_worker,
       coalesce(extract(epoch FROM coalesce(%(now)s, now()) - w.oldest), 0) AS oldest_age_s
FROM waiting w FULL JOIN running r USING (queue) FULL JOIN dead d USING (queue)

-- name: newest_waiting
SELECT max(enqueued_at) AS newest FROM offload_jobs
WHERE queue = %(queue)s AND state IN ('queued', 'retrying')

-- name: purge
-- One chunk of a queue's waiting jobs that waited when the purge began (`newest_waiting`),
-- with their feed entries and step results (a prune deletes only finished jobs': those of
-- a purged job would stay for good).
WITH doomed AS (
    SELECT id FROM offload_jobs
    WHERE queue = %(queue)s AND state IN ('queued', 'retrying') AND enqueued_at <= %(newest)s
    LIMIT %(chunk)s
    FOR UPDATE SKIP LOCKED
)

-- name: next_run_at
-- Not of a paused queue: its due jobs would wake the claim loop at once, again and again.
SELECT extract(epoch FROM min(run_at) - coalesce(%(now)s, now())) FROM offload_jobs
WHERE state IN ('queued', 'retrying') AND queue = ANY(%(queues)s)
    AND queue NOT IN (SELECT queue FROM offload_paused)

-- name: remember
-- Kept only while the job exists: one deleted meanwhile (a delivery or a step that ended
-- after it) would leave a record that nothing deletes. The job's row is locked (KEY
-- SHARE: settles and progress go on) so that a delete under way is waited for, and
-- then nothing is kept.
INSERT INTO offload_effects (job_id, key, value)
SELECT %(id)s::text, %(key)s, %(value)s FROM offload_jobs WHERE id = %(job)s FOR KEY SHARE
ON CONFLICT (job_id, key) DO UPDATE SET value = excluded.value

-- name: remember_first
INSERT INTO offload_effects (job_id, key, value)
SELECT %(id)s::text, %(key)s, %(value)s FROM offload_jobs WHERE id = %(job)s FOR KEY SHARE
ON CONFLICT (job_id, key) DO NOTHING

-- name: recall
SELECT value FROM offload_effects WHERE job_id = %(id)s AND key = %(key)s

-- name: prune
-- One chunk, oldest first by the finished jobs' index: a long history (a retention made
-- shorter, an outage) is pruned in short transactions, never one that holds a million
-- rows (and back vacuum) for minutes; rows another worker's prune holds are skipped.
WITH doomed AS (
    SELECT id FROM offload_jobs
    WHERE state IN ('succeeded', 'failed', 'cancelled')
      AND finished_at < coalesce(%(now)s, now()) - make_interval(secs => %(age)s)
    ORDER BY finished_at
    LIMIT %(chunk)s
    FOR UPDATE SKIP LOCKED
)


-- name: doomed_gone
-- Completes `prune` and `purge`, whose `doomed` picks the jobs: deletes them with their
-- feed entries and step results, and counts them.
, gone AS (
    DELETE FROM offload_jobs j USING doomed WHERE j.id = doomed.id
    RETURNING j.id
), ev AS (
    DELETE FROM offload_events WHERE job_id IN (SELECT id FROM gone)
), fx AS (
    DELETE FROM offload_effects WHERE job_id IN (SELECT id::text FROM gone)
)
SELECT count(*) FROM gone

-- name: forget_worker
DELETE FROM offload_workers WHERE id = %(id)s

-- name: live_workers
SELECT kinds FROM offload_workers
WHERE seen_at >= coalesce(%(now)s, now()) - make_interval(secs => %(within)s)

-- name: migration_4
-- Each worker's registry entry (WorkerInfo.entry: host, pid, queues, what it runs now …),
-- and the paused queues, which every claim reads.
ALTER TABLE offload_workers ADD COLUMN IF NOT EXISTS info jsonb;
CREATE TABLE IF NOT EXISTS offload_paused (
    queue text PRIMARY KEY,
    paused_at timestamptz NOT NULL
)

-- name: record_worker
-- Entries not recorded for %(forget)s seconds (workers that died) go on the way; never this
-- worker's own, which the upsert below updates in the same statement.
WITH gone AS (
    DELETE FROM offload_workers
    WHERE seen_at < coalesce(%(now)s, now()) - make_interval(secs => %(forget)s)
      AND id <> %(id)s
)
INSERT INTO offload_workers (id, kinds, seen_at, info)
VALUES (%(id)s, %(kinds)s, coalesce(%(now)s, now()), %(info)s)
ON CONFLICT (id) DO UPDATE
SET kinds = excluded.kinds, seen_at = excluded.seen_at, info = excluded.info

-- name: registry
-- Entries recorded before migration 4 carry no info: their workers are gone (or record anew).
SELECT info, extract(epoch FROM seen_at)::float8 AS seen_at,
    seen_at < coalesce(%(now)s, now()) - make_interval(secs => %(lost_after)s) AS lost
FROM offload_workers WHERE info IS NOT NULL

-- name: pause
INSERT INTO offload_paused (queue, paused_at) VALUES (%(queue)s, coalesce(%(now)s, now()))
ON CONFLICT (queue) DO NOTHING
RETURNING queue

-- name: resume
-- The NOTIFY wakes the workers waiting for the queue (as an enqueue's does), at commit.
WITH gone AS (DELETE FROM offload_paused WHERE queue = %(queue)s RETURNING queue)
SELECT queue, pg_notify('offload_work', offload_schema() || ':' || queue) FROM gone

-- name: paused
SELECT queue FROM offload_paused
-- name: live_workers
SELECT kinds FROM offload_workers
WHERE seen_at >= coalesce(%(now)s, now()) - make_interval(secs => %(within)s)

-- name: requeue_many
WITH upd AS (
    UPDATE offload_jobs
    SET state = 'queued', attempt = 0, run_at = coalesce(%(now)s, now()), result = NULL,
        started_at = NULL, finished_at = NULL, progress_fraction = NULL,
        progress_message = NULL, worker = NULL, cancel_requested = false, unique_key = NULL
    WHERE id = ANY(%(ids)s::uuid[]) AND state IN ('dead', 'failed', 'cancelled')
    RETURNING *
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u ORDER BY u.id DESC
), woken AS (
    -- the insert trigger wakes workers for new jobs; re-queued ones are announced here
    SELECT pg_notify('offload_work', offload_schema() || ':' || q)
    FROM (SELECT DISTINCT queue AS q FROM upd) s
)
SELECT (SELECT count(*) FROM upd) AS n, (SELECT count(*) FROM woken) AS queues

-- name: cancel_many_waiting
WITH upd AS (
    UPDATE offload_jobs SET state = 'cancelled', finished_at = coalesce(%(now)s, now())
    WHERE id = ANY(%(ids)s::uuid[]) AND state IN ('queued', 'retrying')
    RETURNING *
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u ORDER BY u.id DESC
)
SELECT id::text FROM upd

-- name: cancel_many_running
-- In id order, as `extend` and `settle` lock running rows (see `extend`).
WITH locked AS (
    SELECT id FROM offload_jobs
    WHERE id = ANY(%(ids)s::uuid[]) AND state = 'running' AND NOT cancel_requested
    ORDER BY id
    FOR NO KEY UPDATE
)
UPDATE offload_jobs j SET cancel_requested = true
FROM locked
WHERE j.id = locked.id

-- name: delete_many
WITH gone AS (
    DELETE FROM offload_jobs
    WHERE id = ANY(%(ids)s::uuid[]) AND state IN ('succeeded', 'failed', 'cancelled', 'dead')
    RETURNING id
), ev AS (
    DELETE FROM offload_events WHERE job_id IN (SELECT id FROM gone)
), fx AS (
    DELETE FROM offload_effects WHERE job_id IN (SELECT id::text FROM gone)
)
SELECT count(*) FROM gone

-- name: silence_many
-- Jobs whose deliveries must send nothing (an erasure): their delivery options go, and the
-- mark that no target is to be told of them takes their place.
WITH marked AS (
    UPDATE offload_jobs SET options = '{"silenced": true}'::jsonb
    WHERE id = ANY(%(ids)s::uuid[])
    RETURNING 1
)
SELECT count(*) FROM marked

-- name: forget_owner
-- An owner's turns at the fair queues' claims (an erasure's last step): her next job takes
-- its turn as a new owner's would.
WITH gone AS (DELETE FROM offload_fair WHERE owner = %(owner)s RETURNING 1)
SELECT count(*) FROM gone

-- name: history
-- Minutes as epoch multiples of 60 (date_trunc would follow the session's time zone).
SELECT floor(extract(epoch FROM finished_at) / 60)::bigint * 60 AS minute, queue, state,
       count(*) AS n
FROM offload_jobs
WHERE finished_at >= to_timestamp(%(since)s) AND state IN ('succeeded', 'failed', 'dead')
GROUP BY 1, 2, 3

-- name: lock_schedule
-- Serialises the fires of one schedule, its first (no row yet to lock) included.
SELECT pg_advisory_xact_lock(hashtextextended('offload.periodic:' || %(name)s, 0))

-- name: schedule_last
SELECT last_tick FROM offload_schedules WHERE name = %(name)s

-- name: record_fire
INSERT INTO offload_schedules (name, last_tick, last_job_id, fired_at, spec)
VALUES (%(name)s, %(tick)s, %(job)s, coalesce(%(now)s, now()), %(spec)s)
ON CONFLICT (name) DO UPDATE
SET last_tick = excluded.last_tick, last_job_id = excluded.last_job_id,
    fired_at = excluded.fired_at, spec = excluded.spec
WHERE excluded.last_tick > offload_schedules.last_tick

-- name: schedule_states
SELECT name, last_tick, last_job_id, extract(epoch FROM fired_at)::float8 AS fired_at, spec
FROM offload_schedules


-- name: declare_limit
INSERT INTO offload_limits (kind, queue, max_running, rate, per_s)
VALUES (%(kind)s, %(queue)s, %(max_running)s, %(rate)s, %(per_s)s)
ON CONFLICT (kind) DO UPDATE
SET queue = excluded.queue, max_running = excluded.max_running, rate = excluded.rate,
    per_s = excluded.per_s

-- name: drop_limit
DELETE FROM offload_limits WHERE kind = %(kind)s

-- name: lock_limits
-- The limits of the claimed queues' kinds, their rows locked in kind order: gated claims of
-- one kind take turns (plain claims of other queues never wait). `now` once, for the gate.
SELECT kind, queue, max_running, rate, per_s,
    extract(epoch FROM coalesce(%(now)s, now()))::float8 AS now
FROM offload_limits
WHERE queue = ANY(%(queues)s) OR %(all)s
ORDER BY kind
FOR UPDATE

-- name: limits_usage
-- Off offload_jobs_state_kind_id: one range per kind; the starts within each kind's window.
SELECT l.kind,
    (SELECT count(*) FROM offload_jobs j WHERE j.state = 'running' AND j.kind = l.kind)
        AS running,
    (SELECT count(*) FROM offload_starts s
     WHERE s.kind = l.kind AND s.at > %(now_s)s - l.per_s) AS starts,
    (SELECT s.at FROM offload_starts s WHERE s.kind = l.kind AND s.at > %(now_s)s - l.per_s
     ORDER BY s.at DESC LIMIT 1 OFFSET greatest(l.rate - 1, 0)) AS nth
FROM offload_limits l WHERE l.kind = ANY(%(kinds)s)

-- name: gated_pick
-- The ready jobs of plain queues for a gated claim, in claim order, locked: none of a kind
-- held back by its limits (%(blocked)s).
SELECT c.id::text, c.kind FROM unnest(%(queues)s::text[]) AS q(name)
CROSS JOIN LATERAL (SELECT NOT EXISTS (
    SELECT 1 FROM offload_paused p WHERE p.queue = q.name) AS open) AS o
CROSS JOIN LATERAL (
    SELECT id, kind, priority, run_at FROM offload_jobs
    WHERE o.open AND state IN ('queued', 'retrying') AND queue = q.name
        AND run_at <= coalesce(%(now)s, now()) AND NOT (kind = ANY(%(blocked)s))
    ORDER BY priority, run_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
) AS c
ORDER BY c.priority, c.run_at, c.id
LIMIT %(limit)s

-- name: fair_owners
-- The owners with waiting jobs in each fair queue (a skip scan of offload_jobs_fair: one
-- probe per owner, not one per job), least recently served first. The queue is bounded on
-- both sides rather than equal, and the order is by queue and owner: with `queue =` the
-- planner may walk offload_jobs_owner instead, filtering every other queue's jobs (27 ms
-- a claim with 50,000 jobs of another queue, against 0.4 ms this way). claim_fair alike.
WITH RECURSIVE o AS (
    SELECT q.name AS queue, (
        SELECT j.owner FROM offload_jobs j
        WHERE j.state IN ('queued', 'retrying') AND j.queue >= q.name AND j.queue <= q.name
        ORDER BY j.queue, j.owner LIMIT 1) AS owner
    FROM unnest(%(queues)s::text[]) AS q(name)
    WHERE NOT EXISTS (SELECT 1 FROM offload_paused p WHERE p.queue = q.name)
    UNION ALL
    SELECT o.queue, (
        SELECT j.owner FROM offload_jobs j
        WHERE j.state IN ('queued', 'retrying') AND j.queue >= o.queue AND j.queue <= o.queue
            AND j.owner > o.owner
        ORDER BY j.queue, j.owner LIMIT 1)
    FROM o WHERE o.owner IS NOT NULL
)
SELECT o.queue, o.owner FROM o
LEFT JOIN offload_fair f ON f.queue = o.queue AND f.owner = o.owner
WHERE o.owner IS NOT NULL
ORDER BY coalesce(f.turn, 0), o.owner

-- name: fair_jobs
-- Up to %(share)s ready jobs of each (queue, owner), locked, in that order then claim order.
SELECT c.id::text, c.kind, s.queue, s.owner
FROM unnest(%(queues)s::text[], %(owners)s::text[]) WITH ORDINALITY AS s(queue, owner, n)
CROSS JOIN LATERAL (
    SELECT id, kind, priority, run_at FROM offload_jobs
    WHERE state IN ('queued', 'retrying') AND queue = s.queue AND owner = s.owner
        AND run_at <= coalesce(%(now)s, now()) AND NOT (kind = ANY(%(blocked)s))
        AND NOT (id = ANY(%(taken)s::uuid[]))
    ORDER BY priority, run_at, id
    LIMIT %(share)s
    FOR UPDATE SKIP LOCKED
) AS c
ORDER BY s.n, c.priority, c.run_at, c.id

-- name: claim_picked
-- Lease the jobs a gated claim picked (%(ids)s, locked by the pick), and log each start of
-- a rate-limited kind (%(rated)s, kind -> window seconds), dropping the log's expired ones.
WITH upd AS (
    UPDATE offload_jobs j
    SET state = 'running', attempt = j.attempt + 1, lease_token = %(token)s,
        lease_expires = coalesce(%(now)s, now()) + make_interval(secs => %(lease_for)s), worker = %(worker)s,
        started_at = coalesce(%(now)s, now()), finished_at = NULL, cancel_requested = false,
        progress_fraction = NULL, progress_message = NULL
    WHERE j.id = ANY(%(ids)s::uuid[]) AND j.state IN ('queued', 'retrying')
    RETURNING j.*
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT u.id, u.owner, offload_change(ROW(u.*)::offload_jobs) FROM upd u
    ORDER BY array_position(%(ids)s::uuid[], u.id)
), logged AS (
    INSERT INTO offload_starts (kind, at)
    SELECT u.kind, %(now_s)s FROM upd u WHERE %(rated)s::jsonb ? u.kind
), forgot AS (
    DELETE FROM offload_starts s USING jsonb_each_text(%(rated)s::jsonb) AS r(kind, per_s)
    WHERE s.kind = r.kind AND s.at <= %(now_s)s - r.per_s::float8
)
SELECT id::text, kind, version, payload, queue, priority, attempt, max_attempts,
    extract(epoch FROM run_at)::float8, extract(epoch FROM enqueued_at)::float8,
    idempotency_key, owner, trace, timeout, options, extract(epoch FROM lease_expires)::float8
FROM upd ORDER BY array_position(%(ids)s::uuid[], id)

-- name: fair_turns
-- Each served owner's turn is now the newest, in the order served (one turn number for the
-- claim, see migration_8).
INSERT INTO offload_fair (queue, owner, turn)
SELECT s.queue, s.owner, (SELECT nextval('offload_fair_turn')) * 1048576 + s.n
FROM unnest(%(queues)s::text[], %(owners)s::text[]) WITH ORDINALITY AS s(queue, owner, n)
ON CONFLICT (queue, owner) DO UPDATE SET turn = excluded.turn

-- name: wake_prefix
-- The schema whose wake-ups a listener keeps (see migration_10); no row before the schema is made.
SELECT quote_ident(n.nspname) AS schema FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass('offload_jobs')

-- name: announce_work
-- Wake the workers of these queues (a job of a limited kind settled: a slot freed).
SELECT pg_notify('offload_work', offload_schema() || ':' || q) FROM unnest(%(queues)s::text[]) AS q

-- name: claim_fair
-- A gated claim with no limit on the claimed queues, in one statement: the plain queues'
-- ready jobs (`queues`, as `claim` reads them) and each fair queue's (`fair`) owners in
-- turn (a fair share of the claim from each owner, least recently served first) take turns;
-- then the leases, their feed entries and the served owners' new turns (one turn number for
-- the claim, see migration_8).
WITH RECURSIVE o AS (
    SELECT q.name AS queue, (
        SELECT j.owner FROM offload_jobs j
        WHERE j.state IN ('queued', 'retrying') AND j.queue >= q.name AND j.queue <= q.name
        ORDER BY j.queue, j.owner LIMIT 1) AS owner
    FROM unnest(%(fair)s::text[]) AS q(name)
    WHERE NOT EXISTS (SELECT 1 FROM offload_paused p WHERE p.queue = q.name)
    UNION ALL
    SELECT o.queue, (
        SELECT j.owner FROM offload_jobs j
        WHERE j.state IN ('queued', 'retrying') AND j.queue >= o.queue AND j.queue <= o.queue
            AND j.owner > o.owner
        ORDER BY j.queue, j.owner LIMIT 1)
    FROM o WHERE o.owner IS NOT NULL
), turns AS (
    SELECT * FROM (
        SELECT o.queue, o.owner,
            row_number() OVER (PARTITION BY o.queue ORDER BY f.turn NULLS FIRST, o.owner) AS k,
            count(*) OVER (PARTITION BY o.queue) AS owners
        FROM o LEFT JOIN offload_fair f ON f.queue = o.queue AND f.owner = o.owner
        WHERE o.owner IS NOT NULL
    ) t WHERE t.k <= %(limit)s
), cand AS (
    SELECT c.id, t.queue, t.owner,
        row_number() OVER (PARTITION BY t.queue ORDER BY c.nth, t.k) AS pos
    FROM turns t
    CROSS JOIN LATERAL (
        SELECT x.id, row_number() OVER (ORDER BY x.priority, x.run_at, x.id) AS nth FROM (
            SELECT id, priority, run_at FROM offload_jobs
            WHERE state IN ('queued', 'retrying') AND queue = t.queue AND owner = t.owner
                AND run_at <= coalesce(%(now)s, now())
            ORDER BY priority, run_at, id
            LIMIT (%(limit)s + least(t.owners, %(limit)s) - 1) / least(t.owners, %(limit)s)
            FOR UPDATE SKIP LOCKED
        ) x
    ) c
    UNION ALL
    -- the plain queues' (a claim of fair queues only is made without this part: see
    -- PostgresBackend._claim_fair)
    SELECT c.id, NULL, NULL, row_number() OVER (ORDER BY c.priority, c.run_at, c.id)
    FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (SELECT NOT EXISTS (
        SELECT 1 FROM offload_paused p WHERE p.queue = q.name) AS open) AS op
    CROSS JOIN LATERAL (
        SELECT id, priority, run_at FROM offload_jobs
        WHERE op.open AND state IN ('queued', 'retrying') AND queue = q.name
            AND run_at <= coalesce(%(now)s, now())
        ORDER BY priority, run_at, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
), srcs AS (
    -- the sources that offer jobs, the plain queues' (a NULL queue) and each fair queue's,
    -- in queue order from the one whose turn it is (`turn`, the claimer's count of its
    -- claims: a claim of one job took from the plain queues every time)
    SELECT queue, (k - 1 + n - %(turn)s::bigint %% n) %% n AS r
    FROM (
        SELECT queue, row_number() OVER (ORDER BY queue NULLS FIRST) AS k, count(*) OVER () AS n
        FROM (SELECT DISTINCT queue FROM cand) d
    ) s
), picked AS (
    -- a job of each source in turn
    SELECT c.id, c.queue, c.owner, row_number() OVER (ORDER BY c.pos, s.r) AS taken
    FROM cand c JOIN srcs s ON s.queue IS NOT DISTINCT FROM c.queue
    ORDER BY c.pos, s.r LIMIT %(limit)s
), upd AS (
    UPDATE offload_jobs j
    SET state = 'running', attempt = j.attempt + 1, lease_token = %(token)s,
        lease_expires = coalesce(%(now)s, now()) + make_interval(secs => %(lease_for)s), worker = %(worker)s,
        started_at = coalesce(%(now)s, now()), finished_at = NULL, cancel_requested = false,
        progress_fraction = NULL, progress_message = NULL
    FROM picked WHERE j.id = picked.id
    RETURNING j AS job, picked.taken
), ev AS (
    INSERT INTO offload_events (job_id, owner, record)
    SELECT (u.job).id, (u.job).owner, offload_change(u.job) FROM upd u ORDER BY u.taken
), turned AS (
    INSERT INTO offload_fair (queue, owner, turn)
    SELECT queue, owner, (SELECT nextval('offload_fair_turn')) * 1048576 + max(taken)
    FROM picked WHERE queue IS NOT NULL GROUP BY queue, owner
    ON CONFLICT (queue, owner) DO UPDATE SET turn = excluded.turn
)
SELECT (u.job).id::text, (u.job).kind, (u.job).version, (u.job).payload, (u.job).queue,
    (u.job).priority, (u.job).attempt, (u.job).max_attempts,
    extract(epoch FROM (u.job).run_at)::float8, extract(epoch FROM (u.job).enqueued_at)::float8,
    (u.job).idempotency_key, (u.job).owner, (u.job).trace, (u.job).timeout, (u.job).options,
    extract(epoch FROM (u.job).lease_expires)::float8
FROM upd u ORDER BY u.taken
