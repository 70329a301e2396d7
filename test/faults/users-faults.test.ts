/**
 * UserTokens through store faults: three processes serve three users each every 20 ms from one private
 * Redis or PostgreSQL (never the shared one), with 2 s access tokens and single-use rotating refresh tokens,
 * while the server is stopped (Redis comes back empty), or is frozen. Every user's grant must survive: no `invalid_grant`,
 * every failed call a coded store error, no user's token given to another, and each user still refreshes
 * afterwards through the store.
 */
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import {
  type PrivatePostgres,
  type PrivateRedis,
  hasRedisServer,
  pgBin,
  frozenFor,
  stoppedFor,
  skipWithout,
  sleep,
  startPrivatePostgres,
  startPrivateRedis,
} from '../support/private-servers.js';
import type { WorkerConfig, WorkerResult } from '../users/fleet-worker.js';
import { runFleet } from '../users/fleet-run.js';
import { usersFor } from '../users/helpers.js';
import { type StoreSpec, openStore } from '../users/stores.js';

const STORE_CODES = new Set(['ERR_STORE', 'ERR_STORE_TIMEOUT', 'ERR_LOCK_TIMEOUT']);
const SUBJECTS = ['alice', 'bob', 'carol'];

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 2 });
});
afterAll(async () => {
  await as?.close();
});

/** A private server the scenario breaks, and the store spec that reaches it. */
interface Private {
  close(): Promise<void>;
}

async function scenario<S extends Private>(
  start: () => Promise<S>,
  specOf: (server: S) => StoreSpec,
  fault: (server: S) => Promise<void>,
): Promise<WorkerResult[]> {
  const server = await start();
  try {
    const spec = specOf(server);
    const store = openStore(spec);
    const users = usersFor(as, { store });
    for (const subject of SUBJECTS) await users.save(subject, await as.login(subject));
    await users.close();
    as.resetCounts();
    const config = (mode: WorkerConfig['mode'], durationMs: number): WorkerConfig => ({
      mode,
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      store: spec,
      subjects: SUBJECTS,
      intervalMs: 20,
      durationMs,
    });
    let go!: () => void;
    const started = new Promise<void>((resolve) => (go = resolve));
    const running = runFleet(3, config('run', 12_000), go);
    await started;
    await sleep(4_000);
    await fault(server);
    const results = await running;
    // Afterwards every grant is alive: a new process, once each token has expired, refreshes every user.
    await sleep(2_500);
    const [after] = await runFleet(1, config('once', 0));
    expect(after!.outcome, JSON.stringify(after!.errors)).toEqual({ alice: 'ok', bob: 'ok', carol: 'ok' });
    await store.close();
    return results;
  } finally {
    await server.close();
  }
}

const inRedis = (redis: PrivateRedis): StoreSpec => ({
  kind: 'redis',
  url: redis.url,
  prefix: `tw-users-faults:${randomUUID()}:`,
});
const inPostgres = (pg: PrivatePostgres): StoreSpec => ({
  kind: 'postgres',
  connectionString: pg.url,
  table: `tw_users_faults_${randomUUID().slice(0, 8)}`,
});

function expectGrantsKept(results: WorkerResult[]): void {
  const errors = results.flatMap((r) => r.errors);
  const summary = JSON.stringify({
    processes: results.map((r) => ({ calls: r.calls, errors: r.errors.length, wrong: r.wrongUser })),
    errors: [...new Set(errors.map((e) => `${e.code}: ${e.message}`))],
  });
  expect(as.counts.errors['invalid_grant'] ?? 0, summary).toBe(0);
  for (const { code } of errors) expect(STORE_CODES, summary).toContain(code);
  expect(results.reduce((n, r) => n + r.wrongUser, 0)).toBe(0);
  for (const r of results) expect(r.calls - r.errors.length, summary).toBeGreaterThan(100);
}

describe.skipIf(skipWithout('redis-server', hasRedisServer))('UserTokens through Redis faults', () => {
  it('Redis stopped for 3 s and restarted empty', async () => {
    const results = await scenario(startPrivateRedis, inRedis, (redis) => stoppedFor(redis, 3_000, { empty: true }));
    expectGrantsKept(results);
  }, 90_000);

  it('Redis frozen (SIGSTOP) for 4 s', async () => {
    const results = await scenario(startPrivateRedis, inRedis, (redis) => frozenFor(redis, 4_000));
    expectGrantsKept(results);
  }, 90_000);
});

describe.skipIf(skipWithout('the PostgreSQL server binaries', pgBin !== undefined))(
  'UserTokens through PostgreSQL faults',
  () => {
    it('PostgreSQL stopped for 3 s (immediate shutdown), then back', async () => {
      const results = await scenario(startPrivatePostgres, inPostgres, (pg) => stoppedFor(pg, 3_000));
      expectGrantsKept(results);
    }, 90_000);

    it('PostgreSQL frozen (every process SIGSTOP) for 4 s', async () => {
      const results = await scenario(startPrivatePostgres, inPostgres, (pg) => frozenFor(pg, 4_000));
      expectGrantsKept(results);
    }, 90_000);
  },
);
