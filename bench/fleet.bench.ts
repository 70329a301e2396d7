/**
 * Issue 3: a fleet sharing one store. P child processes × T seconds, each calling getToken() every
 * 25 ms against a real authorization server issuing 2 s tokens: token requests with a shared store
 * (file, Redis, PostgreSQL) vs without one, against the ideal (what one process alone needs), and the
 * p99 getToken() latency. Then rotating refresh tokens without a shared store vs with one.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startAuthorizationServer } from '../test/support/authorization-server.js';
import {
  DATABASE_URL,
  REDIS_URL,
  dropStoreTables,
  postgresAvailable,
  redisAvailable,
  removeRedisKeys,
} from '../test/support/services.js';
import { type ChildConfig, type ChildResult, runFleet } from '../test/stores/fleet-support.js';
import type { BenchRow } from './run.js';
import { percentile } from './util.js';

const P = 4;
const T_MS = 4000;

export async function run(): Promise<BenchRow[]> {
  const as = await startAuthorizationServer({ accessTokenTtl: 2 });
  const dir = join(tmpdir(), `tokenwarden-bench-${randomUUID()}`);
  const prefix = `tw-bench:${randomUUID()}:`;
  const table = `tw_bench_${randomBytes(6).toString('hex')}`;
  const base = {
    issuer: as.issuer,
    clientId: as.clients.svc.clientId,
    clientSecret: as.clients.svc.clientSecret,
    refreshToken: '',
    grant: 'client_credentials' as const,
    durationMs: T_MS,
    intervalMs: 25,
  };
  const fleet = async (count: number, store: ChildConfig['store'], extra: Partial<ChildConfig> = {}) => {
    as.resetCounts();
    const results = await runFleet(count, { ...base, store, ...extra }, 2000);
    return { results, requests: as.counts.token, errors: { ...as.counts.errors } };
  };
  const p99 = (results: ChildResult[]) =>
    `${percentile(
      results.flatMap((r) => r.latenciesMs),
      99,
    ).toFixed(2)} ms`;

  const ideal = (await fleet(1, { kind: 'none' })).requests;
  const none = await fleet(P, { kind: 'none' });
  const rows: BenchRow[] = [];
  const stores: [string, boolean, ChildConfig['store']][] = [
    ['FileStore', true, { kind: 'file', path: dir }],
    ['RedisStore', redisAvailable, { kind: 'redis', url: REDIS_URL, prefix }],
    ['PostgresStore', postgresAvailable, { kind: 'postgres', connectionString: DATABASE_URL, table }],
  ];
  for (const [name, available, store] of stores) {
    if (!available) {
      rows.push({
        case: `${P} processes × ${T_MS / 1000} s sharing a ${name}`,
        ours: 'skipped (service down)',
        baseline: '',
        ratio: '',
      });
      continue;
    }
    const shared = await fleet(P, store);
    const failed = shared.results.reduce((n, r) => n + r.errors.length, 0);
    rows.push({
      case: `${P} processes × ${T_MS / 1000} s sharing a ${name}, 2 s tokens`,
      ours: `${shared.requests} token requests (ideal ${ideal}), p99 ${p99(shared.results)}${failed ? `, ${failed} errors` : ''}`,
      baseline: `no shared store: ${none.requests} requests, p99 ${p99(none.results)}`,
      ratio: `${(none.requests / Math.max(1, shared.requests)).toFixed(1)}× fewer`,
    });
  }

  // Rotating single-use refresh tokens: without a shared store the fleet spends one twice and the
  // authorization server revokes the grant.
  const rotating = async (store: ChildConfig['store']) => {
    const login = await as.login(`bench-${randomUUID()}`);
    return fleet(P, store, {
      grant: 'refresh_token',
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      refreshToken: login['refresh_token'] as string,
      durationMs: 3000,
    });
  };
  const alone = await rotating({ kind: 'none' });
  const together = await rotating({ kind: 'file', path: join(dir, 'rotating') });
  const failures = (r: ChildResult[]) => r.reduce((n, x) => n + x.errors.length, 0);
  rows.push({
    case: `${P} processes × 3 s, rotating refresh tokens`,
    ours: `FileStore: ${failures(together.results)} failed getToken(), invalid_grant ×${together.errors['invalid_grant'] ?? 0}`,
    baseline: `no shared store: ${failures(alone.results)} failed getToken(), invalid_grant ×${alone.errors['invalid_grant'] ?? 0}`,
    ratio:
      (alone.errors['invalid_grant'] ?? 0) > 0 && (together.errors['invalid_grant'] ?? 0) === 0 ? 'grant kept' : '-',
  });

  await as.close();
  await rm(dir, { recursive: true, force: true });
  await removeRedisKeys(prefix);
  await dropStoreTables(table);
  return rows;
}
