/**
 * A shared store emptied behind the fleet's back while its server runs on — Redis `FLUSHALL` (a private
 * server), PostgreSQL `TRUNCATE` of the store's table, `rm -rf` of the FileStore directory's files — then a
 * process starts with the fleet's configuration (the long-spent initial refresh token) and asks for a token.
 * Before the store watched its generation, the newcomer found nothing, waited its 1.5 s and spent the initial
 * refresh token: `invalid_grant`, and the authorization server revoked the grant under the running process
 * too. Now the running process — which serves from memory and never reads the store — learns of it within
 * the store's watch, writes back what it holds, and the newcomer takes that instead of spending anything.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { TokenManager, type TokenStore, refreshToken } from '../../src/index.js';
import { PostgresStore } from '../../src/postgres.js';
import { RedisStore } from '../../src/redis.js';
import { FileStore } from '../../src/stores/file.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { hasRedisServer, skipWithout, startPrivateRedis } from '../support/private-servers.js';
import { DATABASE_URL, dropStoreTables, postgresAvailable } from '../support/services.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  // Access tokens that outlive the test: the running process has no reason to read the store.
  as = await startAuthorizationServer({ accessTokenTtl: 120 });
});
afterAll(() => as?.close());

interface Backend {
  open(): TokenStore;
  wipe(): Promise<void>;
}

async function newcomerAfterWipe({ open, wipe }: Backend): Promise<void> {
  const login = await as.login(`wiped-${randomUUID()}`);
  const manager = (store: TokenStore): TokenManager =>
    new TokenManager({
      source: refreshToken({
        issuer: as.issuer,
        clientId: as.clients.app.clientId,
        clientSecret: as.clients.app.clientSecret,
        refreshToken: login['refresh_token'] as string,
        allowInsecureRequests: true,
      }),
      store,
    });
  const storeA = open();
  const storeB = open();
  const running = manager(storeA);
  const newcomer = manager(storeB);
  onTestFinished(async () => {
    await running.close();
    await newcomer.close();
    await storeA.close();
    await storeB.close();
  });

  await running.refresh();
  const held = await running.refresh(); // the store holds the second rotation; the login's was spent long ago
  await wipe();
  as.resetCounts();

  const started = Date.now();
  const token = await newcomer.getToken();
  // The newcomer spent nothing: it took what the running process wrote back.
  expect(as.counts.byGrant['refresh_token'] ?? 0).toBe(0);
  expect(token.accessToken).toBe(held.accessToken);
  expect(Date.now() - started).toBeLessThan(10_000);

  // The grant lives, and the fleet goes on from the refresh token the running process held.
  await newcomer.refresh();
  expect((await running.refresh()).expiresAt).toBeGreaterThan(Date.now());
  expect(as.counts.byGrant['refresh_token']).toBeGreaterThanOrEqual(1);
  expect(as.counts.errors['invalid_grant'] ?? 0).toBe(0);
}

describe('a store emptied under a running fleet, then a newcomer with the initial refresh token', () => {
  it.skipIf(skipWithout('redis-server', hasRedisServer))(
    'Redis: FLUSHALL',
    async () => {
      const redis = await startPrivateRedis();
      const admin = new Redis(redis.url);
      onTestFinished(async () => {
        admin.disconnect();
        await redis.close();
      });
      await newcomerAfterWipe({
        open: () => new RedisStore({ url: redis.url, prefix: 'wiped:' }),
        wipe: async () => {
          await admin.flushall();
        },
      });
    },
    30_000,
  );

  it.skipIf(!postgresAvailable)(
    'PostgreSQL: TRUNCATE of the store table',
    async () => {
      const table = `tw_wiped_${randomBytes(6).toString('hex')}`;
      const admin = new pg.Pool({ connectionString: DATABASE_URL, max: 1 });
      onTestFinished(async () => {
        await dropStoreTables(table);
        await admin.end();
      });
      await newcomerAfterWipe({
        open: () => new PostgresStore({ connectionString: DATABASE_URL, table }),
        wipe: async () => {
          await admin.query(`TRUNCATE ${table}`);
        },
      });
    },
    30_000,
  );

  it('FileStore: every file of the directory removed', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'tw-wiped-'));
    onTestFinished(() => rm(dir, { recursive: true, force: true }));
    await newcomerAfterWipe({
      open: () => new FileStore({ path: dir }),
      wipe: async () => {
        for (const name of await readdir(dir)) await rm(join(dir, name), { force: true });
      },
    });
  }, 30_000);
});
