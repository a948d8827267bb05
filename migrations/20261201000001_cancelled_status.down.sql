-- The narrower check cannot hold `cancelled` rows: reverting removes them (their jobs were
-- cancelled by an operator; nothing else refers to them).
DELETE FROM step_results WHERE status = 'cancelled';
ALTER TABLE step_results DROP CONSTRAINT IF EXISTS step_results_status_check;
ALTER TABLE step_results ADD CONSTRAINT step_results_status_check
    CHECK (status IN ('succeeded', 'dead')) NOT VALID;
