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

/**
 * Waits until the 1-minute load average stays below `threshold` for `settleMs`, at most
 * `maxWaitMs`. Returns what it saw; never throws, so a busy machine delays a run but never
 * blocks it for ever (the table says the load it ran under).
 */
export async function waitQuiet({ threshold = 0.5, settleMs = 20_000, maxWaitMs = 600_000, enabled = true } = {}) {
  const start = Date.now();
  if (!enabled) return { load: loadAvg1(), waitedS: 0, quiet: null };
  let quietSince = null;
  for (;;) {
    const load = loadAvg1();
    const now = Date.now();
    if (load < threshold) {
      quietSince ??= now;
      if (now - quietSince >= settleMs) return { load, waitedS: (now - start) / 1000, quiet: true };
    } else {
      quietSince = null;
    }
    if (now - start >= maxWaitMs) {
      log(`machine still busy after ${maxWaitMs / 1000} s (load ${load}); measuring anyway`);
      return { load, waitedS: (now - start) / 1000, quiet: false };
    }
    await sleep(2000);
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
