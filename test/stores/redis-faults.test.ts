/**
 * RedisStore against private Redis servers (never the shared one): a Redis Cluster runs the whole store
 * contract; a restart is reported as `reset` (the store may have lost entries) and a freeze is not; many
 * operations started before the connection opens add no listener per operation; a Redis shared with a cache
 * (`maxmemory` and an eviction policy) drops a held lock or the newest entry under memory pressure.
 */
import { execFile as execFileCallback } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import calculateSlot from 'cluster-key-slot';
import { Cluster, Redis } from 'ioredis';
import { afterAll, describe, expect, it, onTestFinished } from 'vitest';
import { ManualClock } from '../../src/clock.js';
import type { TokenwardenError } from '../../src/errors.js';
import { SETTLE_MS } from '../../src/fleet/fleet.js';
import { TokenManager } from '../../src/manager.js';
import { RedisStore } from '../../src/stores/redis.js';
import { GENERATION_WATCH_MS } from '../../src/stores/shared.js';
import { failure } from '../support/crashes.js';
import {
  type PrivateRedis,
  type PrivateRedisCluster,
  type PrivateSentinelSet,
  hasRedisServer,
  skipWithout,
  sleep,
  startPrivateRedis,
  startRedisCluster,
  startSentinelSet,
  until,
} from '../support/private-servers.js';
import { ScriptedSource } from '../support/scripted-source.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import { expectReleasedSoon, storeContract } from './contract.js';

const execFile = promisify(execFileCallback);
let cluster: Promise<PrivateRedisCluster> | undefined;
const clients: Cluster[] = [];
const clusterClient = async (): Promise<Cluster> => {
  cluster ??= startRedisCluster(3);
  const client = new Redis.Cluster((await cluster).nodes, { enableOfflineQueue: true });
  clients.push(client);
  return client;
};

let sentinelSet: Promise<PrivateSentinelSet> | undefined;
const sentinel = (): Promise<PrivateSentinelSet> => (sentinelSet ??= startSentinelSet());

afterAll(async () => {
  for (const c of clients) c.disconnect();
  await (await cluster)?.close();
  await (await sentinelSet)?.close();
});

storeContract(
  'RedisStore through Redis Sentinel (the store connects by sentinels and master name)',
  !skipWithout('redis-server', hasRedisServer)
    ? {
        open: async (options) => {
          const { sentinels, name } = await sentinel();
          return new RedisStore({ sentinels, name, prefix: 'tw-sentinel:', ...options });
        },
        raw: async (key) =>
          (await (await sentinel()).master.cli('HGET', `tw-sentinel:entry:${key}`, 'value')) || undefined,
        wipe: async () => {
          await (await sentinel()).master.cli('FLUSHALL');
        },
      }
    : undefined,
);

storeContract(
  'RedisStore on a Redis Cluster',
  !skipWithout('redis-server', hasRedisServer)
    ? {
        open: async (options) => new RedisStore({ client: await clusterClient(), prefix: 'tw-cluster:', ...options }),
        raw: async (key) => (await (await clusterClient()).hget(`tw-cluster:entry:${key}`, 'value')) ?? undefined,
        // FLUSHALL on every master (a private cluster).
        wipe: async () => {
          await Promise.all((await clusterClient()).nodes('master').map((node) => node.flushall()));
        },
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

      await redis.freeze();
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
    const { own, client, store } = await clusterStore();
    const events: string[] = [];
    store.on('reset', () => events.push('reset'));
    await store.set('k', 'v1');
    await store.set('j', 'v1');
    expect(events).toEqual([]); // the first connection only learns who the masters are
    // The master that holds k's entry (k and j may share it: it does not matter).
    const slot = Number(await client.call('CLUSTER', 'KEYSLOT', `${store.prefix}entry:k`));
    const ranges = (await client.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
    const port = ranges.find(([first, last]) => slot >= first && slot <= last)?.[2][1];
    const master = own.servers.find((s) => s.port === port) as PrivateRedis;

    await master.freeze();
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
  }, 60_000);

  it('a release that fails while Redis is down is tried again: the lock is free soon after Redis is back, not at the end of its lease', async () => {
    const { redis, a, b } = await twoStores({ persist: true });
    const lock = await a.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(lock).toBeDefined();
    await redis.stop(); // the lock key is on disk (appendfsync always)
    await lock!.release(); // fails: nothing answers (and does not throw)
    await redis.start();
    await expectReleasedSoon((options) => retry(() => b.lock('k', options)));
  }, 60_000);

  it('a lock command that Redis runs only after the store gave up on it (Redis frozen, then thawed) does not hold the lock for its lease', async () => {
    const { redis, a, b } = await twoStores();
    await a.get('k');
    await b.get('k');
    await redis.freeze(); // the SET NX reaches the server's socket; nothing runs it yet
    await expect(a.lock('k', { ttlMs: 30_000, waitMs: 0 })).rejects.toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
    await sleep(1000); // whatever the store does about it meanwhile meets a frozen server too
    redis.thaw();
    await expectReleasedSoon(
      (options) => retry(() => b.lock('k', options)),
      'held by the late command for its whole lease',
    );
  }, 60_000);

  it('a reshard that moves every slot of one master, its epoch with them, to another while the store is in use: no reset, nothing lost, at most a moment of store errors', async () => {
    const { own, store } = await clusterStore({ timeout: 2000 });
    const events: string[] = [];
    store.on('reset', () => events.push('reset'));
    const keys = Array.from({ length: 30 }, (_, i) => `k${i}`);
    for (const key of keys) await store.set(key, `${key}:1`);
    const { master: from } = await own.slotOwners(calculateSlot(`${store.prefix}entry:k0`));
    const to = own.servers.find((s) => s !== from)!;
    const slots = (await own.servers[0]!.cli('cluster', 'nodes'))
      .split('\n')
      .find((line) => line.includes(`:${from.port}@`))!
      .split(' ')
      .slice(8)
      .map((range) => range.split('-').map(Number) as [number, number?])
      .reduce((n, [first, last = first]) => n + last - first + 1, 0);
    // Reads, writes and locks go on while the slots move (MOVED and ASK on the way).
    let moving = true;
    let rounds = 0;
    let operations = 0;
    const errors: string[] = [];
    const load = (async () => {
      for (let round = 2; moving; round++, rounds++) {
        for (const key of keys) {
          await store.set(key, `${key}:${round}`).catch((err: TokenwardenError) => errors.push(err.code));
          const lock = await store.lock(key, { ttlMs: 5000, waitMs: 0 }).catch((err: TokenwardenError) => {
            errors.push(err.code);
            return undefined;
          });
          operations += 2;
          await lock?.release();
        }
      }
    })();
    await execFile('redis-cli', [
      '--cluster',
      'reshard',
      `127.0.0.1:${to.port}`,
      '--cluster-from',
      await from.cli('cluster', 'myid'),
      '--cluster-to',
      await to.cli('cluster', 'myid'),
      '--cluster-slots',
      String(slots),
      '--cluster-yes',
    ]);
    moving = false;
    await load;
    expect(rounds).toBeGreaterThan(1); // the load ran all along the move
    expect((await own.slotOwners(calculateSlot(`${store.prefix}entry:k0`))).master).toBe(to);
    // A command in flight when the emptied master leaves may fail, as a store error (the managers carry on
    // in-process); the rest go through.
    for (const code of errors) expect(['ERR_STORE', 'ERR_STORE_TIMEOUT']).toContain(code);
    expect(errors.length).toBeLessThan(operations / 10);
    for (const key of keys) expect((await store.get(key))?.value).toMatch(new RegExp(`^${key}:\\d+$`)); // all there
    for (const key of keys) expect(await store.set(key, `${key}:after`)).toBeGreaterThan(0); // and all work after
    for (const key of keys) expect((await store.get(key))?.value).toBe(`${key}:after`);
    expect(events).toEqual([]); // the data moved, none was lost: not a reset
  }, 60_000);

  it('a Redis Cluster whose master fails and whose replica is promoted: reset before the first answer from the replica', async () => {
    const { store, events, master, replica } = await clusterWithEntry();
    // The replica was connected already (as a replica): ioredis makes it a master at a slot refresh, with
    // no new connection. Its answers may be older than the failed master's (asynchronous replication).
    await master.stop();
    events.push(`get: ${(await retry(() => store.get('k')))?.value}`); // once the replica is promoted
    expect(await replica.cli('role')).toMatch(/^master/);
    expect(events).toEqual(['reset', 'get: v1']);
  }, 60_000);

  it('a Redis Cluster whose master and replica swap roles, no node added or removed (CLUSTER FAILOVER): reset before the first answer from the new master', async () => {
    const { store, events, master, replica } = await clusterWithEntry();
    // The old master stays in the cluster as the new master's replica. Redis 7 closes its clients as it turns
    // (ioredis drops the node: '-node'), and ioredis' next slot refresh shows the new master in place of the old
    // (the comparison of masters on 'refresh'): each of the two alone makes this pass; without both the new
    // master's first answer comes with no reset (checked by removing them).
    await failOver(replica, master);
    events.push(`get: ${(await retry(() => store.get('k')))?.value}`);
    expect(events).toEqual(['reset', 'get: v1']);
  }, 60_000);

  it('CLUSTER FAILOVER told late: the first answer, from the new master through a MOVED, still comes after the reset', async () => {
    // ioredis follows the old master's MOVED to the new one at once; its events come later (here 5 s).
    const { store, events, master, replica } = await clusterWithEntry({ lateEvents: true });
    await failOver(replica, master);
    events.push(`get: ${(await retry(() => store.get('k')))?.value}`);
    expect(events).toEqual(['reset', 'get: v1']);
  }, 60_000);

  it('a Redis Cluster: each master keeps its own epoch, read with the entries it holds; FLUSHALL of any one master alone is a reset', async () => {
    const { own, client, store } = await clusterStore();
    const resets: number[] = [];
    store.on('reset', () => resets.push(Date.now()));
    const keys = Array.from({ length: 30 }, (_, i) => `k${i}`);
    for (const key of keys) await store.set(key, 'v');
    for (const key of keys) expect((await store.get(key))?.value).toBe('v');
    // One epoch per master, in a slot of its own: no master is asked for every read.
    const epochsOn = async (server: PrivateRedis) =>
      (await server.cli('--scan', '--pattern', '*epoch*')).split('\n').filter(Boolean);
    for (const server of own.servers) {
      expect((await epochsOn(server)).filter((k) => k.startsWith(store.prefix))).toHaveLength(1);
    }
    expect(resets).toEqual([]);
    for (const server of own.servers) {
      await server.cli('FLUSHALL');
      const before = resets.length;
      // A get of every key: the ones on the flushed master come back missing, after the reset.
      const missing: string[] = [];
      for (const key of keys) if ((await store.get(key)) === undefined) missing.push(key);
      expect(missing.length).toBeGreaterThan(0);
      expect(resets.length).toBe(before + 1);
      for (const key of missing) await store.set(key, 'v');
    }
    // The watch (while something listens for reset) sees a master flushed alone — also while the store keeps
    // reading keys another master holds (a read looks at that master's epoch only).
    const ranges = (await client.call('CLUSTER', 'SLOTS')) as [number, number, [string, number]][];
    const portOf = async (key: string) => {
      const slot = Number(await client.call('CLUSTER', 'KEYSLOT', `${store.prefix}entry:${key}`));
      return ranges.find(([first, last]) => slot >= first && slot <= last)?.[2][1];
    };
    const server = own.servers[2] as PrivateRedis;
    const elsewhere: string[] = [];
    for (const key of keys) if ((await portOf(key)) !== server.port) elsewhere.push(key);
    await server.cli('FLUSHALL');
    const before = resets.length;
    const deadline = Date.now() + 3 * GENERATION_WATCH_MS;
    for (let i = 0; resets.length === before && Date.now() < deadline; i++) {
      await store.get(elsewhere[i % elsewhere.length] as string);
      await sleep(200);
    }
    expect(resets.length).toBe(before + 1);

    // A prefix with a hash tag of its own keeps every key on one master: its epoch is there too.
    const tagged = new RedisStore({ client, prefix: `{tw-${randomUUID()}}:`, timeout: 500 });
    const taggedResets: number[] = [];
    tagged.on('reset', () => taggedResets.push(Date.now()));
    try {
      for (const key of keys) await tagged.set(key, 'v');
      expect((await tagged.get('k0'))?.value).toBe('v');
      const holder = (
        await Promise.all(
          own.servers.map(async (s) => ((await epochsOn(s)).some((k) => k.startsWith(tagged.prefix)) ? s : undefined)),
        )
      ).filter(Boolean) as PrivateRedis[];
      expect(holder).toHaveLength(1);
      await holder[0]?.cli('FLUSHALL');
      expect(await tagged.get('k0')).toBeUndefined();
      expect(taggedResets).toHaveLength(1);
    } finally {
      await tagged.close();
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

describe.skipIf(skipWithout('redis-server', hasRedisServer))('RedisStore under ACLs and error replies', () => {
  it('an ACL user without INFO (+@all -@dangerous, a common hardening) uses the store; an emptied store is still a reset', async () => {
    const redis = await startPrivateRedis();
    await redis.cli('ACL', 'SETUSER', 'app', 'on', '>app-password', '~*', '&*', '+@all', '-@dangerous');
    const store = new RedisStore({ url: `redis://app:app-password@127.0.0.1:${redis.port}`, prefix: 'acl:' });
    onTestFinished(async () => {
      await store.close();
      await redis.close();
    });
    let resets = 0;
    store.on('reset', () => resets++);
    expect(await store.set('k', 'v')).toBeGreaterThan(0);
    expect((await store.get('k'))?.value).toBe('v');
    const lock = await store.lock('k', { ttlMs: 5_000, waitMs: 0 });
    expect(await lock?.renew?.()).toBe(true);
    await lock?.release();
    expect(resets).toBe(0);
    await redis.cli('FLUSHALL');
    expect(await store.get('k')).toBeUndefined();
    expect(resets).toBe(1);
  });

  it('error replies are said in words, never quoted: WRONGPASS (no password shown), NOPERM, READONLY (a replica)', async () => {
    const redis = await startPrivateRedis();
    await redis.cli('ACL', 'SETUSER', 'reader', 'on', '>reader-password', '~*', '&*', '+@all', '-eval', '-evalsha');
    const stores = [
      new RedisStore({ url: `redis://app:not-the-password@127.0.0.1:${redis.port}`, prefix: 'e:', timeout: 1000 }),
      new RedisStore({ url: `redis://reader:reader-password@127.0.0.1:${redis.port}`, prefix: 'e:' }),
      new RedisStore({ url: redis.url, prefix: 'e:' }),
    ] as const;
    onTestFinished(async () => {
      await Promise.all(stores.map((s) => s.close()));
      await redis.close();
    });
    const [wrong, noEval, master] = stores;
    const denied = await failure(wrong.set('k', 'v'));
    expect(denied).toMatchObject({
      code: 'ERR_STORE',
      message: expect.stringMatching(/\(WRONGPASS\): wrong user name or password/),
    });
    expect(String(denied?.message)).not.toContain('not-the-password');
    expect(await failure(noEval.set('k', 'v'))).toMatchObject({
      code: 'ERR_STORE',
      message: expect.stringMatching(/\(NOPERM\): the user's ACL refuses a command or key the store needs/),
    });
    await master.set('k', 'v');
    await redis.cli('REPLICAOF', '127.0.0.1', '1'); // a master that became a replica (of a server that is gone)
    const refused = await failure(master.set('k', 'w'));
    expect(refused).toMatchObject({
      code: 'ERR_STORE',
      message: expect.stringMatching(/\(READONLY\): the server is a read-only replica/),
    });
    expect(String(refused?.message)).not.toMatch(/script|You can't/);
  });
});

describe.skipIf(skipWithout('redis-server', hasRedisServer))('RedisStore on a Redis that evicts keys', () => {
  /** A private Redis of 4 MB (about 1.2 MB used when empty) that evicts with `policy` when full. */
  const evicting = (policy: string): Promise<PrivateRedis> =>
    startPrivateRedis({ args: ['--maxmemory', '4mb', '--maxmemory-policy', policy] });

  /**
   * Two stores on one evicting Redis (two processes of a fleet) and a client of the cache that shares it, all
   * closed when the test ends (passed or not).
   */
  const twoProcesses = async (policy: string) => {
    const redis = await evicting(policy);
    const prefix = `tw:${randomUUID()}:`;
    const a = new RedisStore({ url: redis.url, prefix });
    const b = new RedisStore({ url: redis.url, prefix });
    for (const store of [a, b]) store.on('eviction', () => undefined); // known: no process warning
    const cache = new Redis(redis.url);
    onTestFinished(async () => {
      cache.disconnect();
      await Promise.all([a.close(), b.close()]);
      await redis.close();
    });
    return { prefix, a, b, cache };
  };

  it('allkeys-lru under memory pressure evicts a held lock (a second holder takes it) and the newest entry', async () => {
    const { prefix, a, b, cache } = await twoProcesses('allkeys-lru');
    expect(await a.set('k', 'newest', { ttlMs: 60_000 })).toBeGreaterThan(0);
    const held = await a.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(held).toBeDefined();
    expect(await b.lock('k', { ttlMs: 30_000, waitMs: 0 })).toBeUndefined(); // exclusive, while it is there

    // The cache sharing the server writes; Redis makes room by evicting keys, ours among them.
    await fillUntilGone(cache, `${prefix}lock:k`, `${prefix}entry:k`);
    // The lease has 30 s to run, yet another process takes the lock: both would spend the refresh token.
    expect(await b.lock('k', { ttlMs: 30_000, waitMs: 0 })).toBeDefined();
    // And the newest state is gone: the fleet falls back to whatever older refresh token it has.
    expect(await a.get('k')).toBeUndefined();
    await held?.release();
  }, 30_000);

  it('noeviction: a full Redis keeps the lock and the entry, and refuses a new lock (ERR_STORE: nothing is spent)', async () => {
    const { prefix, a, b, cache } = await twoProcesses('noeviction');
    await a.set('k', 'newest', { ttlMs: 60_000 });
    const held = await a.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(held).toBeDefined();
    const value = 'x'.repeat(1024);
    let refused = false;
    for (let i = 0; i < 50_000 && !refused; i++)
      refused = await cache.set(`cache:${i}`, value).then(
        () => false,
        () => true,
      );
    expect(refused).toBe(true); // OOM: Redis refuses the cache's writes instead of evicting
    expect(await cache.exists(`${prefix}lock:k`, `${prefix}entry:k`)).toBe(2);
    // Another process cannot take the lock (it is refused, as every write is, with ERR_STORE): nothing is spent.
    await expect(b.lock('k', { ttlMs: 30_000, waitMs: 0 })).rejects.toMatchObject({ code: 'ERR_STORE' });
    expect((await b.get('k'))?.value).toBe('newest'); // reads are served
    await held?.release();
  }, 30_000);

  it.each(['allkeys-lru', 'volatile-lru'])(
    '%s is reported as eviction once, before the first command resolves, naming the policy and what to set',
    async (policy) => {
      const redis = await evicting(policy);
      const store = new RedisStore({ url: redis.url, prefix: `tw:${randomUUID()}:` });
      const seen: unknown[] = [];
      store.on('eviction', (event) => seen.push(event));
      const warnings = captureWarnings();
      try {
        await store.get('k');
        seen.push('get');
        expect(seen).toEqual([
          {
            policy,
            maxmemory: 4 * 1024 * 1024,
            message: expect.stringMatching(
              new RegExp(`maxmemory-policy is ${policy}.*set maxmemory-policy to noeviction`, 'i'),
            ),
          },
          'get',
        ]);
        // Once: not again per command, nor after a reconnection to the same server.
        await redis.cli('client', 'kill', 'type', 'normal');
        await retry(() => store.set('k', 'v'));
        await store.lock('k', { ttlMs: 1000, waitMs: 0 });
        expect(seen).toHaveLength(2);
        expect(warnings()).toEqual([]); // somebody listens: no process warning
      } finally {
        warnings.stop();
        await store.close();
        await redis.close();
      }
    },
    30_000,
  );

  it('with nobody listening, the report is a process warning (TOKENWARDEN_REDIS_EVICTION)', async () => {
    const redis = await evicting('allkeys-lfu');
    const store = new RedisStore({ url: redis.url, prefix: `tw:${randomUUID()}:` });
    const warnings = captureWarnings();
    try {
      await store.get('k');
      await store.get('k');
      await sleep(20); // warnings are emitted on the next tick
      expect(warnings()).toEqual([
        expect.objectContaining({ name: 'TokenwardenWarning', code: 'TOKENWARDEN_REDIS_EVICTION' }),
      ]);
      expect(warnings()[0]?.message).toMatch(/allkeys-lfu.*noeviction/);
    } finally {
      warnings.stop();
      await store.close();
      await redis.close();
    }
  }, 30_000);

  it('noeviction, and an eviction policy without maxmemory (no limit), are not reported', async () => {
    const servers = [
      await evicting('noeviction'),
      await startPrivateRedis({ args: ['--maxmemory', '0', '--maxmemory-policy', 'allkeys-lru'] }),
    ];
    const warnings = captureWarnings();
    try {
      for (const redis of servers) {
        const store = new RedisStore({ url: redis.url, prefix: `tw:${randomUUID()}:` });
        const seen: unknown[] = [];
        store.on('eviction', (event) => seen.push(event));
        await store.set('k', 'v');
        await store.get('k');
        expect(seen).toEqual([]);
        await store.close();
      }
      await sleep(20);
      expect(warnings()).toEqual([]);
    } finally {
      warnings.stop();
      await Promise.all(servers.map((s) => s.close()));
    }
  }, 30_000);

  it('on a Redis Cluster every master is checked: the one master that evicts is reported, by its address', async () => {
    const { own, store } = await clusterStore();
    const evictingMaster = own.servers[1] as PrivateRedis;
    await evictingMaster.cli('config', 'set', 'maxmemory', '1gb');
    await evictingMaster.cli('config', 'set', 'maxmemory-policy', 'volatile-ttl');
    const seen: unknown[] = [];
    store.on('eviction', (event) => seen.push(event));
    await store.get('k');
    expect(seen).toEqual([
      {
        node: `127.0.0.1:${evictingMaster.port}`,
        policy: 'volatile-ttl',
        maxmemory: 1024 ** 3,
        message: expect.stringContaining(`master 127.0.0.1:${evictingMaster.port}`),
      },
    ]);
  }, 60_000);

  it('a lock evicted while a refresh is under way is seen before the spend: no refresh, ERR_STORE, the new holder undisturbed', async () => {
    const { prefix, a, b, cache } = await twoProcesses('allkeys-lru');
    const clock = new ManualClock();
    const source = new ScriptedSource(clock);
    source.exclusive = true; // a rotating refresh token: spent only under the lock
    const manager = new TokenManager({ source, store: a, clock });
    const storeErrors: string[] = [];
    manager.on('storeError', ({ operation, error }) => storeErrors.push(`${operation} ${error.code}`));
    const lockKey = `${prefix}lock:${manager.key}`;
    try {
      // Nothing stored: the manager takes the lock, announces its spend and lets the fleet settle (1.5 s).
      const refresh = manager.getToken();
      refresh.catch(() => undefined);
      for (let i = 0; i < 200 && (await cache.exists(`${prefix}entry:${manager.key}`)) === 0; i++) await sleep(10);
      expect(await cache.exists(lockKey)).toBe(1);
      // Meanwhile the cache fills Redis, which evicts the lock; another process takes it.
      await fillUntilGone(cache, lockKey);
      const other = await b.lock(manager.key, { ttlMs: 30_000, waitMs: 0 });
      expect(other).toBeDefined();
      const owner = await cache.get(lockKey);

      await clock.advance(SETTLE_MS);
      await expect(refresh).rejects.toMatchObject({
        code: 'ERR_STORE',
        message: expect.stringMatching(/lock was lost/),
      });
      expect(source.calls).toHaveLength(0); // the refresh token was not spent
      expect(storeErrors).toEqual(['lock ERR_STORE']);
      expect(await cache.get(lockKey)).toBe(owner); // the other process still holds its lock
      await other?.release();
    } finally {
      await manager.close();
    }
  }, 30_000);

  it('lock.renew() is true and restarts the lease while the lock is ours; false once it is gone or released', async () => {
    const redis = await evicting('noeviction');
    const prefix = `tw:${randomUUID()}:`;
    const store = new RedisStore({ url: redis.url, prefix });
    const cache = new Redis(redis.url);
    try {
      const lock = await store.lock('k', { ttlMs: 5_000, waitMs: 0 });
      await cache.pexpire(`${prefix}lock:k`, 1_000);
      expect(await lock?.renew?.()).toBe(true);
      expect(await cache.pttl(`${prefix}lock:k`)).toBeGreaterThan(4_000);
      await cache.del(`${prefix}lock:k`);
      expect(await lock?.renew?.()).toBe(false);
      const again = await store.lock('k', { ttlMs: 5_000, waitMs: 0 });
      await again?.release();
      expect(await again?.renew?.()).toBe(false);
    } finally {
      cache.disconnect();
      await store.close();
      await redis.close();
    }
  }, 30_000);
});

/**
 * Writes 1 KB keys into the evicting Redis (batches of 500, at most 100 batches: 50 MB against a 4 MB limit)
 * until every one of `keys` has been evicted. Which keys Redis evicts is sampled, not strictly the oldest, so
 * the loop stops on the outcome rather than on an amount.
 */
async function fillUntilGone(cache: Redis, ...keys: string[]): Promise<void> {
  const value = 'x'.repeat(1024);
  for (let batch = 0; batch < 100; batch++) {
    if ((await cache.exists(...keys)) === 0) return;
    const pipeline = cache.pipeline();
    for (let i = 0; i < 500; i++) pipeline.set(`cache:${batch}:${i}`, value);
    await pipeline.exec();
  }
  throw new Error(`Redis did not evict ${keys.join(', ')}`);
}

describe('RedisStore on a client of yours', () => {
  it('a Sentinel client without failoverDetector: a process warning (TOKENWARDEN_REDIS_SENTINEL), once per client; with it, none', async () => {
    const sentinels = [{ host: '127.0.0.1', port: 1 }];
    const bare = new Redis({ sentinels, name: 'm', lazyConnect: true });
    const detecting = new Redis({ sentinels, name: 'm', lazyConnect: true, failoverDetector: true });
    const single = new Redis({ port: 1, lazyConnect: true });
    const warnings = await storeWarnings([bare, bare, detecting, single]);
    expect(warnings).toEqual([
      expect.objectContaining({ name: 'TokenwardenWarning', code: 'TOKENWARDEN_REDIS_SENTINEL' }),
    ]);
    expect(warnings[0]?.message).toMatch(/failoverDetector: true/);
  });

  it('a Sentinel client given tls without enableTLSForSentinelMode (ioredis would reach the master in the clear): a process warning (TOKENWARDEN_REDIS_SENTINEL_TLS), once per client; with it, none', async () => {
    const base = { sentinels: [{ host: '127.0.0.1', port: 1 }], name: 'm', lazyConnect: true, failoverDetector: true };
    const plain = new Redis({ ...base, tls: {} });
    const warnings = await storeWarnings([
      plain,
      plain,
      new Redis({ ...base, tls: {}, enableTLSForSentinelMode: true }),
      new Redis({ ...base, sentinelTLS: {} }),
      new Redis({ port: 1, lazyConnect: true, tls: {} }),
    ]);
    expect(warnings).toEqual([
      expect.objectContaining({ name: 'TokenwardenWarning', code: 'TOKENWARDEN_REDIS_SENTINEL_TLS' }),
    ]);
    expect(warnings[0]?.message).toMatch(/enableTLSForSentinelMode: true/);
  });

  it("listens to the client's errors from construction until close(), and no longer (ioredis prints them again then)", async () => {
    const client = new Cluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true });
    onTestFinished(() => client.disconnect());
    const before = client.listenerCount('error');
    const store = new RedisStore({ client });
    expect(client.listenerCount('error')).toBe(before + 1);
    await store.close();
    expect(client.listenerCount('error')).toBe(before);
  });
});

describe.skipIf(skipWithout('redis-server', hasRedisServer))('RedisStore on a Cluster client of yours', () => {
  it('pointed at a server not in cluster mode: ERR_STORE saying so (ioredis says only "Failed to refresh slots cache"), on the first call and while the client reconnects', async () => {
    const single = await startPrivateRedis();
    onTestFinished(() => single.close());
    for (const waitForRetry of [false, true]) {
      const client = new Cluster([{ host: '127.0.0.1', port: single.port }]);
      onTestFinished(() => client.disconnect());
      const store = new RedisStore({ client, timeout: '5s' });
      if (waitForRetry) await until(() => client.status === 'reconnecting');
      const err = await failure(store.get('k'));
      expect(err).toMatchObject({
        code: 'ERR_STORE',
        message: expect.stringMatching(
          /no cluster node gave the slot table; .*not in cluster mode \(cluster-enabled no\)/,
        ),
      });
      await store.close();
    }
  });

  it("startup nodes given as ioredis takes them (a port, 'host:port', redis:// URLs with a user and password of their own): asked again the same way, the node's own password before redisOptions", async () => {
    const single = await startPrivateRedis();
    onTestFinished(() => single.close());
    await single.cli('CONFIG', 'SET', 'requirepass', 'node-own-secret');
    const { port } = single;
    for (const node of [
      port,
      String(port),
      `127.0.0.1:${port}`,
      `redis://:node-own-secret@127.0.0.1:${port}`,
      `redis://default:node-own-secret@127.0.0.1:${port}/0?family=4`,
      { port, password: 'node-own-secret' },
    ]) {
      // The client's own password is wrong: only a node that carries the right one gets to CLUSTER SLOTS.
      const client = new Cluster([node], { redisOptions: { password: 'not-it' } });
      onTestFinished(() => client.disconnect());
      const store = new RedisStore({ client, timeout: '5s' });
      const err = await failure(store.get('k'));
      const own = typeof node === 'object' || String(node).includes('@');
      expect({ node: typeof node === 'string' ? node.replace(/:[^:@/]+@/, ':…@') : node, err }).toMatchObject({
        err: {
          code: 'ERR_STORE',
          message: expect.stringMatching(
            own
              ? /no cluster node gave the slot table; .*not in cluster mode \(cluster-enabled no\)/
              : /no cluster node gave the slot table; a cluster node answered \((WRONGPASS|ERR)\)/,
          ),
        },
      });
      expect((err as Error).message).not.toMatch(/secret|not-it|127\.0\.0\.1/);
      await store.close();
    }
  });

  it("takes its listeners off a Cluster client of yours (and off the client's nodes) at close(): a store made and closed per task leaves the client as it found it", async () => {
    const client = await clusterClient();
    await until(() => client.status === 'ready');
    const events = ['error', 'ready', '+node', '-node', 'refresh'] as const;
    const counts = (): Record<string, number> => ({
      ...Object.fromEntries(events.map((e) => [e, client.listenerCount(e)])),
      close: client.nodes('all').reduce((n, node) => n + node.listenerCount('close'), 0),
    });
    const before = counts();
    for (let i = 0; i < 3; i++) {
      const store = new RedisStore({ client, prefix: `tw:${randomUUID()}:` });
      await store.set('k', 'v');
      expect(counts().ready).toBeGreaterThan(before.ready ?? 0);
      expect(counts().close).toBeGreaterThan(before.close ?? 0);
      await store.close();
      expect(counts()).toEqual(before);
    }
  });
});

describe.skipIf(skipWithout('redis-server', hasRedisServer))(
  'RedisStore through Redis Sentinel: faults ioredis leaves to us',
  () => {
    it('a failover announced while a reconnection asks a sentinel for the master (ioredis ends that connection for good): the store connects again', async () => {
      const set = await startSentinelSet();
      const proxy = await startTcpProxy(set.sentinels[0]?.port ?? 0); // a sentinel that can stop answering newcomers
      const sentinels = [{ host: '127.0.0.1', port: proxy.port }];
      const prefix = `tw:${randomUUID()}:`;
      const store = new RedisStore({ sentinels, name: set.name, prefix, timeout: 500 });
      // The same client as the store's, bare: it shows the fault happened (its status stays `end`).
      const bare = new Redis({ sentinels, name: set.name, failoverDetector: true, retryStrategy: () => 50 });
      bare.on('error', () => undefined);
      onTestFinished(async () => {
        bare.disconnect();
        await store.close();
        await proxy.close();
        await set.close();
      });
      const other = new RedisStore({ sentinels: set.sentinels, name: set.name, prefix, timeout: 500 });
      onTestFinished(() => other.close());
      // A lock wait: the store subscribes to lock releases, on a connection of its own.
      const contended = async (): Promise<void> => {
        const lock = await other.lock('l', { ttlMs: 5000, waitMs: 0 });
        expect(await store.lock('l', { ttlMs: 5000, waitMs: 100 })).toBeUndefined();
        await lock?.release();
      };
      const listening = async (server: PrivateRedis): Promise<number> =>
        (await server.cli('CLIENT', 'LIST'))
          .split('\n')
          .filter((line) => / sub=[1-9]/.test(line) && !/ name=sentinel-/.test(line)).length; // not the sentinel's own
      await store.set('k', 'v1');
      await contended();
      expect(await listening(set.master)).toBe(1);
      await bare.ping();
      // Both failover detectors subscribed (through the proxy) to +switch-master.
      const subscribed = async (): Promise<number> =>
        (await sentinelCli(set, 'CLIENT', 'LIST')).split('\n').filter((line) => / sub=[1-9]/.test(line)).length;
      await until(async () => (await subscribed()) >= 2);

      // A reconnection (the master closed the connections) asks the sentinel for the master and gets no answer
      // yet; meanwhile the sentinel fails over, and announces it (+switch-master) to both failover detectors.
      proxy.hold();
      await set.master.cli('CLIENT', 'KILL', 'TYPE', 'normal');
      await set.master.cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
      await until(() => proxy.held() >= 3);
      await set.failover();
      await until(() => proxy.flowing() === 0); // each failover detector heard it and let go of the sentinel
      proxy.release();
      await until(() => bare.status === 'end');

      // ioredis left its connection ended; the store opens it again at its next operation.
      await until(async () => (await store.get('k').catch(() => undefined))?.value === 'v1', 3000);
      await store.set('k', 'v2');
      expect(await set.replica.cli('HGET', `${prefix}entry:k`, 'value')).toBe('v2'); // the new master
      expect(bare.status).toBe('end');
      // Its subscriber to lock releases, ended the same way, is opened again at the next wait.
      await contended();
      expect(await listening(set.replica)).toBe(1);
    }, 30_000);

    it('the first sentinel listed accepts connections and answers nothing (frozen): the store asks the next one within its time limit', async () => {
      const set = await startSentinelSet();
      const proxy = await startTcpProxy(set.sentinels[0]?.port ?? 0); // a sentinel that can stop answering newcomers
      proxy.hold();
      const store = new RedisStore({
        sentinels: [{ host: '127.0.0.1', port: proxy.port }, ...set.sentinels],
        name: set.name,
        prefix: `tw:${randomUUID()}:`,
        timeout: 500,
      });
      onTestFinished(async () => {
        await store.close();
        await proxy.close();
        await set.close();
      });
      // The first connection asks the frozen sentinel, gives up on it after 500 ms, and asks the next one
      // (without a time limit on that question it waits for ever, and this never holds).
      await until(async () =>
        store.set('k', 'v').then(
          () => true,
          () => false,
        ),
      );
      expect(await set.master.cli('--scan', '--pattern', '*entry:k')).toMatch(/entry:k/);
      expect(proxy.held()).toBeGreaterThanOrEqual(1);
    }, 30_000);
  },
);

/** `redis-cli` on the set's sentinel. */
async function sentinelCli(set: PrivateSentinelSet, ...args: string[]): Promise<string> {
  const { stdout } = await execFile('redis-cli', ['-p', String(set.sentinels[0]?.port), ...args]);
  return stdout.trim();
}

/**
 * The process warnings emitted while a RedisStore is made on each of `clients` (a client listed twice gets two
 * stores); the stores closed and the clients disconnected after.
 */
async function storeWarnings(clients: Redis[]): Promise<(Error & { code?: string })[]> {
  const warnings = captureWarnings();
  try {
    const stores = clients.map((client) => new RedisStore({ client }));
    await sleep(20); // warnings are emitted on the next tick
    await Promise.all(stores.map((s) => s.close()));
    return warnings();
  } finally {
    warnings.stop();
    for (const client of new Set(clients)) client.disconnect();
  }
}

/** Collects the process warnings emitted from now on, until `stop()`. */
function captureWarnings(): (() => (Error & { code?: string })[]) & { stop(): void } {
  const warnings: (Error & { code?: string })[] = [];
  const onWarning = (w: Error): void => {
    if (w.name !== 'MaxListenersExceededWarning') warnings.push(w);
  };
  process.on('warning', onWarning);
  return Object.assign(() => warnings, { stop: () => void process.off('warning', onWarning) });
}

/**
 * A private Redis Cluster of 3 masters (and `replicas` replicas of each), and a RedisStore on an ioredis Cluster
 * client of the test's own (the store never closes a client it was given): all closed when the test ends.
 */
/** Two stores (300 ms time limit) on one private Redis, as two processes of a fleet; stopped after the test. */
async function twoStores(
  options: { persist?: boolean } = {},
): Promise<{ redis: PrivateRedis; a: RedisStore; b: RedisStore }> {
  const redis = await startPrivateRedis(options);
  const prefix = `tw:${randomUUID()}:`;
  const a = new RedisStore({ url: redis.url, prefix, timeout: 300 });
  const b = new RedisStore({ url: redis.url, prefix, timeout: 300 });
  onTestFinished(async () => {
    await a.close();
    await b.close();
    await redis.close();
  });
  return { redis, a, b };
}

async function clusterStore(
  options: { replicas?: number; timeout?: number; lateEvents?: boolean } = {},
): Promise<{ own: PrivateRedisCluster; client: Cluster; store: RedisStore }> {
  const own = await startRedisCluster(3, options.replicas ?? 0);
  const client = new Redis.Cluster(own.nodes);
  const store = new RedisStore({ client, prefix: `tw:${randomUUID()}:`, timeout: options.timeout ?? 500 });
  onTestFinished(async () => {
    await store.close();
    client.disconnect();
    await own.close();
  });
  if (options.lateEvents === true) {
    // ioredis tells of a node joining, leaving or changing roles only after the commands that met the change:
    // the store (its listeners, added at its first command) hears of it 5 s late.
    const late =
      (listener: (...args: unknown[]) => unknown) =>
      (...args: unknown[]): void =>
        void setTimeout(() => listener(...args), 5_000).unref();
    const events = ['+node', '-node', 'refresh'] as const;
    const before = new Map(events.map((event) => [event, client.listeners(event)]));
    await store.get('first');
    for (const event of events) {
      for (const listener of client.listeners(event) as ((...args: unknown[]) => unknown)[]) {
        if (before.get(event)?.includes(listener)) continue;
        client.off(event, listener);
        client.on(event, late(listener));
        // The store's listener for a node that leaves also listens for each node's connection closing.
        for (const node of client.nodes('all')) {
          if (!node.listeners('close').includes(listener)) continue;
          node.off('close', listener);
          node.on('close', late(listener));
        }
      }
    }
  }
  return { own, client, store };
}

/**
 * A store on a private cluster of 3 masters with a replica each, holding `k` = `v1`, which the replica of its
 * master has received; `events` records each `reset`.
 */
async function clusterWithEntry(options: { lateEvents?: boolean } = {}): Promise<{
  store: RedisStore;
  events: string[];
  master: PrivateRedis;
  replica: PrivateRedis;
}> {
  const { own, store } = await clusterStore({ replicas: 1, ...options });
  const events: string[] = [];
  store.on('reset', () => events.push('reset'));
  await store.set('k', 'v1');
  const { master, replicas } = await own.slotOwners(calculateSlot(`${store.prefix}entry:k`));
  const replica = replicas[0]!;
  await replicated(master, replica); // (these tests are about the reset, not a write lost on the way)
  return { store, events, master, replica };
}

/**
 * An operator's `CLUSTER FAILOVER` on `replica`: resolves once it is the master and `master` knows it is not
 * (at most 20 s). The old master learns of its demotion by gossip, after the replica took over: until then (up to
 * ~40 ms here, measured) it still answers reads of the slot itself — with the same data, as a manual failover
 * waits for the replica to catch up, so no reset is due — and a test about the first answer from the new master
 * would be reading the old one.
 */
async function failOver(replica: PrivateRedis, master: PrivateRedis): Promise<void> {
  await replica.cli('CLUSTER', 'FAILOVER');
  const until = Date.now() + 20_000;
  while (!(await replica.cli('role')).startsWith('master') || !(await master.cli('role')).startsWith('slave')) {
    if (Date.now() > until) throw new Error('the replica did not take over');
    await sleep(50);
  }
}

/** Resolves once `replica` has processed everything `master` has written so far (their replication offsets). */
async function replicated(master: PrivateRedis, replica: PrivateRedis): Promise<void> {
  const offset = async (server: PrivateRedis) =>
    Number(/master_repl_offset:(\d+)/.exec(await server.cli('INFO', 'replication'))?.[1] ?? NaN);
  const target = await offset(master);
  const deadline = Date.now() + 10_000;
  while (!((await offset(replica)) >= target)) {
    if (Date.now() > deadline) throw new Error('the replica did not catch up');
    await sleep(20);
  }
}

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
