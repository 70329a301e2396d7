/**
 * RedisStore against private Redis servers (never the shared one): a Redis Cluster runs the whole store
 * contract; a restart is reported as `reset` (the store may have lost entries) and a freeze is not; many
 * operations started before the connection opens add no listener per operation.
 */
import { randomUUID } from 'node:crypto';
import { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/stores/redis.js';
import {
  type PrivateRedis,
  type PrivateRedisCluster,
  hasRedisServer,
  skipWithout,
  sleep,
  startPrivateRedis,
  startRedisCluster,
} from '../support/private-servers.js';
import { storeContract } from './contract.js';

let cluster: Promise<PrivateRedisCluster> | undefined;
const clients: Cluster[] = [];
const clusterClient = async (): Promise<Cluster> => {
  cluster ??= startRedisCluster(3);
  const client = new Redis.Cluster((await cluster).nodes, { enableOfflineQueue: true });
  clients.push(client);
  return client;
};

afterAll(async () => {
  for (const c of clients) c.disconnect();
  await (await cluster)?.close();
});

storeContract(
  'RedisStore on a Redis Cluster',
  !skipWithout('redis-server', hasRedisServer)
    ? {
        open: async (options) => new RedisStore({ client: await clusterClient(), prefix: 'tw-cluster:', ...options }),
        raw: async (key) => (await (await clusterClient()).hget(`tw-cluster:entry:${key}`, 'value')) ?? undefined,
      }
    : undefined,
);

describe.skipIf(skipWithout('redis-server', hasRedisServer))('RedisStore when its server restarts or freezes', () => {
  it('reports a restart (empty, or with its data) as reset, once, before the next command; a freeze is not one', async () => {
    const redis = await startPrivateRedis({ persist: true });
    const store = new RedisStore({ url: redis.url, prefix: `tw:${randomUUID()}:`, timeout: 500 });
    const resets: number[] = [];
    store.on('reset', () => resets.push(Date.now()));
    try {
      expect(await store.set('k', 'v1')).toBeGreaterThan(0);
      expect(resets).toEqual([]); // the first connection only learns who the server is

      redis.freeze();
      await expect(store.get('k')).rejects.toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
      redis.thaw();
      expect((await store.get('k'))?.value).toBe('v1');
      expect(resets).toEqual([]);

      await redis.stop();
      await redis.start(); // the same data (append-only file), another server process
      const record = await retry(() => store.get('k'));
      expect(record?.value).toBe('v1');
      expect(resets).toHaveLength(1);

      await redis.stop();
      await redis.start({ empty: true });
      expect(await retry(() => store.get('k'))).toBeUndefined();
      expect(resets).toHaveLength(2);
    } finally {
      await store.close();
      await redis.close();
    }
  }, 30_000);

  it('a Redis Cluster whose master restarts empty: reset, before the next command; a freeze of that master is not one', async () => {
    const own = await startRedisCluster(3);
    const client = new Redis.Cluster(own.nodes, { enableOfflineQueue: true });
    const store = new RedisStore({ client, prefix: `tw:${randomUUID()}:`, timeout: 500 });
    const events: string[] = [];
    store.on('reset', () => events.push('reset'));
    try {
      await store.set('k', 'v1');
      await store.set('j', 'v1');
      expect(events).toEqual([]); // the first connection only learns who the masters are
      // The master that holds k's entry (k and j may share it: it does not matter).
      const slot = Number(await client.call('CLUSTER', 'KEYSLOT', `${store.prefix}entry:k`));
      const ranges = (await client.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
      const port = ranges.find(([first, last]) => slot >= first && slot <= last)?.[2][1];
      const master = own.servers.find((s) => s.port === port) as PrivateRedis;

      master.freeze();
      await expect(store.get('k')).rejects.toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
      master.thaw();
      expect((await retry(() => store.get('k')))?.value).toBe('v1');
      expect(events).toEqual([]);

      await master.stop();
      await master.start(); // its cluster config (slots) kept, its data gone: no persistence
      const record = await retry(() => store.get('k'));
      events.push(`get: ${record === undefined ? 'missing' : record.value}`);
      // The reset came first: nobody acted on the shard's missing entry before hearing the data may be gone.
      expect(events).toEqual(['reset', 'get: missing']);
      expect(await store.get('k')).toBeUndefined();
      expect(events).toHaveLength(2); // once
    } finally {
      await store.close();
      client.disconnect();
      await own.close();
    }
  }, 60_000);

  it('1000 operations started before the connection is open add no listener each (no MaxListenersExceededWarning)', async () => {
    const redis = await startPrivateRedis();
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => {
      if (w.name === 'MaxListenersExceededWarning') warnings.push(w);
    };
    process.on('warning', onWarning);
    const store = new RedisStore({ url: redis.url, prefix: `tw:${randomUUID()}:` });
    try {
      const results = await Promise.all(Array.from({ length: 1000 }, (_, i) => store.get(`k${i}`)));
      expect(results.every((r) => r === undefined)).toBe(true);
      await sleep(50); // warnings are emitted on the next tick
      expect(warnings).toEqual([]);
    } finally {
      process.off('warning', onWarning);
      await store.close();
      await redis.close();
    }
  }, 30_000);
});

/** Retries a store call while the connection comes back (at most 15 s: a loaded machine reconnects slowly). */
async function retry<T>(call: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      return await call();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}
