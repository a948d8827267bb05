// Markdown tables from the runs: min / median per figure over the repetitions, and
// step-worker / peer ratios of the medians from the same invocation. A peer run in several
// configurations (node-list, node-list-pool64) is compared at its best for each figure: a
// ratio against a peer's untuned default would flatter step-worker.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { median, min, max } from './util.mjs';
import { familyOf } from './systems.mjs';

export function machine() {
  const sh = (cmd, args) => {
    try {
      return execFileSync(cmd, args, { encoding: 'utf8' }).trim();
    } catch {
      return '?';
    }
  };
  return {
    nproc: sh('nproc', []),
    cpu: cpus()[0]?.model ?? '?',
    free: sh('free', ['-h']),
    kernel: sh('uname', ['-sr']),
    node: process.version,
    redis: sh('redis-server', ['--version']),
    loadavg: readFileSync('/proc/loadavg', 'utf8').trim(),
    date: new Date().toISOString(),
  };
}

const fmt = (x, digits) => {
  if (!Number.isFinite(x)) return '–';
  if (digits !== undefined) return x.toFixed(digits);
  if (Math.abs(x) >= 100) return x.toFixed(0);
  if (Math.abs(x) >= 10) return x.toFixed(1);
  return x.toFixed(2);
};

/** "min / median" of a figure over runs. */
const mm = (runs, k, digits) => {
  const xs = runs.map((r) => r[k]);
  if (!xs.some(Number.isFinite)) return '–';
  return xs.length > 1 ? `${fmt(min(xs), digits)} / ${fmt(median(xs), digits)}` : fmt(xs[0], digits);
};

function groups(runs, scenario) {
  const by = new Map();
  for (const r of runs.filter((x) => x.scenario === scenario)) {
    if (!by.has(r.system)) by.set(r.system, []);
    by.get(r.system).push(r);
  }
  return by;
}

function table(head, rows) {
  return [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`, ...rows.map((r) => `| ${r.join(' | ')} |`)].join('\n');
}

function ratios(by, cols) {
  const sw = by.get('step-worker');
  if (!sw) return '';
  const families = new Map();
  for (const [sys, runs] of by) {
    if (sys === 'step-worker') continue;
    const family = familyOf(sys);
    if (!families.has(family)) families.set(family, []);
    families.get(family).push([sys, runs]);
  }
  const lines = [];
  for (const configs of families.values()) {
    const several = configs.length > 1;
    const parts = cols.map(([k, name, better]) => {
      const a = median(sw.map((r) => r[k]));
      // The peer's best configuration for this figure: the highest median where higher is
      // better, the lowest where lower is.
      const [best] = configs
        .map(([sys, runs]) => [sys, median(runs.map((r) => r[k]))])
        .filter(([, b]) => Number.isFinite(b))
        .sort(([, x], [, y]) => (better === 'high' ? y - x : x - y));
      if (!Number.isFinite(a) || !best || best[1] === 0) return null;
      const x = a / best[1];
      const worse = better === 'high' ? (x >= 1 ? '' : ' (worse)') : x <= 1 ? '' : ' (worse)';
      return `${name} ×${fmt(x, x < 0.1 ? 3 : 2)}${worse}${several ? ` (${best[0]})` : ''}`;
    }).filter(Boolean);
    const peer = several ? `best of ${configs.map(([sys]) => sys).join(', ')}` : configs[0][0];
    lines.push(`- step-worker / ${peer}: ${parts.join(', ')}`);
  }
  return lines.join('\n');
}

const BACKLOG_COLS = [['throughput', 'jobs/s', 'high'], ['cpuPer10k', 'worker CPU', 'low'], ['rssMiB', 'peak RSS', 'low'],
  ['callsPerJob', 'Redis calls', 'low'], ['redisCpuPer10k', 'Redis CPU', 'low'], ['pgCpuPer10k', 'Postgres CPU', 'low']];

function backlogSection(runs, scenario, title) {
  const by = groups(runs, scenario);
  if (by.size === 0) return '';
  const rows = [...by].map(([sys, rs]) => [sys, String(rs[0].n), mm(rs, 'throughput', 0), mm(rs, 'cpuPer10k'), mm(rs, 'rssMiB', 1),
    mm(rs, 'callsPerJob'), mm(rs, 'redisCpuPer10k'), mm(rs, 'pgCpuPer10k'), mm(rs, 'ovP50'), mm(rs, 'ovP99'),
    String(max(rs.map((r) => r.lost)))]);
  return `### ${title}\n\n${table(['system', 'jobs', 'jobs/s', 'worker CPU s / 10k jobs', 'peak RSS MiB',
    'Redis calls / job', 'Redis CPU s / 10k jobs', 'Postgres backend CPU s / 10k jobs', 'overhead p50 ms', 'overhead p99 ms',
    'lost'], rows)}\n\n${ratios(by, BACKLOG_COLS)}\n`;
}

function pacedSection(runs, scenario) {
  const by = groups(runs, scenario);
  if (by.size === 0) return '';
  const any = [...by.values()][0][0];
  const rows = [...by].map(([sys, rs]) => [sys, mm(rs, 'offered', 0), mm(rs, 'qP50'), mm(rs, 'qP99'), mm(rs, 'qMax'), mm(rs, 'e2eP50'),
    mm(rs, 'e2eP99'), mm(rs, 'ovP50'), mm(rs, 'ovP99'), mm(rs, 'cpuPer10k'), mm(rs, 'rssMiB', 1), String(max(rs.map((r) => r.lost)))]);
  return `### Paced at ${any.rate} jobs/s (${any.n} jobs of builtin.noop)\n\n${table(['system', 'offered jobs/s', 'queue p50 ms',
    'queue p99 ms', 'queue max ms', 'e2e p50 ms', 'e2e p99 ms', 'overhead p50 ms', 'overhead p99 ms', 'worker CPU s / 10k jobs',
    'peak RSS MiB', 'lost'], rows)}\n\n${ratios(by, [['qP99', 'queue p99', 'low'], ['e2eP99', 'e2e p99', 'low'],
    ['cpuPer10k', 'worker CPU', 'low'], ['rssMiB', 'peak RSS', 'low']])}\n`;
}

/** Step-worker's noop backlog without and with the scrape flood: medians, and their ratio. */
function floodSection(runs) {
  const off = runs.filter((r) => r.scenario === 'flood-off');
  const on = runs.filter((r) => r.scenario === 'flood-on');
  if (!off.length || !on.length) return '';
  const med = (rs, f) => median(rs.map(f));
  const ratio = med(on, (r) => r.throughput) / med(off, (r) => r.throughput);
  const sum = (objs) => objs.reduce((acc, o) => {
    for (const [k, v] of Object.entries(o ?? {})) acc[k] = (acc[k] ?? 0) + v;
    return acc;
  }, {});
  const codes = (o) => Object.entries(o).map(([k, v]) => `${k} × ${v}`).join(', ') || 'none';
  const f = on[0].flood ?? {};
  const row = [String(on[0].n), mm(off, 'throughput', 0), mm(on, 'throughput', 0), fmt(ratio, 3),
    fmt(med(on, (r) => r.scrapes), 0), fmt(med(on, (r) => r.flood?.served / r.flood?.seconds), 0),
    fmt(med(on, (r) => r.flood?.metricsP99Ms)), mm(off, 'callsPerJob'), mm(on, 'callsPerJob'),
    String(max([...off, ...on].map((r) => r.lost)))];
  return `### Backlog under a flood of scrapes (step-worker, builtin.noop with persistence)\n\n${table(['jobs',
    'jobs/s without', 'jobs/s with', 'with / without (medians)', 'requests served during the run', 'served / s',
    '/metrics p99 ms', 'Redis calls / job without', 'Redis calls / job with', 'lost'], [row])}\n\n`
    + `${on.length} run(s) each, alternated. The flood: ${f.clients} keep-alive clients on 127.0.0.1, 3 requests in 4 `
    + '`GET /metrics`, 1 in 4 `GET /health`, from just before the release to the last row; '
    + `statuses ${codes(sum(on.map((r) => r.flood?.byStatus)))}; errors ${codes(sum(on.map((r) => r.flood?.errors)))}; `
    + `harness CPU for the flood ${fmt(med(on, (r) => r.flood?.harnessCpuS))} s per run (median). `
    + `${ratio >= 0.9 ? 'Within' : 'Not within'} 10 % of the throughput without.\n`;
}

/** Step-worker's noop backlog without and with flow limits on a step it never runs. */
function limitsSection(runs) {
  const off = runs.filter((r) => r.scenario === 'limits-off');
  const on = runs.filter((r) => r.scenario === 'limits-on');
  if (!off.length || !on.length) return '';
  const med = (rs, f) => median(rs.map(f));
  const ratio = med(on, (r) => r.throughput) / med(off, (r) => r.throughput);
  const row = [String(on[0].n), mm(off, 'throughput', 0), mm(on, 'throughput', 0), fmt(ratio, 3),
    mm(off, 'cpuPer10k'), mm(on, 'cpuPer10k'), mm(off, 'callsPerJob'), mm(on, 'callsPerJob'),
    String(max([...off, ...on].map((r) => r.lost)))];
  return `### Backlog with flow limits on another step (step-worker, builtin.noop with persistence)\n\n${table(['jobs',
    'jobs/s without', 'jobs/s with', 'with / without (medians)', 'worker CPU s / 10k without', 'worker CPU s / 10k with',
    'Redis calls / job without', 'Redis calls / job with', 'lost'], [row])}\n\n`
    + `${on.length} run(s) each, alternated. With: \`STEP_CONCURRENCY=builtin.sleep=4\`, `
    + '`STEP_RATE_LIMITS=builtin.sleep=10/1s`. '
    + `${ratio >= 0.9 ? 'Within' : 'Not within'} 10 % of the throughput without.\n`;
}

/**
 * The bound from each server alone (bench/lib/bound.mjs) beside step-worker's noop backlog of
 * the same run (median), and the bound the run's own CPU figures give: all cores divided by the
 * worker's, Redis' and Postgres' CPU seconds per job together.
 */
function boundSection(runs, nproc) {
  const b = runs.find((r) => r.kind === 'bound');
  if (!b) return '';
  const noop = runs.filter((r) => r.system === 'step-worker' && r.scenario === 'noop');
  const rate = noop.length ? median(noop.map((r) => r.throughput)) : NaN;
  const pct = (x) => (Number.isFinite(rate) && x > 0 ? `${fmt((100 * rate) / x, 0)} %` : '–');
  const rows = b.postgres.map((p) => [`Postgres alone: the persist statement, all-success batches of ${p.batch} rows, 2 connections (pgbench)`,
    `${fmt(p.rowsPerS, 0)} rows/s (${fmt(p.tps, 0)} statements/s)`, pct(p.rowsPerS)]);
  rows.push([`Redis alone: push, claim and settle of 64 noop jobs a script call, 2 connections (redis-benchmark)`,
    `${fmt(b.redis.jobsPerS, 0)} jobs/s`, pct(b.redis.jobsPerS)]);
  const cpuPerJob = median(noop.map((r) => (r.cpuPer10k + r.redisCpuPer10k + r.pgCpuPer10k) / 10_000));
  const cpuBound = Number(nproc) / cpuPerJob;
  rows.push([`CPU budget: ${nproc} cores / (worker + Redis + Postgres CPU per job of the noop runs, ${fmt(cpuPerJob * 1e6, 1)} µs)`,
    `${fmt(cpuBound, 0)} jobs/s`, pct(cpuBound)]);
  const batches = noop.map((r) => r.meanBatch).filter(Number.isFinite);
  return `### The machine's bound, same run

${table(['bound', 'rate', 'step-worker noop backlog '
    + `(${fmt(rate, 0)} jobs/s) as a fraction`], rows)}

The worker's mean persist batch in the noop runs: `
    + `${batches.length ? batches.map((x) => fmt(x, 0)).join(', ') : '–'} rows. Each server alone has the machine `
    + 'to itself; in the worker\'s run the three share it with the load generator, so the CPU budget is the tighter bound.\n';
}

function topCommands(by) {
  return Object.entries(by ?? {}).sort((a, b) => b[1] - a[1]).slice(0, 4).map(([c, k]) => `${c} ${k}`).join(', ');
}

export function report(results) {
  const { runs, machine: m, config } = results;
  const out = [];
  out.push(`## Benchmark results\n`);
  out.push(`Machine: ${m.nproc} cores, ${m.cpu}, ${m.kernel}; ${m.redis.split(' ').slice(0, 3).join(' ')}; Node ${m.node}.`);
  out.push(`Memory (\`free -h\` at start):\n\n\`\`\`\n${m.free}\n\`\`\`\n`);
  const loads = runs.filter((r) => Number.isFinite(r.load)).map((r) => r.load);
  const busy = runs.filter((r) => Number.isFinite(r.busy)).map((r) => r.busy * 100);
  const gate = results.gate;
  out.push(`Each cell is \`min / median\` over ${config.reps} run(s) per system. Concurrency ${config.concurrency} unless stated. `
    + `Start gate: 1-minute load ${fmt(gate?.load)} after waiting ${fmt(gate?.waitedS, 0)} s`
    + `${gate?.quiet === false ? ' (still busy: measured anyway)' : gate?.quiet === null ? ' (not waited for)' : ''}. `
    + `Before each run: 1-minute load ${fmt(min(loads))}–${fmt(max(loads))}, CPUs ${fmt(min(busy), 0)}–${fmt(max(busy), 0)} % busy over 5 s.\n`);
  out.push(backlogSection(runs, 'noop', 'Backlog: builtin.noop with persistence (throughput)'));
  out.push(backlogSection(runs, 'sleep5', 'Backlog: builtin.sleep {"ms":5} (IO-bound steps)'));
  out.push(backlogSection(runs, 'c256-1k', 'Backlog at concurrency 256 with 1 KiB inputs (memory)'));
  for (const s of [...new Set(runs.filter((r) => r.scenario?.startsWith('paced-')).map((r) => r.scenario))]) {
    out.push(pacedSection(runs, s));
  }
  out.push(boundSection(runs, m.nproc));
  out.push(floodSection(runs));
  out.push(limitsSection(runs));
  const cmds = runs.filter((r) => r.scenario === 'cmds');
  if (cmds.length) {
    out.push(`### Redis commands per job at full load (backlog, counted with MONITOR)\n\n${table(
      ['system', 'jobs', 'commands sent / job', 'run inside scripts / job', 'most sent'],
      cmds.map((r) => [r.system, String(r.n), fmt(r.topLevelPerJob, 3), fmt(r.inScriptsPerJob), topCommands(r.byCommand)]))}\n`);
  }
  const idles = runs.filter((r) => r.kind === 'idle');
  if (idles.length) {
    out.push(`### Idle cost (one worker, empty queue, ${idles[0].seconds} s)\n\n${table(
      ['system', 'commands sent / min', 'incl. inside scripts / min', 'worker CPU s / hour', 'RSS MiB', 'what it sends'],
      idles.map((r) => [r.system, fmt(r.topLevelPerMin, 1), fmt(r.callsPerMin, 1), fmt(r.cpuPerHour), fmt(r.rssMiB, 1), topCommands(r.byCommand)]))}\n`);
  }
  const starts = runs.filter((r) => r.kind === 'startup');
  if (starts.length) {
    out.push(`### Start to ready\n\n${table(['system', 'min / median ms', 'ready means'], starts.map((r) => [r.system,
      `${fmt(min(r.times), 0)} / ${fmt(median(r.times), 0)}`, r.system === 'step-worker' ? '`/health` 200' : '"ready" printed']))}\n`);
  }
  return `${out.filter(Boolean).join('\n')}\n`;
}
