-- The narrower check cannot hold `cancelled` rows: reverting removes them, then rebuilds the
-- table with the check it had.
DELETE FROM step_results WHERE status = 'cancelled';
CREATE TABLE step_results_old (
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
INSERT INTO step_results_old SELECT * FROM step_results;
DROP TABLE step_results;
ALTER TABLE step_results_old RENAME TO step_results;
CREATE INDEX step_results_run_id_idx ON step_results (run_id) WHERE run_id IS NOT NULL;
CREATE INDEX step_results_finished_at_idx ON step_results (finished_at);
