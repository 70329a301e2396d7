/**
 * A token store in PostgreSQL (`tokenwarden/postgres`), for fleets that already share a database.
 *
 * One row per key: `(key, value, version, expires_at)`. Compare-and-set is a single conditional
 * `INSERT … ON CONFLICT … WHERE` or `UPDATE … WHERE version = $n`, atomic under PostgreSQL's row locking.
 *
 * The refresh lock is a lease row in `<table>_locks` — `(key, owner, expires_at)`, taken by one
 * `INSERT … ON CONFLICT DO UPDATE … WHERE expires_at <= now()` (a short lease, lengthened once it answered:
 * see `lock`) and released by a compare-and-delete on the owner — rather than an advisory lock or
 * `SELECT … FOR UPDATE`: both of those hold a connection (and, for `FOR UPDATE`, a transaction with its
 * snapshot) for the whole refresh, an HTTP round trip. With many subjects refreshing at once (per-user tokens)
 * that exhausts the pool, and session advisory locks do not survive a transaction-pooling PgBouncer. A lease
 * needs no connection while held; a crashed holder's lock is taken over when its lease (`ttlMs`) ends, as with
 * Redis. Times come from the database's clock, so hosts with skewed clocks agree.
 *
 * A failover to an asynchronous replica may lose the last writes: the store identifies the server (its
 * postmaster's start time) on every new connection, before its first statement; a different server — a
 * failover, or a restart, which with `synchronous_commit = off` may lose commits too — is a `reset`, so that
 * the fleet writes back what it holds before anyone spends. The row keyed `''` is the table's generation
 * marker: gone after a `TRUNCATE` or a `DELETE` of every row, which is a `reset` too.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect as netConnect } from 'node:net';
import type { Pool, PoolClient, PoolConfig } from 'pg';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import { NETWORK_CODES } from '../http/network.js';
import { Codec, type EncryptionOption, decodeOrMiss } from './codec.js';
import { LockWaiters } from './lock-waiters.js';
import {
  DEFAULT_TIMEOUT_MS,
  Generation,
  bounded,
  boundedInWords,
  checkKey,
  checkTtl,
  checkVersion,
  closedError,
  pollDelay,
  throwIfAborted,
  waitClock,
  releaseUntilLanded,
} from './shared.js';
import type { LockOptions, SetOptions, StoreEvents, StoreLock, StoreRecord, TokenStore } from './store.js';

/**
 * Options shared by both ways of building a {@link PostgresStore}.
 *
 * @example
 * ```ts
 * const common: PostgresStoreCommonOptions = { table: 'auth.tokens', createTable: false, timeout: '1s' };
 * new PostgresStore({ pool, ...common });
 * ```
 */
export interface PostgresStoreCommonOptions {
  /** The table, optionally schema-qualified (`'auth.tokens'`). Default `'tokenwarden_tokens'`. */
  table?: string;
  /**
   * Create the table on first use if it does not exist. Default `true` (see {@link PostgresStore.migrate}). Tables
   * that exist are used either way (a role without CREATE can use tables made for it), once their columns are
   * found to take what the store writes: otherwise every operation fails with `ERR_STORE` naming them, before any
   * lock is taken.
   */
  createTable?: boolean;
  /** Encrypt entries at rest (AES-256-GCM); several keys, newest first, to rotate. See {@link Codec}. */
  encryptionKey?: EncryptionOption;
  /**
   * Longest time one operation may take (connecting, a statement). Default `'2s'`. A statement past it is
   * cancelled on the server (the protocol's cancel request) and its connection dropped (no startup parameters
   * are sent, so the store works behind PgBouncer in transaction or session mode). A statement that meets a
   * serialization failure or a deadlock (40001, 40P01: `default_transaction_isolation` raised) runs again within it.
   */
  timeout?: Duration;
}

/**
 * Options for {@link PostgresStore}: a `connectionString` (the store creates, owns and ends its pool;
 * `pg` is loaded on first use) or a `pool` of yours (a `pg.Pool`, which the store never ends; a store made and closed
 * per task on it leaves one `error` listener on each connection, whatever the number of stores).
 *
 * @example
 * ```ts
 * const a: PostgresStoreOptions = { connectionString: process.env.DATABASE_URL!, table: 'auth.tokens' };
 * const b: PostgresStoreOptions = { pool: myPool, encryptionKey: process.env.TOKEN_KEY };
 * ```
 */
export type PostgresStoreOptions = PostgresStoreCommonOptions &
  (
    | {
        /** `postgres://user:password@host:5432/db` */
        connectionString: string;
        /** Extra `pg.Pool` options for the pool the store creates (default `max: 5`). */
        poolOptions?: PoolConfig;
        pool?: never;
      }
    | { pool: Pool; connectionString?: never; poolOptions?: never }
  );

/** `#server` for a database that cannot say which server answers. */
const UNIDENTIFIABLE = '';
/**
 * How much longer than the store's time limit a lock's first, short lease lasts (see `lock`): room for its
 * answer to come back and the statement that lengthens it to arrive.
 */
const TENTATIVE_MARGIN_MS = 1_000;
/** The key of the table's generation marker (see `#marker`). */
const MARKER = '';

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]{0,62}$/;

/**
 * Tokens in a PostgreSQL table, shared by every process that uses the same database and table.
 *
 * Every operation is bounded by `timeout`; a database that is down or slow makes operations fail with
 * `ERR_STORE` / `ERR_STORE_TIMEOUT` (a `TokenManager` then carries on in-process and recovers when the
 * database returns). Expired rows are read as missing and deleted from time to time.
 *
 * @example
 * ```ts
 * import { TokenManager, refreshToken } from 'tokenwarden';
 * import { PostgresStore } from 'tokenwarden/postgres';
 * const store = new PostgresStore({ connectionString: process.env.DATABASE_URL!, encryptionKey: process.env.TOKEN_KEY });
 * await store.migrate(); // optional: the table is also created on first use
 * const manager = new TokenManager({ source: refreshToken(options), store });
 * await manager.getToken();
 * await manager.close();
 * await store.close();
 * ```
 */
export class PostgresStore extends EventEmitter<StoreEvents> implements TokenStore {
  /** The quoted, possibly schema-qualified table name. */
  readonly table: string;
  /** The table of refresh-lock leases (`<table>_locks`). */
  readonly lockTable: string;
  readonly #tableName: string;
  readonly #options: PostgresStoreOptions;
  readonly #codec: Codec;
  readonly #timeoutMs: number;
  readonly #waiters = new LockWaiters(waitClock);
  readonly #held = new Set<StoreLock>();
  #pool: Promise<Pool> | undefined;
  #owned: Pool | undefined;
  #ready: Promise<void> | undefined;
  #lastSweep = Date.now();
  #closed = false;
  /** Whether this store has found or made its tables once (a second making means they were dropped). */
  #hadTable = false;
  /** The connections this store has used (each got an `error` listener then). */
  readonly #known = new WeakSet<PoolClient>();
  /** The server last identified (its postmaster's start time), see `#identify`. */
  #server: string | undefined;
  /** The table's generation marker (the row keyed `''`): see {@link Generation}. */
  readonly #generation = new Generation(this, () => this.#look());

  constructor(options: PostgresStoreOptions) {
    super();
    if (options === null || typeof options !== 'object' || (!options.connectionString && !options.pool)) {
      throw new TokenwardenError('ERR_CONFIG', 'PostgresStore needs a connectionString or a pool');
    }
    if (options.connectionString !== undefined && options.pool !== undefined) {
      throw new TokenwardenError('ERR_CONFIG', 'PostgresStore takes a connectionString or a pool, not both');
    }
    const table = options.table ?? 'tokenwarden_tokens';
    const parts = typeof table === 'string' ? table.split('.') : [];
    if (parts.length < 1 || parts.length > 2 || !parts.every((p) => IDENTIFIER.test(p))) {
      throw new TokenwardenError(
        'ERR_CONFIG',
        'table must be a name (or schema.name) of letters, digits and _, starting with a letter or _',
      );
    }
    this.#tableName = table;
    this.table = parts.map((p) => `"${p}"`).join('.');
    const locks = [...parts.slice(0, -1), `${(parts.at(-1) as string).slice(0, 57)}_locks`];
    this.lockTable = locks.map((p) => `"${p}"`).join('.');
    this.#options = options;
    this.#codec = new Codec(options.encryptionKey);
    this.#timeoutMs = toMs(options.timeout ?? DEFAULT_TIMEOUT_MS, 'timeout');
  }

  /**
   * Creates the table (and its expiry index) and the lock table if missing. Idempotent and safe to run from many processes
   * at once (serialised by an advisory transaction lock). Runs by itself on first use unless
   * `createTable: false`.
   *
   * @example
   * ```ts
   * await new PostgresStore({ connectionString }).migrate(); // e.g. in a deploy step
   * ```
   */
  async migrate(): Promise<void> {
    this.#check();
    const pool = await this.#connect();
    const { client } = await this.#client(pool);
    const name = this.#tableName.split('.').pop() as string;
    try {
      await this.#query(client, 'BEGIN');
      await this.#query(client, 'SELECT pg_advisory_xact_lock($1::bigint)', [lockId('migrate', this.#tableName)]);
      await this.#query(
        client,
        `CREATE TABLE IF NOT EXISTS ${this.table} (
          key text PRIMARY KEY,
          value text NOT NULL,
          version bigint NOT NULL,
          expires_at timestamptz,
          updated_at timestamptz NOT NULL DEFAULT now()
        )`,
      );
      await this.#query(
        client,
        `CREATE INDEX IF NOT EXISTS "${`${name}_expires_at`.slice(0, 63)}" ON ${this.table} (expires_at)
         WHERE expires_at IS NOT NULL`,
      );
      await this.#query(
        client,
        `CREATE TABLE IF NOT EXISTS ${this.lockTable} (
          key text PRIMARY KEY,
          owner text NOT NULL,
          expires_at timestamptz NOT NULL
        )`,
      );
      await this.#query(client, 'COMMIT');
      client.release();
    } catch (err) {
      drop(client, err); // drops the connection, and with it the transaction
      throw err;
    }
  }

  async get(key: string): Promise<StoreRecord | undefined> {
    this.#check();
    checkKey(key);
    // The generation marker in the same statement: an entry missing because the table was emptied is a `reset`.
    const { rows } = await this.#run(
      `SELECT key, value, version::text AS version FROM ${this.table}
       WHERE key = $1 AND (expires_at IS NULL OR expires_at > now()) OR key = ''`,
      [key],
    );
    let row: { value: string; version: string } | undefined;
    let marker: string | undefined;
    for (const r of rows as { key: string; value: string; version: string }[]) {
      if (r.key === MARKER) marker = r.value;
      else row = r;
    }
    // Reads work on a read-only database: a marker that cannot be written there is unknown, not an error.
    const seen = marker ?? (await this.#marker().catch(() => null));
    if (this.#generation.changed(seen)) this.emit('reset');
    if (row === undefined) return undefined;
    const value = decodeOrMiss(this.#codec, key, row.value, (event) => this.emit('corrupt', event));
    return value === undefined ? undefined : { value, version: Number(row.version) };
  }

  async set(key: string, value: string, options: SetOptions = {}): Promise<number | null> {
    this.#check();
    checkKey(key);
    checkVersion(options.ifVersion);
    const ttlMs = checkTtl(options.ttlMs, 'ttlMs');
    const sealed = this.#codec.encode(key, value);
    // Versions grow with time as well (the server's, in 10 µs steps), so that an entry deleted and written again
    // never repeats one: a compare-and-set that read the old entry cannot land on the new one.
    const tick = `(extract(epoch from clock_timestamp()) * 100000)::bigint`;
    const expires = `CASE WHEN $3::bigint IS NULL THEN NULL ELSE now() + $3::bigint * interval '1 millisecond' END`;
    const params: unknown[] = [key, sealed, ttlMs ?? null];
    let sql: string;
    if (options.ifVersion === undefined || options.ifVersion === 0) {
      sql = `INSERT INTO ${this.table} AS e (key, value, version, expires_at) VALUES ($1, $2, ${tick}, ${expires})
        ON CONFLICT (key) DO UPDATE SET value = excluded.value, version = GREATEST(e.version + 1, excluded.version),
          expires_at = excluded.expires_at, updated_at = now()
        ${options.ifVersion === 0 ? 'WHERE e.expires_at IS NOT NULL AND e.expires_at <= now()' : ''}
        RETURNING version::text AS version`;
    } else {
      params.push(String(options.ifVersion));
      sql = `UPDATE ${this.table} SET value = $2, version = GREATEST(version + 1, ${tick}), expires_at = ${expires},
          updated_at = now()
        WHERE key = $1 AND version = $4::bigint AND (expires_at IS NULL OR expires_at > now())
        RETURNING version::text AS version`;
    }
    const { rows } = await this.#run(sql, params);
    this.#sweep();
    const row = rows[0] as { version: string } | undefined;
    return row === undefined ? null : Number(row.version);
  }

  async delete(key: string): Promise<void> {
    this.#check();
    checkKey(key);
    await this.#run(`DELETE FROM ${this.table} WHERE key = $1`, [key]);
  }

  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    this.#check();
    checkKey(key);
    const ttlMs = checkTtl(options.ttlMs, 'ttlMs') as number;
    const deadline = Date.now() + Math.max(0, options.waitMs);
    const owner = randomUUID();
    // The lease is taken short, then lengthened once its answer is in: a statement can run after the store
    // gave up on it (its backend frozen or stalled, then resumed; the connection dropped meanwhile does not stop
    // a statement already in the backend's socket), and a lease that no one holds must not keep the fleet
    // waiting for all of `ttlMs`. The short lease outlasts the time limit of the statement that takes it.
    const firstMs = Math.min(Math.ceil(ttlMs), this.#timeoutMs + TENTATIVE_MARGIN_MS);
    for (let attempt = 0; ; attempt++) {
      throwIfAborted(options.signal);
      this.#check();
      const { rows } = await this.#run(
        `INSERT INTO ${this.lockTable} AS l (key, owner, expires_at)
           VALUES ($1, $2, now() + $3::bigint * interval '1 millisecond')
         ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at
           WHERE l.expires_at <= now()
         RETURNING xmax::text <> '0' AS taken_over`,
        [key, owner, firstMs],
      );
      if (rows.length === 1) {
        // A lease row left behind (updated, not inserted: xmax is set) was never released by its holder.
        const lock = this.#holding(key, owner, ttlMs, (rows[0] as { taken_over: boolean }).taken_over);
        if (firstMs === Math.ceil(ttlMs)) return lock;
        // Lengthened while still ours; a failure leaves the short lease to run out (or to the release).
        const lengthened = await this.#renew(key, owner, ttlMs).catch(async (err: unknown) => {
          await lock.release();
          throw err;
        });
        if (lengthened) return lock;
        await lock.release(); // the short lease ran out before its answer came back: try again, if there is time
      }
      const now = Date.now();
      if (now >= deadline) return undefined;
      // Waiters in this process are woken at once on release; other processes' releases are polled.
      await this.#waiters.wait(key, Math.min(deadline - now, pollDelay(attempt, 50)), options.signal);
    }
  }

  /** Releases the locks it holds and ends the pool it created; a pool passed in stays open. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#generation.close();
    await Promise.all([...this.#held].map((lock) => lock.release()));
    const owned = this.#owned;
    this.#owned = undefined;
    if (owned !== undefined) await bounded(() => owned.end(), this.#timeoutMs, 'postgres end').catch(() => undefined);
  }

  // ---------------------------------------------------------------------------------------------

  #check(): void {
    if (this.#closed) throw closedError();
  }

  #holding(key: string, owner: string, ttlMs: number, takenOver: boolean): StoreLock {
    const lock: StoreLock = {
      takenOver,
      // Still ours and its lease not run out: the lease starts again (one statement, under the row's lock).
      renew: async () => {
        this.#check();
        if (!this.#held.has(lock)) return false;
        return this.#renew(key, owner, ttlMs);
      },
      release: async () => {
        if (!this.#held.delete(lock)) return;
        // Only our own lease is removed (a lease that ran out may belong to someone else by now); a
        // failure is tried again until it lands or the lease ends.
        await releaseUntilLanded(
          () => this.#run(`DELETE FROM ${this.lockTable} WHERE key = $1 AND owner = $2`, [key, owner]),
          Date.now() + ttlMs,
          () => this.#closed,
        );
        this.#waiters.notify(key);
      },
    };
    this.#held.add(lock);
    return lock;
  }

  /** Restarts a lease of `ttlMs` if it is still `owner`'s and has not run out (one statement, under the row's lock). */
  async #renew(key: string, owner: string, ttlMs: number): Promise<boolean> {
    const { rows } = await this.#run(
      `UPDATE ${this.lockTable} SET expires_at = now() + $3::bigint * interval '1 millisecond'
         WHERE key = $1 AND owner = $2 AND expires_at > now()
       RETURNING owner`,
      [key, owner, Math.ceil(ttlMs)],
    );
    return rows.length === 1;
  }

  /**
   * Runs one statement on a pooled connection, after making sure the table exists. A table dropped under
   * the store (42P01) is made again and the statement run once more, unless `createTable: false`.
   *
   * A connection opened earlier may hold a session the server has ended since (a restart, a terminated
   * backend, `idle_session_timeout`), or one that is read-only for good: a session keeps the
   * `default_transaction_read_only` it started with, so a pool filled while the database was read-only
   * would refuse writes long after it is writable again. A statement failing that way is run again on
   * another connection, and only an answer from a connection opened for it is final. Running one again is
   * safe for every statement here: a lock or a compare-and-set that landed before its answer was lost finds
   * itself already done and reports "not acquired" / a conflict, which the fleet settles. A serialization
   * failure or a deadlock (40001, 40P01) rolled the statement back: it is run again on the same connection.
   */
  async #run(sql: string, params: unknown[], again = true): Promise<{ rows: unknown[] }> {
    const pool = await this.#connect();
    await this.#ensureTable();
    const deadline = Date.now() + this.#timeoutMs;
    let serialization = 0;
    for (;;) {
      const { client, opened } = await this.#client(pool, deadline);
      try {
        const result = await this.#query(client, sql, params, deadline);
        client.release();
        return result;
      } catch (err) {
        const state = sqlState(err);
        if (state !== undefined && RETRIED.has(state)) {
          // Under `default_transaction_isolation = 'repeatable read'` or `'serializable'` (on the database or
          // the role), two stores writing one row at once fail one of them with 40001 rather than re-checking
          // the row as READ COMMITTED does; 40P01 is PostgreSQL breaking a deadlock. Either way the statement's
          // transaction was rolled back, so running it again is exact: ordinary contention of a fleet is not a
          // store failure. The session is sound and goes back to the pool.
          client.release();
          serialization++;
          const pause = Math.min(deadline - Date.now() - 1, pollDelay(serialization, 20));
          if (pause >= 0) {
            await new Promise<void>((resolve) => setTimeout(resolve, pause).unref());
            continue;
          }
          throw err;
        }
        // Dropped, not returned: a connection whose statement failed or timed out may be broken, busy, or
        // in a session state that no longer holds (read-only).
        drop(client, err);
        if (!opened && staleSession(err) && Date.now() < deadline) continue;
        if (state === '42P01' && again && this.#options.createTable !== false) {
          this.#ready = undefined;
          return this.#run(sql, params, false);
        }
        throw err;
      }
    }
  }

  async #query(
    client: PoolClient,
    sql: string,
    params?: unknown[],
    deadline = Date.now() + this.#timeoutMs,
  ): Promise<{ rows: unknown[] }> {
    return boundedInWords(
      () => client.query(sql, params),
      Math.max(1, deadline - Date.now()),
      'postgres query',
      SQLSTATES,
    );
  }

  /**
   * A pooled connection, and whether it was opened for this call. Waiting for one is bounded, and a
   * connection that arrives after the time limit goes straight back to the pool: a statement never runs
   * after its caller has given up (a lock taken then would be held by no one until its lease ends).
   */
  async #client(pool: Pool, deadline = Date.now() + this.#timeoutMs): Promise<{ client: PoolClient; opened: boolean }> {
    const client = await boundedInWords(
      () => pool.connect(),
      Math.max(1, deadline - Date.now()),
      'postgres connect',
      SQLSTATES,
      { onLate: (late) => late.release(), codeOf: connectCode },
    );
    const opened = !this.#known.has(client);
    if (opened) {
      this.#known.add(client);
      // A connection the server closes while the store holds it emits 'error': without a listener, a crash.
      // One listener per connection, whichever store met it first (a pool of yours outlives its stores).
      listenOnce(client);
      // Before its first statement: which server answers (a new connection may reach a new server).
      try {
        await this.#identify(client, deadline);
      } catch (err) {
        drop(client, err);
        throw err;
      }
    }
    return { client, opened };
  }

  /**
   * Reads which server answers: its postmaster's start time, which changes with a restart and with a failover
   * (the promoted replica, or the server that now answers on this address, started at another time). A
   * different server than the last one may hold older entries than processes do — an asynchronous replica that
   * lagged, or a restart that lost unflushed commits (`synchronous_commit = off`) — so the store emits `reset`
   * (before the statement that found it runs) and every `TokenManager`/`UserTokens` writes back what it holds
   * before anyone spends. One round trip per new connection. A proxy (PgBouncer) repointed to another server
   * while the store's connections to the proxy go on working is seen by the generation watch, which asks too
   * (see `#look`). A server without the function (42883: a PostgreSQL-compatible database) is not identified.
   */
  async #identify(client: PoolClient, deadline: number): Promise<void> {
    if (this.#server === UNIDENTIFIABLE) return;
    let rows: unknown[];
    try {
      ({ rows } = await this.#query(client, 'SELECT pg_postmaster_start_time()::text AS started', [], deadline));
    } catch (err) {
      if (sqlState(err) !== '42883') throw err;
      this.#server = UNIDENTIFIABLE;
      return;
    }
    if (this.#answeredBy((rows[0] as { started?: string } | undefined)?.started)) this.emit('reset');
  }

  /** Takes the start time of the server that answered: whether it is another server than the last one. */
  #answeredBy(started: string | undefined): boolean {
    if (started === undefined || started === this.#server) return false;
    const changed = this.#server !== undefined;
    this.#server = started;
    return changed;
  }

  /**
   * The generation watch's look (every 2 s while a manager uses the store): the table's marker, and which
   * server answers — on a pooled connection that may be old, so that a proxy repointed to another server (a
   * PgBouncer `RELOAD` in a failover, in transaction pooling) is a `reset` within the watch, not only at the
   * next new connection.
   */
  async #look(): Promise<string | undefined> {
    const started = this.#server === UNIDENTIFIABLE ? 'NULL' : 'pg_postmaster_start_time()::text';
    const { rows } = await this.#run(
      `SELECT ${started} AS started, (SELECT value FROM ${this.table} WHERE key = '') AS marker`,
      [],
    );
    const row = rows[0] as { started: string | null; marker: string | null } | undefined;
    if (this.#answeredBy(row?.started ?? undefined)) this.emit('reset');
    return row?.marker ?? (await this.#marker());
  }

  #ensureTable(): Promise<void> {
    this.#ready ??= this.#prepare().catch((err: unknown) => {
      this.#ready = undefined;
      throw err;
    });
    return this.#ready;
  }

  /**
   * Finds the tables (making them if missing, unless `createTable: false`) and checks that their columns take what
   * the store writes, once, before the first statement: a table made by hand or by an application's own
   * migrations with narrower types (`version integer`, `value varchar(255)`, a NOT NULL column of its own) accepts
   * the lock, then refuses the write of a refresh's result — the refresh token spent and its successor held only in
   * the memory of the process that spent it. Refused here, no lock is taken and nothing is spent. `timestamp
   * without time zone` is read in each session's `TimeZone`: sessions in different zones would disagree on when a
   * lease ends, and two of them would hold one lock.
   */
  async #prepare(): Promise<void> {
    // Read first so that a role without CREATE privilege can use a table made for it.
    let columns = await this.#columns();
    let present = { table: columns.some((c) => !c.locks), locks: columns.some((c) => c.locks) };
    if (!present.table || !present.locks) {
      if (this.#options.createTable === false) {
        // Statements on a missing table say so (42P01); what is there is checked, and the rest again next time.
        const wrong = misfits(columns, present);
        if (wrong !== undefined) throw this.#misfit(wrong);
        this.#ready = undefined;
        return;
      }
      await this.migrate().catch((err: unknown) => {
        if (sqlState(err) !== '42501') throw err;
        throw new TokenwardenError(
          'ERR_STORE',
          `${this.table} or ${this.lockTable} does not exist and this role may not create it (42501): run ` +
            'migrate() as a role that may (a deploy step), then grant this one SELECT, INSERT, UPDATE, DELETE on both',
          { cause: err },
        );
      });
      // Made again after this store used it: dropped under the fleet, its entries are gone (see `reset`).
      if (this.#hadTable) this.emit('reset');
      columns = await this.#columns();
      present = { table: true, locks: true };
    }
    this.#hadTable = true;
    const wrong = misfits(columns, present);
    if (wrong !== undefined) throw this.#misfit(wrong);
  }

  #misfit(wrong: string): TokenwardenError {
    return new TokenwardenError(
      'ERR_STORE',
      `${this.table} has columns the store cannot write (${wrong}): make it with migrate(), or see docs/stores.md`,
    );
  }

  /**
   * The columns of the table and of the lock table (none for a table that does not exist). A PostgreSQL-compatible
   * database whose catalog cannot say (42883, 42703: no `format_type` or `pg_attribute` column) is taken at its
   * word: only whether the tables exist is read, and their columns are taken to fit.
   */
  async #columns(): Promise<Column[]> {
    const pool = await this.#connect();
    const read = async (sql: string): Promise<unknown[]> => {
      const { client } = await this.#client(pool);
      try {
        const { rows } = await this.#query(client, sql, [this.table, this.lockTable]);
        client.release();
        return rows;
      } catch (err) {
        drop(client, err);
        throw err;
      }
    };
    try {
      return (await read(
        `SELECT a.attrelid = to_regclass($2) AS locks, a.attname AS name,
                format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AND NOT a.atthasdef AS required
           FROM pg_attribute a
          WHERE a.attrelid IN (to_regclass($1), to_regclass($2)) AND a.attnum > 0 AND NOT a.attisdropped`,
      )) as Column[];
    } catch (err) {
      if (!['42883', '42703'].includes(sqlState(err) ?? '')) throw err;
      const [row] = (await read(
        'SELECT to_regclass($1) IS NOT NULL AS "table", to_regclass($2) IS NOT NULL AS locks',
      )) as { table: boolean; locks: boolean }[];
      return (['table', 'locks'] as const)
        .filter((which) => row?.[which] === true)
        .flatMap((which) =>
          Object.keys(WRITTEN[which]).map((name) => ({
            locks: which === 'locks',
            name,
            type: FITS[name] as string,
            required: false,
          })),
        );
    }
  }

  /**
   * The table's generation marker: the row keyed `''` (no caller's key: keys are 1 to 1024 characters),
   * never expiring; written when there is none (a new table, or one emptied by `TRUNCATE` or `DELETE`).
   */
  async #marker(): Promise<string> {
    for (let round = 0; round < 2; round++) {
      const found = await this.#run(`SELECT value FROM ${this.table} WHERE key = ''`, []);
      const value = (found.rows[0] as { value: string } | undefined)?.value;
      if (value !== undefined) return value;
      const made = await this.#run(
        `INSERT INTO ${this.table} (key, value, version) VALUES ('', $1, 0) ON CONFLICT (key) DO NOTHING
         RETURNING value`,
        [`${Date.now()}:${randomUUID()}`],
      );
      const written = (made.rows[0] as { value: string } | undefined)?.value;
      if (written !== undefined) return written;
      // Another process wrote one at the same moment: read it.
    }
    throw new TokenwardenError('ERR_STORE', "the store's generation marker could not be read");
  }

  /** Deletes long-expired rows now and then (reads already ignore them). */
  #sweep(): void {
    const now = Date.now();
    if (now - this.#lastSweep < 10 * 60_000) return;
    this.#lastSweep = now;
    void this.#run(`DELETE FROM ${this.table} WHERE expires_at < now() - interval '1 minute'`, []).catch(
      () => undefined,
    );
    // Lease rows are kept a day past their lease: a lock taken over from one was never released (`takenOver`).
    void this.#run(`DELETE FROM ${this.lockTable} WHERE expires_at < now() - interval '1 day'`, []).catch(
      () => undefined,
    );
  }

  #connect(): Promise<Pool> {
    this.#pool ??= this.#open().catch((err: unknown) => {
      this.#pool = undefined;
      throw err;
    });
    return this.#pool;
  }

  async #open(): Promise<Pool> {
    const { pool, connectionString, poolOptions } = this.#options;
    if (pool !== undefined) {
      listenOnEveryConnection(pool);
      return pool;
    }
    const pg = await loadPg();
    const created = new pg.Pool({
      connectionString,
      max: 5,
      connectionTimeoutMillis: this.#timeoutMs,
      // Client-side only: a startup parameter such as statement_timeout is refused by PgBouncer. A query
      // past its time limit makes the pool drop its connection (and with it the statement).
      query_timeout: this.#timeoutMs + 500,
      idleTimeoutMillis: 10_000,
      allowExitOnIdle: true,
      ...poolOptions,
    });
    // An idle connection that breaks (server restart) must not crash the process; the next query reconnects.
    created.on('error', () => undefined);
    listenOnEveryConnection(created);
    if (this.#closed) {
      await created.end().catch(() => undefined);
      throw closedError();
    }
    this.#owned = created;
    return created;
  }
}

/** pg's TLS refusal, which has no code of its own (see `connectCode`). */
const NO_TLS = 'NO_TLS';

/**
 * What an operator should know about the SQLSTATEs (and network errors) a store meets in service (the driver's
 * message is never shown).
 */
const SQLSTATES: ReadonlyMap<string, string> = new Map([
  ...NETWORK_CODES,
  ...Object.entries({
    [NO_TLS]: 'TLS was asked (ssl, sslmode) of a server that has it off',
    '3D000': 'the database does not exist',
    '28000':
      'the server refused the role (it does not exist, or no pg_hba.conf entry lets it in: none for it, or one that requires TLS or a client certificate)',
    '28P01': 'wrong password',
    '25006': 'the database is read-only (default_transaction_read_only, or a hot standby)',
    '53300': 'too many connections (max_connections or a role or database connection limit)',
    '53400': 'the server is out of a configured resource',
    '57014': 'statement canceled (statement_timeout, or an administrator)',
    '55P03': 'lock not available in time (lock_timeout)',
    '25P03': 'the session was closed by idle_in_transaction_session_timeout',
    '57P05': 'the session was closed by idle_session_timeout',
    '57P01': 'the server is shutting down or the session was terminated',
    '57P02': 'the server is shutting down',
    '57P03': 'the server is starting up or in recovery',
    '40001':
      'could not serialize access (default_transaction_isolation is repeatable read or serializable), retried until the time limit',
    '40P01': 'deadlock detected, retried until the time limit',
    '42P01': 'the table does not exist',
    '3F000': "no schema to make the table in (the role's search_path names none that exists): give the table's schema",
    '42501':
      'permission denied: the role needs SELECT, INSERT, UPDATE and DELETE on the table and on its lock table (see docs/stores.md)',
  }),
]);

/**
 * The code of a failed connection: the driver's, or, for pg's one failure that has none — TLS asked (`ssl`,
 * `sslmode=require`) of a server that answered it has no TLS — {@link NO_TLS}. The message is matched, never
 * shown.
 */
function connectCode(cause: unknown): unknown {
  const code = (cause as { code?: unknown } | undefined)?.code;
  if (code !== undefined) return code;
  return cause instanceof Error && cause.message === 'The server does not support SSL connections' ? NO_TLS : undefined;
}

const listenedPools = new WeakSet<Pool>();

/**
 * Gives every connection `pool` opens an `error` listener from the moment it is handed out. pg-pool takes its own
 * listener off a new connection as it hands it out, in the same tick as the connection's last startup message;
 * a session the server ends right then (`pg_terminate_backend`, a fast shutdown, a failover manager closing
 * sessions) sends its FATAL message in the same read, and pg emits it as an `error` event before the caller's
 * code resumes: with no listener, an uncaught exception that ends the process. The store's statement on it fails
 * with `ERR_STORE` instead. On a pool of yours this adds one listener to each new connection, nothing else.
 */
function listenOnEveryConnection(pool: Pool): void {
  if (listenedPools.has(pool)) return;
  listenedPools.add(pool);
  pool.on('connect', listenOnce);
}

const listenedClients = new WeakSet<PoolClient>();

/** One `error` listener on `client`, however many stores (and pools' `connect` events) meet it. */
function listenOnce(client: PoolClient): void {
  if (listenedClients.has(client)) return;
  listenedClients.add(client);
  client.on('error', () => undefined);
}

/** The SQLSTATE of a driver error, or of the driver error a `TokenwardenError` wraps. */
function sqlState(err: unknown): string | undefined {
  const e = err as { code?: unknown; cause?: { code?: unknown } } | null;
  const code = typeof e?.cause?.code === 'string' ? e.cause.code : e?.code;
  return typeof code === 'string' && /^[0-9A-Z]{5}$/.test(code) ? code : undefined;
}

/**
 * Drops a connection after a failed statement. One that timed out is first asked to stop (see `cancelRunning`):
 * closing a connection does not stop its backend, which goes on waiting for what held it up — a row lock, or a
 * commit waiting for a synchronous standby that is not there (`synchronous_standby_names`) — holding its row
 * locks and a server connection for as long, so that each timed-out statement of a fleet left one more behind
 * until the database refused connections (53300) to everyone.
 */
function drop(client: PoolClient, err: unknown): void {
  if (!isTokenwardenError(err) || err.code !== 'ERR_STORE_TIMEOUT') {
    client.release(true);
    return;
  }
  // Released only once the cancel was sent: a PgBouncer forgets a client that is gone, and with it where to send
  // its cancel. Held out of the pool meanwhile, so that nothing else runs on the session being cancelled.
  void cancelRunning(client, CANCEL_MS).finally(() => client.release(true));
}

/** How long a cancel request may take to send (it is one packet; the server answers by closing). */
const CANCEL_MS = 2_000;

/**
 * Sends the protocol's CancelRequest for `client`'s session (what psql's Ctrl-C and libpq's `PQcancel` do): a new
 * connection to the same server (or PgBouncer, which passes it on) carrying the session's process id and secret
 * key. Like pg's and libpq's it is sent before any TLS, as the server reads it before negotiating. Best effort:
 * the session is dropped whatever the answer.
 */
function cancelRunning(client: PoolClient, ms: number): Promise<void> {
  const session = client as unknown as { processID?: unknown; secretKey?: unknown; host?: unknown; port?: unknown };
  const { processID, secretKey, host, port } = session;
  if (typeof processID !== 'number' || typeof secretKey !== 'number' || typeof port !== 'number') {
    return Promise.resolve();
  }
  const where = typeof host === 'string' && host !== '' ? host : 'localhost';
  return new Promise<void>((resolve) => {
    const socket = where.startsWith('/') ? netConnect(`${where}/.s.PGSQL.${port}`) : netConnect(port, where);
    socket.unref();
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve();
    };
    const timer = setTimeout(done, ms);
    timer.unref();
    socket.on('error', done);
    socket.on('close', done);
    socket.on('connect', () => {
      const packet = Buffer.alloc(16);
      packet.writeInt32BE(16, 0);
      packet.writeInt32BE(80877102, 4); // the CancelRequest code
      packet.writeInt32BE(processID, 8);
      packet.writeInt32BE(secretKey, 12);
      // Written, not half-closed: the server (or PgBouncer) closes the connection once it has passed the request
      // on, as libpq's PQcancel waits for. A client that closes first crashed PgBouncer 1.18 ("bad client state").
      socket.write(packet);
    });
  });
}

/** A column of the store's tables, as `#columns` reads it. */
interface Column {
  locks: boolean;
  name: string;
  type: string;
  required: boolean;
}

/** Text of any length, or of at least `min` characters. */
const text = (min: number) => (type: string) => {
  const m = /^(?:text|character varying(?:\((\d+)\))?)$/.exec(type);
  return m !== null && (m[1] === undefined || Number(m[1]) >= min);
};
/** A time with its zone, to the millisecond at least (leases are in milliseconds). */
const instant = (type: string) => {
  const m = /^timestamp(?:\((\d)\))? with time zone$/.exec(type);
  return m !== null && (m[1] === undefined || Number(m[1]) >= 3);
};

/** What each column the store writes must take (keys are up to 1024 characters; versions pass 2^31). */
const WRITTEN: Record<'table' | 'locks', Record<string, [(type: string) => boolean, string]>> = {
  table: {
    key: [text(1024), 'text'],
    value: [text(Infinity), 'text'],
    version: [(t) => t === 'bigint' || t === 'numeric', 'bigint'],
    expires_at: [instant, 'timestamptz'],
    updated_at: [(t) => t.startsWith('timestamp'), 'timestamptz'],
  },
  locks: {
    key: [text(1024), 'text'],
    owner: [(t) => text(36)(t) || t === 'uuid', 'text'],
    expires_at: [instant, 'timestamptz'],
  },
};

/** A type that fits each column (what `migrate` makes), for a catalog that cannot be read. */
const FITS: Record<string, string> = {
  key: 'text',
  value: 'text',
  owner: 'text',
  version: 'bigint',
  expires_at: 'timestamp with time zone',
  updated_at: 'timestamp with time zone',
};

/**
 * What in `columns` the store cannot write, in a few words (`version is integer, needs bigint`), or `undefined`.
 * Only the tables `present` are checked.
 */
function misfits(columns: Column[], present: { table: boolean; locks: boolean }): string | undefined {
  const wrong: string[] = [];
  for (const which of ['table', 'locks'] as const) {
    if (!present[which]) continue;
    const prefix = which === 'locks' ? 'the lock table: ' : '';
    const mine = columns.filter((c) => c.locks === (which === 'locks'));
    for (const [name, [fits, needs]] of Object.entries(WRITTEN[which])) {
      const column = mine.find((c) => c.name === name);
      if (column === undefined) wrong.push(`${prefix}no ${name}`);
      else if (!fits(column.type)) wrong.push(`${prefix}${name} is ${column.type.slice(0, 60)}, needs ${needs}`);
    }
    for (const column of mine) {
      if (column.required && !Object.hasOwn(WRITTEN[which], column.name)) {
        wrong.push(`${prefix}${column.name.slice(0, 63)} is NOT NULL without a default`);
      }
    }
  }
  return wrong.length === 0 ? undefined : wrong.slice(0, 5).join('; ');
}

/** SQLSTATEs after which the statement's transaction was rolled back and running it again is exact. */
const RETRIED: ReadonlySet<string> = new Set(['40001', '40P01']);

/** A failure that says the session is unusable (ended by the server, or read-only), not the statement wrong. */
function staleSession(err: unknown): boolean {
  const state = sqlState(err);
  if (state !== undefined) return ['25006', '57P01', '57P05', '25P03'].includes(state);
  const cause = (err as { cause?: { message?: unknown; code?: unknown } } | null)?.cause;
  return (
    cause?.message === 'Connection terminated unexpectedly' ||
    cause?.message === 'Client has encountered a connection error and is not queryable' ||
    cause?.code === 'ECONNRESET' ||
    cause?.code === 'EPIPE'
  );
}

/** A 64-bit advisory lock id for `name` (signed, as PostgreSQL's bigint), as a decimal string. */
function lockId(kind: string, name: string): string {
  return createHash('sha256').update(`tokenwarden:${kind}:${name}`).digest().readBigInt64BE(0).toString();
}

async function loadPg(): Promise<typeof import('pg')> {
  try {
    const mod = (await import('pg')) as typeof import('pg') & { default?: typeof import('pg') };
    return mod.default ?? mod;
  } catch (err) {
    throw new TokenwardenError('ERR_CONFIG', "PostgresStore needs the 'pg' package: npm install pg", { cause: err });
  }
}
