// The machine's bound, measured in the same run as the worker: what Postgres alone and Redis alone
// absorb of the worker's per-job work when each has the machine to itself, and what the run's own
// CPU figures allow. step-worker's backlog rate is reported as a fraction of each.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { waitQuiet, log } from './util.mjs';

const run = promisify(execFile);
const boundDir = join(dirname(fileURLToPath(import.meta.url)), '..', 'bound');

/** Jobs per Redis script call in the Redis bound: the worker's default CLAIM_BATCH_SIZE. */
const REDIS_BATCH = 64;

/**
 * Postgres alone: pgbench running the worker's persist statement for all-success batches of
 * `batch` rows on two connections (the worker's two flushes in flight) for `seconds`, against a
 * database step-worker's migration prepared. Returns `{ batch, tps, rowsPerS }`.
 */
async function postgresBound(env, batch, seconds) {
  const db = `bench_${env.tag}_bound_${batch}`.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  const { url, client } = await env.pg.createDb(db, env.bin);
  try {
    await waitQuiet(env.quiet);
    const { stdout } = await run('pgbench', ['-n', '-c', '2', '-j', '2', '-T', String(seconds), '-D', `batch=${batch}`,
      '-f', join(boundDir, 'persist.pgbench'), url], { maxBuffer: 1 << 20 });
    const tps = Number(stdout.match(/^tps = ([\d.]+)/m)?.[1]);
    if (!Number.isFinite(tps)) throw new Error(`pgbench printed no tps:\n${stdout}`);
    return { batch, tps, rowsPerS: tps * batch };
  } finally {
    await client.end();
    if (!env.keep) await env.pg.dropDb(db);
  }
}

/**
 * Redis alone: redis-benchmark calling bench/bound/claim-settle.lua (push, claim and settle of
 * REDIS_BATCH jobs a call) on two connections, 4 calls pipelined. Returns `{ callsPerS, jobsPerS }`.
 */
async function redisBound(env, calls) {
  const u = new URL(env.redisUrl);
  const keys = [`bench-${env.tag}-bound-ready`, `bench-${env.tag}-bound-proc`];
  await waitQuiet(env.quiet);
  const script = readFileSync(join(boundDir, 'claim-settle.lua'), 'utf8');
  const { stdout } = await run('redis-benchmark', ['-h', u.hostname, '-p', u.port, '-n', String(calls), '-c', '2',
    '-P', '4', '--csv', 'EVAL', script, '2', ...keys, String(REDIS_BATCH)], { maxBuffer: 1 << 20 });
  await env.admin.cmd('DEL', ...keys);
  const rps = Number(stdout.trim().split('\n').pop().split('","')[1]);
  if (!Number.isFinite(rps)) throw new Error(`redis-benchmark printed no rate:\n${stdout}`);
  return { callsPerS: rps, jobsPerS: rps * REDIS_BATCH };
}

/**
 * The bound at the batch sizes the worker produced in this run's noop backlog (their mean,
 * from step_worker_persist_batch_size) and at the largest it can produce (`maxBatch`).
 */
export async function bound(env, { batchSizes, seconds, redisCalls }) {
  const postgres = [];
  for (const b of [...new Set(batchSizes)].sort((x, y) => x - y)) {
    const r = await postgresBound(env, b, seconds);
    log(`bound postgres batch ${b}: ${r.tps.toFixed(0)} statements/s, ${r.rowsPerS.toFixed(0)} rows/s`);
    postgres.push(r);
  }
  const redis = await redisBound(env, redisCalls);
  log(`bound redis: ${redis.jobsPerS.toFixed(0)} jobs/s (${redis.callsPerS.toFixed(0)} calls/s of ${REDIS_BATCH})`);
  return { kind: 'bound', system: 'step-worker', postgres, redis };
}
