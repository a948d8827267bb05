DROP TABLE IF EXISTS step_dead_letters;
DROP TABLE IF EXISTS step_attempts;
DROP TABLE IF EXISTS step_results;
