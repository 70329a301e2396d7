/**
 * RedisStore on servers configured as operators configure them, beyond redis-faults.test.ts and
 * redis-ops-faults.test.ts: an `INFO` whose `maxmemory_policy` is no policy name (a proxy's or a hostile server's
 * text), a connection the server closed (idle `timeout`, `CLIENT KILL`), EVAL/EVALSHA disabled by
 * `rename-command`, SUBSCRIBE refused by an ACL (Redis 7's default for a new user), `min-replicas-to-write`
 * refusing writes (NOREPLICAS), a busy Lua script of someone else's (BUSY) ended by `SCRIPT KILL`, `FLUSHALL ASYNC`
 * under a held lock, the lock subscriber disconnected (`CLIENT KILL TYPE pubsub`), and every client killed at
 * random moments while a fleet refreshes. Each on a private Redis (never the shared one); the fleet case on a real
 * authorization server with single-use rotating refresh tokens.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { systemClock } from '../../src/clock.js';
import type { Duration } from '../../src/duration.js';
import { TokenManager } from '../../src/index.js';
import { RedisStore } from '../../src/redis.js';
import type { StoreEvents } from '../../src/stores/store.js';
import { appRefreshToken } from '../support/app-client.js';
import { ScriptedSource } from '../support/scripted-source.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { crashes, failure } from '../support/crashes.js';
import { startTcpProxy } from '../support/tcp-proxy.js';
import {
  type PrivateRedis,
  freePort,
  hasRedisServer,
  skipWithout,
  sleep,
  startPrivateRedis,
} from '../support/private-servers.js';

let redis: PrivateRedis;

/** Process warnings while the test runs (other than Node's own listener-count ones). */
function captureWarnings(): (Error & { code?: string })[] {
  const warnings: (Error & { code?: string })[] = [];
  const onWarning = (w: Error): void => {
    if (w.name !== 'MaxListenersExceededWarning') warnings.push(w);
  };
  process.on('warning', onWarning);
  onTestFinished(() => void process.off('warning', onWarning));
  return warnings;
}

/** A store on `url`, closed when the test ends. */
function storeOn(url: string, prefix = `cfg-${randomUUID()}:`, timeout: Duration = '500ms'): RedisStore {
  const store = new RedisStore({ url, prefix, timeout });
  onTestFinished(() => store.close());
  return store;
}

describe.skipIf(skipWithout('redis-server', hasRedisServer))('RedisStore on a configured server', () => {
  beforeAll(async () => {
    redis = await startPrivateRedis();
  });
  afterAll(async () => {
    await redis?.close();
  });

  describe('INFO memory as a proxy or a hostile server may answer it', () => {
    /**
     * A store on a real client whose `INFO memory` answers `memory` (what a proxy in between, or a server that
     * is not Redis, may say); every other command goes to the private Redis.
     */
    function storeSeeing(memory: string): { store: RedisStore; seen: StoreEvents['eviction'][0][] } {
      const client = new Redis(redis.url, { lazyConnect: true });
      const call = client.call.bind(client) as (command: string, ...args: (string | number)[]) => Promise<unknown>;
      (client as unknown as { call: typeof call }).call = (command, ...args) =>
        command === 'INFO' && args[0] === 'memory' ? Promise.resolve(memory) : call(command, ...args);
      const store = new RedisStore({ client, prefix: `info-${randomUUID()}:` });
      onTestFinished(async () => {
        await store.close();
        client.disconnect();
      });
      const seen: StoreEvents['eviction'][0][] = [];
      store.on('eviction', (event) => seen.push(event));
      return { store, seen };
    }
    const memoryInfo = (policy: string, maxmemory = '1048576'): string =>
      `# Memory\r\nused_memory:1000\r\nmaxmemory:${maxmemory}\r\nmaxmemory_policy:${policy}\r\n`;

    it('a maxmemory_policy that is no policy name is unknown: in no event, no process warning', async () => {
      const warnings = captureWarnings();
      for (const policy of [
        'allkeys-lru; see https://evil.example/?q=<script>',
        'allkeys-lru \u001b[31mset maxmemory-policy to allkeys-random',
        `allkeys-${'l'.repeat(40)}`,
        'ALLKEYS-LRU',
        '-lru',
        'allkeys_lru',
      ]) {
        const { store, seen } = storeSeeing(memoryInfo(policy));
        await store.get('k');
        await store.set('k', 'v');
        expect(seen, policy).toEqual([]);
      }
      await sleep(20); // warnings are emitted on the next tick
      expect(warnings).toEqual([]);
    });

    it('a policy-shaped word is reported (the same path, as a control); a byte count of more than 20 digits is unknown', async () => {
      const warnings = captureWarnings();
      const { store, seen } = storeSeeing(memoryInfo('allkeys-lru', '9'.repeat(400)));
      await store.get('k');
      expect(seen).toEqual([
        { policy: 'allkeys-lru', maxmemory: undefined, message: expect.stringContaining('with a memory limit') },
      ]);
      expect(seen[0]?.message).not.toMatch(/Infinity|9{21}/);
      const other = storeSeeing(memoryInfo('volatile-ttl', '1048576'));
      await other.store.get('k');
      expect(other.seen).toEqual([
        { policy: 'volatile-ttl', maxmemory: 1048576, message: expect.stringContaining('maxmemory 1048576 bytes') },
      ]);
      expect(warnings).toEqual([]); // somebody listens
    });
  });

  it('a connection the server closed (idle timeout, CLIENT KILL): the next operation waits for the reconnection, bounded, instead of failing', async () => {
    const client = new Redis(redis.url, { enableOfflineQueue: false, retryStrategy: () => 100 });
    onTestFinished(() => void client.disconnect());
    const store = new RedisStore({ client, prefix: `closed-${randomUUID()}:`, timeout: '2s' });
    onTestFinished(() => store.close());
    await store.set('k', 'v');
    for (let round = 0; round < 3; round++) {
      const reconnecting = once(client, 'reconnecting');
      await redis.cli('CLIENT', 'KILL', 'TYPE', 'normal');
      await reconnecting; // closed; the next attempt is 100 ms away
      expect(client.status).toBe('reconnecting');
      expect((await store.get('k'))?.value).toBe('v');
      expect(await store.set('k', 'v')).toBeGreaterThan(0);
    }
    // Nothing listens any more: it fails at the next failed attempt (ERR_STORE), not at the time limit (which
    // would be ERR_STORE_TIMEOUT, after 10 s).
    const port = redis.port;
    const down = new Redis(`redis://127.0.0.1:${await freePort()}`, {
      enableOfflineQueue: false,
      retryStrategy: () => 100,
      lazyConnect: true,
    });
    onTestFinished(() => void down.disconnect());
    const nowhere = new RedisStore({ client: down, prefix: `closed-${port}:`, timeout: '10s' });
    onTestFinished(() => nowhere.close());
    for (let i = 0; i < 3; i++) expect(await failure(nowhere.get('k'))).toMatchObject({ code: 'ERR_STORE' });
  });

  it('EVAL and EVALSHA disabled (rename-command): ERR_STORE at once saying what the store needs, nothing written, no crash', async () => {
    const seen = crashes();
    const locked = await startPrivateRedis({
      args: ['--rename-command', 'EVALSHA', '', '--rename-command', 'EVAL', ''],
    });
    onTestFinished(() => locked.close());
    const store = storeOn(locked.url);
    const source = new ScriptedSource(systemClock);
    source.exclusive = true; // a rotating refresh token: spent only under the lock
    const manager = new TokenManager({ source, store });
    onTestFinished(() => manager.close());
    for (const call of [
      () => store.get('k'),
      () => store.set('k', 'v'),
      () => store.lock('k', { ttlMs: 5_000, waitMs: 0 }),
      () => manager.getToken(),
    ]) {
      const err = await failure(call());
      expect(err?.code).toBe('ERR_STORE');
      expect(err?.message).toMatch(/\(unknown command\): .*rename-command.*EVAL, EVALSHA/);
    }
    expect(source.calls).toHaveLength(0); // nothing spent
    expect(await locked.cli('DBSIZE')).toBe('0'); // no lock taken, no entry written
    expect(seen).toEqual([]);
  });

  it('SUBSCRIBE refused (an ACL user without channels, Redis 7 default): contended locks are served by polling, without a connection each', async () => {
    const prefix = `nosub-${randomUUID()}:`;
    const user = `u${randomUUID().slice(0, 8)}`;
    await redis.cli('ACL', 'SETUSER', user, 'reset', 'on', '>nosub-pw', `~${prefix}*`, 'resetchannels', '+@all');
    await redis.cli('ACL', 'LOG', 'RESET');
    const url = `redis://${user}:nosub-pw@127.0.0.1:${redis.port}`;
    const [x, y] = [storeOn(url, prefix), storeOn(url, prefix)];
    await Promise.all([x.get('k'), y.get('k')]); // connected
    const connections = async (): Promise<number> =>
      Number(/total_connections_received:(\d+)/.exec(await redis.cli('INFO', 'stats'))?.[1]);
    const before = await connections();
    for (let round = 0; round < 5; round++) {
      const held = await x.lock('k', { ttlMs: 30_000, waitMs: 0 });
      const waiting = y.lock('k', { ttlMs: 30_000, waitMs: 5_000 });
      await sleep(20);
      await held!.release();
      const next = await waiting;
      expect(next).toBeDefined(); // found free by polling
      await next!.release();
    }
    // One subscriber connection tried (and refused), not one per contended lock (the other one counted is
    // redis-cli's, asking).
    expect((await connections()) - before).toBeLessThanOrEqual(2);
    // Nor an ACL LOG entry each (the refused PUBLISH of each release is logged apart, context `lua`).
    const admin = new Redis(redis.url);
    onTestFinished(() => void admin.disconnect());
    const log = ((await admin.call('ACL', 'LOG')) as unknown[][]).map((entry) => {
      const fields = new Map<unknown, unknown>();
      for (let i = 0; i + 1 < entry.length; i += 2) fields.set(entry[i], entry[i + 1]);
      return fields;
    });
    const subscribes = log.filter((e) => e.get('context') === 'toplevel' && e.get('object') === `${prefix}unlock`);
    expect(subscribes.reduce((n, e) => n + Number(e.get('count')), 0)).toBeLessThanOrEqual(1);
  });

  it('writes refused for want of replicas (min-replicas-to-write): ERR_STORE said in words', async () => {
    const primary = await startPrivateRedis();
    onTestFinished(() => primary.close());
    const store = storeOn(primary.url);
    await store.set('k', 'v');
    await primary.cli('CONFIG', 'SET', 'min-replicas-to-write', '1');
    const err = await failure(store.set('k', 'v2'));
    expect(err).toMatchObject({
      code: 'ERR_STORE',
      message: expect.stringMatching(/\(NOREPLICAS\): .*min-replicas-to-write/),
    });
    expect((await store.get('k'))?.value).toBe('v'); // reads go on
  });

  it('a busy Lua script of someone else (BUSY), then SCRIPT KILL: bounded failures in words meanwhile; a lock tried meanwhile does not stay held', async () => {
    const busy = await startPrivateRedis({ args: ['--busy-reply-threshold', '100'] });
    onTestFinished(() => busy.close());
    const prefix = `busy-${randomUUID()}:`;
    const [a, b] = [storeOn(busy.url, prefix, '300ms'), storeOn(busy.url, prefix, '300ms')];
    await Promise.all([a.get('k'), b.get('k')]); // connected
    const script: ChildProcess = spawn('redis-cli', ['-p', String(busy.port), 'EVAL', 'while true do end', '0'], {
      stdio: 'ignore',
    });
    onTestFinished(() => void script.kill());
    await sleep(300); // past the threshold: the server answers BUSY
    for (const call of [() => a.get('k'), () => a.set('k', 'v'), () => a.lock('k', { ttlMs: 30_000, waitMs: 0 })]) {
      const err = await failure(call());
      expect(['ERR_STORE', 'ERR_STORE_TIMEOUT']).toContain(err?.code);
      if (err?.code === 'ERR_STORE') expect(err.message).toMatch(/\(BUSY\): the server is busy running a script/);
    }
    expect(await busy.cli('SCRIPT', 'KILL')).toBe('OK');
    // The script stops at its next check of the kill flag: a command that arrives before that still gets BUSY
    // (the server's answer, not the store's; a clean-clone CI run met it once). Wait until the server answers.
    for (let i = 0; i < 100 && (await busy.cli('PING').catch(() => '')) !== 'PONG'; i++) await sleep(20);
    // The lock command may have run; if so its release was queued behind it: the lock is free, not held 30 s.
    const next = await b.lock('k', { ttlMs: 30_000, waitMs: 5_000 });
    expect(next).toBeDefined();
    await next?.release();
    expect(await a.set('k', 'v')).toBeGreaterThan(0);
  });

  it('FLUSHALL ASYNC (lazyfree) under a held lock: the holder learns it lost the lock before any spend; everyone hears reset', async () => {
    const prefix = `flush-${randomUUID()}:`;
    const [x, y] = [storeOn(redis.url, prefix), storeOn(redis.url, prefix)];
    const resets = { x: 0, y: 0 };
    x.on('reset', () => resets.x++);
    y.on('reset', () => resets.y++);
    await Promise.all([x.set('k', 'v'), y.get('k')]);
    const held = await x.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(held).toBeDefined();
    await redis.cli('FLUSHALL', 'ASYNC');
    expect(await y.get('k')).toBeUndefined();
    expect(resets.y).toBe(1); // the epoch went with the data
    const other = await y.lock('k', { ttlMs: 30_000, waitMs: 0 });
    expect(other).toBeDefined();
    expect(await held!.renew!()).toBe(false); // the check right before a spend: not ours any more
    await held!.release(); // leaves the new holder's lock alone
    expect(await y.lock('k', { ttlMs: 30_000, waitMs: 0 })).toBeUndefined();
    await x.get('k');
    expect(resets.x).toBe(1);
    await other!.release();
  });

  it('the lock subscriber disconnected again and again (CLIENT KILL TYPE pubsub): every waiter still gets the lock within its wait, and it subscribes again', async () => {
    const seen = crashes();
    const prefix = `sub-${randomUUID()}:`;
    const [x, y] = [storeOn(redis.url, prefix), storeOn(redis.url, prefix)];
    let killing = true;
    const killer = (async () => {
      while (killing) {
        await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
        await sleep(20 + Math.random() * 60);
      }
    })();
    try {
      for (let round = 0; round < 6; round++) {
        const held = await x.lock('k', { ttlMs: 30_000, waitMs: 5_000 });
        expect(held).toBeDefined();
        const waiting = y.lock('k', { ttlMs: 30_000, waitMs: 5_000 });
        await sleep(30 + Math.random() * 50);
        await held!.release();
        const next = await waiting;
        expect(next, `round ${round}`).toBeDefined(); // woken, by a message or by polling, within its wait
        await next!.release();
      }
    } finally {
      killing = false;
      await killer;
    }
    // Left alone, the subscriber connects and subscribes again.
    let subscribers = 0;
    for (let i = 0; i < 100 && subscribers === 0; i++) {
      subscribers = Number(/pubsub_channels:(\d+)/.exec(await redis.cli('INFO', 'stats'))?.[1] ?? 0);
      if (subscribers === 0) await sleep(20);
    }
    expect(subscribers).toBeGreaterThan(0);
    expect(seen).toEqual([]);
  });

  it('the lock subscriber reconnects and its re-subscription is slow (longer than the store timeout): no unhandled rejection', async () => {
    // ioredis re-subscribes by itself on reconnection, and nobody awaits that SUBSCRIBE: with the connection's
    // commandTimeout it rejected with "Command timed out" as an unhandled rejection (a crash under Node's default
    // --unhandled-rejections=throw). Seen once as a flake of the random-kill test below; made certain here by a
    // proxy that holds SUBSCRIBE back for a second.
    const seen = crashes();
    let hold = false;
    const proxy = await startTcpProxy(redis.port, {
      delay: (chunk) => (hold && /subscribe/i.test(chunk.toString('latin1')) ? 1000 : 0),
    });
    onTestFinished(() => proxy.close());
    const url = `redis://127.0.0.1:${proxy.port}`;
    const prefix = `resub-${randomUUID()}:`;
    const [x, y] = [storeOn(url, prefix, '300ms'), storeOn(url, prefix, '300ms')];
    const held = await x.lock('k', { ttlMs: 30_000, waitMs: 5_000 });
    const waiting = y.lock('k', { ttlMs: 30_000, waitMs: 5_000 }); // y subscribes to lock releases
    await sleep(100);
    await held!.release();
    await (await waiting)!.release();
    hold = true;
    await redis.cli('CLIENT', 'KILL', 'TYPE', 'pubsub');
    await sleep(1800); // reconnected, re-subscribed late
    hold = false;
    expect(seen).toEqual([]);
    // And the lock still works, woken or polling.
    const again = await x.lock('k', { ttlMs: 30_000, waitMs: 5_000 });
    const next = y.lock('k', { ttlMs: 30_000, waitMs: 5_000 });
    await again!.release();
    expect(await next).toBeDefined();
    await (await next)!.release();
  });

  describe('a fleet refreshing a rotating refresh token while every client is killed at random moments', () => {
    let as: TestAuthorizationServer;
    beforeAll(async () => {
      as = await startAuthorizationServer({ accessTokenTtl: 120 });
    });
    afterAll(async () => {
      await as?.close();
    });

    it('CLIENT KILL TYPE normal and TYPE pubsub at random: a refresh token is never spent twice, no crash', async () => {
      const seen = crashes();
      const login = await as.login(`redis-kill-${randomUUID()}`);
      const prefix = `kill-${randomUUID()}:`;
      const managers = [0, 1, 2].map(
        () =>
          new TokenManager({
            source: appRefreshToken(as, login['refresh_token'] as string, { timeout: '2s' }),
            store: storeOn(redis.url, prefix, '300ms'),
            storeTimeout: '300ms',
          }),
      );
      onTestFinished(async () => {
        await Promise.all(managers.map((m) => m.close()));
      });
      await managers[0]!.refresh();
      const rejectedBefore = as.counts.errors['invalid_grant'] ?? 0;
      let killing = true;
      const killer = (async () => {
        while (killing) {
          await sleep(30 + Math.random() * 120);
          await redis.cli('CLIENT', 'KILL', 'TYPE', Math.random() < 0.5 ? 'normal' : 'pubsub');
        }
      })();
      const codes = new Set<string>();
      try {
        for (let round = 0; round < 8; round++) {
          const results = await Promise.allSettled(managers.map((m) => m.refresh()));
          for (const r of results) if (r.status === 'rejected') codes.add((r.reason as { code: string }).code);
        }
      } finally {
        killing = false;
        await killer;
      }
      expect([...codes].filter((c) => !['ERR_STORE', 'ERR_STORE_TIMEOUT', 'ERR_LOCK_TIMEOUT'].includes(c))).toEqual([]);
      expect((as.counts.errors['invalid_grant'] ?? 0) - rejectedBefore).toBe(0); // nothing spent twice
      // Once the kills stop, the fleet goes on from the one refresh token it holds.
      await sleep(500);
      const last = await managers[1]!.refresh();
      expect((await managers[2]!.getToken()).accessToken).toBeDefined();
      expect(last.accessToken).toBeDefined();
      expect((as.counts.errors['invalid_grant'] ?? 0) - rejectedBefore).toBe(0);
      expect(seen).toEqual([]);
    }, 60_000);
  });
});
