DROP INDEX IF EXISTS step_dead_letters_dead_at_idx;
DROP INDEX IF EXISTS step_attempts_finished_at_idx;
