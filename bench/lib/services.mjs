// The services a run uses: a private redis-server on a free loopback port (so INFO commandstats
// counts nothing but the system under test; the shared one serves other people's tests), and one
// fresh Postgres database per system and run, created with step-worker's own migration so every
// system writes the same table.
import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createConnection } from 'node:net';
import { promisify } from 'node:util';
import Redis from 'ioredis';
import pg from 'pg';
import { freePort, waitFor, log } from './util.mjs';

const run = promisify(execFile);

export async function startRedis() {
  if (process.env.BENCH_REDIS_URL) {
    return { url: process.env.BENCH_REDIS_URL, pid: null, stop: async () => {} };
  }
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), 'bench-redis-'));
  // No persistence, like the shared development server (appendonly no, save "").
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '',
    '--appendonly', 'no', '--dir', dir, '--maxmemory-policy', 'noeviction'], { stdio: 'ignore' });
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, retryStrategy: () => 50, maxRetriesPerRequest: 1 });
  // Refused connections are expected until the server listens; waitFor below is the judge.
  probe.on('error', () => {});
  const ok = await waitFor(async () => probe.ping().then(() => true, () => false), { timeoutMs: 10_000 });
  probe.disconnect();
  if (!ok) throw new Error('the private redis-server did not start');
  log(`private redis-server pid ${child.pid} on ${url}`);
  return {
    url,
    pid: child.pid,
    stop: async () => {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('exit', r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Admin connection to the bench Redis; its own commands are excluded from every count. */
export class RedisAdmin {
  constructor(url) {
    this.url = url;
    this.r = new Redis(url);
    this.issued = 0;
  }

  async commandStats() {
    const text = await this.r.info('commandstats');
    const calls = {};
    for (const m of text.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) calls[m[1]] = Number(m[2]);
    return calls;
  }

  /**
   * Commands counted by Redis so far, less the harness's own (INFO, and every command sent
   * through `cmd`), so a delta between two snapshots is the system under test's alone.
   */
  async callsSnapshot() {
    const issued = this.issued;
    const stats = await this.commandStats();
    const all = Object.entries(stats).reduce((s, [k, v]) => (k === 'info' ? s : s + v), 0);
    return all - issued;
  }

  /** A command from the harness (drain checks, staging renames): not counted as the system's. */
  async cmd(name, ...args) {
    this.issued += 1;
    return this.r.call(name, ...args);
  }

  /** The local port of the admin connection, to skip its lines in MONITOR output. */
  localPort() {
    return String(this.r.stream?.localPort ?? '');
  }

  async cpuSeconds() {
    const text = await this.r.info('cpu');
    const get = (k) => Number(text.match(new RegExp(`^${k}:([\\d.]+)`, 'm'))[1]);
    return get('used_cpu_user') + get('used_cpu_sys');
  }

  close() {
    this.r.disconnect();
  }
}

/**
 * Counts commands with MONITOR: `topLevel` are the commands clients sent (what a per-command
 * billed Redis bills), `inScripts` the ones Lua scripts ran. Lines from `excludePorts` (the
 * harness's own connections) are skipped.
 */
export class MonitorCounter {
  constructor(url) {
    this.u = new URL(url);
    this.topLevel = 0;
    this.inScripts = 0;
    this.byCommand = {};
    this.excludePorts = new Set();
  }

  start() {
    return new Promise((resolve, reject) => {
      this.sock = createConnection({ host: this.u.hostname, port: Number(this.u.port) }, () => {
        this.sock.write('MONITOR\r\n');
      });
      let buf = '';
      let started = false;
      this.sock.setEncoding('latin1');
      this.sock.on('error', reject);
      this.sock.on('data', (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\r\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 2);
          if (!started) {
            started = line === '+OK';
            if (started) resolve();
            continue;
          }
          this.count(line);
        }
      });
    });
  }

  count(line) {
    const m = line.match(/^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]+)"/);
    if (!m) return;
    const [, who, cmd] = m;
    if (who === 'lua') {
      this.inScripts += 1;
      return;
    }
    if (this.excludePorts.has(who.split(':').pop())) return;
    this.topLevel += 1;
    const c = cmd.toLowerCase();
    this.byCommand[c] = (this.byCommand[c] ?? 0) + 1;
  }

  stop() {
    this.sock?.destroy();
  }
}

export class Postgres {
  constructor(adminUrl) {
    this.adminUrl = adminUrl;
    this.admin = new pg.Client({ connectionString: adminUrl });
  }

  async connect() {
    await this.admin.connect();
  }

  urlFor(db) {
    const u = new URL(this.adminUrl);
    u.pathname = `/${db}`;
    return u.toString();
  }

  /**
   * A fresh database with step-worker's schema, plus `written_at`: the moment the row was
   * inserted (clock_timestamp() default, so the same for every system whatever its INSERT).
   */
  async createDb(db, stepWorkerBin) {
    await this.admin.query(`DROP DATABASE IF EXISTS "${db}"`);
    await this.admin.query(`CREATE DATABASE "${db}"`);
    const url = this.urlFor(db);
    await run(stepWorkerBin, ['migrate'], { env: { ...process.env, DATABASE_URL: url, LOG_LEVEL: 'warn' } });
    const c = new pg.Client({ connectionString: url });
    await c.connect();
    await c.query('ALTER TABLE step_results ADD COLUMN written_at timestamptz NOT NULL DEFAULT clock_timestamp()');
    return { url, client: c };
  }

  async dropDb(db) {
    await this.admin.query(`DROP DATABASE IF EXISTS "${db}" WITH (FORCE)`);
  }

  async close() {
    await this.admin.end();
  }
}
