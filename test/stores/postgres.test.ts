import { randomBytes } from 'node:crypto';
import { type AddressInfo, createServer } from 'node:net';
import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { PostgresStore } from '../../src/stores/postgres.js';
import { DATABASE_URL, dropStoreTables, postgresAvailable } from '../support/services.js';
import { storeContract } from './contract.js';

// A table of this run's own: parallel runs never collide, and dropping it touches nothing shared.
const table = `tw_test_${randomBytes(6).toString('hex')}`;
const admin = postgresAvailable ? new pg.Pool({ connectionString: DATABASE_URL, max: 2 }) : undefined;
const tables = [table];

afterAll(async () => {
  await dropStoreTables(...tables);
  await admin?.end();
});

const put = async (key: string, value: string, version = 1) => {
  await admin!.query(
    `INSERT INTO ${table} (key, value, version) VALUES ($1, $2, $3)
     ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version`,
    [key, value, version],
  );
};

storeContract(
  'PostgresStore',
  postgresAvailable
    ? {
        open: async (options) => new PostgresStore({ connectionString: DATABASE_URL, table, ...options }),
        raw: async (key) =>
          ((await admin!.query(`SELECT value FROM ${table} WHERE key = $1`, [key])).rows[0] as { value: string })
            ?.value,
        wipe: async () => {
          await admin!.query(`TRUNCATE ${table}`);
        },
        corrupt: {
          'sealed with a key id nobody has': (key) => put(key, 'tw-enc1.zz.AAAA.AAAA.AAAA'),
          'sealed, but tampered with': (key) => put(key, 'tw-enc1.k1.AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA'),
        },
      }
    : undefined,
);

describe.skipIf(!postgresAvailable)('PostgresStore with PostgreSQL', () => {
  it('creates its table on first use, from many stores at once, and migrate() is idempotent', async () => {
    const fresh = `tw_test_${randomBytes(6).toString('hex')}`;
    tables.push(fresh);
    const stores = Array.from({ length: 4 }, () => new PostgresStore({ connectionString: DATABASE_URL, table: fresh }));
    await Promise.all(stores.map((s, i) => s.set(`k${i}`, 'v')));
    await stores[0]!.migrate();
    await stores[0]!.migrate();
    expect((await stores[3]!.get('k0'))?.value).toBe('v');
    await Promise.all(stores.map((s) => s.close()));
  });

  it('works with a pool passed in, and leaves it open on close()', async () => {
    const pool = new pg.Pool({ connectionString: DATABASE_URL, max: 3 });
    const store = new PostgresStore({ pool, table });
    await store.set('pooled', 'v');
    const held = await store.lock('pooled', { ttlMs: 10_000, waitMs: 0 });
    expect(held).toBeDefined();
    await store.close(); // releases the lock it held
    const other = new PostgresStore({ pool, table });
    const again = await other.lock('pooled', { ttlMs: 10_000, waitMs: 0 });
    expect(again).toBeDefined();
    await again?.release();
    await other.close();
    expect((await pool.query('SELECT 1 AS one')).rows[0]).toEqual({ one: 1 });
    await pool.end();
  });

  it('a crashed holder’s lock is taken over when its lease ends, and holds no connection meanwhile', async () => {
    const name = `tw-crash-${randomBytes(4).toString('hex')}`;
    const taker = new PostgresStore({ connectionString: DATABASE_URL, table, poolOptions: { application_name: name } });
    const store = new PostgresStore({ connectionString: DATABASE_URL, table });
    const held = await taker.lock('crash', { ttlMs: 1500, waitMs: 0 });
    expect(held).toBeDefined();
    // The holder's process dies: its connections go, and it never releases.
    await admin!.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1', [name]);
    expect(await store.lock('crash', { ttlMs: 1000, waitMs: 100 })).toBeUndefined();
    const next = await store.lock('crash', { ttlMs: 1000, waitMs: 5000 });
    expect(next).toBeDefined();
    await next?.release();
    await store.close();
  });

  it('many locks held at once do not use up the pool (20 leases on a pool of 2 connections)', async () => {
    const store = new PostgresStore({ connectionString: DATABASE_URL, table, poolOptions: { max: 2 } });
    const locks = await Promise.all(
      Array.from({ length: 20 }, (_, i) => store.lock(`many-${i}`, { ttlMs: 10_000, waitMs: 1000 })),
    );
    expect(locks.every((l) => l !== undefined)).toBe(true);
    expect(await store.get('many-0')).toBeUndefined(); // reads still get a connection
    await Promise.all(locks.map((l) => l?.release()));
    await store.close();
  });

  it('rejects a table name that is not a plain identifier', () => {
    expect(() => new PostgresStore({ connectionString: DATABASE_URL, table: 'x; DROP TABLE y' })).toThrow(/table/);
  });
});

describe('PostgresStore without PostgreSQL', () => {
  it('fails with ERR_STORE / ERR_STORE_TIMEOUT when nothing listens, without the password in the message', async () => {
    const store = new PostgresStore({ connectionString: 'postgres://u:hunter2@127.0.0.1:1/db', timeout: 500 });
    const err = (await store.get('k').catch((e: unknown) => e)) as { code: string; message: string };
    expect(['ERR_STORE', 'ERR_STORE_TIMEOUT']).toContain(err.code);
    expect(err.message).not.toContain('hunter2');
    await store.close();
  });

  it('says why a connection cannot be made, in words, without the host or the password', async () => {
    const failure = async (connectionString: string): Promise<string> => {
      const store = new PostgresStore({ connectionString, timeout: '5s' });
      const err = (await store.get('k').catch((e: unknown) => e)) as { code: string; message: string };
      await store.close();
      expect(err.code).toBe('ERR_STORE');
      expect(err.message).not.toMatch(/hunter2|no-such-host/);
      return err.message;
    };
    expect(await failure('postgres://u:hunter2@no-such-host.invalid/db')).toMatch(
      /postgres connect failed \((ENOTFOUND|EAI_AGAIN)\): the host name (does not resolve|could not be resolved)/,
    );
    expect(await failure(`postgres://u:hunter2@127.0.0.1:${await closedPort()}/db`)).toMatch(
      /\(ECONNREFUSED\): nothing listens at that address and port/,
    );
  });
});

describe.skipIf(!postgresAvailable)('PostgresStore reaching a server that refuses it', () => {
  it('a database that does not exist (3D000) and a role the server refuses (28000) are said in words', async () => {
    const url = new URL(DATABASE_URL);
    const refused = async (change: (u: URL) => void): Promise<string> => {
      const target = new URL(url);
      change(target);
      const store = new PostgresStore({ connectionString: target.href, timeout: '5s' });
      const err = (await store.get('k').catch((e: unknown) => e)) as { code: string; message: string };
      await store.close();
      expect(err.code).toBe('ERR_STORE');
      return err.message;
    };
    expect(
      await refused((u) => {
        u.pathname = '/tw_no_such_database';
      }),
    ).toMatch(/\(3D000\): the database does not exist$/);
    expect(
      await refused((u) => {
        u.username = 'tw_no_such_role';
      }),
    ).toMatch(/\(28000\): the server refused the role/);
  });
});

/** A loopback port nothing listens on (taken, then closed). */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}
