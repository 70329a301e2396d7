/**
 * PostgresStore under what a database operator does to a running application, beyond postgres-faults.test.ts:
 * its sessions terminated (`pg_terminate_backend`, as a failover manager, a fast shutdown or a clean-up script
 * does), its role's privileges revoked (42501), its password changed (28P01), the whole server made read-only by
 * `ALTER SYSTEM` and a reload (25006, sessions kept). Each on a private cluster (never the shared server); the
 * fleet cases on a real authorization server with single-use rotating refresh tokens: a valid token is served
 * from memory, a refresh the store cannot lock fails with `ERR_STORE` and spends nothing, and once the database
 * is right again one refresh spends the refresh token once.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { isTokenwardenError } from '../../src/index.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { type PrivatePostgres, pgBin, skipWithout, sleep, startPrivatePostgres } from '../support/private-servers.js';
import { crashes, failure } from '../support/crashes.js';
import { sharedPair } from '../support/login-fleet.js';

let server: PrivatePostgres;
let admin: pg.Pool;
let as: TestAuthorizationServer;
const id = (): string => randomBytes(4).toString('hex');

/** A login role of its own that may create tables; its URL carries `password` (trust auth ignores it unless told). */
async function role(password = 'hunter2'): Promise<{ name: string; url: string }> {
  const name = `tw_${id()}`;
  await admin.query(`CREATE ROLE ${name} LOGIN PASSWORD '${password}'`);
  await admin.query(`GRANT CREATE, USAGE ON SCHEMA public TO ${name}`);
  return { name, url: `postgres://${name}:${password}@127.0.0.1:${server.port}/postgres` };
}

const terminate = (name: string) =>
  admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [name]);

/**
 * While the database refuses the store (`broken`), a process holding a valid token serves it from memory and a
 * refresh fails with `ERR_STORE` matching `message`, spending nothing; once `mended`, one refresh spends once and
 * the other process takes its result from the store, then goes on from the refresh token stored.
 */
async function refusedThenMended(
  url: string,
  broken: () => Promise<void>,
  mended: () => Promise<void>,
  message: RegExp,
  secrets: string[] = [],
): Promise<void> {
  const seen = crashes();
  const table = `t_${id()}`;
  const { a, b, spent, rejected } = await sharedPair(as, () => new PostgresStore({ connectionString: url, table }));
  const held = await a.getToken();
  await broken();
  expect((await a.getToken()).accessToken).toBe(held.accessToken); // from memory: no store call
  for (const manager of [a, b]) {
    const err = await failure(manager.refresh());
    expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(message) });
    for (const secret of secrets) expect(err?.message).not.toContain(secret);
  }
  expect(spent()).toBe(0); // no lock, no spend
  await mended();
  const fresh = await a.refresh();
  expect(fresh.accessToken).not.toBe(held.accessToken);
  expect(spent()).toBe(1);
  expect((await b.refresh()).accessToken).toBe(fresh.accessToken); // b takes what a stored, spends nothing
  expect(spent()).toBe(1);
  await b.refresh(); // and then spends the refresh token a stored: the grant goes on from it
  expect(spent()).toBe(2);
  expect(rejected()).toBe(0); // never a refresh token presented twice: the grant lives
  expect(seen).toEqual([]);
}

describe.skipIf(skipWithout('the PostgreSQL server binaries', pgBin !== undefined))(
  'PostgresStore under an operator',
  () => {
    beforeAll(async () => {
      [server, as] = await Promise.all([startPrivatePostgres(), startAuthorizationServer({ accessTokenTtl: 120 })]);
      admin = new pg.Pool({ connectionString: server.url, max: 3 });
      admin.on('error', () => undefined);
    });
    afterAll(async () => {
      await admin?.end();
      await server?.close();
      await as?.close();
    });

    it('sessions terminated again and again while the store works (pg_terminate_backend): ERR_STORE, never a crash; a held lease stays held', async () => {
      const seen = crashes();
      const { name, url } = await role();
      const table = `t_${id()}`;
      // The pool the store makes, and a pool of yours (with its own `error` listener, as pg requires).
      const pool = new pg.Pool({ connectionString: url, max: 5 });
      pool.on('error', () => undefined);
      const stores = [new PostgresStore({ connectionString: url, table }), new PostgresStore({ pool, table })];
      const other = new PostgresStore({ connectionString: url, table });
      onTestFinished(async () => {
        await Promise.all([...stores, other].map((s) => s.close()));
        await pool.end();
      });
      await stores[0]!.set('k', 'v');
      const locks = await Promise.all(stores.map((s, i) => s.lock(`held-${i}`, { ttlMs: 30_000, waitMs: 0 })));
      let stop = false;
      const killer = (async () => {
        while (!stop) {
          await terminate(name).catch(() => undefined);
          await sleep(2);
        }
      })();
      const codes = new Set<string>();
      try {
        for (let i = 0; i < 150; i++) {
          for (const [n, store] of stores.entries()) {
            const call = [
              () => store.get('k'),
              () => store.set('k', `v${i}`),
              () => locks[n]!.renew!(),
              () => store.lock(`other-${i}`, { ttlMs: 1_000, waitMs: 0 }),
            ][i % 4]!;
            await call().catch((err: unknown) => {
              expect(isTokenwardenError(err), String(err)).toBe(true);
              codes.add((err as { code: string }).code);
            });
          }
        }
      } finally {
        stop = true;
        await killer;
      }
      expect([...codes].filter((code) => code !== 'ERR_STORE' && code !== 'ERR_STORE_TIMEOUT')).toEqual([]);
      expect(seen).toEqual([]); // before: pg's 'error' on a connection ended as it opened was an uncaught exception
      // The leases are rows, not sessions: still held, and released by their holders.
      for (const [i, lock] of locks.entries()) {
        expect(await other.lock(`held-${i}`, { ttlMs: 1_000, waitMs: 0 })).toBeUndefined();
        await lock?.release();
        const next = await other.lock(`held-${i}`, { ttlMs: 1_000, waitMs: 0 });
        expect(next).toBeDefined();
        await next?.release();
      }
      expect((await stores[1]!.get('k'))?.value).toMatch(/^v/);
    }, 60_000);

    it('an unqualified table for a role whose search_path names no schema (3F000): ERR_STORE saying so', async () => {
      const { name, url } = await role();
      await admin.query(`ALTER ROLE ${name} SET search_path = ''`);
      const store = new PostgresStore({ connectionString: url, table: `t_${id()}` });
      onTestFinished(() => store.close());
      for (const call of [
        () => store.get('k'),
        () => store.set('k', 'v'),
        () => store.lock('k', { ttlMs: 1_000, waitMs: 0 }),
      ]) {
        expect(await failure(call())).toMatchObject({
          code: 'ERR_STORE',
          message: expect.stringMatching(/\(3F000\): no schema to make the table in/),
        });
      }
      const qualified = new PostgresStore({ connectionString: url, table: `public.t_${id()}` });
      onTestFinished(() => qualified.close());
      expect(await qualified.set('k', 'v')).toBeGreaterThan(0);
    });

    it("the role's privileges revoked (42501): served from memory, a refresh fails with ERR_STORE and spends nothing; granted again, one refresh", async () => {
      const { name, url } = await role();
      await refusedThenMended(
        url,
        async () => {
          const tables = (
            await admin.query(`SELECT tablename FROM pg_tables WHERE tableowner = $1 AND schemaname = 'public'`, [name])
          ).rows.map((r: { tablename: string }) => r.tablename);
          for (const t of tables) await admin.query(`ALTER TABLE ${t} OWNER TO postgres`);
          for (const t of tables) await admin.query(`REVOKE ALL ON ${t} FROM ${name}`);
          onTestFinished(async () => {
            for (const t of tables) await admin.query(`ALTER TABLE ${t} OWNER TO ${name}`).catch(() => undefined);
          });
          // Its tables are another role's now, which grants nothing: what a tightened deployment can do.
        },
        async () => {
          const tables = (
            await admin.query(
              `SELECT tablename FROM pg_tables WHERE tableowner = 'postgres' AND tablename LIKE 't\\_%'`,
            )
          ).rows.map((r: { tablename: string }) => r.tablename);
          for (const t of tables) await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${t} TO ${name}`);
        },
        /\(42501\): permission denied: the role needs SELECT, INSERT, UPDATE and DELETE on the table and on its lock table/,
      );
    }, 30_000);

    it('the server made read-only by ALTER SYSTEM and a reload, sessions kept (25006): served from memory, nothing spent; writable again, one refresh', async () => {
      const { url } = await role();
      const readOnly = async (on: boolean): Promise<void> => {
        await admin.query(
          `ALTER SYSTEM ${on ? 'SET default_transaction_read_only = on' : 'RESET default_transaction_read_only'}`,
        );
        await admin.query('SELECT pg_reload_conf()');
        await sleep(200); // every backend takes the reload at its next statement
      };
      onTestFinished(() => readOnly(false));
      await refusedThenMended(
        url,
        () => readOnly(true),
        () => readOnly(false),
        /\(25006\): the database is read-only/,
      );
    }, 30_000);

    it("the role's password changed, its sessions ended (28P01): served from memory, ERR_STORE naming no password, nothing spent; the password back, one refresh", async () => {
      const hba = (await admin.query('SHOW hba_file')).rows[0].hba_file as string;
      const before = readFileSync(hba, 'utf8');
      const reload = () => admin.query('SELECT pg_reload_conf()');
      onTestFinished(async () => {
        writeFileSync(hba, before);
        await reload();
      });
      // Passwords checked (SCRAM) for every role but the administrator.
      writeFileSync(hba, `host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n${before}`);
      await reload();
      const { name, url } = await role('first-secret-pw');
      await refusedThenMended(
        url,
        async () => {
          await admin.query(`ALTER ROLE ${name} PASSWORD 'second-secret-pw'`);
          await terminate(name); // what a restart does to the sessions that were open
        },
        async () => {
          await admin.query(`ALTER ROLE ${name} PASSWORD 'first-secret-pw'`);
        },
        /\(28P01\): wrong password/,
        ['first-secret-pw', 'second-secret-pw', name],
      );
    }, 30_000);
  },
);
