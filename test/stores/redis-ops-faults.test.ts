/**
 * RedisStore under what a Redis operator does to a running application, beyond redis-faults.test.ts: writes
 * paused (`CLIENT PAUSE … WRITE`, as a manual failover does) or every client killed (`CLIENT KILL TYPE normal`)
 * right after a refresh token was spent, scripts flushed (`SCRIPT FLUSH`), a password required or changed
 * mid-run, `maxclients` reached, keys of the store's prefix holding another type, an ACL user limited to the
 * store's keys with Redis 7's default of no Pub/Sub channels. Each on a private Redis (never the shared one); the
 * fleet cases on a real authorization server with single-use rotating refresh tokens.
 */
import { randomUUID } from 'node:crypto';
import { inspect } from 'node:util';
import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import type { TokenwardenError } from '../../src/errors.js';
import type { TokenManagerOptions } from '../../src/index.js';
import { RedisStore, type RedisStoreOptions } from '../../src/redis.js';
import type { StoreEvents } from '../../src/stores/store.js';
import { afterNextTokenResponse } from '../support/app-client.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import {
  type PrivateRedis,
  hasRedisServer,
  skipWithout,
  sleep,
  startPrivateRedis,
} from '../support/private-servers.js';
import { crashes, failure } from '../support/crashes.js';
import { sharedPair } from '../support/login-fleet.js';

let as: TestAuthorizationServer;
let redis: PrivateRedis;

/**
 * Two managers (two processes) of one login on Redis stores of `options`, sharing the token of one refresh; the
 * first's token requests go through `fetch` when given.
 */
const fleetOf = (
  options: () => RedisStoreOptions,
  manager: Partial<TokenManagerOptions> = {},
  fetch?: typeof globalThis.fetch,
) =>
  sharedPair(as, () => new RedisStore(options()), {
    manager,
    source: (which) => ({ timeout: '2s', ...(which === 0 && fetch !== undefined && { fetch }) }),
  });

describe.skipIf(skipWithout('redis-server', hasRedisServer))('RedisStore under an operator', () => {
  beforeAll(async () => {
    [redis, as] = await Promise.all([startPrivateRedis(), startAuthorizationServer({ accessTokenTtl: 120 })]);
  });
  afterAll(async () => {
    await redis?.close();
    await as?.close();
  });

  for (const [what, fault] of [
    // A manual failover (FAILOVER, or a proxy's switch-over) pauses writes while the replica catches up.
    ['writes paused for 2 s (CLIENT PAUSE WRITE)', () => redis.cli('CLIENT', 'PAUSE', '2000', 'WRITE')],
    ['every client killed (CLIENT KILL TYPE normal)', () => redis.cli('CLIENT', 'KILL', 'TYPE', 'normal')],
  ] as const) {
    it(`${what} right after a refresh token was spent: the new one is written once Redis takes writes, never spent twice`, async () => {
      const seen = crashes();
      const prefix = `ops-${randomUUID()}:`;
      const breaker = afterNextTokenResponse(fault);
      const { a, b, spent, rejected } = await fleetOf(
        () => ({ url: redis.url, prefix, timeout: '300ms' }),
        { storeTimeout: '300ms' },
        breaker.fetch,
      );
      breaker.arm();
      const rotated = await a.refresh(); // served; its write fails or times out, and is kept pending
      expect(spent()).toBe(1);
      // The other process, meanwhile: what it holds is served; a refresh cannot lock (or finds the lock held).
      expect((await b.getToken()).expiresAt).toBeGreaterThan(Date.now());
      // Killed connections are back within 0.25 s, and a's write with them: b may take a's token at once.
      const during = await b.refresh().catch((err: unknown) => err as TokenwardenError);
      if (during instanceof Error) {
        expect(['ERR_STORE', 'ERR_STORE_TIMEOUT', 'ERR_LOCK_TIMEOUT']).toContain(during.code);
        await sleep(2_500); // the pause is over; a's pending write is retried (0.25–2 s) and lands
        expect((await b.refresh()).accessToken).toBe(rotated.accessToken); // took a's token: nothing spent
      } else {
        expect(during.accessToken).toBe(rotated.accessToken); // took a's token: nothing spent
      }
      expect(spent()).toBe(1);
      await b.refresh(); // and the grant goes on from the refresh token a stored
      expect(spent()).toBe(2);
      expect(rejected()).toBe(0);
      expect(seen).toEqual([]);
    }, 30_000);
  }

  it('a write refused (READONLY: the server turned into a replica): the ERR_STORE and its cause hold no stored value, however printed', async () => {
    const replica = await startPrivateRedis();
    onTestFinished(() => replica.close());
    const store = new RedisStore({ url: replica.url, prefix: `ro-${randomUUID()}:` });
    onTestFinished(() => store.close());
    expect(await store.set('k', 'v1')).toBeGreaterThan(0);
    // A replica of a primary that is not there (port 1): it refuses writes, and stays so.
    await replica.cli('REPLICAOF', '127.0.0.1', '1');
    const secret = `access-${randomUUID()}-refresh-${randomUUID()}`;
    const err = await failure(store.set('k', secret, { ttlMs: 60_000 }));
    expect(err?.code).toBe('ERR_STORE');
    expect(err?.message).toMatch(/READONLY/);
    // ioredis keeps the command's arguments on its reply error: the entry written, tokens and all.
    for (const text of [inspect(err, { depth: Infinity }), JSON.stringify(err), String(err?.stack)]) {
      expect(text).not.toContain(secret);
    }
    expect((err?.cause as Error | undefined)?.message).toMatch(/^READONLY/);
  });

  it('SCRIPT FLUSH between calls (a restart of the scripting engine, a managed service clearing its cache): every script is loaded again', async () => {
    const store = new RedisStore({ url: redis.url, prefix: `flush-${randomUUID()}:` });
    onTestFinished(() => store.close());
    const flushed = async <T>(call: () => Promise<T>): Promise<T> => {
      await redis.cli('SCRIPT', 'FLUSH');
      return call();
    };
    expect(await flushed(() => store.set('k', 'v'))).toBeGreaterThan(0);
    expect((await flushed(() => store.get('k')))?.value).toBe('v');
    const lock = await flushed(() => store.lock('k', { ttlMs: 10_000, waitMs: 0 }));
    expect(await flushed(() => lock!.renew!())).toBe(true);
    await flushed(() => lock!.release());
    const again = await store.lock('k', { ttlMs: 10_000, waitMs: 0 }); // released, not left to its lease
    expect(again).toBeDefined();
    await again?.release();
  });

  it('an ACL user limited to the store keys, without Pub/Sub channels (Redis 7 default): locks are released and waiters served by polling', async () => {
    const prefix = `acl-${randomUUID()}:`;
    const user = `u${randomUUID().slice(0, 8)}`;
    await redis.cli('ACL', 'SETUSER', user, 'reset', 'on', '>acl-secret-pw', `~${prefix}*`, '+@all', '-@dangerous');
    const url = `redis://${user}:acl-secret-pw@127.0.0.1:${redis.port}`;
    const seen = crashes();
    const { a, b, spent, rejected } = await fleetOf(() => ({ url, prefix }));
    const [x, y] = [new RedisStore({ url, prefix }), new RedisStore({ url, prefix })];
    onTestFinished(async () => {
      await Promise.all([x.close(), y.close()]);
    });
    const held = await x.lock('k', { ttlMs: 30_000, waitMs: 0 });
    // The wait is the bound: the PUBLISH in the release is refused (NOPERM), and polling must find the lock free
    // within it (without a wake-up or a poll, the lock is held until its 30 s lease ends).
    const waiting = y.lock('k', { ttlMs: 30_000, waitMs: 1_000 });
    await sleep(100);
    await held!.release();
    const next = await waiting;
    expect(next).toBeDefined();
    await next?.release();
    const fresh = await a.refresh();
    expect((await b.refresh()).accessToken).toBe(fresh.accessToken);
    expect(spent()).toBe(1);
    expect(rejected()).toBe(0);
    expect(seen).toEqual([]);
  });

  it('a password required mid-run, the clients then killed: ERR_STORE at once naming no password; back when it is given', async () => {
    const prefix = `auth-${randomUUID()}:`;
    const store = new RedisStore({ url: redis.url, prefix, timeout: '1s' });
    onTestFinished(async () => {
      await redis.cli('-a', 'required-secret-pw', '--no-auth-warning', 'CONFIG', 'SET', 'requirepass', '');
      await store.close();
    });
    await store.set('k', 'v');
    await redis.cli('CONFIG', 'SET', 'requirepass', 'required-secret-pw');
    expect((await store.get('k'))?.value).toBe('v'); // a connection keeps the authentication it made
    await redis.cli('-a', 'required-secret-pw', '--no-auth-warning', 'CLIENT', 'KILL', 'TYPE', 'normal');
    await sleep(300);
    for (const call of [() => store.get('k'), () => store.lock('k', { ttlMs: 1_000, waitMs: 0 })]) {
      const err = await failure(call());
      expect(err?.code).toBe('ERR_STORE'); // at once: waiting out the 1 s limit would be ERR_STORE_TIMEOUT
      expect(err?.message).not.toContain('required-secret-pw');
    }
    const wrong = new RedisStore({ url: `redis://:not-the-pw@127.0.0.1:${redis.port}`, prefix, timeout: '1s' });
    onTestFinished(() => wrong.close());
    const refused = await failure(wrong.get('k'));
    expect(refused).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(/\(WRONGPASS\)/) });
    expect(refused?.message).not.toContain('not-the-pw');
    await redis.cli('-a', 'required-secret-pw', '--no-auth-warning', 'CONFIG', 'SET', 'requirepass', '');
    await sleep(600); // the store reconnects within 0.25 s
    expect((await store.get('k'))?.value).toBe('v');
  });

  it('maxclients reached: a new store fails at once with ERR_STORE, one already connected works on; all recover', async () => {
    const prefix = `max-${randomUUID()}:`;
    const connected = new RedisStore({ url: redis.url, prefix });
    const admin = new Redis(redis.url); // an operator's connection, opened before the limit is reached
    onTestFinished(async () => {
      await admin.config('SET', 'maxclients', '10000');
      admin.disconnect();
      await connected.close();
    });
    await connected.set('k', 'v');
    const clients = Number(/connected_clients:(\d+)/.exec(await admin.info('clients'))?.[1]);
    await admin.config('SET', 'maxclients', String(clients));
    const late = new RedisStore({ url: redis.url, prefix, timeout: '5s' });
    onTestFinished(() => late.close());
    // Refused, not waited for: the 5 s limit would be ERR_STORE_TIMEOUT.
    expect(await failure(late.get('k'))).toMatchObject({ code: 'ERR_STORE' });
    expect((await connected.get('k'))?.value).toBe('v');
    await admin.config('SET', 'maxclients', '10000');
    const until = Date.now() + 2_000; // it reconnects every 0.25 s at most, failing at once meanwhile
    let value: string | undefined;
    while (value === undefined && Date.now() < until) {
      value = (await late.get('k').catch(() => sleep(50).then(() => undefined)))?.value;
    }
    expect(value).toBe('v');
  });

  it('keys of the prefix holding another type (WRONGTYPE): an entry is a miss and is replaced; the epoch is ERR_STORE said in words', async () => {
    const prefix = `type-${randomUUID()}:`;
    const store = new RedisStore({ url: redis.url, prefix });
    onTestFinished(() => store.close());
    const corrupt: StoreEvents['corrupt'][0][] = [];
    store.on('corrupt', (event) => corrupt.push(event));
    await redis.cli('RPUSH', `${prefix}entry:k`, 'not an entry');
    expect(await store.get('k')).toBeUndefined();
    expect(corrupt).toHaveLength(1);
    expect(await store.set('k', 'v')).toBeGreaterThan(0);
    expect((await store.get('k'))?.value).toBe('v');
    await redis.cli('RPUSH', `${prefix}held:k`, 'not a holder');
    const lock = await store.lock('k', { ttlMs: 1_000, waitMs: 0 });
    expect(lock?.takenOver).toBe(true); // unknown holder: the fleet waits the settle before spending
    await lock?.release();
    const other = new RedisStore({ url: redis.url, prefix });
    onTestFinished(() => other.close());
    await redis.cli('DEL', `${prefix}epoch`);
    await redis.cli('RPUSH', `${prefix}epoch`, 'not an epoch');
    const err = await failure(other.get('k'));
    expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(/\(WRONGTYPE\): /) });
    expect(err?.message).not.toContain('not an epoch');
  });
});
