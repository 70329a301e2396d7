/**
 * Helpers shared by the stores that talk to something outside the process (file, Redis, PostgreSQL):
 * bounded operations, error wrapping, lock polling and key validation. Internal: not exported from the
 * package.
 *
 * @module
 */
import type { EventEmitter } from 'node:events';
import { type Clock, MAX_TIMER_MS } from '../clock.js';
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import { isWellFormedUnicode } from '../unicode.js';
import type { StoreEvents } from './store.js';

/** Default bound on one store operation. */
export const DEFAULT_TIMEOUT_MS = 2_000;

/**
 * Runs `operation` with a time limit. Failures become `ERR_STORE` (the driver's error as `cause`, never
 * in the message), the limit `ERR_STORE_TIMEOUT`. When the limit fires first and the operation succeeds
 * later, `onLate` gets its result so that it can undo it (release a connection, drop a lock).
 *
 * @example
 * ```ts
 * const value = await bounded(() => redis.get(k), 2000, 'redis get');
 * ```
 */
export async function bounded<T>(
  operation: () => Promise<T>,
  ms: number,
  what: string,
  onLate?: (value: T) => void,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  let timedOut = false;
  let promise: Promise<T>;
  try {
    promise = operation();
  } catch (err) {
    throw storeError(err, what);
  }
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          timedOut = true;
          reject(new TokenwardenError('ERR_STORE_TIMEOUT', `${what} took longer than ${ms} ms`));
        }, ms);
        timer.unref();
      }),
    ]);
  } catch (err) {
    if (timedOut) {
      promise.then(
        (value) => onLate?.(value),
        () => undefined,
      );
    }
    throw storeError(err, what);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * The `onLate` of {@link bounded} for any store call: if what arrives late is a lock, release it.
 *
 * @example
 * ```ts
 * await bounded(() => store.lock(key, options), limit, 'store lock', releaseLate);
 * ```
 */
export function releaseLate(value: unknown): void {
  const release = (value as { release?: unknown } | null | undefined)?.release;
  if (typeof release === 'function') void (release as () => Promise<void>).call(value).catch(() => undefined);
}

/**
 * Wraps anything thrown by a driver or the file system into a `TokenwardenError` (`ERR_STORE`). Messages
 * name the operation and, for errors with a `code` (errno, SQLSTATE), that code — never the driver's
 * message, which may quote a connection string.
 */
export function storeError(err: unknown, what: string): TokenwardenError {
  if (isTokenwardenError(err)) return err;
  if (isDriverTimeout(err)) {
    return new TokenwardenError('ERR_STORE_TIMEOUT', `${what} timed out in the driver`, { cause: driverCause(err) });
  }
  const code = (err as { code?: unknown } | null)?.code;
  const detail = typeof code === 'string' && /^[A-Za-z0-9_]{1,32}$/.test(code) ? ` (${code})` : '';
  return new TokenwardenError('ERR_STORE', `${what} failed${detail}`, { cause: driverCause(err) });
}

/** The fields of a driver's error kept in a cause: what an operator reads, never a value. */
const DRIVER_FIELDS = ['code', 'errno', 'syscall', 'severity', 'routine'] as const;

/**
 * The part of a driver's error a `cause` keeps: its class name, message, stack and codes — not the rest.
 * ioredis keeps the command on a reply error (`command.args`: the entry written — tokens, in clear without
 * `encryptionKey`), pg the failing row in `detail`; `util.inspect(err)` or a logger printing the cause would
 * show them. Anything that is not an `Error` is kept as it is.
 *
 * @example
 * ```ts
 * new TokenwardenError('ERR_STORE', 'store set failed', { cause: driverCause(replyError) });
 * ```
 */
export function driverCause(err: unknown): unknown {
  if (!(err instanceof Error)) return err;
  const copy = new Error(err.message);
  copy.name = err.name;
  for (const field of DRIVER_FIELDS) {
    const value = (err as unknown as Record<string, unknown>)[field];
    if (typeof value === 'string' || typeof value === 'number') Object.assign(copy, { [field]: value });
  }
  if (err.stack !== undefined) copy.stack = err.stack;
  return copy;
}

/**
 * A store error whose driver code (an errno, a SQLSTATE, a Redis error reply's prefix: `codeOf` reads it from
 * the driver's error) an operator acts on, with that said in words after the message (`… failed (ENOSPC): the
 * disk is full`). The driver's own message is never shown (it may name a file or a value). Anything else is
 * returned as it is.
 *
 * @example
 * ```ts
 * throw inWords(err, new Map([['ENOSPC', 'the disk is full']]));
 * ```
 */
export function inWords(
  err: unknown,
  words: ReadonlyMap<string, string>,
  codeOf: (cause: unknown) => unknown = (cause) => (cause as { code?: unknown } | undefined)?.code,
): unknown {
  if (!isTokenwardenError(err)) return err;
  const code = codeOf(err.cause);
  const said = typeof code === 'string' ? words.get(code) : undefined;
  if (said === undefined || err.message.endsWith(said)) return err;
  const named = err.message.endsWith(`(${code})`) ? err.message : `${err.message} (${code})`;
  return new TokenwardenError(err.code, `${named}: ${said}`, { cause: err.cause });
}

/**
 * {@link bounded}, with a failure's driver code said in words ({@link inWords}): the one way every store runs an
 * operation against its backend.
 *
 * @example
 * ```ts
 * await boundedInWords(() => unlink(file), 2000, 'file store delete', new Map([['EROFS', 'the file system is read-only']]));
 * ```
 */
export async function boundedInWords<T>(
  operation: () => Promise<T>,
  ms: number,
  what: string,
  words: ReadonlyMap<string, string>,
  options: { codeOf?: (cause: unknown) => unknown; onLate?: (value: T) => void } = {},
): Promise<T> {
  return bounded(operation, ms, what, options.onLate).catch((err: unknown) => {
    throw inWords(err, words, options.codeOf);
  });
}

/** A driver's own time limit (ioredis `commandTimeout`, pg `query_timeout` and `connectionTimeoutMillis`). */
function isDriverTimeout(err: unknown): boolean {
  const message = (err as { message?: unknown } | null)?.message;
  return (
    typeof message === 'string' &&
    (message === 'Command timed out' ||
      message === 'Query read timeout' ||
      message.startsWith('timeout exceeded when trying to connect') ||
      message === 'Connection terminated due to connection timeout')
  );
}

/** The `ERR_CLOSED` error of a closed store. */
export function closedError(): TokenwardenError {
  return new TokenwardenError('ERR_CLOSED', 'the store is closed');
}

/**
 * How long a lock waiter sleeps before its `attempt`-th retry: 10 ms growing by half each time up to
 * `maxMs`, with ±25 % jitter so that a fleet of waiters does not poll in lockstep.
 */
export function pollDelay(attempt: number, maxMs: number): number {
  const base = Math.min(maxMs, 10 * 1.5 ** attempt);
  return base * (0.75 + Math.random() * 0.5);
}

/**
 * Validates a store key (keys come from tokenwarden and are never secret): a string of 1 to 1024
 * characters, well-formed UTF-16 and without NUL. Every backend stores a key as UTF-8 (a file name's hash,
 * a Redis key, a PostgreSQL `text`), where a lone surrogate becomes U+FFFD: `'\ud800'` and `'\udc00'` would
 * be one entry, and one user's record would overwrite another's. Such a key is refused (`ERR_CONFIG`),
 * never stored; PostgreSQL cannot store NUL at all.
 *
 * @example
 * ```ts
 * checkKey('tw1:client_credentials:3f2a…'); // fine
 * checkKey('user:\ud800');                   // throws ERR_CONFIG
 * ```
 */
export function checkKey(key: string): void {
  if (typeof key !== 'string' || key.length === 0 || key.length > 1024) {
    throw new TokenwardenError('ERR_CONFIG', 'a store key must be a string of 1 to 1024 characters');
  }
  if (!isWellFormedUnicode(key)) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      'a store key must be well-formed UTF-16: it holds a lone surrogate, which would collide with other keys once encoded as UTF-8',
    );
  }
  if (key.includes('\u0000')) throw new TokenwardenError('ERR_CONFIG', 'a store key must not contain NUL');
}

/** Validates the `ttlMs` of a set or a lock; returns it rounded up to whole milliseconds. */
export function checkTtl(ttlMs: number | undefined, name: string): number | undefined {
  if (ttlMs === undefined) return undefined;
  if (typeof ttlMs !== 'number' || !Number.isFinite(ttlMs) || ttlMs < 0) {
    throw new TokenwardenError('ERR_CONFIG', `${name} must be a non-negative number of milliseconds`);
  }
  return Math.max(1, Math.ceil(ttlMs));
}

/** Validates `ifVersion`: absent, or a non-negative integer. */
export function checkVersion(ifVersion: number | undefined): void {
  if (ifVersion !== undefined && !(Number.isSafeInteger(ifVersion) && ifVersion >= 0)) {
    throw new TokenwardenError('ERR_CONFIG', 'ifVersion must be a non-negative integer');
  }
}

/** Rejects with the signal's reason (an `ERR_ABORTED` error when it has none) if it has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) {
    throw signal.reason instanceof Error
      ? signal.reason
      : new TokenwardenError('ERR_ABORTED', 'waiting for the lock was aborted');
  }
}

/**
 * The clock lock waiters sleep on: real time with timers that keep the process alive. A caller awaiting
 * a lock must not see its process exit under it (the system clock's timers are `unref()`'d, meant for
 * background work).
 */
export const waitClock: Clock = {
  now: () => Date.now(),
  setTimer(callback, ms) {
    const handle = setTimeout(callback, Math.min(Math.max(0, ms), MAX_TIMER_MS));
    return { cancel: () => clearTimeout(handle) };
  },
};

/**
 * Releases a lock with `release` (which removes it only while its owner still holds it), and when that fails —
 * the store away, a cluster mid-failover — tries again in the background, {@link pollDelay} apart (up to 2 s),
 * until it lands, the store closes, or the lease ends. A lock left to run out keeps every process of the fleet
 * waiting for the rest of its lease (30 s by default) after the store is back, for a holder long done.
 * Resolves after the first attempt; never rejects.
 *
 * @example
 * ```ts
 * await releaseUntilLanded(() => run('DELETE … WHERE owner = $1', [owner]), Date.now() + ttlMs, () => closed);
 * ```
 */
export async function releaseUntilLanded(
  release: () => Promise<unknown>,
  leaseEnd: number,
  closed: () => boolean,
  attempt = 0,
): Promise<boolean> {
  try {
    await release();
    return true;
  } catch {
    const delay = pollDelay(attempt, 2000);
    if (!closed() && Date.now() + delay < leaseEnd) {
      setTimeout(() => void releaseUntilLanded(release, leaseEnd, closed, attempt + 1), delay).unref();
    }
    return false;
  }
}

/**
 * How often a shared store looks at its generation marker while something listens for `reset` (every
 * `TokenManager` and `UserTokens` on it does): the longest a process serving tokens from memory takes to
 * learn that the store was emptied under it.
 */
export const GENERATION_WATCH_MS = 2_000;

/**
 * A shared store's generation: a marker the store writes once into its own namespace (the Redis prefix, the
 * PostgreSQL table, the FileStore directory) and never changes. Whatever empties the namespace while the
 * server runs on — `FLUSHALL`/`FLUSHDB`, a `DEL` of the prefix, `TRUNCATE` or `DELETE FROM`, the directory
 * removed or emptied — takes the marker with it, and the next store to look writes a new one. A store that
 * finds another marker than the one it knew emits `reset`: entries may be missing, and every process writes
 * back what it holds before anyone spends a refresh token.
 *
 * A store looks on every `get` (in the same round trip, after the entry: a `get` that finds an entry missing
 * because the namespace was emptied reports `reset` before it resolves) and, while something listens for
 * `reset`, every {@link GENERATION_WATCH_MS} — a process that serves from memory does not read the store,
 * and it may hold the only copy of the newest refresh token. The first marker a store sees is learnt, not
 * reported (a process new to the store cannot know what was there before).
 *
 * @example
 * ```ts
 * const generation = new Generation(store, () => readOrCreateMarker());
 * if (generation.changed(await readOrCreateMarker())) store.emit('reset');
 * generation.close(); // in close()
 * ```
 */
export class Generation {
  readonly #store: EventEmitter<StoreEvents>;
  readonly #look: () => Promise<string | undefined | ReadonlyMap<string, string>>;
  /** The marker known for each part of the store ('' for a store of one part). */
  readonly #known = new Map<string, string | undefined>();
  /** When each part's marker was last read (a `get` reads only the part that holds its entry). */
  readonly #lookedAt = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  /**
   * @param store the store, whose `reset` listeners start and stop the watch.
   * @param look reads the marker, writing a new one when there is none; `undefined` when the namespace is
   *   gone and the store does not make it again on a read (a removed FileStore directory). A store of
   *   several parts that can each lose their data alone (the masters of a Redis Cluster) keeps a marker in
   *   each and returns them all, by part.
   */
  constructor(store: EventEmitter<StoreEvents>, look: () => Promise<string | undefined | ReadonlyMap<string, string>>) {
    this.#store = store;
    this.#look = look;
    (store as EventEmitter).on('newListener', (event: string | symbol) => {
      if (event === 'reset') this.#schedule();
    });
  }

  /**
   * Takes a marker the store just read (of `part`, for a store of several): whether it differs from the one
   * known (the namespace was emptied since, or the store now reaches another server's data). The store emits
   * `reset` when it does. `undefined`: the namespace is gone (a removed directory); `null`: the marker could
   * not be read or written this time (a read-only disk, a transient error) — nothing is learnt, nothing
   * reported. The first marker of a part is learnt, not reported.
   */
  changed(marker: string | undefined | null, part = ''): boolean {
    if (marker === null) return false;
    this.#lookedAt.set(part, Date.now());
    const known = this.#known.get(part);
    const changed = known !== undefined && marker !== known;
    this.#known.set(part, marker);
    return changed;
  }

  /** {@link changed} for every part of a look. */
  changedAny(markers: string | undefined | ReadonlyMap<string, string>): boolean {
    if (!(markers instanceof Map)) return this.changed(markers as string | undefined);
    let changed = false;
    for (const [part, marker] of markers) changed = this.changed(marker, part) || changed;
    return changed;
  }

  /** Stops the watch (the store is closing). */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(): void {
    if (this.#closed || this.#timer !== undefined) return;
    this.#timer = setTimeout(() => void this.#watch(), GENERATION_WATCH_MS);
    this.#timer.unref();
  }

  async #watch(): Promise<void> {
    this.#timer = undefined;
    if (this.#closed || this.#store.listenerCount('reset') === 0) return;
    // When `get`s looked at every part meanwhile, there is nothing to learn yet.
    const since = Date.now() - GENERATION_WATCH_MS / 2;
    if (this.#known.size === 0 || [...this.#known.keys()].some((part) => (this.#lookedAt.get(part) ?? 0) <= since)) {
      try {
        const markers = await this.#look();
        if (!this.#closed && this.changedAny(markers)) this.#store.emit('reset');
      } catch {
        // The store cannot answer: its operations fail and say so; the next look tells.
      }
    }
    this.#schedule();
  }
}
