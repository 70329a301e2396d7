/**
 * The TokenStore seam: where tokens are kept and shared, with a lock so that one process at a time
 * refreshes a given token. Memory, file, Redis and PostgreSQL implement it; so can you.
 *
 * @module
 */

/**
 * A stored value and its version (incremented on every write; used for compare-and-set).
 *
 * @example
 * ```ts
 * const record: StoreRecord | undefined = await store.get(key);
 * if (record) await store.set(key, next, { ifVersion: record.version });
 * ```
 */
export interface StoreRecord {
  readonly value: string;
  readonly version: number;
}

/**
 * Options for {@link TokenStore.set}.
 *
 * @example
 * ```ts
 * await store.set(key, value, { ttlMs: 3_600_000, ifVersion: 0 }); // only if absent; gone after an hour
 * ```
 */
export interface SetOptions {
  /** Delete the entry after this many milliseconds. Absent: keep until deleted. */
  ttlMs?: number;
  /**
   * Compare-and-set: write only if the entry's current version is this one (`0`: only if absent).
   * Absent: write unconditionally.
   */
  ifVersion?: number;
}

/**
 * Options for {@link TokenStore.lock}.
 *
 * @example
 * ```ts
 * const lock = await store.lock(key, { ttlMs: 30_000, waitMs: 5_000, signal });
 * ```
 */
export interface LockOptions {
  /** The lock expires by itself after this long (a crashed holder cannot block others forever). */
  ttlMs: number;
  /** Give up after waiting this long; `lock()` then resolves to `undefined`. */
  waitMs: number;
  /** Stops waiting. */
  signal?: AbortSignal;
}

/**
 * A held lock.
 *
 * @example
 * ```ts
 * const lock: StoreLock | undefined = await store.lock(key, { ttlMs: 30_000, waitMs: 0 });
 * if (lock && (await lock.renew?.()) !== false) {
 *   // still ours, for another ttlMs: spend the refresh token
 * }
 * await lock?.release();
 * ```
 */
export interface StoreLock {
  /** Releases the lock if this holder still owns it (compare-and-delete). Never throws. */
  release(): Promise<void>;
  /**
   * `true` when the lock was taken over from a holder that never released it: its lease ran out (a crash, or a
   * store outage or network partition longer than the lease). That holder may have spent the refresh token and
   * still hold the answer, retrying its write: the fleet waits for the settle (`SETTLE_MS`) and re-reads before
   * spending, so that a write pending since the outage lands first. Every built-in store sets it (the store
   * contract tests it); a store of your own may leave it out.
   */
  readonly takenOver?: boolean;
  /**
   * Confirms that this holder still owns the lock and restarts its lease (`ttlMs` from now), in one atomic
   * step; resolves to `false` when the lock was lost — its lease ran out, or the store dropped it (a Redis that
   * evicts keys under memory pressure, an operator's `DEL`) — and may then be held by another process. Rejects
   * when the store cannot answer. The fleet calls it right before spending a single-use refresh token (one call
   * per refresh, none per `getToken()` served from memory) and does not spend on `false`. It narrows, it cannot
   * close, the window: a lock lost *during* the token request is not seen. Every built-in store has it (the
   * store contract tests it); optional for a store of your own, whose locks are then not confirmed.
   */
  renew?(): Promise<boolean>;
}

/**
 * Where tokens live between calls, processes and restarts. Values are opaque strings (serialised,
 * possibly encrypted, tokens); keys are produced by tokenwarden and never contain a secret.
 *
 * Contract (checked by the shared contract suite, `test/stores/contract.ts`):
 * - `get` of a missing, expired or unreadable entry resolves to `undefined`;
 * - `set` bumps the version and resolves to it, or to `null` when `ifVersion` did not match; an entry deleted
 *   (or expired) and written again never repeats a version it had, so a compare-and-set that read the old entry
 *   cannot land on the new one (the built-in stores take at least the time in 10 µs steps);
 * - `lock` is exclusive per key across every process sharing the store, expires after `ttlMs`, and
 *   resolves to `undefined` when not acquired within `waitMs`;
 * - `close` releases the store's own resources (not a client passed in by the user).
 *
 * @example
 * ```ts
 * const lock = await store.lock(key, { ttlMs: 30_000, waitMs: 10_000 });
 * if (lock) {
 *   try {
 *     const current = await store.get(key);
 *     await store.set(key, value, { ifVersion: current?.version ?? 0 });
 *   } finally {
 *     await lock.release();
 *   }
 * }
 * ```
 */
export interface TokenStore {
  get(key: string): Promise<StoreRecord | undefined>;
  set(key: string, value: string, options?: SetOptions): Promise<number | null>;
  delete(key: string): Promise<void>;
  lock(key: string, options: LockOptions): Promise<StoreLock | undefined>;
  close(): Promise<void>;
}

/**
 * Events a store emits (stores built in are `EventEmitter`s of this map).
 *
 * @example
 * ```ts
 * store.on('corrupt', ({ key, code }) => log.warn({ key, code }, 'unreadable token entry ignored'));
 * ```
 */
export interface StoreEvents {
  /** An entry could not be read (undecryptable, or not a value tokenwarden wrote); it was treated as a miss. */
  corrupt: [{ key: string; code: string; message: string }];
  /**
   * The store may have lost entries or gone back in time: its server restarted without its data, a failover
   * promoted a replica that may lag, or its namespace was emptied while the server ran on (`FLUSHALL`,
   * `TRUNCATE`, the directory's files removed — seen by the store's generation marker, on the next `get` and
   * within 2 s while something listens for this event). Every `TokenManager` and `UserTokens` on the store
   * writes back what it holds, and no one spends a refresh token for a moment, so that the newest refresh token
   * is not lost. A store of your own that can tell should emit it too.
   *
   * @example
   * ```ts
   * store.on('reset', () => log.warn('token store lost data or changed server; the fleet writes back what it holds'));
   * ```
   */
  reset: [];
  /**
   * The store's server may delete keys on its own when its memory is full — a Redis with `maxmemory` and a
   * `maxmemory-policy` other than `noeviction` (a Redis shared with a cache). Under memory pressure it can
   * evict a lock still held (another process then spends the same refresh token: the server revokes the grant)
   * or the newest entry (the fleet falls back to an older refresh token). `RedisStore` checks when it connects
   * (every master of a cluster), before its first command's result, and reports each server and policy once;
   * when nothing listens it also prints a process warning (`TOKENWARDEN_REDIS_EVICTION`). The store keeps
   * working: fix the server's configuration (`maxmemory-policy noeviction`, or a Redis of its own).
   *
   * @example
   * ```ts
   * store.on('eviction', ({ policy, node, message }) => log.error({ policy, node }, message));
   * ```
   */
  eviction: [
    {
      /** The eviction policy (`allkeys-lru`, `volatile-ttl`…). */
      policy: string;
      /** The memory limit in bytes, when the server says it. */
      maxmemory: number | undefined;
      /** `host:port` of the cluster master concerned; absent for a single server (or one behind Sentinel). */
      node?: string;
      /** What happens and what to set, in a sentence fit for a log. */
      message: string;
    },
  ];
}
