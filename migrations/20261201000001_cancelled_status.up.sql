-- A job an operator cancelled (`step-worker cancel`, `DELETE /jobs/{id}`) ends with a
-- `cancelled` result row. The new check is added NOT VALID: every existing row satisfies the
-- narrower one it replaces, so validating would only scan the table under an exclusive lock;
-- a NOT VALID check is still enforced on every row written from now on.
ALTER TABLE step_results DROP CONSTRAINT IF EXISTS step_results_status_check;
ALTER TABLE step_results ADD CONSTRAINT step_results_status_check
    CHECK (status IN ('succeeded', 'dead', 'cancelled')) NOT VALID;
