/**
 * Runs a fleet of child processes (fleet-child.ts) against one authorization server and one store; used
 * by the fleet tests, the store fault tests and the fleet benchmark.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { Cluster } from 'ioredis';
import { FileStore, type TokenStore } from '../../src/index.js';
import { PostgresStore } from '../../src/postgres.js';
import { RedisStore } from '../../src/redis.js';
import type { ChildConfig, ChildResult } from './fleet-child.js';

export type { ChildConfig, ChildResult };

const CHILD = fileURLToPath(new URL('./fleet-child.ts', import.meta.url));

/**
 * The store a fleet process uses (`undefined` for `none`), and how to close it: a Redis Cluster is reached through
 * a client of the application's own, with ioredis's defaults, which the store never closes — `close()` does.
 */
export function openFleetStore(config: ChildConfig['store']): {
  store: TokenStore | undefined;
  close(): Promise<void>;
} {
  let client: Cluster | undefined;
  const store = (() => {
    switch (config.kind) {
      case 'file':
        return new FileStore({ path: config.path });
      case 'redis':
        return new RedisStore({ url: config.url, prefix: config.prefix });
      case 'redis-sentinel':
        return new RedisStore({ sentinels: config.sentinels, name: config.name, prefix: config.prefix });
      case 'redis-cluster':
        return new RedisStore({ client: (client = new Cluster(config.nodes)), prefix: config.prefix });
      case 'postgres':
        return new PostgresStore({ connectionString: config.connectionString, table: config.table });
      case 'none':
        return undefined;
    }
  })();
  return {
    store,
    close: async () => {
      await store?.close();
      client?.disconnect();
    },
  };
}

/** Spawns `node --import tsx fleet-child.ts <config>`. */
export function spawnChild(config: ChildConfig): ChildProcess {
  return spawn(process.execPath, ['--import', 'tsx', CHILD, JSON.stringify(config)], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NODE_NO_WARNINGS: '1' },
  });
}

/** Runs one child with `config` and resolves to its result. */
export function runChild(config: ChildConfig): Promise<ChildResult> {
  return new Promise<ChildResult>((resolve, reject) => {
    const child = spawnChild(config);
    let out = '';
    let err = '';
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      const line = out.trim().split('\n').pop() ?? '';
      try {
        resolve(JSON.parse(line) as ChildResult);
      } catch {
        reject(new Error(`fleet child exited (${code ?? signal}) without a result: ${err.slice(0, 2000)}`));
      }
    });
  });
}

/** Runs `count` children with `config` (starting together) and resolves to their results. */
export async function runFleet(
  count: number,
  config: Omit<ChildConfig, 'startAt'>,
  bootMs = 4000,
): Promise<ChildResult[]> {
  const startAt = Date.now() + bootMs;
  return Promise.all(Array.from({ length: count }, () => runChild({ ...config, startAt })));
}
