/**
 * Issue 15: the cached path over HTTP. Fastify, Hono (on @hono/node-server) and Express, each serving the same
 * JSON route three ways — no authentication, tokenwarden's middleware with one repeated valid token, and a
 * middleware that only looks the header up in a Map (the floor of any cached check). Hono runs two more: the
 * route wrapped in withBearerAuth (no middleware), and a middleware that only calls next() — the floor of any
 * middleware on Hono, whose compose and async answer cost more than the token check. Each server runs in a
 * process of its own (as in production: its JIT sees one app), autocannon drives them from this one, and
 * they take turns in short rounds; the ratio is the median of the rounds' ratios. On two cores the load
 * generator competes with the server, so requests per second vary by ±20% from round to round: the server's
 * own CPU time per request (from `process.cpuUsage()` in its process) is reported beside it, and is the
 * steadier measure of what the middleware costs.
 */
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import autocannon from 'autocannon';
import { createTestAuthorizationServer } from '../dist/testing/index.js';
import type { BenchRow } from './run.js';
import { ratio, si } from './util.js';

const ROUNDS = 15;
const SECONDS = 1;
const SERVER = fileURLToPath(new URL('./support/http-server.ts', import.meta.url));

type Mode = 'none' | 'tokenwarden' | 'map' | 'wrapped' | 'noop';

/**
 * Pins this process's main thread to CPU 0 while the servers (pinned to CPU 1) are measured, on Linux with two
 * or more cores (`taskset`); returns the function that gives the thread every CPU back. Called after the
 * authorization server is up, so that the thread pool (started by its key generation) is not pinned: the
 * other benchmarks in this process run as before.
 */
let pinned = false;

function pin(): (() => void) | undefined {
  if (process.platform !== 'linux' || availableParallelism() < 2) return undefined;
  const set = (cpus: string): void =>
    void execFileSync('taskset', ['-p', '-c', cpus, String(process.pid)], { stdio: 'ignore' });
  // Read before pinning: availableParallelism() counts the CPUs this thread may run on, 1 once pinned (given
  // back as "0-0", the thread stayed pinned, and the suites after this one — verify, which sizes its signature
  // workers by it — ran on one core).
  const every = `0-${availableParallelism() - 1}`;
  try {
    set('0');
  } catch {
    return undefined;
  }
  pinned = true;
  return () => {
    pinned = false;
    set(every);
  };
}

export async function run(): Promise<BenchRow[]> {
  const as = await createTestAuthorizationServer({ accessTokenTtl: '1h' });
  const token = await as.mintAccessToken({ sub: 'bench', scope: 'read' });
  const audience = decodeAudience(token);
  const header = `Bearer ${token}`;
  const rows: BenchRow[] = [];
  const unpin = pin();
  try {
    const only = process.env['BENCH_HTTP']?.split(',');
    for (const [name, framework] of [
      ['Fastify 5', 'fastify'],
      ['Hono 4 (node-server)', 'hono'],
      ['Express 5', 'express'],
    ] as const) {
      if (only !== undefined && !only.includes(framework)) continue;
      // Hono also with withBearerAuth around the route's handler (no middleware, so no compose), and with a
      // middleware that does nothing but call next(): the floor of any middleware, compose and all.
      const modes: Mode[] =
        framework === 'hono' ? ['none', 'tokenwarden', 'map', 'wrapped', 'noop'] : ['none', 'tokenwarden', 'map'];
      const servers = await Promise.all(modes.map((mode) => start(framework, mode, as.issuer, audience, header)));
      try {
        const ratios: number[] = [];
        const mapRatios: number[] = [];
        const cpuRatios: number[] = [];
        const wrappedRatios: number[] = [];
        const wrappedCpuRatios: number[] = [];
        const noopRatios: number[] = [];
        const rates = servers.map(() => [] as number[]);
        const cpus = servers.map(() => [] as number[]);
        for (let round = -1; round < ROUNDS; round++) {
          // The order turns each round, so that none always follows the same one.
          const measured: number[] = [];
          const cpu: number[] = [];
          for (let k = 0; k < servers.length; k++) {
            const i = (k + Math.max(0, round)) % servers.length;
            const before = await cpuTime(servers[i]!.child);
            const result = await autocannon({
              url: servers[i]!.url,
              connections: 20,
              duration: round < 0 ? 3 : SECONDS, // round -1 warms up each server's JIT
              headers: { authorization: header },
            });
            if (result.non2xx > 0 || result.errors > 0) {
              throw new Error(`${name}: ${result.non2xx} non-2xx, ${result.errors} errors`);
            }
            measured[i] = result.requests.total / result.duration;
            cpu[i] = ((await cpuTime(servers[i]!.child)) - before) / result.requests.total;
          }
          if (process.env['BENCH_DEBUG'])
            console.error(name, round, measured.map(Math.round).join(' '), cpu.map((c) => c.toFixed(1)).join(' '));
          if (round < 0) continue;
          for (const [i, r] of measured.entries()) rates[i]!.push(r);
          for (const [i, c] of cpu.entries()) cpus[i]!.push(c);
          cpuRatios.push(cpu[0]! / cpu[1]!);
          ratios.push(measured[1]! / measured[0]!);
          mapRatios.push(measured[2]! / measured[0]!);
          if (modes.length > 3) {
            wrappedRatios.push(measured[3]! / measured[0]!);
            wrappedCpuRatios.push(cpu[0]! / cpu[3]!);
            noopRatios.push(measured[4]! / measured[0]!);
          }
        }
        const [none, tw] = rates.map(median) as [number, number];
        const [cpuNone, cpuTw, cpuMap, cpuWrapped, cpuNoop] = cpus.map(median) as [
          number,
          number,
          number,
          number?,
          number?,
        ];
        const floors = [`Map-lookup middleware ${ratio(median(mapRatios), 1)}`];
        if (noopRatios.length > 0) floors.push(`(c, next) => next(): ${ratio(median(noopRatios), 1)}`);
        rows.push({
          case: `${name} req/s, bearerAuth, one repeated token`,
          ours: `${si(tw)} req/s`,
          baseline: `no auth: ${si(none)} req/s (${floors.join(', ')})`,
          ratio: ratio(median(ratios), 1),
        });
        rows.push({
          case: `${name} server CPU per request, bearerAuth`,
          ours: `${cpuTw.toFixed(1)} µs`,
          baseline: `no auth: ${cpuNone.toFixed(1)} µs (Map lookup: ${cpuMap.toFixed(1)} µs${
            cpuNoop === undefined ? '' : `, next() only: ${cpuNoop.toFixed(1)} µs`
          })`,
          ratio: ratio(median(cpuRatios), 1),
        });
        if (cpuWrapped !== undefined) {
          rows.push({
            case: `${name} req/s, withBearerAuth(options, handler), one repeated token`,
            ours: `${si(median(rates[3]!))} req/s`,
            baseline: `no auth: ${si(none)} req/s`,
            ratio: ratio(median(wrappedRatios), 1),
          });
          rows.push({
            case: `${name} server CPU per request, withBearerAuth`,
            ours: `${cpuWrapped.toFixed(1)} µs`,
            baseline: `no auth: ${cpuNone.toFixed(1)} µs`,
            ratio: ratio(median(wrappedCpuRatios), 1),
          });
        }
      } finally {
        for (const s of servers) s.child.disconnect();
      }
    }
  } finally {
    unpin?.();
  }
  await as.close();
  return rows;
}

/** The CPU time (µs) the server process has used so far. */
async function cpuTime(child: ChildProcess): Promise<number> {
  const answer = once(child, 'message') as Promise<[{ cpu: number }]>;
  child.send('cpu');
  return (await answer)[0].cpu;
}

/** Starts one server process and waits for its URL (and one 200 with the bench token). */
async function start(
  framework: string,
  mode: Mode,
  issuer: string,
  audience: string,
  header: string,
): Promise<{ url: string; child: ChildProcess }> {
  const args = ['--import', 'tsx', SERVER, framework, mode, issuer, audience];
  // With two or more cores, the server gets one of its own and the load generator (this process) another.
  const child = pinned
    ? spawn('taskset', ['-c', '1', process.execPath, ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] })
    : spawn(process.execPath, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const [message] = (await once(child, 'message')) as [{ url: string }];
  const res = await fetch(message.url, { headers: { authorization: header } });
  await res.arrayBuffer();
  if (res.status !== 200) throw new Error(`${framework}/${mode}: bench route answered ${res.status}`);
  return { url: message.url, child };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function decodeAudience(token: string): string {
  const payload = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { aud: string | string[] };
  return Array.isArray(payload.aud) ? payload.aud[0]! : payload.aud;
}
