// The three systems under test, behind one interface: start a worker, enqueue a backlog that is
// released at once, push at a rate, and tell when the queue is drained.
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Redis from 'ioredis';
import { Queue } from 'bullmq';
import { freePort, waitFor, log } from './util.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const CHUNK = 1000;
/** The largest `pg` pool a peer gets: see ListWorkerPooledSystem. */
const MAX_PEER_POOL = 64;

/** A worker process we started; stopped by its pid only. */
class Proc {
  constructor(child, logPath) {
    this.child = child;
    this.pid = child.pid;
    this.exited = new Promise((r) => child.once('exit', (code, sig) => r({ code, sig })));
    const out = createWriteStream(logPath);
    child.stderr.pipe(out);
    this.stdout = '';
    child.stdout.on('data', (d) => {
      this.stdout += d;
      out.write(d);
    });
  }

  async stop(timeoutMs = 40_000) {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return this.exited;
    this.child.kill('SIGTERM');
    // The timer is cleared once the process exits, or it alone would keep Node alive for the
    // whole timeout after the run has finished.
    let timer;
    const timeout = new Promise((r) => {
      timer = setTimeout(() => r(null), timeoutMs);
    });
    const done = await Promise.race([this.exited, timeout]);
    clearTimeout(timer);
    if (done) return done;
    log(`pid ${this.pid} did not stop in ${timeoutMs / 1000} s; killing it`);
    this.child.kill('SIGKILL');
    return this.exited;
  }
}

/**
 * The Node peers' `pg` client talks plaintext unless told otherwise; step-worker's default
 * (`sslmode=prefer`) negotiates TLS with a server that offers it. Same transport for everyone.
 */
function plaintext(url) {
  const u = new URL(url);
  if (!u.searchParams.has('sslmode')) u.searchParams.set('sslmode', 'disable');
  return u.toString();
}

/** Payload bytes for step-worker and the list worker: the job contract's JSON object. */
export function payload(job) {
  return JSON.stringify(job);
}

class ListQueueSystem {
  constructor(ctx) {
    this.ctx = ctx;
    this.producer = new Redis(ctx.redisUrl);
  }

  get staging() {
    return `${this.ctx.queueKey}:staging`;
  }

  /** LPUSHes the backlog onto a staging key; `release` RENAMEs it onto the queue in O(1). */
  async enqueueBacklog(jobs) {
    for (let i = 0; i < jobs.length; i += CHUNK) {
      await this.producer.lpush(this.staging, ...jobs.slice(i, i + CHUNK).map(payload));
    }
  }

  async release() {
    await this.ctx.admin.cmd('RENAME', this.staging, this.ctx.queueKey);
  }

  async push(jobs) {
    await this.producer.lpush(this.ctx.queueKey, ...jobs.map(payload));
  }

  async close() {
    this.producer.disconnect();
  }
}

export class StepWorkerSystem extends ListQueueSystem {
  static label = 'step-worker';
  static family = 'step-worker';

  async start(logPath, extraEnv = {}) {
    const port = await freePort();
    this.healthUrl = `http://127.0.0.1:${port}/health`;
    this.metricsUrl = `http://127.0.0.1:${port}/metrics`;
    const child = spawn(this.ctx.bin, ['run'], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        REDIS_URL: this.ctx.redisUrl,
        DATABASE_URL: plaintext(this.ctx.dbUrl),
        QUEUE_KEY: this.ctx.queueKey,
        WORKER_CONCURRENCY: String(this.ctx.concurrency),
        HEALTH_CHECK_PORT: String(port),
        ...extraEnv,
      },
    });
    this.proc = new Proc(child, logPath);
    const t0 = performance.now();
    const ok = await waitFor(() => this.healthy(), { everyMs: 2, timeoutMs: 30_000 });
    if (!ok) throw new Error(`step-worker did not become healthy; see ${logPath}`);
    this.readyMs = performance.now() - t0;
    return this.proc;
  }

  async healthy() {
    try {
      const r = await fetch(this.healthUrl);
      return r.status === 200;
    } catch {
      return false;
    }
  }

  async metrics() {
    return (await fetch(this.metricsUrl)).text();
  }

  async drained() {
    const a = this.ctx.admin;
    if (Number(await a.cmd('LLEN', this.ctx.queueKey)) !== 0) return false;
    const procs = await a.cmd('KEYS', `{${this.ctx.queueKey}}:proc:*`);
    for (const k of procs) if (Number(await a.cmd('LLEN', k)) !== 0) return false;
    return true;
  }
}

class NodeWorkerSystem {
  async spawnNode(script, logPath, extraEnv = {}) {
    const child = spawn(process.execPath, [join(here, '..', 'peers', script)], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        REDIS_URL: this.ctx.redisUrl,
        DATABASE_URL: this.ctx.dbUrl,
        QUEUE_KEY: this.ctx.queueKey,
        CONCURRENCY: String(this.ctx.concurrency),
        ...extraEnv,
      },
    });
    this.proc = new Proc(child, logPath);
    const t0 = performance.now();
    const ok = await waitFor(() => this.proc.stdout.includes('ready'), { everyMs: 2, timeoutMs: 30_000 });
    if (!ok) throw new Error(`${script} did not become ready; see ${logPath}`);
    this.readyMs = performance.now() - t0;
    return this.proc;
  }
}

export class ListWorkerSystem extends ListQueueSystem {
  static label = 'node-list';
  /** Configurations of one peer share a family; the report compares step-worker with its best. */
  static family = 'node-list';

  /** `pg`'s pool size; `undefined` keeps the peer's default (10, `pg`'s own). */
  poolSize() {
    return undefined;
  }

  async start(logPath) {
    const pool = this.poolSize();
    const extra = pool === undefined ? {} : { PG_POOL_SIZE: String(pool) };
    return NodeWorkerSystem.prototype.spawnNode.call(this, 'list-worker.mjs', logPath, extra);
  }

  async drained() {
    const a = this.ctx.admin;
    return Number(await a.cmd('LLEN', this.ctx.queueKey)) === 0
      && Number(await a.cmd('LLEN', `${this.ctx.queueKey}:processing`)) === 0;
  }
}

/**
 * The list worker as a team tunes it first: a `pg` pool as large as its concurrency, so no loop
 * waits for a connection to write its row. Capped at 64 (the default concurrency): Postgres's
 * default `max_connections` is 100, and at concurrency 256 a pool of 256 would be refused.
 */
export class ListWorkerPooledSystem extends ListWorkerSystem {
  static label = 'node-list-pool64';
  static family = 'node-list';

  poolSize() {
    return Math.min(this.ctx.concurrency, MAX_PEER_POOL);
  }
}

export class BullSystem {
  static label = 'bullmq';
  static family = 'bullmq';

  constructor(ctx) {
    this.ctx = ctx;
    this.queue = new Queue(ctx.queueKey, { connection: new Redis(ctx.redisUrl, { maxRetriesPerRequest: null }) });
  }

  async start(logPath) {
    return NodeWorkerSystem.prototype.spawnNode.call(this, 'bullmq-worker.mjs', logPath);
  }

  /** Adds the backlog to a paused queue with `addBulk`; `release` resumes it. */
  async enqueueBacklog(jobs) {
    await this.queue.pause();
    for (let i = 0; i < jobs.length; i += CHUNK) {
      await this.queue.addBulk(jobs.slice(i, i + CHUNK).map((d) => ({ name: d.step, data: d })));
    }
  }

  async release() {
    await this.queue.resume();
  }

  async push(jobs) {
    await this.queue.addBulk(jobs.map((d) => ({ name: d.step, data: d })));
  }

  async drained() {
    const a = this.ctx.admin;
    const k = `bull:${this.ctx.queueKey}`;
    for (const l of ['wait', 'active', 'paused']) if (Number(await a.cmd('LLEN', `${k}:${l}`)) !== 0) return false;
    return true;
  }

  async close() {
    await this.queue.close();
    this.queue.opts.connection.disconnect?.();
  }
}

export const SYSTEMS = {
  'step-worker': StepWorkerSystem,
  'node-list': ListWorkerSystem,
  'node-list-pool64': ListWorkerPooledSystem,
  bullmq: BullSystem,
};

/** The family of a system's label (its configurations share one): the label itself if unknown. */
export function familyOf(label) {
  return Object.values(SYSTEMS).find((s) => s.label === label)?.family ?? label;
}
