-- One row per job id: the job's terminal outcome. Written by upsert, so a re-run never adds a
-- second row; the first terminal outcome wins, except that a replayed dead job may succeed.
CREATE TABLE step_results (
    job_id      text PRIMARY KEY,
    run_id      text,
    step        text NOT NULL,
    status      text NOT NULL CHECK (status IN ('succeeded', 'dead')),
    attempts    integer NOT NULL,
    output      jsonb,
    error       text,
    enqueued_at timestamptz,
    started_at  timestamptz,
    finished_at timestamptz NOT NULL,
    duration_ms bigint,
    worker_id   text NOT NULL
);
CREATE INDEX step_results_run_id_idx ON step_results (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX step_results_finished_at_idx ON step_results (finished_at);

-- One row per failed, timed-out or panicked attempt, so an operator can see why attempt 2 failed.
CREATE TABLE step_attempts (
    id          uuid PRIMARY KEY,
    job_id      text NOT NULL,
    attempt     integer NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('failed', 'timed_out', 'panicked')),
    error       text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    worker_id   text NOT NULL
);
CREATE INDEX step_attempts_job_id_idx ON step_attempts (job_id, attempt);

-- The dead-letter queue of record: every dead letter, including payloads with no usable id.
-- Uncapped and queryable; `replayed_at` is set when an operator replays it.
CREATE TABLE step_dead_letters (
    id          uuid PRIMARY KEY,
    job_id      text,
    run_id      text,
    step        text,
    reason      text NOT NULL,
    error       text,
    attempts    integer NOT NULL,
    -- The raw payload exactly as pushed (it may not be valid UTF-8); read it with
    -- convert_from(payload, 'UTF8') when it is.
    payload     bytea NOT NULL,
    worker_id   text NOT NULL,
    dead_at     timestamptz NOT NULL,
    replayed_at timestamptz
);
CREATE INDEX step_dead_letters_job_id_idx ON step_dead_letters (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX step_dead_letters_pending_idx ON step_dead_letters (dead_at) WHERE replayed_at IS NULL;
