// One measured run of one system: backlog (throughput), paced (latency), idle (commands per
// minute), startup (start to ready). Each run gets its own queue key and its own database.
import { join } from 'node:path';
import { cpuSeconds, peakRssMiB, sleep, waitFor, waitQuiet, log } from './util.mjs';
import { MonitorCounter } from './services.mjs';
import { histogramDelta, histogramMean, histogramQuantile } from './prom.mjs';
import { startFlood } from './flood.mjs';

let seq = 0;

/** Per-run names: a queue key (BullMQ forbids ':' in queue names) and a database name. */
function names(env, sys, scenario, rep) {
  seq += 1;
  const base = `${env.tag}-${sys}-${scenario}-r${rep}-${seq}`.toLowerCase();
  return { queueKey: `bench-${base}`, db: `bench_${base.replace(/[^a-z0-9]/g, '_')}`.slice(0, 63) };
}

export function makeJobs(prefix, n, step, input) {
  const jobs = new Array(n);
  for (let i = 0; i < n; i++) jobs[i] = { id: `${prefix}-${i}`, step, input: input(i), enqueued_at: 0 };
  return jobs;
}

async function setUp(env, sysName, scenario, rep) {
  const { queueKey, db } = names(env, sysName, scenario, rep);
  const { url, client } = await env.pg.createDb(db, env.bin);
  const ctx = { redisUrl: env.redisUrl, dbUrl: url, queueKey, concurrency: env.concurrency, bin: env.bin, admin: env.admin };
  const sys = new env.systems[sysName](ctx);
  return { sys, db, client, logPath: join(env.outDir, `${db}.log`) };
}

async function tearDown(env, s) {
  await s.sys.proc?.stop();
  await s.sys.close();
  await s.client.end();
  if (!env.keep) await env.pg.dropDb(s.db);
}

/** CPU seconds used so far by each Postgres backend serving the system's database. */
async function pgBackendCpu(s) {
  const { rows } = await s.client.query(
    'SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()');
  const out = new Map();
  for (const { pid } of rows) {
    try {
      out.set(pid, cpuSeconds(pid));
    } catch {
      // The backend exited between the query and the read.
    }
  }
  return out;
}

function pgCpuDelta(before, after) {
  let sum = 0;
  for (const [pid, cpu] of after) sum += cpu - (before.get(pid) ?? 0);
  return sum;
}

async function snapshot(env, s) {
  return {
    pgCpu: await pgBackendCpu(s),
    cpu: cpuSeconds(s.sys.proc.pid),
    calls: await env.admin.callsSnapshot(),
    redisCpu: await env.admin.cpuSeconds(),
    metrics: s.sys.metrics ? await s.sys.metrics() : null,
  };
}

async function waitDone(env, s, n, timeoutMs) {
  const done = await waitFor(async () => {
    const { rows } = await s.client.query('SELECT count(*)::int AS c FROM step_results');
    return rows[0].c >= n;
  }, { everyMs: 100, timeoutMs });
  const drained = done && (await waitFor(() => s.sys.drained(), { everyMs: 20, timeoutMs: 30_000 }));
  return { done: !!done, drained: !!drained };
}

/** Latency and completeness figures straight from the rows (ms). */
async function rowStats(s) {
  const { rows } = await s.client.query(`
    SELECT count(*)::int AS rows, count(DISTINCT job_id)::int AS ids,
           extract(epoch FROM max(written_at)) * 1000 AS last_written,
           percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - enqueued_at) * 1000) AS q,
           max(extract(epoch FROM started_at - enqueued_at) * 1000) AS qmax,
           percentile_disc(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY extract(epoch FROM written_at - enqueued_at) * 1000) AS e2e
    FROM step_results`);
  return rows[0];
}

function figures(env, s, n, before, after, stats, extra = {}) {
  const per10k = 10_000 / n;
  const r = {
    system: s.sys.constructor.label,
    n,
    rows: stats.rows,
    lost: n - stats.ids,
    duplicates: stats.rows - stats.ids,
    cpuPer10k: (after.cpu - before.cpu) * per10k,
    redisCpuPer10k: (after.redisCpu - before.redisCpu) * per10k,
    pgCpuPer10k: pgCpuDelta(before.pgCpu, after.pgCpu) * per10k,
    callsPerJob: (after.calls - before.calls) / n,
    rssMiB: peakRssMiB(s.sys.proc.pid),
    qP50: Number(stats.q?.[0]),
    qP99: Number(stats.q?.[1]),
    qMax: Number(stats.qmax),
    e2eP50: Number(stats.e2e?.[0]),
    e2eP99: Number(stats.e2e?.[1]),
    ...extra,
  };
  if (before.metrics && after.metrics) {
    const h = histogramDelta(before.metrics, after.metrics, 'step_worker_job_overhead_seconds');
    if (h) {
      r.ovP50 = histogramQuantile(h, 0.5) * 1000;
      r.ovP99 = histogramQuantile(h, 0.99) * 1000;
    }
    r.meanBatch = histogramMean(before.metrics, after.metrics, 'step_worker_persist_batch_size');
  }
  return r;
}

/**
 * All jobs enqueued first (worker idle and ready), then released at once: throughput. With
 * `flood` (options for `startFlood`, step-worker only), scrapes and probes hammer the worker's
 * HTTP port from just before the release until the last row is written. `workerEnv` is added to
 * the worker's environment (step-worker only: the flow-limit comparison).
 */
export async function backlog(env, sysName, { scenario, rep, n, step, input, concurrency, flood, workerEnv }) {
  const quiet = await waitQuiet(env.quiet);
  const s = await setUp({ ...env, concurrency: concurrency ?? env.concurrency }, sysName, scenario, rep);
  try {
    const jobs = makeJobs(s.db, n, step, input);
    const enqueuedAt = Date.now();
    for (const j of jobs) j.enqueued_at = enqueuedAt;
    await s.sys.enqueueBacklog(jobs);
    await s.sys.start(s.logPath, workerEnv);
    await sleep(500);
    let monitor = null;
    if (env.monitor) {
      monitor = new MonitorCounter(env.redisUrl);
      monitor.excludePorts.add(env.admin.localPort());
      await monitor.start();
    }
    const before = await snapshot(env, s);
    const timeoutMs = Math.max(120_000, n * 5);
    const flooding = flood
      ? startFlood({ ...flood, port: Number(new URL(s.sys.metricsUrl).port), maxMs: timeoutMs + 30_000 })
      : null;
    const t0 = Date.now();
    let done;
    let drained;
    let floodStats;
    try {
      await s.sys.release();
      ({ done, drained } = await waitDone(env, s, n, timeoutMs));
    } finally {
      // Stopped however the run ends, so a failed run leaves no flood behind it.
      floodStats = await flooding?.stop();
    }
    const after = await snapshot(env, s);
    monitor?.stop();
    const stats = await rowStats(s);
    const elapsed = (Number(stats.last_written) - t0) / 1000;
    return figures(env, s, n, before, after, stats, {
      scenario, rep, load: quiet.load, busy: quiet.busy, done, drained,
      throughput: n / elapsed,
      topLevelPerJob: monitor ? monitor.topLevel / n : undefined,
      inScriptsPerJob: monitor ? monitor.inScripts / n : undefined,
      byCommand: monitor?.byCommand,
      flood: floodStats,
      scrapes: floodStats?.served,
    });
  } finally {
    await tearDown(env, s);
  }
}

/** A fixed offered rate from a producer running beside the worker: latency. */
export async function paced(env, sysName, { scenario, rep, rate, seconds, step, input }) {
  const quiet = await waitQuiet(env.quiet);
  const s = await setUp(env, sysName, scenario, rep);
  const n = Math.round(rate * seconds);
  try {
    const jobs = makeJobs(s.db, n, step, input);
    await s.sys.start(s.logPath);
    await sleep(500);
    const before = await snapshot(env, s);
    const t0 = Date.now();
    let sent = 0;
    while (sent < n) {
      const due = Math.min(n, Math.floor(((Date.now() - t0) * rate) / 1000));
      if (due > sent) {
        const now = Date.now();
        const batch = jobs.slice(sent, due);
        for (const j of batch) j.enqueued_at = now;
        await s.sys.push(batch);
        sent = due;
      }
      await sleep(1);
    }
    const offered = n / ((Date.now() - t0) / 1000);
    const { done, drained } = await waitDone(env, s, n, 120_000 + n * 5);
    const after = await snapshot(env, s);
    const stats = await rowStats(s);
    return figures(env, s, n, before, after, stats, { scenario, rep, load: quiet.load, busy: quiet.busy, done, drained, rate, offered });
  } finally {
    await tearDown(env, s);
  }
}

/** Commands an idle worker sends, over `seconds`. */
export async function idle(env, sysName, { seconds }) {
  const quiet = await waitQuiet(env.quiet);
  const s = await setUp(env, sysName, 'idle', 1);
  try {
    await s.sys.start(s.logPath);
    await sleep(5_000);
    const monitor = new MonitorCounter(env.redisUrl);
    monitor.excludePorts.add(env.admin.localPort());
    await monitor.start();
    const calls0 = await env.admin.callsSnapshot();
    const cpu0 = cpuSeconds(s.sys.proc.pid);
    await sleep(seconds * 1000);
    const calls1 = await env.admin.callsSnapshot();
    const cpu1 = cpuSeconds(s.sys.proc.pid);
    monitor.stop();
    const perMin = 60 / seconds;
    return {
      system: s.sys.constructor.label,
      load: quiet.load,
      busy: quiet.busy,
      seconds,
      topLevelPerMin: monitor.topLevel * perMin,
      callsPerMin: (calls1 - calls0) * perMin,
      cpuPerHour: (cpu1 - cpu0) * (3600 / seconds),
      rssMiB: peakRssMiB(s.sys.proc.pid),
      byCommand: monitor.byCommand,
    };
  } finally {
    await tearDown(env, s);
  }
}

/** Process start to ready (`/health` 200 for step-worker, "ready" printed for the peers). */
export async function startup(env, sysName, { trials }) {
  await waitQuiet(env.quiet);
  const s = await setUp(env, sysName, 'startup', 1);
  const times = [];
  try {
    for (let i = 0; i < trials; i++) {
      await s.sys.start(s.logPath);
      times.push(s.sys.readyMs);
      await s.sys.proc.stop();
    }
  } finally {
    await tearDown(env, s);
  }
  log(`${sysName} start to ready: ${times.map((t) => t.toFixed(0)).join(', ')} ms`);
  return { system: s.sys.constructor.label, times };
}
