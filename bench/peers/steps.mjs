// The two built-in steps the benchmark uses, with step-worker's semantics, for the Node peers.
import { setTimeout as sleep } from 'node:timers/promises';

export async function runStep(step, input) {
  switch (step) {
    case 'builtin.noop':
      return input ?? null;
    case 'builtin.sleep':
      await sleep(input.ms);
      return { slept_ms: input.ms };
    default:
      throw new Error(`unknown step ${step}`);
  }
}

// The same row shape as step-worker's step_results (the table is created by step-worker's own
// migration in the peer's database); written_at is added by the harness with a
// clock_timestamp() default, for every system alike.
export const INSERT_SQL = `INSERT INTO step_results
  (job_id, run_id, step, status, attempts, output, enqueued_at, started_at, finished_at, duration_ms, worker_id)
  VALUES ($1, $2, $3, 'succeeded', $4, $5, to_timestamp($6 / 1000.0), to_timestamp($7 / 1000.0),
          to_timestamp($8 / 1000.0), $9, $10)
  ON CONFLICT (job_id) DO NOTHING`;

export function env(name, fallback) {
  const v = process.env[name];
  if (v === undefined || v === '') {
    if (fallback === undefined) throw new Error(`${name} is required`);
    return fallback;
  }
  return v;
}
