/**
 * The TokenStore contract through PgBouncer, in transaction pooling and in session pooling, in front of a private
 * PostgreSQL cluster: the store sends no startup parameters, holds no session lock and no open transaction, so
 * every promise of the contract holds behind either (docs/stores.md). Each mode has a PgBouncer of its own;
 * what the contract reads and writes behind the store's back goes to PostgreSQL directly.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';
import { PostgresStore } from '../../src/stores/postgres.js';
import {
  type PrivatePgBouncer,
  type PrivatePostgres,
  hasPgBouncer,
  pgBin,
  skipWithout,
  startPgBouncer,
  startPrivatePostgres,
} from '../support/private-servers.js';
import { type StoreFactory, storeContract } from './contract.js';

const available = !skipWithout('PgBouncer and the PostgreSQL server binaries', hasPgBouncer && pgBin !== undefined);
const MODES = ['transaction', 'session'] as const;

let server: PrivatePostgres | undefined;
let admin: pg.Pool | undefined;
const bouncers = new Map<(typeof MODES)[number], PrivatePgBouncer>();

beforeAll(async () => {
  if (!available) return;
  server = await startPrivatePostgres();
  admin = new pg.Pool({ connectionString: server.url, max: 2 });
  admin.on('error', () => undefined);
  for (const mode of MODES) bouncers.set(mode, await startPgBouncer(server.port, mode));
}, 60_000);

afterAll(async () => {
  for (const bouncer of bouncers.values()) await bouncer.close();
  await admin?.end();
  await server?.close();
});

/** The contract's factory for stores reaching the cluster through the PgBouncer in `mode`, on a table of its own. */
function through(mode: (typeof MODES)[number]): StoreFactory {
  const table = `tw_pgb_${mode}_${randomBytes(4).toString('hex')}`;
  const put = async (key: string, value: string) => {
    await admin!.query(
      `INSERT INTO ${table} (key, value, version) VALUES ($1, $2, 1)
       ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = excluded.version`,
      [key, value],
    );
  };
  return {
    open: async (options) =>
      new PostgresStore({ connectionString: bouncers.get(mode)!.url, table, timeout: '5s', ...options }),
    raw: async (key) =>
      ((await admin!.query(`SELECT value FROM ${table} WHERE key = $1`, [key])).rows[0] as { value: string })?.value,
    wipe: async () => {
      await admin!.query(`TRUNCATE ${table}`);
    },
    corrupt: {
      'sealed with a key id nobody has': (key) => put(key, 'tw-enc1.zz.AAAA.AAAA.AAAA'),
    },
  };
}

for (const mode of MODES)
  storeContract(`PostgresStore behind PgBouncer (${mode} pooling)`, available ? through(mode) : undefined);
