-- Indexes on the times RESULT_RETENTION prunes by, so each bounded prune statement finds its
-- oldest rows without scanning the table (step_results is already indexed on finished_at).
CREATE INDEX IF NOT EXISTS step_attempts_finished_at_idx ON step_attempts (finished_at);
CREATE INDEX IF NOT EXISTS step_dead_letters_dead_at_idx ON step_dead_letters (dead_at);
