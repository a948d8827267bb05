-- A job an operator cancelled ends with a `cancelled` result row. SQLite cannot change a
-- table's check constraint in place: the table is rebuilt with the wider one (the documented
-- ALTER TABLE procedure: create, copy, drop, rename, index).
CREATE TABLE step_results_new (
    job_id      TEXT PRIMARY KEY,
    run_id      TEXT,
    step        TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('succeeded', 'dead', 'cancelled')),
    attempts    INTEGER NOT NULL,
    output      TEXT,
    error       TEXT,
    enqueued_at TEXT,
    started_at  TEXT,
    finished_at TEXT NOT NULL,
    duration_ms INTEGER,
    worker_id   TEXT NOT NULL
);
INSERT INTO step_results_new SELECT * FROM step_results;
DROP TABLE step_results;
ALTER TABLE step_results_new RENAME TO step_results;
CREATE INDEX step_results_run_id_idx ON step_results (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX step_results_finished_at_idx ON step_results (finished_at);
