/**
 * PostgresStore under what a PostgreSQL operator does to a database: read-only, server-side time limits,
 * connections used up, the store's table dropped or truncated. Each test runs on a private cluster (never the
 * shared server) with a role of its own, so that settings made here touch nothing else. A server restart is
 * covered by the fleet fault suite (`test/faults/fleet-faults.test.ts`, `pg_ctl stop -m immediate`).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it, onTestFinished } from 'vitest';
import { GENERATION_WATCH_MS } from '../../src/stores/shared.js';
import { PostgresStore } from '../../src/stores/postgres.js';
import { failure } from '../support/crashes.js';
import {
  type PrivatePostgres,
  hasPgBouncer,
  pgBin,
  skipWithout,
  sleep,
  startPgBouncer,
  startPrivatePostgres,
} from '../support/private-servers.js';
import { expectReleasedSoon } from './contract.js';

let server: PrivatePostgres;
let admin: pg.Pool;
const id = (): string => randomBytes(4).toString('hex');

/** A login role of its own, with settings; its URL carries a password (trust auth ignores it) to look for. */
async function role(settings: Record<string, string> = {}, options = ''): Promise<{ name: string; url: string }> {
  const name = `tw_${id()}`;
  await admin.query(`CREATE ROLE ${name} LOGIN ${options}`);
  await admin.query(`GRANT CREATE, USAGE ON SCHEMA public TO ${name}`);
  for (const [key, value] of Object.entries(settings)) await admin.query(`ALTER ROLE ${name} SET ${key} = '${value}'`);
  return { name, url: `postgres://${name}:hunter2@127.0.0.1:${server.port}/postgres` };
}

/** Ends every session of a role (what a failover or a restart does to them). */
const terminate = (name: string) =>
  admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1', [name]);

describe.skipIf(skipWithout('the PostgreSQL server binaries', pgBin !== undefined))('PostgresStore faults', () => {
  beforeAll(async () => {
    server = await startPrivatePostgres();
    admin = new pg.Pool({ connectionString: server.url, max: 3 });
    admin.on('error', () => undefined);
  });
  afterAll(async () => {
    await admin?.end();
    await server?.close();
  });

  it('read-only: writes and the lock fail fast with ERR_STORE saying so, reads work, and it writes again once writable', async () => {
    const { name, url } = await role();
    const store = new PostgresStore({ connectionString: url, table: `t_${id()}`, timeout: '10s' });
    await store.set('k', 'v1');
    await admin.query(`ALTER ROLE ${name} SET default_transaction_read_only = on`);
    await terminate(name); // a session keeps the setting it started with
    expect((await store.get('k'))?.value).toBe('v1');
    for (const write of [
      () => store.set('k', 'v2'),
      () => store.set('k', 'v2', { ifVersion: 1 }),
      () => store.lock('k', { ttlMs: 10_000, waitMs: 0 }),
      () => store.delete('k'),
    ]) {
      const started = Date.now();
      const err = await failure(write());
      expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(/read-only/) });
      expect(err?.message).not.toContain('hunter2');
      expect(Date.now() - started).toBeLessThan(3_000); // at once, not after the 10 s time limit
    }
    expect((await store.get('k'))?.value).toBe('v1'); // nothing half done
    // The pool now holds read-only sessions; the database becomes writable again.
    await Promise.all([store.get('k'), store.get('k'), store.get('k')]);
    await admin.query(`ALTER ROLE ${name} RESET default_transaction_read_only`);
    expect(await store.set('k', 'v2')).toBeGreaterThan(0);
    const lock = await store.lock('k', { ttlMs: 10_000, waitMs: 0 });
    expect(lock).toBeDefined();
    await lock?.release();
    expect((await store.get('k'))?.value).toBe('v2');
    await store.close();
  });

  it('a release refused (the database read-only for a moment) is tried again: the lock is free soon after, not at the end of its lease', async () => {
    const { name, url } = await role();
    const table = `t_${id()}`;
    const a = new PostgresStore({ connectionString: url, table });
    const b = new PostgresStore({ connectionString: url, table });
    try {
      const lock = await a.lock('k', { ttlMs: 30_000, waitMs: 0 });
      expect(lock).toBeDefined();
      await admin.query(`ALTER ROLE ${name} SET default_transaction_read_only = on`);
      await terminate(name);
      await lock!.release(); // refused: read-only (and does not throw)
      await admin.query(`ALTER ROLE ${name} RESET default_transaction_read_only`);
      await terminate(name); // the read-only sessions go; new ones can write
      await expectReleasedSoon((options) => b.lock('k', options));
    } finally {
      await a.close();
      await b.close();
    }
  }, 30_000);

  it('a lock statement its backend ran only after the store gave up (the backend frozen, then thawed) holds the lock for seconds, not for its lease', async () => {
    const { name, url } = await role();
    const table = `t_${id()}`;
    const a = new PostgresStore({ connectionString: url, table, timeout: '500ms', poolOptions: { max: 1 } });
    const b = new PostgresStore({ connectionString: url, table });
    let frozen: number | undefined;
    try {
      await a.get('k'); // a's one connection, and the table
      const { rows } = await admin.query<{ pid: number }>('SELECT pid FROM pg_stat_activity WHERE usename = $1', [
        name,
      ]);
      expect(rows).toHaveLength(1);
      frozen = rows[0]!.pid;
      process.kill(frozen, 'SIGSTOP'); // the statement reaches the backend's socket; nothing runs it yet
      expect(await failure(a.lock('k', { ttlMs: 30_000, waitMs: 0 }))).toMatchObject({ code: 'ERR_STORE_TIMEOUT' });
      process.kill(frozen, 'SIGCONT'); // and now it runs: the store that sent it has given up on it
      frozen = undefined;
      let landed = false;
      for (let i = 0; i < 100 && !landed; i++) {
        const found = await admin.query(`SELECT 1 FROM ${table}_locks WHERE key = 'k'`);
        landed = found.rows.length === 1;
        if (!landed) await sleep(10);
      }
      expect(landed, 'the late statement took the lock').toBe(true);
      await expectReleasedSoon((options) => b.lock('k', options), 'held by the late statement for its whole lease');
    } finally {
      if (frozen !== undefined) process.kill(frozen, 'SIGCONT');
      await a.close();
      await b.close();
    }
  }, 30_000);

  for (const limit of ['lock_timeout', 'statement_timeout'] as const) {
    it(`${limit} on the role: a lock blocked by an operator's transaction fails with ERR_STORE and takes nothing`, async () => {
      const { url } = await role({ [limit]: '100ms' });
      const table = `t_${id()}`;
      const store = new PostgresStore({ connectionString: url, table });
      expect(await store.lock('k', { ttlMs: 50, waitMs: 0 })).toBeDefined(); // left to run out
      await sleep(100);
      const operator = await admin.connect();
      try {
        await operator.query('BEGIN');
        await operator.query(`SELECT * FROM ${table}_locks WHERE key = 'k' FOR UPDATE`);
        const err = await failure(store.lock('k', { ttlMs: 10_000, waitMs: 0 }));
        expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringContaining(limit) });
        await operator.query('COMMIT');
      } finally {
        operator.release();
      }
      const lock = await store.lock('k', { ttlMs: 10_000, waitMs: 0 });
      expect(lock).toBeDefined();
      await lock?.release();
      await store.close();
    });
  }

  it('idle_session_timeout and idle_in_transaction_session_timeout: closed connections are replaced, a held lease stays held', async () => {
    const { url } = await role({ idle_session_timeout: '150ms', idle_in_transaction_session_timeout: '150ms' });
    const table = `t_${id()}`;
    const store = new PostgresStore({ connectionString: url, table });
    const other = new PostgresStore({ connectionString: url, table });
    const held = await store.lock('k', { ttlMs: 10_000, waitMs: 0 });
    expect(held).toBeDefined();
    await Promise.all([store.set('a', '1'), store.set('b', '2'), other.get('a')]);
    await sleep(500); // the server closes every idle session: 'error' on pooled clients, no crash
    expect(await other.lock('k', { ttlMs: 10_000, waitMs: 0 })).toBeUndefined(); // not released early
    expect((await other.get('a'))?.value).toBe('1');
    await held?.release();
    const next = await other.lock('k', { ttlMs: 10_000, waitMs: 0 });
    expect(next).toBeDefined();
    await next?.release();
    await Promise.all([store.close(), other.close()]);
  });

  it('max connections reached (53300): ERR_STORE at once, saying so; works again when connections free up', async () => {
    const { url } = await role({}, 'CONNECTION LIMIT 2');
    const store = new PostgresStore({ connectionString: url, table: `t_${id()}`, timeout: '1s' });
    await store.set('k', 'v');
    await store.close();
    const hogs = [new pg.Client({ connectionString: url }), new pg.Client({ connectionString: url })];
    for (const hog of hogs) {
      hog.on('error', () => undefined);
      await hog.connect();
    }
    const again = new PostgresStore({ connectionString: url, table: store.table.replaceAll('"', ''), timeout: '10s' });
    for (const call of [() => again.get('k'), () => again.lock('k', { ttlMs: 1000, waitMs: 0 })]) {
      const started = Date.now();
      const err = await failure(call());
      expect(err).toMatchObject({ code: 'ERR_STORE', message: expect.stringMatching(/53300.*too many connections/) });
      expect(err?.message).not.toContain('hunter2');
      expect(Date.now() - started).toBeLessThan(3_000); // at once, not after the 10 s time limit
    }
    await Promise.all(hogs.map((hog) => hog.end()));
    expect((await again.get('k'))?.value).toBe('v');
    await again.close();
  });

  it('a pool of yours used up: ERR_STORE_TIMEOUT in time, and what timed out never runs later', async () => {
    const table = `t_${id()}`;
    const pool = new pg.Pool({ connectionString: server.url, max: 1 }); // no connectionTimeoutMillis: waits for ever
    const store = new PostgresStore({ pool, table, timeout: 300 });
    expect(await store.get('late')).toBeUndefined(); // the table made and checked: what follows waits for the pool only
    const busy = await pool.connect();
    const started = Date.now();
    const [set, lock] = await Promise.all([
      failure(store.set('late', 'v')),
      failure(store.lock('k', { ttlMs: 30_000, waitMs: 0 })),
    ]);
    expect(set?.code).toBe('ERR_STORE_TIMEOUT');
    expect(lock?.code).toBe('ERR_STORE_TIMEOUT');
    expect(Date.now() - started).toBeLessThan(300 + 2_000); // the 300 ms time limit, not the pool's wait for ever
    busy.release();
    await sleep(100);
    expect(await store.get('late')).toBeUndefined();
    const other = new PostgresStore({ connectionString: server.url, table });
    const taken = await other.lock('k', { ttlMs: 10_000, waitMs: 0 }); // no lease left by the abandoned lock
    expect(taken).toBeDefined();
    await taken?.release();
    await Promise.all([store.close(), other.close()]);
    await pool.end();
  });

  it('a pool of yours used by one store after another (made and closed per task): each connection keeps one listener of ours, not one per store', async () => {
    const table = `t_${id()}`;
    const pool = new pg.Pool({ connectionString: server.url, max: 1 });
    pool.on('error', () => undefined);
    onTestFinished(() => pool.end());
    const connection = await pool.connect(); // opened before any store: met by the stores, not by 'connect'
    const before = connection.listenerCount('error');
    connection.release();
    for (let i = 0; i < 15; i++) {
      const store = new PostgresStore({ pool, table });
      await store.set(`k${i}`, 'v');
      await store.close();
    }
    const again = await pool.connect();
    const listeners = again.listenerCount('error');
    again.release();
    expect(again).toBe(connection);
    expect(listeners).toBe(before + 1);
  });

  it('the table dropped while in use: made again on the next operation, with a reset; createTable: false says so', async () => {
    const table = `t_${id()}`;
    const store = new PostgresStore({ connectionString: server.url, table });
    const fixed = new PostgresStore({ connectionString: server.url, table, createTable: false });
    let resets = 0;
    store.on('reset', () => resets++);
    await store.set('k', 'v');
    expect((await fixed.get('k'))?.value).toBe('v');
    await admin.query(`DROP TABLE ${table}, ${table}_locks`);
    expect(await store.get('k')).toBeUndefined();
    expect(resets).toBe(1); // its entries are gone: every manager on the store writes back what it holds
    const err = await failure(fixed.set('k', 'v'));
    await admin.query(`DROP TABLE ${table}, ${table}_locks`);
    expect(await failure(fixed.get('k'))).toMatchObject({ code: 'ERR_STORE', message: /table does not exist/ });
    expect(err).toBeUndefined(); // (made again by the other store meanwhile)
    expect(await store.set('k', 'v2')).toBeGreaterThan(0);
    const lock = await store.lock('k', { ttlMs: 1000, waitMs: 0 });
    expect(lock).toBeDefined();
    await lock?.release();
    // Truncated: a miss, no error (no reset: see docs/stores.md).
    await admin.query(`TRUNCATE ${table}, ${table}_locks`);
    expect(await store.get('k')).toBeUndefined();
    expect(await store.set('k', 'v3', { ifVersion: 0 })).toBeGreaterThan(0);
    await Promise.all([store.close(), fixed.close()]);
  });

  describe.skipIf(skipWithout('pgbouncer', hasPgBouncer))('behind a PgBouncer repointed to another server', () => {
    it('a RELOAD onto another server (a failover runbook) while the store keeps its connections open: reset within the watch', async () => {
      const other = await startPrivatePostgres();
      onTestFinished(() => other.close());
      const bouncer = await startPgBouncer(server.port, 'transaction');
      onTestFinished(() => bouncer.close());
      const table = `t_${id()}`;
      const store = new PostgresStore({ connectionString: bouncer.url, table });
      const promoted = new pg.Client({ connectionString: other.url });
      onTestFinished(async () => {
        await store.close();
        await promoted.end().catch(() => undefined);
      });
      let resets = 0;
      store.on('reset', () => resets++);
      await store.set('k', 'v');
      expect((await store.get('k'))?.value).toBe('v');

      // The other server holds what this one holds — table, generation marker, entry — as a promoted replica would.
      await new PostgresStore({ connectionString: other.url, table }).migrate();
      await promoted.connect();
      const { rows } = await admin.query<{ key: string; value: string; version: string }>(
        `SELECT key, value, version FROM ${table}`,
      );
      for (const { key, value, version } of rows) {
        await promoted.query(`INSERT INTO ${table} (key, value, version) VALUES ($1, $2, $3)`, [key, value, version]);
      }
      await sleep(GENERATION_WATCH_MS + 500);
      expect(resets).toBe(0); // the watch looked, on the same server: nothing to report

      await bouncer.repoint(other.port);
      // Seen by the watch: the store made no new connection.
      await expect.poll(() => resets, { timeout: GENERATION_WATCH_MS * 3, interval: 50 }).toBe(1);
      expect((await store.get('k'))?.value).toBe('v');
      expect(resets).toBe(1);
    }, 30_000);
  });

  // Last: it restarts the file's server.
  it('another server behind the address (a restart, a failover) is a reset, before the statement that finds it; a new session on the same server is not', async () => {
    const { name, url } = await role();
    const store = new PostgresStore({ connectionString: url, table: `t_${id()}` });
    let resets = 0;
    store.on('reset', () => resets++);
    await store.set('k', 'v');
    await terminate(name); // its connections end: the next one reaches the same server
    expect((await store.get('k'))?.value).toBe('v');
    expect(resets).toBe(0);
    await server.stop();
    await server.start();
    let resetFirst: boolean | undefined;
    store.once('reset', () => (resetFirst ??= true));
    expect((await store.get('k'))?.value).toBe('v');
    resetFirst ??= false;
    expect(resets).toBe(1);
    expect(resetFirst).toBe(true);
    expect((await store.get('k'))?.value).toBe('v');
    expect(resets).toBe(1);
    await store.close();
  });
});
