// A BullMQ worker with the same concurrency and the same INSERT as the plain list worker.
// Completed jobs are removed from Redis (their record is the Postgres row), as a team persisting
// results elsewhere would configure it.
import { Worker } from 'bullmq';
import Redis from 'ioredis';
import pg from 'pg';
import { runStep, INSERT_SQL, env } from './steps.mjs';

const queue = env('QUEUE_KEY');
const concurrency = Number(env('CONCURRENCY', '10'));
const workerId = `bullmq-worker:${process.pid}`;
const pool = new pg.Pool({ connectionString: env('DATABASE_URL'), max: Number(env('PG_POOL_SIZE', '10')) });
const connection = new Redis(env('REDIS_URL'), { maxRetriesPerRequest: null });

await pool.query('SELECT 1');
const worker = new Worker(
  queue,
  async (job) => {
    const claimed = Date.now();
    const data = job.data;
    const output = await runStep(data.step, data.input);
    const finished = Date.now();
    await pool.query(INSERT_SQL, [data.id, data.run_id ?? null, data.step, job.attemptsMade + 1,
      JSON.stringify(output), data.enqueued_at, claimed, finished, finished - claimed, workerId]);
  },
  { connection, concurrency, removeOnComplete: { count: 0 }, removeOnFail: { count: 1000 } },
);
worker.on('error', (e) => process.stderr.write(`worker error: ${e}\n`));
await worker.waitUntilReady();
process.stdout.write('ready\n');
process.on('SIGTERM', async () => {
  await worker.close();
  await pool.end();
  connection.disconnect();
});
