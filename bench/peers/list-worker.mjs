// The plain Node worker a team writes for itself: `concurrency` loops, each on its own Redis
// connection (a blocking command monopolises its socket), each doing
//   BLMOVE ready -> processing;  run the step;  INSERT ... ON CONFLICT DO NOTHING;  LREM processing.
// Persist before LREM, so a crash re-runs a job rather than losing it. A measuring stick, not
// product code: no retries, no recovery of a dead worker's processing list.
import Redis from 'ioredis';
import pg from 'pg';
import { runStep, INSERT_SQL, env } from './steps.mjs';

const redisUrl = env('REDIS_URL');
const queue = env('QUEUE_KEY');
const processing = `${queue}:processing`;
const concurrency = Number(env('CONCURRENCY', '10'));
// BLMOVE's block time: 5 s, the usual choice (0 would block for ever: no idle traffic, but no
// way to stop the loops short of dropping their connections).
const blockSeconds = Number(env('BLOCK_SECONDS', '5'));
const workerId = `list-worker:${process.pid}`;
const pool = new pg.Pool({ connectionString: env('DATABASE_URL'), max: Number(env('PG_POOL_SIZE', '10')) });
const shared = new Redis(redisUrl);
let stopping = false;

async function loop() {
  const conn = new Redis(redisUrl);
  while (!stopping) {
    const payload = await conn.blmove(queue, processing, 'RIGHT', 'LEFT', blockSeconds);
    if (payload === null) continue;
    const claimed = Date.now();
    const job = JSON.parse(payload);
    const output = await runStep(job.step, job.input);
    const finished = Date.now();
    await pool.query(INSERT_SQL, [job.id, job.run_id ?? null, job.step, 1, JSON.stringify(output),
      job.enqueued_at, claimed, finished, finished - claimed, workerId]);
    await shared.lrem(processing, 1, payload);
  }
  conn.disconnect();
}

await pool.query('SELECT 1');
await shared.ping();
const loops = Array.from({ length: concurrency }, loop);
process.stdout.write('ready\n');
process.on('SIGTERM', () => { stopping = true; });
await Promise.all(loops);
await pool.end();
shared.disconnect();
