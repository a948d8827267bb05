// step-worker against the Node workers it replaces, side by side on one machine in one run.
// Usage: bench/run [--n 50000] [--reps 2] [--systems step-worker,node-list,node-list-pool64,bullmq]
//                  [--scenarios noop,bound,sleep,paced,rss,cmds,idle,startup] [--quick] [--no-quiet]
//        bench/run --scenarios flood [--n 20000] [--reps 3] [--flood-clients 50] [--flood-max 2000000]
//        (step-worker's noop backlog without, then with, a flood of GET /metrics and /health)
//        bench/run --scenarios limits [--n 200000] [--reps 3]
//        (step-worker's noop backlog without, then with, a cap and a rate on a step it never runs)
// Prints markdown tables (min / median over the repetitions) and step-worker / peer ratios, each
// against the peer's best configuration for that figure (see lib/report.mjs). `bound` measures
// Postgres alone (pgbench) and Redis alone (redis-benchmark) doing the worker's work, after the
// noop runs, and reports step-worker's rate as a fraction of each (lib/bound.mjs).
import { mkdirSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { RedisAdmin, Postgres, startRedis } from './lib/services.mjs';
import { SYSTEMS } from './lib/systems.mjs';
import { backlog, paced, idle, startup } from './lib/scenarios.mjs';
import { bound } from './lib/bound.mjs';
import { log, median, waitQuiet } from './lib/util.mjs';
import { machine, report } from './lib/report.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const { values: o } = parseOptions({
  options: {
    n: { type: 'string', default: '50000' },
    reps: { type: 'string', default: '2' },
    systems: { type: 'string', default: Object.keys(SYSTEMS).join(',') },
    scenarios: { type: 'string', default: 'noop,bound,sleep,paced,rss,cmds,idle,startup' },
    'bound-seconds': { type: 'string', default: '10' },
    'bound-redis-calls': { type: 'string', default: '20000' },
    concurrency: { type: 'string', default: '64' },
    rates: { type: 'string', default: '500,half' },
    'paced-seconds': { type: 'string', default: '10' },
    'idle-seconds': { type: 'string', default: '60' },
    'cmd-n': { type: 'string', default: '10000' },
    'flood-clients': { type: 'string', default: '50' },
    'flood-max': { type: 'string', default: '2000000' },
    quick: { type: 'boolean', default: false },
    'no-quiet': { type: 'boolean', default: false },
    'quiet-load': { type: 'string', default: '0.5' },
    'quiet-max-wait': { type: 'string', default: '900' },
    'quiet-run-wait': { type: 'string', default: '120' },
    keep: { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  },
});
function parseOptions(config) {
  try {
    return parseArgs(config);
  } catch (e) {
    console.error(`bench/run: ${e.message} (bench/run --help lists the options)`);
    process.exit(2);
  }
}
if (o.help) {
  // The usage is the comment at the top of this file.
  const { readFileSync } = await import('node:fs');
  const head = readFileSync(fileURLToPath(import.meta.url), 'utf8').split('\n').filter((l) => l.startsWith('//'));
  console.log(head.slice(0, 9).map((l) => l.replace(/^\/\/ ?/, '')).join('\n'));
  process.exit(0);
}
if (o.quick) {
  Object.assign(o, { n: '300', reps: '1', systems: 'step-worker', scenarios: 'noop,bound,sleep,paced', rates: '200',
    'paced-seconds': '2', 'bound-seconds': '1', 'bound-redis-calls': '200', 'no-quiet': true });
}

const bin = process.env.STEP_WORKER_BIN ?? join(here, '..', 'target', 'release', 'step-worker');
const n = Number(o.n);
const reps = Number(o.reps);
const systems = o.systems.split(',');
const scenarios = new Set(o.scenarios.split(','));
const tag = `${Date.now().toString(36)}`;
const outDir = join(here, 'out', tag);
mkdirSync(outDir, { recursive: true });

const redis = await startRedis();
const admin = new RedisAdmin(redis.url);
const pg = new Postgres(process.env.BENCH_DATABASE_URL ?? 'postgres://postgres:postgres@127.0.0.1:5432/postgres');
await pg.connect();
const env = {
  tag, bin, outDir, admin, pg, systems: SYSTEMS, redisUrl: redis.url, keep: o.keep,
  concurrency: Number(o.concurrency),
  quiet: { enabled: !o['no-quiet'], mode: 'busy', maxWaitMs: Number(o['quiet-run-wait']) * 1000 },
};
// The whole-run gate: a 1-minute load average below --quiet-load for 30 s, waited for at most
// --quiet-max-wait seconds. Each run then waits (at most --quiet-run-wait s) for idle CPUs.
const gate = await waitQuiet({ enabled: !o['no-quiet'], mode: 'load', threshold: Number(o['quiet-load']),
  maxWaitMs: Number(o['quiet-max-wait']) * 1000 });
log(`start gate: load ${gate.load} after ${gate.waitedS.toFixed(0)} s (${gate.quiet ? 'quiet' : gate.quiet === null ? 'not waited for' : 'still busy'})`);
const results = { machine: machine(), config: { ...o, bin }, gate, runs: [] };
const record = (r) => {
  results.runs.push(r);
  writeFileSync(join(outDir, 'results.json'), JSON.stringify(results, null, 1));
  const show = ['throughput', 'scrapes', 'qP99', 'ovP99', 'cpuPer10k', 'rssMiB', 'callsPerJob', 'topLevelPerJob', 'topLevelPerMin', 'lost']
    .filter((k) => r[k] !== undefined).map((k) => `${k}=${typeof r[k] === 'number' ? r[k].toFixed(2) : r[k]}`);
  log(`${r.scenario ?? r.kind} ${r.system}: ${show.join(' ')}`);
};

const noopInput = (i) => ({ i });
const sleepInput = () => ({ ms: 5 });
const kib = 'x'.repeat(1000);
const kibInput = (i) => ({ i, pad: kib });

try {
  for (let rep = 1; rep <= reps; rep++) {
    for (const sys of systems) {
      if (scenarios.has('noop')) {
        record(await backlog(env, sys, { scenario: 'noop', rep, n, step: 'builtin.noop', input: noopInput }));
      }
      if (scenarios.has('sleep')) {
        record(await backlog(env, sys, { scenario: 'sleep5', rep, n, step: 'builtin.sleep', input: sleepInput }));
      }
      if (scenarios.has('rss')) {
        record(await backlog(env, sys, { scenario: 'c256-1k', rep, n, step: 'builtin.noop', input: kibInput, concurrency: 256 }));
      }
    }
  }
  if (scenarios.has('bound')) {
    // At the worker's own mean batch from the noop runs, and at its largest (PERSIST_BATCH_SIZE's
    // default, 500).
    const means = results.runs.filter((r) => r.system === 'step-worker' && r.scenario === 'noop')
      .map((r) => r.meanBatch).filter(Number.isFinite);
    const sizes = [500, ...(means.length ? [Math.max(1, Math.round(median(means)))] : [])];
    record(await bound(env, { batchSizes: sizes, seconds: Number(o['bound-seconds']),
      redisCalls: Number(o['bound-redis-calls']) }));
  }
  if (scenarios.has('flood')) {
    // Without and with the flood alternately, so a drift of the shared machine hits both alike.
    const flood = { clients: Number(o['flood-clients']), maxRequests: Number(o['flood-max']) };
    if (!systems.includes('step-worker')) log('flood: step-worker is not among --systems; skipped');
    for (let rep = 1; rep <= reps && systems.includes('step-worker'); rep++) {
      for (const on of [false, true]) {
        record(await backlog(env, 'step-worker', { scenario: on ? 'flood-on' : 'flood-off', rep, n, step: 'builtin.noop',
          input: noopInput, flood: on ? flood : undefined }));
      }
    }
  }
  if (scenarios.has('limits')) {
    // Flow limits on a step the backlog never runs must cost the noop backlog nothing (#13:
    // within 10 %). Alternated, as the flood is.
    const limits = { STEP_CONCURRENCY: 'builtin.sleep=4', STEP_RATE_LIMITS: 'builtin.sleep=10/1s' };
    if (!systems.includes('step-worker')) log('limits: step-worker is not among --systems; skipped');
    for (let rep = 1; rep <= reps && systems.includes('step-worker'); rep++) {
      for (const on of [false, true]) {
        record(await backlog(env, 'step-worker', { scenario: on ? 'limits-on' : 'limits-off', rep, n,
          step: 'builtin.noop', input: noopInput, workerEnv: on ? limits : {} }));
      }
    }
  }
  if (scenarios.has('paced')) {
    const peaks = results.runs.filter((r) => r.system === 'step-worker' && r.scenario === 'noop').map((r) => r.throughput);
    const peak = peaks.length ? peaks.sort((a, b) => a - b)[Math.floor(peaks.length / 2)] : 2000;
    const rates = o.rates.split(',').map((r) => (r === 'half' ? Math.round(peak / 2) : Number(r)));
    for (let rep = 1; rep <= reps; rep++) {
      for (const rate of rates) {
        for (const sys of systems) {
          record(await paced(env, sys, { scenario: `paced-${rate}`, rep, rate, seconds: Number(o['paced-seconds']),
            step: 'builtin.noop', input: noopInput }));
        }
      }
    }
  }
  if (scenarios.has('cmds')) {
    for (const sys of systems) {
      record(await backlog({ ...env, monitor: true }, sys, { scenario: 'cmds', rep: 1, n: Math.min(n, Number(o['cmd-n'])),
        step: 'builtin.noop', input: noopInput }));
    }
  }
  if (scenarios.has('idle')) {
    for (const sys of systems) record({ kind: 'idle', ...(await idle(env, sys, { seconds: Number(o['idle-seconds']) })) });
  }
  if (scenarios.has('startup')) {
    for (const sys of systems) record({ kind: 'startup', ...(await startup(env, sys, { trials: 5 })) });
  }
} finally {
  admin.close();
  await pg.close();
  await redis.stop();
}

const text = report(results);
writeFileSync(join(outDir, 'report.md'), text);
process.stdout.write(text);
const bad = results.runs.filter((r) => r.lost > 0 || r.duplicates > 0 || r.done === false || r.drained === false);
if (bad.length) {
  process.stderr.write(`FAILED: ${bad.length} run(s) lost jobs, wrote duplicates or did not drain (see ${outDir})\n`);
  process.exit(1);
}
log(`results in ${outDir}`);
