/**
 * Store faults that break "never spent twice" unless the fleet protocol and the stores work together, each
 * run in-process with two managers on their own store objects (as two processes), on a real authorization
 * server that revokes the grant when a refresh token is presented twice:
 *
 * - A shared store emptied behind the fleet's back while its server runs on — Redis `FLUSHALL` (a private
 *   server), PostgreSQL `TRUNCATE` of the store's table, `rm -rf` of the FileStore directory's files — then a
 *   process starts with the fleet's configuration (the long-spent initial refresh token) and asks for a token.
 *   Before the store watched its generation, the newcomer found nothing, waited its 1.5 s and spent the
 *   initial refresh token: `invalid_grant`, and the server revoked the grant under the running process too.
 *   Now the running process — which serves from memory and never reads the store — learns of it within the
 *   store's watch, writes back what it holds, and the newcomer takes that instead of spending anything.
 * - The same for `UserTokens`: a user who asks another process right after the `FLUSHALL` got
 *   `ERR_LOGIN_REQUIRED` (signed out) although the process holding them was about to write them back; now the
 *   asking process waits for the settle and finds the record.
 * - The process that just spent cut off from Redis (a network partition) for longer than its lock lease: the
 *   new refresh token is pending there, its lease runs out, and the moment the partition heals another
 *   process takes the lock. Before `StoreLock.takenOver`, it re-read the store (still the spent refresh token)
 *   and spent it at once; now it waits for the settle, and the pending write lands first.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import calculateSlot from 'cluster-key-slot';
import { type Cluster, Redis } from 'ioredis';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { TokenManager, type TokenManagerOptions, type TokenSource, type TokenStore } from '../../src/index.js';
import { PostgresStore } from '../../src/postgres.js';
import { RedisStore } from '../../src/redis.js';
import { FileStore } from '../../src/stores/file.js';
import { usersFor } from '../users/helpers.js';
import { afterNextTokenResponse, appRefreshToken } from '../support/app-client.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import {
  type PrivateRedis,
  hasRedisServer,
  skipWithout,
  sleep,
  startPrivateRedis,
  startRedisCluster,
} from '../support/private-servers.js';
import { DATABASE_URL, dropStoreTables, postgresAvailable } from '../support/services.js';
import { startTcpProxy } from '../support/tcp-proxy.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  // Access tokens that outlive the test: the running process has no reason to read the store.
  as = await startAuthorizationServer({ accessTokenTtl: 120 });
});
afterAll(() => as?.close());

/**
 * Two managers on their own store objects, as two processes configured alike (`source()` makes each one's
 * source), closed with their stores when the test ends.
 */
function twoProcesses(
  storeA: TokenStore,
  storeB: TokenStore,
  source: (which: 0 | 1) => TokenSource,
  options: Partial<TokenManagerOptions> = {},
): [TokenManager, TokenManager] {
  const a = new TokenManager({ ...options, source: source(0), store: storeA });
  const b = new TokenManager({ ...options, source: source(1), store: storeB });
  onTestFinished(async () => {
    await a.close();
    await b.close();
    await storeA.close();
    await storeB.close();
  });
  return [a, b];
}

interface Backend {
  /** A store object for one process; `key` is the managers' store key. */
  open(key: string): TokenStore;
  wipe(): Promise<void>;
}

async function newcomerAfterWipe({ open, wipe }: Backend): Promise<void> {
  const login = await as.login(`wiped-${randomUUID()}`);
  const source = () => appRefreshToken(as, login['refresh_token'] as string);
  const { key } = source();
  const [running, newcomer] = twoProcesses(open(key), open(key), source);

  await running.refresh();
  const held = await running.refresh(); // the store holds the second rotation; the login's was spent long ago
  await wipe();
  as.resetCounts();

  const token = await newcomer.getToken();
  // The newcomer spent nothing: it took what the running process wrote back.
  expect(as.counts.byGrant['refresh_token'] ?? 0).toBe(0);
  expect(token.accessToken).toBe(held.accessToken);

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

  it.skipIf(skipWithout('redis-server', hasRedisServer))(
    "Redis Cluster: FLUSHALL of the one master that holds the entry (not the store's first epoch)",
    async () => {
      const own = await startRedisCluster(3);
      const admin = new Redis.Cluster(own.nodes);
      const clients: Cluster[] = [];
      onTestFinished(async () => {
        admin.disconnect();
        for (const c of clients) c.disconnect();
        await own.close();
      });
      const ranges = (await admin.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
      const portOf = (key: string): number | undefined =>
        ranges.find(([first, last]) => calculateSlot(key) >= first && calculateSlot(key) <= last)?.[2][1];
      let entryPort: number | undefined;
      await newcomerAfterWipe({
        open: (key) => {
          // A prefix that puts the entry on another master than `<prefix>epoch` (the one key all stores
          // read before per-master epochs): flushing the entry's master must still be seen.
          let n = 0;
          while (portOf(`wiped${n}:entry:${key}`) === portOf(`wiped${n}:epoch`)) n++;
          entryPort = portOf(`wiped${n}:entry:${key}`);
          const client = new Redis.Cluster(own.nodes, { enableOfflineQueue: true });
          clients.push(client);
          return new RedisStore({ client, prefix: `wiped${n}:` });
        },
        wipe: async () => {
          const master = own.servers.find((server) => server.port === entryPort) as PrivateRedis;
          await master.cli('FLUSHALL');
        },
      });
    },
    60_000,
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

describe.skipIf(skipWithout('redis-server', hasRedisServer))('UserTokens on a store emptied by FLUSHALL', () => {
  it('a user who asks another process right then is not signed out: it waits for the write-back of the one holding them', async () => {
    const redis = await startPrivateRedis();
    onTestFinished(() => redis.close());
    const storeA = new RedisStore({ url: redis.url, prefix: 'users:' });
    const storeB = new RedisStore({ url: redis.url, prefix: 'users:' });
    const holder = usersFor(as, { store: storeA });
    const other = usersFor(as, { store: storeB });
    onTestFinished(async () => {
      await holder.close();
      await other.close();
      await storeA.close();
      await storeB.close();
    });
    const [aliceSub, bobSub] = [`alice-${randomUUID()}`, `bob-${randomUUID()}`];
    const alice = await as.login(aliceSub);
    const bob = await as.login(bobSub);
    await holder.save(aliceSub, alice);
    await holder.save(bobSub, bob);
    expect((await other.getAccessToken(bobSub)).accessToken).toBe(bob['access_token']); // other knows the store

    const rejected = as.counts.errors['invalid_grant'] ?? 0; // (the server is shared by the file's tests)
    await redis.cli('FLUSHALL');
    // Alice's record is gone from Redis; only the holder's memory has it, and it writes it back within its watch.
    expect((await other.getAccessToken(aliceSub)).accessToken).toBe(alice['access_token']);
    expect(as.counts.errors['invalid_grant'] ?? 0).toBe(rejected);
  }, 30_000);
});

describe.skipIf(skipWithout('redis-server', hasRedisServer))(
  'a store outage longer than the lock lease while a rotated refresh token is pending',
  () => {
    it('the spender cut off from Redis right after a refresh, past its lease: the next holder waits for the pending write instead of spending', async () => {
      const redis = await startPrivateRedis();
      const proxy = await startTcpProxy(redis.port); // a partition between the spender and Redis
      onTestFinished(() => proxy.close());
      const login = await as.login(`lease-${randomUUID()}`);
      const cutter = afterNextTokenResponse(() => proxy.cut()); // rotated at the server; not written yet
      const [spender, other] = twoProcesses(
        new RedisStore({ url: `redis://127.0.0.1:${proxy.port}`, prefix: 'lease:', timeout: '300ms' }),
        new RedisStore({ url: redis.url, prefix: 'lease:', timeout: '300ms' }),
        (which) =>
          appRefreshToken(as, login['refresh_token'] as string, {
            timeout: '1s',
            ...(which === 0 && { fetch: cutter.fetch }),
          }),
        // The lease: longer than the settle, a token request and two store steps, as it must be (5.1 s).
        { storeTimeout: '300ms', lock: { ttl: '5.5s' } },
      );
      onTestFinished(() => redis.close());

      await spender.refresh();
      await other.getToken(); // takes what the store holds: both processes hold a valid token
      const spent = as.counts.byGrant['refresh_token'] ?? 0;
      const rejected = as.counts.errors['invalid_grant'] ?? 0; // (the server is shared by the file's tests)

      cutter.arm();
      const rotated = await spender.refresh(); // served; its write is pending, its lock kept but not renewed
      expect(as.counts.byGrant['refresh_token']).toBe(spent + 1);
      await sleep(6_000); // past the lease: the lock is gone from Redis
      await proxy.heal();

      // The other process refreshes at once: it gets the lock, taken over from a holder that never released
      // it, so it waits for the settle — long enough for the pending write (retried every 2 s at most) to land.
      const fromOther = await other.refresh();
      expect(fromOther.accessToken).toBe(rotated.accessToken);
      expect(as.counts.byGrant['refresh_token']).toBe(spent + 1);
      expect(as.counts.errors['invalid_grant'] ?? 0).toBe(rejected);

      // The grant lives: the refresh token the spender kept is the one stored.
      await other.refresh();
      expect(as.counts.byGrant['refresh_token']).toBe(spent + 2);
      expect(as.counts.errors['invalid_grant'] ?? 0).toBe(rejected);
    }, 30_000);
  },
);
