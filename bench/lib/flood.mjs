// A flood of scrapes and probes against a worker's HTTP port, beside a measured run: the load
// `ab -c 50` put on /metrics in issue #12. Loopback only, bounded in requests and in time.
import http from 'node:http';
import { percentile } from './util.mjs';

/** Every 4th request of a client is a probe, the others are scrapes. */
const pathFor = (k) => (k % 4 === 3 ? '/health' : '/metrics');

function get(agent, port, path, timeoutMs) {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const req = http.get({ host: '127.0.0.1', port, path, agent }, (res) => {
      let bytes = 0;
      res.on('data', (d) => {
        bytes += d.length;
      });
      res.on('end', () => resolve({ status: res.statusCode, bytes, ms: performance.now() - t0 }));
      res.on('error', (e) => resolve({ error: e.code ?? e.message }));
    });
    // A request the worker never answers must not hold its client (and so the stop) forever.
    req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => resolve({ error: e.code ?? e.message }));
  });
}

/**
 * Starts `clients` loops, each sending GET /metrics (3 in 4) and GET /health (1 in 4) to
 * 127.0.0.1:`port` over its own keep-alive connection, one request after the other, as fast as
 * the worker answers. Each loop ends by itself after `maxRequests` requests in all or `maxMs`,
 * whichever comes first; `stop()` ends them sooner and resolves to what was served:
 * `{ clients, requests, served, byStatus: {code: count}, errors: {code: count}, byPath: {path: count},
 *    seconds, perSecond, metricsP50Ms, metricsP99Ms, metricsBytes, harnessCpuS }`
 * (`harnessCpuS`: the harness process's own CPU over the flood, which it takes from the cores the
 * worker runs on).
 */
export function startFlood({ port, clients = 50, maxRequests = 2_000_000, maxMs = 300_000, timeoutMs = 10_000 }) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients, maxFreeSockets: clients });
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const deadline = Date.now() + maxMs;
  const stats = { requests: 0, byStatus: {}, errors: {}, byPath: {}, metricsBytes: 0 };
  const metricsMs = [];
  let stopped = false;

  async function client() {
    for (let k = 0; !stopped && stats.requests < maxRequests && Date.now() < deadline; k++) {
      const path = pathFor(k);
      stats.requests += 1;
      const r = await get(agent, port, path, timeoutMs);
      stats.byPath[path] = (stats.byPath[path] ?? 0) + 1;
      if (r.error) {
        stats.errors[r.error] = (stats.errors[r.error] ?? 0) + 1;
        // A refused or reset connection answers at once: pause so the loop does not spin.
        await new Promise((res) => setTimeout(res, 10));
        continue;
      }
      stats.byStatus[r.status] = (stats.byStatus[r.status] ?? 0) + 1;
      if (path === '/metrics') {
        stats.metricsBytes += r.bytes;
        if (metricsMs.length < 1_000_000) metricsMs.push(r.ms);
      }
    }
  }

  const loops = Array.from({ length: clients }, client);
  return {
    async stop() {
      stopped = true;
      await Promise.all(loops);
      agent.destroy();
      const seconds = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      metricsMs.sort((a, b) => a - b);
      return {
        ...stats,
        clients,
        served: Object.values(stats.byStatus).reduce((a, b) => a + b, 0),
        seconds,
        perSecond: stats.requests / seconds,
        metricsP50Ms: percentile(metricsMs, 0.5),
        metricsP99Ms: percentile(metricsMs, 0.99),
        harnessCpuS: (cpu.user + cpu.system) / 1e6,
      };
    },
  };
}
