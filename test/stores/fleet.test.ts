/**
 * The fleet protocol across processes: six child processes with the same initial refresh token share one
 * store and call getToken() every 25 ms for 10 s against a real authorization server that issues 2 s
 * tokens with single-use rotating refresh tokens (reuse revokes the whole grant). Then: crash safety of
 * the file store, and a Redis that is down, or stopped and restarted, during a run.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileStore, TokenManager, type TokenStore, clientCredentials, refreshToken } from '../../src/index.js';
import { PostgresStore } from '../../src/postgres.js';
import { RedisStore } from '../../src/redis.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import {
  DATABASE_URL,
  REDIS_URL,
  dropStoreTables,
  postgresAvailable,
  redisAvailable,
  removeRedisKeys,
} from '../support/services.js';
import { type ChildConfig, runFleet, spawnChild } from './fleet-support.js';

const PROCESSES = 6;
const DURATION_MS = 10_000;
const MAX_REFRESHES = 14;

let as: TestAuthorizationServer;
const root = join(tmpdir(), `tokenwarden-fleet-${randomUUID()}`);
const redisPrefix = `tw-test:fleet:${randomUUID()}:`;
const table = `tw_test_fleet_${randomBytes(6).toString('hex')}`;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 2 });
});

afterAll(async () => {
  await as?.close();
  await rm(root, { recursive: true, force: true });
  await removeRedisKeys(redisPrefix);
  await dropStoreTables(table);
});

type StoreConfig = ChildConfig['store'];

function openStore(config: StoreConfig): TokenStore {
  if (config.kind === 'file') return new FileStore({ path: config.path });
  if (config.kind === 'redis') return new RedisStore({ url: config.url, prefix: config.prefix });
  if (config.kind === 'postgres')
    return new PostgresStore({ connectionString: config.connectionString, table: config.table });
  throw new Error('no store');
}

const backends: { name: string; available: boolean; store: () => StoreConfig }[] = [
  { name: 'FileStore', available: true, store: () => ({ kind: 'file', path: join(root, randomUUID()) }) },
  {
    name: 'RedisStore',
    available: redisAvailable,
    store: () => ({ kind: 'redis', url: REDIS_URL, prefix: `${redisPrefix}${randomUUID()}:` }),
  },
  {
    name: 'PostgresStore',
    available: postgresAvailable,
    store: () => ({ kind: 'postgres', connectionString: DATABASE_URL, table }),
  },
];

describe('a fleet of processes sharing one store', () => {
  for (const backend of backends) {
    it.skipIf(!backend.available)(
      `${backend.name}: ${PROCESSES} processes × ${DURATION_MS / 1000} s, 2 s tokens, rotating refresh tokens: no error, no expired token, one refresh at a time, grant intact`,
      async () => {
        const login = await as.login(`fleet-${backend.name}`);
        const store = backend.store();
        as.resetCounts();
        const results = await runFleet(PROCESSES, {
          store,
          issuer: as.issuer,
          clientId: as.clients.app.clientId,
          clientSecret: as.clients.app.clientSecret,
          refreshToken: login['refresh_token'] as string,
          durationMs: DURATION_MS,
          intervalMs: 25,
        });
        const refreshes = as.counts.byGrant['refresh_token'] ?? 0;
        const summary = results.map(({ latenciesMs: _, ...r }) => r);
        expect(
          results.flatMap((r) => r.errors),
          JSON.stringify(summary),
        ).toEqual([]);
        expect(
          results.reduce((n, r) => n + r.expired, 0),
          JSON.stringify(summary),
        ).toBe(0);
        expect(results.every((r) => r.calls > 100)).toBe(true);
        expect(as.counts.errors).toEqual({});
        expect(refreshes).toBeGreaterThanOrEqual(2);
        expect(refreshes, JSON.stringify(summary)).toBeLessThanOrEqual(MAX_REFRESHES);
        expect(results.reduce((n, r) => n + r.sources, 0)).toBe(refreshes);

        // Afterwards, through the store, exactly as a user would: the grant was never revoked.
        const shared = openStore(store);
        const m = new TokenManager({
          source: refreshToken({
            issuer: as.issuer,
            clientId: as.clients.app.clientId,
            clientSecret: as.clients.app.clientSecret,
            refreshToken: login['refresh_token'] as string,
            allowInsecureRequests: true,
          }),
          store: shared,
        });
        await m.getToken();
        const refreshed = await m.refresh();
        expect(refreshed.expiresAt).toBeGreaterThan(Date.now());
        await m.close();
        await shared.close();
        expect(as.counts.errors['invalid_grant'] ?? 0).toBe(0);
      },
      60_000,
    );
  }
});

describe('FileStore crash safety', () => {
  it('a writer killed with SIGKILL in the middle of writes leaves every entry readable', async () => {
    const path = join(root, 'crash');
    const config: ChildConfig = {
      store: { kind: 'file', path },
      mode: 'writer',
      issuer: 'http://unused',
      clientId: 'unused',
      clientSecret: 'unused',
      refreshToken: 'unused',
      startAt: 0,
      durationMs: 0,
      intervalMs: 0,
    };
    for (let round = 0; round < 4; round++) {
      const child = spawnChild(config);
      await ready(child);
      await new Promise((r) => setTimeout(r, 150 + round * 100)); // mid-write: it writes without pause
      child.kill('SIGKILL');
      await new Promise((r) => child.once('exit', r));
    }
    const store = new FileStore({ path });
    const corrupt: unknown[] = [];
    store.on('corrupt', (e) => corrupt.push(e));
    let found = 0;
    for (let i = 0; i < 5; i++) {
      const record = await store.get(`crash:${i}`);
      if (record === undefined) continue;
      found++;
      expect(() => JSON.parse(record.value)).not.toThrow();
    }
    expect(found).toBeGreaterThan(0);
    expect(corrupt).toEqual([]);
    // The dead writer's per-key write lock does not block later writes.
    for (let i = 0; i < 5; i++) expect(await store.set(`crash:${i}`, '{}')).toBeGreaterThan(0);
    await store.close();
  }, 60_000);
});

describe('Redis down during a run', () => {
  const source = (rt: string) =>
    refreshToken({
      issuer: as.issuer,
      clientId: as.clients.app.clientId,
      clientSecret: as.clients.app.clientSecret,
      refreshToken: rt,
      allowInsecureRequests: true,
    });

  it('a store at a port where nothing listens: a refresh token is never spent without it (ERR_STORE), client credentials carry on in-process', async () => {
    const login = await as.login('redis-nowhere');
    const store = new RedisStore({ url: `redis://127.0.0.1:${await freePort()}`, timeout: 300 });
    const m = new TokenManager({ source: source(login['refresh_token'] as string), store, storeTimeout: 500 });
    const storeErrors: string[] = [];
    m.on('storeError', (e) => storeErrors.push(e.error.code));
    const failures = await Promise.all([1, 2, 3].map(() => m.getToken().catch((err: unknown) => err)));
    for (const f of failures) expect(f).toMatchObject({ code: expect.stringMatching(/^ERR_STORE/) });
    await m.close();
    expect(storeErrors.length).toBeGreaterThan(0);
    expect(storeErrors.every((c) => c === 'ERR_STORE' || c === 'ERR_STORE_TIMEOUT')).toBe(true);
    expect(as.counts.errors['invalid_grant'] ?? 0).toBe(0);

    // A store known to be private to this process may opt in to refreshing without it.
    const alone = new TokenManager({
      source: source(login['refresh_token'] as string),
      store,
      storeTimeout: 500,
      unlockedRefresh: true,
    });
    expect((await alone.getToken()).expiresAt).toBeGreaterThan(Date.now());
    await alone.close();

    const cc = new TokenManager({
      source: clientCredentials({ issuer: as.issuer, ...as.clients.svc, allowInsecureRequests: true }),
      store,
      storeTimeout: 500,
    });
    expect((await cc.getToken()).expiresAt).toBeGreaterThan(Date.now());
    await cc.close();
    await store.close();
  }, 30_000);

  const hasRedisServer = spawnSync('redis-server', ['--version']).status === 0;
  let as10: TestAuthorizationServer;
  beforeAll(async () => {
    as10 = await startAuthorizationServer({ accessTokenTtl: 10 });
  });
  afterAll(async () => {
    await as10?.close();
  });

  it.skipIf(!hasRedisServer)(
    'a Redis of our own stopped and restarted (empty) mid-run: a valid token keeps being served, then storeError, storeRecovered, and the store re-seeded',
    async () => {
      const port = await freePort();
      let server = await startRedis(port);
      try {
        const login = await as10.login('redis-restart');
        const store = new RedisStore({ url: `redis://127.0.0.1:${port}`, timeout: 300 });
        // 10 s tokens: the outage does not outlive the token, so no call may fail.
        const m = new TokenManager({
          source: refreshToken({
            issuer: as10.issuer,
            clientId: as10.clients.app.clientId,
            clientSecret: as10.clients.app.clientSecret,
            refreshToken: login['refresh_token'] as string,
            allowInsecureRequests: true,
          }),
          store,
          storeTimeout: 500,
        });
        const events: string[] = [];
        m.on('storeError', () => events.push('storeError'));
        m.on('storeRecovered', () => events.push('storeRecovered'));
        const failures: unknown[] = [];
        let expired = 0;
        const start = Date.now();
        let stopped = false;
        let restarted = false;
        await m.getToken();
        while (Date.now() < start + 5000) {
          const elapsed = Date.now() - start;
          if (!stopped && elapsed > 1000) {
            stopped = true;
            await stopRedis(server);
            await m.refresh().catch(() => undefined); // a refresh while the store is down: refused, coded
          }
          if (!restarted && elapsed > 2500) {
            restarted = true;
            server = await startRedis(port);
          }
          try {
            const t = await m.getToken();
            if ((t.expiresAt as number) <= Date.now()) expired++;
          } catch (err) {
            failures.push(err);
          }
          await new Promise((r) => setTimeout(r, 25));
        }
        await m.refresh(); // through the store again
        await m.close();
        await store.close();
        expect(failures).toEqual([]);
        expect(expired).toBe(0);
        const firstError = events.indexOf('storeError');
        expect(firstError).toBeGreaterThanOrEqual(0);
        expect(events.indexOf('storeRecovered', firstError)).toBeGreaterThan(firstError);
        expect(as10.counts.errors['invalid_grant'] ?? 0).toBe(0);
        // After the restart the store holds the newest token again.
        const check = new RedisStore({ url: `redis://127.0.0.1:${port}` });
        expect((await check.get(m.key))?.value).toContain('"seq":');
        await check.close();
      } finally {
        await stopRedis(server);
      }
    },
    40_000,
  );
});

function ready(child: ChildProcess): Promise<void> {
  return new Promise((resolve, reject) => {
    child.stdout?.on('data', (d: Buffer) => {
      if (d.toString().includes('ready')) resolve();
    });
    child.once('exit', (code) => reject(new Error(`writer exited early (${code})`)));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}

/** A private redis-server on `port` (never the shared one): no persistence, killed by stopRedis. */
async function startRedis(port: number): Promise<ChildProcess> {
  const server = spawn(
    'redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no'],
    {
      stdio: 'ignore',
    },
  );
  const deadline = Date.now() + 10_000;
  for (;;) {
    const client = new Redis({ port, host: '127.0.0.1', lazyConnect: true, retryStrategy: () => null });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.ping();
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    } finally {
      client.disconnect();
    }
  }
  return server;
}

async function stopRedis(server: ChildProcess): Promise<void> {
  if (server.exitCode !== null || server.signalCode !== null) return;
  const exited = new Promise((r) => server.once('exit', r));
  server.kill('SIGKILL');
  await exited;
}
