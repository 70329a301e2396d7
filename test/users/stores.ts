/**
 * The stores the UserTokens suites run on. A store is described by a JSON-able spec so that child
 * processes of the fleet test can open the same one.
 *
 * TODO(stores merge): `tokenwarden/redis` (src/stores/redis.ts) and `tokenwarden/postgres` are being built
 * on the `stores` branch. The Redis entry below turns itself on once src/stores/redis.ts exists (it assumes
 * the `new RedisStore({ url })` of the acceptance check); add PostgreSQL the same way.
 */
import { existsSync } from 'node:fs';
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStore } from '../../src/stores/memory.js';
import type { TokenStore } from '../../src/stores/store.js';
import { REDIS_URL, redisAvailable } from '../support/services.js';
import { SharedFileStore } from '../support/shared-file-store.js';

export type StoreSpec = { kind: 'memory' } | { kind: 'shared-file'; dir: string } | { kind: 'redis'; url: string };

export interface StoreFactory {
  readonly name: string;
  /** Why it is skipped, or `undefined` when it runs. */
  readonly skip: string | undefined;
  /** Whether several processes can share it. */
  readonly shared: boolean;
  spec(): Promise<StoreSpec>;
}

const redisModule = new URL('../../src/stores/redis.ts', import.meta.url);

export const storeFactories: StoreFactory[] = [
  { name: 'MemoryStore', skip: undefined, shared: false, spec: async () => ({ kind: 'memory' }) },
  {
    name: 'shared file store (test stand-in)',
    skip: undefined,
    shared: true,
    spec: async () => ({ kind: 'shared-file', dir: await mkdtemp(join(tmpdir(), 'tw-users-')) }),
  },
  {
    name: 'RedisStore',
    skip: !existsSync(redisModule)
      ? 'src/stores/redis.ts is not on this branch yet (stores issue)'
      : !redisAvailable
        ? 'Redis is not reachable'
        : undefined,
    shared: true,
    spec: async () => ({ kind: 'redis', url: REDIS_URL }),
  },
];

/** Opens the store a spec describes (in this process). */
export async function openStore(spec: StoreSpec): Promise<TokenStore> {
  switch (spec.kind) {
    case 'memory':
      return new MemoryStore({ max: 100_000 });
    case 'shared-file':
      return new SharedFileStore(spec.dir);
    case 'redis': {
      // Loaded by path so that this branch type-checks before the Redis store exists.
      const { RedisStore } = (await import(redisModule.href)) as {
        RedisStore: new (options: { url: string }) => TokenStore;
      };
      return new RedisStore({ url: spec.url });
    }
  }
}
