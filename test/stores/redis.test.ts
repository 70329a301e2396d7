import { randomUUID } from 'node:crypto';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { RedisStore } from '../../src/stores/redis.js';
import { REDIS_URL, redisAvailable, removeRedisKeys } from '../support/services.js';
import { storeContract } from './contract.js';

const prefix = `tw-test:${randomUUID()}:`;
const admin = redisAvailable ? new Redis(REDIS_URL, { lazyConnect: true }) : undefined;
const entry = (key: string) => `${prefix}entry:${key}`;

afterAll(async () => {
  await removeRedisKeys(prefix);
  await admin?.quit();
});

storeContract(
  'RedisStore',
  redisAvailable
    ? {
        open: async (options) => new RedisStore({ url: REDIS_URL, prefix, ...options }),
        raw: async (key) => (await admin!.hget(entry(key), 'value')) ?? undefined,
        // Every key under the prefix (the shared server: no FLUSHALL here; redis-faults does that on its own).
        wipe: () => removeRedisKeys(prefix),
        corrupt: {
          'a string instead of a hash': async (key) => {
            await admin!.set(entry(key), '{"not":"ours"}');
          },
          'a hash without a version': async (key) => {
            await admin!.hset(entry(key), 'value', 'v');
          },
          'a hash with a version that is not a number': async (key) => {
            await admin!.hset(entry(key), 'value', 'v', 'version', 'seven');
          },
        },
      }
    : undefined,
);

describe.skipIf(!redisAvailable)('RedisStore with Redis', () => {
  it('keeps entries with a TTL from ttlMs, and none without', async () => {
    const store = new RedisStore({ url: REDIS_URL, prefix });
    await store.set('ttl', 'v', { ttlMs: 60_000 });
    const ttl = await admin!.pttl(entry('ttl'));
    expect(ttl).toBeGreaterThan(50_000);
    expect(ttl).toBeLessThanOrEqual(60_000);
    await store.set('ttl', 'v');
    expect(await admin!.pttl(entry('ttl'))).toBe(-1);
    await store.close();
  });

  it('works with a client passed in, and leaves it open on close()', async () => {
    const client = new Redis(REDIS_URL);
    const store = new RedisStore({ client, prefix });
    await store.set('mine', 'v');
    expect((await store.get('mine'))?.value).toBe('v');
    const held = await store.lock('mine', { ttlMs: 10_000, waitMs: 0 });
    const waiting = store.lock('mine', { ttlMs: 10_000, waitMs: 10_000 });
    await held?.release();
    await (await waiting)?.release();
    await store.close();
    expect(await client.ping()).toBe('PONG');
    await client.quit();
  });

  it('a client of yours that has ended is not reopened: ERR_STORE says so', async () => {
    const client = new Redis(REDIS_URL);
    const yours = new RedisStore({ client, prefix });
    await yours.set('ended', 'v');
    const ended = new Promise((resolve) => client.once('end', resolve));
    client.disconnect();
    await ended;
    await expect(yours.get('ended')).rejects.toMatchObject({
      code: 'ERR_STORE',
      message: expect.stringMatching(/client passed to the store has ended/),
    });
    expect(client.status).toBe('end');
    await yours.close();
  });
});

describe.skipIf(!redisAvailable)('RedisStore identifying its server', () => {
  it('a connection error while asking INFO is a failure to identify (asked again next time), not a server that refuses INFO', async () => {
    const client = new Redis(REDIS_URL);
    let infoServer = 0;
    let broken = true;
    // The real client, but INFO fails as on a reset connection (an error with an errno code) until `broken` ends.
    const flaky = new Proxy(client, {
      get(target, name, receiver) {
        if (name !== 'call') {
          const value = Reflect.get(target, name, receiver) as unknown;
          return typeof value === 'function' ? value.bind(target) : value;
        }
        return async (command: string, ...args: string[]) => {
          if (command === 'INFO' && args[0] === 'server') {
            infoServer += 1;
            if (broken) throw Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' });
          }
          return target.call(command, ...args);
        };
      },
    });
    const store = new RedisStore({ client: flaky, prefix });
    try {
      await expect(store.get('identify')).rejects.toMatchObject({
        code: 'ERR_STORE',
        message: expect.stringContaining('(ECONNRESET): the connection was reset'),
      });
      const asked = infoServer;
      broken = false;
      expect(await store.get('identify')).toBeUndefined();
      expect(infoServer).toBeGreaterThan(asked); // asked again: the failure taught nothing
    } finally {
      await store.close();
      await client.quit();
    }
  });
});

describe('RedisStore without Redis', () => {
  it('fails fast with ERR_STORE / ERR_STORE_TIMEOUT when nothing listens, never hangs', async () => {
    const port = await freePort();
    const store = new RedisStore({ url: `redis://127.0.0.1:${port}`, timeout: 500 });
    for (const op of [
      () => store.get('k'),
      () => store.set('k', 'v'),
      () => store.lock('k', { ttlMs: 1000, waitMs: 1000 }),
    ]) {
      const err = await op().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(err).toMatchObject({ name: 'TokenwardenError' });
      expect(['ERR_STORE', 'ERR_STORE_TIMEOUT']).toContain((err as { code: string }).code);
      expect(String((err as Error).message)).not.toContain('redis://');
    }
    await store.close();
  });

  it('says why a connection cannot be made, in words, without the host or the password', async () => {
    const failure = async (url: string): Promise<string> => {
      const store = new RedisStore({ url, timeout: '5s' });
      const err = (await store.get('k').catch((e: unknown) => e)) as { code: string; message: string };
      await store.close();
      expect(err.code).toBe('ERR_STORE');
      expect(err.message).not.toMatch(/hunter2|no-such-host/);
      return err.message;
    };
    expect(await failure('redis://:hunter2@no-such-host.invalid:6379')).toMatch(
      /redis connect failed \((ENOTFOUND|EAI_AGAIN)\): the host name (does not resolve|could not be resolved)/,
    );
    expect(await failure(`redis://:hunter2@127.0.0.1:${await freePort()}`)).toMatch(
      /\(ECONNREFUSED\): nothing listens at that address and port/,
    );
  });

  it('rejects bad options', () => {
    expect(() => new RedisStore({} as never)).toThrow(/one of url, sentinels or client/);
    expect(() => new RedisStore({ url: 'redis://x', sentinels: [] } as never)).toThrow(/one of url/);
    expect(() => new RedisStore({ sentinels: [], name: 'm' })).toThrow(/sentinels must be a non-empty list/);
    expect(() => new RedisStore({ url: 'http://x' })).toThrow(/redis:\/\//);
  });
});

function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
  });
}
