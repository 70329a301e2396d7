/**
 * PostgresStore under the settings and schemas real operators configure, beyond postgres-faults.test.ts and
 * postgres-ops-faults.test.ts: `default_transaction_isolation` raised on the role (concurrent writes of one row
 * then fail with 40001 instead of being re-checked), a synchronous standby named but not there (every commit
 * waits), and tables made beforehand by an administrator or an application's own migrations. Each on a private
 * cluster (never the shared server) with roles of its own; the fleet cases on a real authorization server with
 * single-use rotating refresh tokens, several managers on stores of their own (one per process): never a refresh
 * token presented twice, and a store that cannot do its part fails a refresh with ERR_STORE before anything is
 * spent.
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { TokenManager, isTokenwardenError } from '../../src/index.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { type TestAuthorizationServer, startAuthorizationServer } from '../support/authorization-server.js';
import { crashes, failure } from '../support/crashes.js';
import { loginFleet } from '../support/login-fleet.js';
import {
  type PrivatePostgres,
  hasPgBouncer,
  pgBin,
  skipWithout,
  sleep,
  startPgBouncer,
  startPrivatePostgres,
} from '../support/private-servers.js';

let server: PrivatePostgres;
let admin: pg.Pool;
let as: TestAuthorizationServer;
const id = (): string => randomBytes(4).toString('hex');

/** A login role of its own with `settings`, allowed to create tables in `public` unless `create` is false. */
async function role(settings: Record<string, string> = {}, create = true): Promise<{ name: string; url: string }> {
  const name = `tw_${id()}`;
  await admin.query(`CREATE ROLE ${name} LOGIN`);
  if (create) await admin.query(`GRANT CREATE, USAGE ON SCHEMA public TO ${name}`);
  for (const [key, value] of Object.entries(settings)) await admin.query(`ALTER ROLE ${name} SET ${key} = '${value}'`);
  return { name, url: `postgres://${name}@127.0.0.1:${server.port}/postgres` };
}

/** `count` managers of one login, each on a store of its own (one per process) of `table`; the server's counts. */
const fleetOf = (url: string, count: number, table = `t_${id()}`, timeout?: number) =>
  loginFleet(as, count, () => new PostgresStore({ connectionString: url, table, timeout }));

/** Names a synchronous standby that does not exist (every commit then waits for it), or lifts the requirement. */
async function standby(names: string | undefined): Promise<void> {
  await admin.query(
    names === undefined
      ? 'ALTER SYSTEM RESET synchronous_standby_names'
      : `ALTER SYSTEM SET synchronous_standby_names = '${names}'`,
  );
  await admin.query('SELECT pg_reload_conf()');
  await sleep(200); // every backend takes the reload at its next statement
}

/** Client backends (of `role`, or of anyone but the administrator's asking one) still running a statement. */
async function busyBackends(role?: string): Promise<number> {
  const { rows } = await admin.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity
      WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()
        AND ($1::text IS NULL OR usename = $1)`,
    [role ?? null],
  );
  return rows[0].n as number;
}

/** Waits (a few seconds at most) for every statement a store gave up on to stop; how many are still running. */
async function leftBehind(role?: string): Promise<number> {
  for (let i = 0; i < 50 && (await busyBackends(role)) > 0; i++) await sleep(100);
  return busyBackends(role);
}

describe.skipIf(skipWithout('the PostgreSQL server binaries', pgBin !== undefined))(
  'PostgresStore under the settings operators configure',
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

    for (const level of ['serializable', 'repeatable read']) {
      it(`default_transaction_isolation = '${level}' on the role: a fleet contending for one key never fails a refresh (40001 is run again) and spends each refresh token once`, async () => {
        const seen = crashes();
        const { url } = await role({ default_transaction_isolation: level });
        const { managers, spent, rejected } = await fleetOf(url, 6);
        const errors: string[] = [];
        const rounds = 6;
        for (let round = 0; round < rounds; round++) {
          // Six processes forcing a refresh at once: one spends, the others take its result from the store.
          await Promise.all(
            managers.map((m) =>
              m.refresh().catch((err: unknown) => {
                errors.push(isTokenwardenError(err) ? `${err.code}: ${err.message}` : String(err));
              }),
            ),
          );
        }
        // Before: about one refresh in ten failed with "ERR_STORE: postgres query failed (40001)".
        expect(errors).toEqual([]);
        expect(spent()).toBe(rounds);
        expect(rejected()).toBe(0); // never a refresh token presented twice
        expect(seen).toEqual([]);
      }, 60_000);

      it(`default_transaction_isolation = '${level}' on the role: eight stores' compare-and-set increments and locks of one key never fail and never lose an increment`, async () => {
        const { url } = await role({ default_transaction_isolation: level });
        const table = `t_${id()}`;
        const stores = Array.from({ length: 8 }, () => new PostgresStore({ connectionString: url, table }));
        onTestFinished(() => Promise.all(stores.map((s) => s.close())).then(() => undefined));
        await stores[0]!.set('n', '0');
        const errors: string[] = [];
        const each = 10;
        await Promise.all(
          stores.map(async (store) => {
            for (let i = 0; i < each; i++) {
              try {
                const lock = await store.lock('k', { ttlMs: 5_000, waitMs: 0 });
                await lock?.release();
                for (;;) {
                  const read = await store.get('n');
                  const next = String(Number(read?.value) + 1);
                  if ((await store.set('n', next, { ifVersion: read?.version ?? 0 })) !== null) break;
                }
              } catch (err) {
                errors.push(isTokenwardenError(err) ? `${err.code}: ${err.message}` : String(err));
              }
            }
          }),
        );
        expect(errors).toEqual([]); // before: a few dozen "postgres query failed (40001)"
        expect((await stores[0]!.get('n'))?.value).toBe(String(stores.length * each));
      }, 60_000);
    }

    it('a synchronous standby named but not there (every commit waits): bounded ERR_STORE_TIMEOUT, nothing spent, no server session left waiting; the standby requirement lifted, one refresh', async () => {
      const seen = crashes();
      const { name, url } = await role();
      const { managers, spent, rejected } = await fleetOf(url, 2, `t_${id()}`, 500);
      const [a, b] = managers as [TokenManager, TokenManager];
      await a.refresh();
      expect((await b.getToken()).accessToken).toBe((await a.getToken()).accessToken);
      const held = await a.getToken();
      onTestFinished(() => standby(undefined));
      await standby('ghost');
      expect((await a.getToken()).accessToken).toBe(held.accessToken); // from memory
      for (let i = 0; i < 3; i++) {
        for (const manager of [a, b]) {
          expect(await failure(manager.refresh())).toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
        }
      }
      expect(spent()).toBe(1); // the first refresh only: no lock, no spend
      // A statement the store gave up on is cancelled on the server. Before, closing its connection left its
      // backend waiting for the standby (or for the row lock of one that was) for as long as the standby was
      // missing: one more server connection per timed-out statement, until max_connections refused everyone.
      expect(await leftBehind(name)).toBe(0);
      await standby(undefined);
      const fresh = await a.refresh();
      expect(fresh.accessToken).not.toBe(held.accessToken);
      expect(spent()).toBe(2);
      expect((await b.refresh()).accessToken).toBe(fresh.accessToken); // b takes what a stored
      expect(spent()).toBe(2);
      expect(rejected()).toBe(0);
      expect(seen).toEqual([]);
    }, 60_000);

    describe.skipIf(skipWithout('pgbouncer', hasPgBouncer))('behind PgBouncer', () => {
      for (const mode of ['transaction', 'session'] as const) {
        it(`${mode} pooling, a synchronous standby named but not there: ERR_STORE_TIMEOUT, the statements given up on cancelled through PgBouncer, PgBouncer still up`, async () => {
          const bouncer = await startPgBouncer(server.port, mode);
          const store = new PostgresStore({ connectionString: bouncer.url, table: `t_${id()}`, timeout: 500 });
          onTestFinished(async () => {
            await standby(undefined);
            await store.close();
            await bouncer.close();
          });
          await store.set('k', 'v0');
          await standby('ghost');
          for (let i = 0; i < 4; i++) {
            expect(await failure(store.set('k', `v${i}`))).toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
            // Before the cancel was written without closing first: PgBouncer 1.18 died ("bad client state"), and
            // every call after it failed with ECONNREFUSED.
            expect(await failure(store.lock('k', { ttlMs: 5_000, waitMs: 0 }))).toMatchObject({
              code: 'ERR_STORE_TIMEOUT',
            });
          }
          expect(await leftBehind()).toBe(0);
          await standby(undefined);
          expect(await store.set('k', 'v')).toBeGreaterThan(0);
          expect((await store.get('k'))?.value).toBe('v');
        }, 30_000);
      }
    });

    it("a table made by an application's own migration with narrower columns (varchar(255), integer, timestamp(3)): ERR_STORE naming them before the lock, nothing spent; altered to fit, one refresh", async () => {
      const { name, url } = await role({}, false);
      const table = `t_${id()}`;
      // What an ORM makes of the documented columns (Prisma: String → varchar / text, Int, DateTime → timestamp(3)).
      await admin.query(`CREATE TABLE ${table} (key varchar(255) PRIMARY KEY, value varchar(255) NOT NULL,
        version integer NOT NULL, expires_at timestamp(3), updated_at timestamp(3) NOT NULL DEFAULT now(),
        tenant text NOT NULL)`);
      await admin.query(`CREATE TABLE ${table}_locks (key text PRIMARY KEY, owner text NOT NULL,
        expires_at timestamptz NOT NULL)`);
      await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${table}, ${table}_locks TO ${name}`);
      const { managers, spent, rejected } = await fleetOf(url, 2, `public.${table}`);
      const [a, b] = managers as [TokenManager, TokenManager];
      for (const manager of [a, b]) {
        const err = await failure(manager.refresh());
        expect(err).toMatchObject({ code: 'ERR_STORE' });
        for (const said of [
          'key is character varying(255), needs text',
          'value is character varying(255), needs text',
          'version is integer, needs bigint',
          'expires_at is timestamp(3) without time zone, needs timestamptz',
          'tenant is NOT NULL without a default',
        ]) {
          expect(err?.message).toContain(said);
        }
      }
      // Before: the lock was taken and the refresh token spent, then the write of its successor refused (22001):
      // the new refresh token lived only in the memory of the process that spent it.
      expect(spent()).toBe(0);
      await admin.query(`ALTER TABLE ${table} ALTER key TYPE text, ALTER value TYPE text, ALTER version TYPE bigint,
        ALTER expires_at TYPE timestamptz, ALTER tenant SET DEFAULT ''`);
      const fresh = await a.refresh();
      expect(spent()).toBe(1);
      expect((await b.refresh()).accessToken).toBe(fresh.accessToken);
      expect(spent()).toBe(1);
      expect(rejected()).toBe(0);
    }, 30_000);

    it('a PostgreSQL-compatible database whose catalog cannot describe columns (42883): the tables are taken at their word, not refused', async () => {
      // A real 42883 from PostgreSQL: the role's search_path puts a schema whose format_type() says it does not exist
      // before pg_catalog, as a compatible database without the function answers.
      const { name, url } = await role();
      const compat = `compat_${id()}`;
      await admin.query(`CREATE SCHEMA ${compat}`);
      await admin.query(`GRANT USAGE ON SCHEMA ${compat} TO ${name}`);
      await admin.query(`CREATE FUNCTION ${compat}.format_type(oid, integer) RETURNS text LANGUAGE plpgsql AS
        $$ BEGIN RAISE EXCEPTION 'function format_type(oid, integer) does not exist' USING ERRCODE = '42883'; END $$`);
      await admin.query(`ALTER ROLE ${name} SET search_path = ${compat}, pg_catalog, public`);
      const store = new PostgresStore({ connectionString: url, table: `public.t_${id()}` });
      onTestFinished(() => store.close());
      expect(await store.set('k', 'v')).toBeGreaterThan(0); // made, then used
      expect((await store.get('k'))?.value).toBe('v');
      const lock = await store.lock('k', { ttlMs: 1_000, waitMs: 0 });
      expect(lock).toBeDefined();
      await lock?.release();
    });

    it('a role without CREATE on the schema: tables made beforehand by an administrator are used (createTable left on); a lock table missing is said so, not a bare "permission denied"', async () => {
      const { name, url } = await role({}, false);
      const table = `t_${id()}`;
      const owner = new PostgresStore({ connectionString: server.url, table });
      await owner.migrate();
      await owner.close();
      await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${table}, ${table}_locks TO ${name}`);
      const store = new PostgresStore({ connectionString: url, table });
      onTestFinished(() => store.close());
      expect(await store.set('k', 'v')).toBeGreaterThan(0);
      const lock = await store.lock('k', { ttlMs: 1_000, waitMs: 0 });
      expect(lock).toBeDefined();
      await lock?.release();
      // A main table made by hand, its lock table forgotten: the store would make it and may not.
      const bare = `t_${id()}`;
      await admin.query(`CREATE TABLE ${bare} (key text PRIMARY KEY, value text NOT NULL, version bigint NOT NULL,
        expires_at timestamptz, updated_at timestamptz NOT NULL DEFAULT now())`);
      await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${bare} TO ${name}`);
      const half = new PostgresStore({ connectionString: url, table: bare });
      onTestFinished(() => half.close());
      for (const call of [() => half.get('k'), () => half.lock('k', { ttlMs: 1_000, waitMs: 0 })]) {
        expect(await failure(call())).toMatchObject({
          code: 'ERR_STORE',
          message: expect.stringMatching(/does not exist and this role may not create it \(42501\): run migrate\(\)/),
        });
      }
      const deploy = new PostgresStore({ connectionString: server.url, table: bare });
      await deploy.migrate();
      await deploy.close();
      await admin.query(`GRANT SELECT, INSERT, UPDATE, DELETE ON ${bare}_locks TO ${name}`);
      expect(await half.lock('k', { ttlMs: 1_000, waitMs: 0 })).toBeDefined(); // no restart needed
    });
  },
);
