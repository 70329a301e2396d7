/**
 * The real services store tests run against. On a developer machine without them the suites skip with
 * one visible line; in CI (CI=true) a missing service is a failure.
 */
import { connect } from 'node:net';

export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
export const DATABASE_URL = process.env.DATABASE_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

function reachable(url: string, defaultPort: number): Promise<boolean> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve) => {
    const socket = connect({ host: hostname || '127.0.0.1', port: Number(port || defaultPort) });
    const done = (ok: boolean): void => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

/**
 * Resolves to whether the service answers. When it does not: throws in CI, otherwise prints one line
 * saying why the suite is skipped.
 */
export async function requireService(name: 'redis' | 'postgres'): Promise<boolean> {
  const url = name === 'redis' ? REDIS_URL : DATABASE_URL;
  const ok = await reachable(url, name === 'redis' ? 6379 : 5432);
  if (ok) return true;
  const where = new URL(url).host;
  if (process.env.CI) throw new Error(`${name} is not reachable at ${where}; CI needs it (see DEVELOPERS.md)`);
  console.warn(
    `skipping ${name} tests: nothing listens at ${where} (set ${name === 'redis' ? 'REDIS_URL' : 'DATABASE_URL'}, see DEVELOPERS.md)`,
  );
  return false;
}

export const redisAvailable = await requireService('redis');
export const postgresAvailable = await requireService('postgres');

/** Deletes this run's Redis keys (those under `prefix`): never FLUSHALL a shared server. */
export async function removeRedisKeys(prefix: string): Promise<void> {
  if (!redisAvailable) return;
  const { Redis } = await import('ioredis');
  const admin = new Redis(REDIS_URL);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
      if (keys.length > 0) await admin.del(...keys);
      cursor = next;
    } while (cursor !== '0');
  } finally {
    admin.disconnect();
  }
}

/** Drops this run's PostgresStore tables (each with its `_locks` table): never shared ones. */
export async function dropStoreTables(...tables: string[]): Promise<void> {
  if (!postgresAvailable || tables.length === 0) return;
  const { default: pg } = await import('pg');
  const admin = new pg.Client({ connectionString: DATABASE_URL });
  await admin.connect();
  try {
    for (const t of tables) await admin.query(`DROP TABLE IF EXISTS ${t}, ${t}_locks`);
  } finally {
    await admin.end();
  }
}
