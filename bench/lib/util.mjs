// Small helpers: time, statistics, /proc sampling, the quiet-machine wait.
import { readFileSync } from 'node:fs';
import net from 'node:net';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

export function log(...args) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${args.join(' ')}\n`);
}

/** Nearest-rank percentile of an already sorted array (q in 0..1). */
export function percentile(sorted, q) {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i];
}

export function median(xs) {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export function min(xs) {
  const s = xs.filter((x) => Number.isFinite(x));
  return s.length ? Math.min(...s) : NaN;
}

export function max(xs) {
  const s = xs.filter((x) => Number.isFinite(x));
  return s.length ? Math.max(...s) : NaN;
}

const CLK_TCK = 100; // USER_HZ on Linux

/** CPU seconds (user + system) a process has used so far. */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLK_TCK; // utime, stime
}

/** Peak resident set (VmHWM) in MiB. */
export function peakRssMiB(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = status.match(/VmHWM:\s+(\d+) kB/);
  return m ? Number(m[1]) / 1024 : NaN;
}

export function loadAvg1() {
  return Number(readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

/** Fraction of all CPUs busy over `ms` (from /proc/stat), whoever is busy. */
export async function busyFraction(ms = 5000) {
  const read = () => {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    const idle = f[3] + f[4]; // idle + iowait
    return { idle, total: f.reduce((a, b) => a + b, 0) };
  };
  const a = read();
  await sleep(ms);
  const b = read();
  return 1 - (b.idle - a.idle) / Math.max(1, b.total - a.total);
}

/**
 * Waits for a quiet machine, bounded: until the 1-minute load average has stayed below
 * `threshold` for `settleMs` (the whole-run gate, `mode: 'load'`), or until the CPUs were less
 * than `maxBusy` busy over 5 s (the per-run gate, `mode: 'busy'`, which our own previous run
 * does not keep closed the way the slowly decaying load average would). Never throws: a busy
 * machine delays a run for at most `maxWaitMs`; what was seen is returned and printed.
 */
export async function waitQuiet({ enabled = true, mode = 'busy', threshold = 0.5, settleMs = 30_000, maxBusy = 0.1,
  maxWaitMs = 120_000 } = {}) {
  const start = Date.now();
  if (!enabled) return { load: loadAvg1(), busy: NaN, waitedS: 0, quiet: null };
  let quietSince = null;
  for (;;) {
    const busy = await busyFraction(5000);
    const load = loadAvg1();
    const now = Date.now();
    const ok = mode === 'load' ? load < threshold : busy < maxBusy;
    if (ok) {
      quietSince ??= now;
      if (mode === 'busy' || now - quietSince >= settleMs) return { load, busy, waitedS: (now - start) / 1000, quiet: true };
    } else {
      quietSince = null;
    }
    if (now - start >= maxWaitMs) {
      log(`machine still busy after ${Math.round((now - start) / 1000)} s (load ${load}, CPU ${(busy * 100).toFixed(0)} % busy); measuring anyway`);
      return { load, busy, waitedS: (now - start) / 1000, quiet: false };
    }
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Polls `check` every `everyMs` until it returns a truthy value or `timeoutMs` passes (null). */
export async function waitFor(check, { everyMs = 50, timeoutMs = 30_000 } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() >= deadline) return null;
    await sleep(everyMs);
  }
}
