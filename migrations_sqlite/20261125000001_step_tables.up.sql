-- The same three tables as migrations/ (PostgreSQL), in SQLite's types, for the embedded results
-- store of a first run (DATABASE_URL=sqlite://...). Timestamps are RFC 3339 text, JSON is text,
-- uuids are 16-byte blobs: what sqlx reads back as the same Rust types.
CREATE TABLE step_results (
    job_id      TEXT PRIMARY KEY,
    run_id      TEXT,
    step        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('succeeded', 'dead')),
    attempts    INTEGER NOT NULL,
    output      TEXT,
    error       TEXT,
    enqueued_at TEXT,
    started_at  TEXT,
    finished_at TEXT NOT NULL,
    duration_ms INTEGER,
    worker_id   TEXT NOT NULL
);
CREATE INDEX step_results_run_id_idx ON step_results (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX step_results_finished_at_idx ON step_results (finished_at);

CREATE TABLE step_attempts (
    id          BLOB PRIMARY KEY,
    job_id      TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('failed', 'timed_out', 'panicked')),
    error       TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    worker_id   TEXT NOT NULL
);
CREATE INDEX step_attempts_job_id_idx ON step_attempts (job_id, attempt);

CREATE TABLE step_dead_letters (
    id          BLOB PRIMARY KEY,
    job_id      TEXT,
    run_id      TEXT,
    step        TEXT,
    reason      TEXT NOT NULL,
    error       TEXT,
    attempts    INTEGER NOT NULL,
    payload     BLOB NOT NULL,
    worker_id   TEXT NOT NULL,
    dead_at     TEXT NOT NULL,
    replayed_at TEXT
);
CREATE INDEX step_dead_letters_job_id_idx ON step_dead_letters (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX step_dead_letters_pending_idx ON step_dead_letters (dead_at) WHERE replayed_at IS NULL;
