/**
 * The stores the UserTokens suites run on: every TokenStore tokenwarden ships. A store is described by a
 * JSON-able spec so that child processes of the fleet test open the same one. Redis keys and PostgreSQL
 * tables are this run's own (random prefix / table) and removed by `cleanupStores()`.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileStore } from '../../src/stores/file.js';
import { MemoryStore } from '../../src/stores/memory.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { RedisStore } from '../../src/stores/redis.js';
import type { TokenStore } from '../../src/stores/store.js';
import {
  DATABASE_URL,
  REDIS_URL,
  dropStoreTables,
  postgresAvailable,
  redisAvailable,
  removeRedisKeys,
} from '../support/services.js';

export type StoreSpec =
  | { kind: 'memory' }
  | { kind: 'file'; dir: string }
  | { kind: 'redis'; url: string; prefix: string }
  | { kind: 'postgres'; connectionString: string; table: string };

export interface StoreFactory {
  readonly name: string;
  /** Why it is skipped, or `undefined` when it runs. */
  readonly skip: string | undefined;
  /** Whether several processes can share it. */
  readonly shared: boolean;
  spec(): Promise<StoreSpec>;
}

const run = randomBytes(6).toString('hex');
const prefix = `tw-test-users:${run}:`;
const table = `tw_test_users_${run}`;
const dirs: string[] = [];

export const storeFactories: StoreFactory[] = [
  { name: 'MemoryStore', skip: undefined, shared: false, spec: async () => ({ kind: 'memory' }) },
  {
    name: 'FileStore',
    skip: undefined,
    shared: true,
    spec: async () => {
      const dir = await mkdtemp(join(tmpdir(), 'tw-users-'));
      dirs.push(dir);
      return { kind: 'file', dir };
    },
  },
  {
    name: 'RedisStore',
    skip: redisAvailable ? undefined : 'Redis is not reachable',
    shared: true,
    spec: async () => ({ kind: 'redis', url: REDIS_URL, prefix }),
  },
  {
    name: 'PostgresStore',
    skip: postgresAvailable ? undefined : 'PostgreSQL is not reachable',
    shared: true,
    spec: async () => ({ kind: 'postgres', connectionString: DATABASE_URL, table }),
  },
];

const opened: TokenStore[] = [];

/** Opens the store a spec describes (in this process); `cleanupStores()` closes it. */
export function openStore(spec: StoreSpec): TokenStore {
  const store = ((): TokenStore => {
    switch (spec.kind) {
      case 'memory':
        return new MemoryStore({ max: 100_000 });
      case 'file':
        return new FileStore({ path: spec.dir });
      case 'redis':
        return new RedisStore({ url: spec.url, prefix: spec.prefix });
      case 'postgres':
        return new PostgresStore({ connectionString: spec.connectionString, table: spec.table });
    }
  })();
  opened.push(store);
  return store;
}

/**
 * Empties a store's whole namespace behind its back, as an operator's `FLUSHALL`, `TRUNCATE` or `rm -r` does (its
 * generation marker too: the store's next `get` reports a `reset`). A MemoryStore has no outside to do it from.
 */
export async function wipeStore(spec: StoreSpec): Promise<void> {
  switch (spec.kind) {
    case 'memory':
      throw new Error('a MemoryStore cannot be emptied behind its back');
    case 'file':
      for (const name of await readdir(spec.dir)) await rm(join(spec.dir, name), { recursive: true, force: true });
      return;
    case 'redis':
      return removeRedisKeys(spec.prefix);
    case 'postgres': {
      const { default: pg } = await import('pg');
      const admin = new pg.Client({ connectionString: spec.connectionString });
      await admin.connect();
      try {
        await admin.query(`TRUNCATE ${spec.table}`);
      } finally {
        await admin.end();
      }
    }
  }
}

/** Closes the stores opened here and removes this run's Redis keys, PostgreSQL table and directories. */
export async function cleanupStores(): Promise<void> {
  await Promise.all(opened.splice(0).map((store) => store.close().catch(() => undefined)));
  await Promise.all(dirs.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  await removeRedisKeys(prefix);
  await dropStoreTables(table);
}
