/**
 * THE fleet protocol, written once and used by `TokenManager` (one token per key) and `UserTokens` (one
 * record per subject): whatever holds something single-use — a rotating refresh token — and is shared by
 * several processes through a {@link TokenStore}.
 *
 * ```
 * read → (satisfied?) → lock → re-read → spend → compare-and-set write → release
 * ```
 *
 * The rules it keeps, whatever the store is doing:
 *
 * 1. **Never spend without the lock.** A single-use state is spent only by the holder of the store's lock,
 *    after re-reading the store under it. When the store cannot be read or locked, the attempt fails with
 *    the store's coded error (`ERR_STORE`, `ERR_STORE_TIMEOUT`) — it does not fall back to spending
 *    in-process, unless the store is private to this process or the caller chose `unlockedRefresh`.
 * 2. **Nothing the server answered is thrown away.** A spend's result is written before it is reported;
 *    when the write fails — or takes longer than the new token can spare (half its life: a frozen store must
 *    not age a short-lived token into uselessness) — the result is kept in memory as *pending* and served,
 *    the lock is kept (its lease is the fleet's promise that nobody else spends meanwhile), and the write is
 *    retried until it lands.
 * 3. **The store heals.** Each state carries `seq`, its position in the key's history. A read that finds the
 *    store older than what this process holds writes the newer state back (compare-and-set). When a store
 *    reports a `reset` (restarted empty, failed over), every process writes back what it holds and no one
 *    spends for {@link SETTLE_MS}, so that the process holding the newest state is heard first.
 * 4. **An older result never overwrites a newer one:** every write is a compare-and-set on the version read,
 *    and conflicts are settled by `seq`.
 * 5. **Bounded waits.** The store steps of one attempt (get, lock, get, set) share one time budget
 *    (`storeTimeoutMs`); waiting for another process's refresh is bounded separately by the lock wait.
 *
 * @module
 */
import { setMaxListeners } from 'node:events';
import { type Clock, sleep, systemClock } from '../clock.js';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import { MemoryStore } from '../stores/memory.js';
import { GENERATION_WATCH_MS, bounded, driverCause, releaseLate, waitClock } from '../stores/shared.js';
import type { StoreLock, StoreRecord, TokenStore } from '../stores/store.js';
import * as telemetry from '../telemetry/hooks.js';

/**
 * After a store reset (or the first announcement of a state no store held), nobody spends for this long:
 * long enough for every process of a fleet to learn of it — a restart at its reconnection, an emptied store
 * at the store's next look at its generation (every {@link GENERATION_WATCH_MS}) — and write back what it
 * holds.
 */
export const SETTLE_MS = GENERATION_WATCH_MS + 1_500;

/** Pending writes are retried at most this often when the store answers other calls (see `Fleet.storeCall`). */
const RETRY_MIN_MS = 250;

/**
 * The lock lease for a participant: `ttl` when given (it must outlive what a holder may do under it: the
 * settle ({@link SETTLE_MS}), a token request and two store steps — longer than their time limits together,
 * or `ERR_CONFIG`), otherwise 30 s or that bound plus 5 s, whichever is longer.
 *
 * @example
 * ```ts
 * lockLease(undefined, 10_000, 2_000); // 30000
 * lockLease('20s', 60_000, 2_000);     // throws ERR_CONFIG: a lease shorter than a token request
 * ```
 */
export function lockLease(
  ttl: Duration | undefined,
  requestTimeoutMs: number | undefined,
  storeTimeoutMs: number,
): number {
  const needed = SETTLE_MS + (requestTimeoutMs ?? 0) + 2 * storeTimeoutMs;
  if (ttl === undefined) return Math.max(30_000, needed + 5_000);
  const ms = toMs(ttl, 'lock.ttl');
  if (requestTimeoutMs !== undefined && ms <= needed) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      `lock.ttl (${ms} ms) must be longer than the settle (${SETTLE_MS} ms), the token request timeout and two store timeouts together (${needed} ms): a lease that ends during a refresh lets another process spend the same refresh token`,
    );
  }
  return ms;
}

/** A state with its place in the key's history and in the store. */
export interface Versioned<S> {
  readonly state: S;
  /** Position in the key's history (grows with every spend): larger is newer, whatever the store did. */
  readonly seq: number;
  /** The store version it was read or written as; `undefined` when the store does not hold it (yet). */
  readonly version: number | undefined;
}

/** How a participant's state is stored. */
export interface Lineage<S> {
  /** Parses a stored value; `undefined` for anything that is not this key's state (a miss). */
  decode(key: string, value: string): { state: S; seq: number; healedAt?: number } | undefined;
  encode(state: S, seq: number, healedAt?: number): string;
  /** Whether the state holds something single-use worth writing back into a store that lost it. */
  precious(state: S): boolean;
  /** How long the store should keep it (`undefined`: until replaced). */
  ttlMs(state: S, now: number): number | undefined;
  /**
   * When the access token a spend just obtained in `state` expires (`undefined`: unknown, or none). A caller
   * waits for that state's write at most half the life it has left (rule 2): a token living less than the store's
   * time limit must not age, or expire, in a slow store's wait.
   */
  expiresAt?(state: S): number | undefined;
  /**
   * A state holding nothing single-use, written to announce a first spend from configuration (nothing
   * stored, nothing held) so that a process holding a newer state can overwrite it before the spend.
   * Absent: nothing is ever spent from configuration (UserTokens: a subject starts with a login).
   */
  placeholder?(now: number): S;
}

/** A write of a key on its way to the store, and what happened to the key meanwhile ({@link Fleet.forget}). */
interface Flight {
  deleted: boolean;
  replaced: boolean;
}

/** How many keys {@link Fleet} marks one by one as written during a macrotask (see `#settling`). */
export const SETTLING_MAX = 1024;

/** Whether the state held moved on from `from`: a later place in the history, or another write at the same one. */
function movedOn<S>(held: Versioned<S>, from: Versioned<S>): boolean {
  return held.seq > from.seq || (held.seq === from.seq && held.version !== from.version);
}

/** One key as a participant holds it. */
export interface Slot<S> {
  readonly key: string;
  /** The newest state this process holds for the key (possibly expired). */
  held(): Versioned<S> | undefined;
  /** The store holds a newer state, or a write landed: hold it. */
  take(value: Versioned<S>, from: 'store' | 'source'): void;
  /** The store holds nothing for the key (deleted, expired, or never written). */
  missing?(): void;
  /** Whether a decoded state belongs to this slot (a state copied under another key is a miss). */
  owns?(state: S): boolean;
  /**
   * A spend's result was dropped: its key was deleted while it ran or while its write was pending (a sign-out).
   * Revoke it, if you can. Present only where keys are deleted on purpose: a participant without it has a missing
   * entry that its pending write was based on written back (a store that lost it).
   */
  abandoned?(state: S): void;
  /** A store operation failed (for events). */
  storeFailed(operation: StoreOperation, error: TokenwardenError): void;
  /** The store answers again after a failure (for events). */
  storeRecovered(): void;
}

/** One attempt to get a state that satisfies a caller. */
export interface Attempt<S> extends Slot<S> {
  /** Whether what is held now serves the caller (no spend needed). */
  satisfied(): boolean;
  /**
   * Throws when a spend must not even be tried (nothing to spend, a recent failure that waiting will not
   * heal): called before taking the lock and again before spending.
   */
  precheck?(): void;
  /** The spend uses something single-use (a refresh token): the fleet lock is then required. */
  readonly exclusive: boolean;
  /**
   * Obtains a new state from the authorization server, starting from `current` (the newest known). A
   * failure after the server rotated the single-use part carries the rotated state: see
   * {@link withRotated}.
   */
  spend(current: Versioned<S> | undefined, signal: AbortSignal): Promise<S>;
}

/**
 * How long a caller waits for the write of a state whose new access token expires at `expiresAt`: half the life
 * it has left — `undefined` (the store's time limit alone) for a token without expiry, or one already expired (of
 * no use to the caller: its write is all that matters).
 */
function patience(expiresAt: number | undefined, now: number): number | undefined {
  if (expiresAt === undefined || expiresAt <= now) return undefined;
  return Math.max(1, Math.floor((expiresAt - now) / 2));
}

/** A store operation, as named in events. */
export type StoreOperation = 'get' | 'set' | 'lock' | 'delete';

/** Options of a {@link Fleet}. */
export interface FleetOptions<S> {
  store: TokenStore;
  lineage: Lineage<S>;
  clock: Clock;
  /** The budget of one attempt's store steps. */
  storeTimeoutMs: number;
  /** The lock lease: longer than a spend can take. */
  lockTtlMs: number;
  /** How long to wait for another process's refresh. */
  lockWaitMs: number;
  /** Spend without the lock when the store is down and nothing valid is held (a store private to one process). */
  unlockedRefresh: boolean;
  /** Aborts waits and spends when the participant closes. */
  closing: AbortSignal;
  /**
   * Aborted when the participant starts closing, before it waits for its spends in flight: ends waits for
   * other processes (a lock held elsewhere, up to `lockWaitMs`; the settle) and starts no spend, while a spend
   * already under way runs on (its rotated refresh token is written). `closing` follows once those are done.
   */
  waiting?: AbortSignal;
  /** Every slot this process holds, for writing back after a store reset. */
  slots(): Iterable<Slot<S>>;
}

const ROTATED = Symbol('tokenwarden.rotated');

/**
 * Attaches to `error` the state a failed spend still produced (the server rotated the refresh token, then a
 * later check of its answer failed): the fleet writes it before reporting the error.
 */
export function withRotated<E extends Error, S>(error: E, state: S): E {
  Object.defineProperty(error, ROTATED, { value: state, enumerable: false, configurable: true });
  return error;
}

function rotatedOf<S>(error: unknown): S | undefined {
  return error !== null && typeof error === 'object' ? ((error as { [ROTATED]?: S })[ROTATED] ?? undefined) : undefined;
}

interface Pending<S> {
  readonly slot: Slot<S>;
  readonly value: Versioned<S>;
  /** The version the spend was based on (`0`: absent). */
  readonly base: number;
  /** Kept until the write lands: nobody else may spend meanwhile. */
  readonly lock: StoreLock | undefined;
  attempts: number;
}

/**
 * One `reset` listener per store, however many participants share it (a process may have a manager per
 * credential on one store: no MaxListenersExceededWarning).
 */
const listeners = {
  byStore: new WeakMap<TokenStore, { callbacks: Set<() => void>; listener: () => void }>(),
  add(store: TokenStore, callback: () => void): void {
    const events = store as Partial<Pick<NodeJS.EventEmitter, 'on'>>;
    if (typeof events.on !== 'function') return;
    let entry = this.byStore.get(store);
    if (entry === undefined) {
      const callbacks = new Set<() => void>();
      entry = {
        callbacks,
        listener: () => {
          for (const cb of callbacks) cb();
        },
      };
      this.byStore.set(store, entry);
      events.on.call(store, 'reset', entry.listener);
    }
    entry.callbacks.add(callback);
  },
  /** The last participant gone, the store stops watching its generation for us (see `Generation`). */
  remove(store: TokenStore, callback: () => void): void {
    const entry = this.byStore.get(store);
    if (entry === undefined || !entry.callbacks.delete(callback) || entry.callbacks.size > 0) return;
    this.byStore.delete(store);
    (store as Partial<Pick<NodeJS.EventEmitter, 'off'>>).off?.call(store, 'reset', entry.listener);
  },
};

/**
 * The time budget of one attempt's store steps: what the reads and writes took, together. Waiting for the
 * lock is not charged (that is waiting for another process's refresh, bounded by the lock wait).
 */
class Budget {
  #left: number;
  constructor(ms: number) {
    this.#left = ms;
  }
  remaining(): number {
    return Math.max(0, this.#left);
  }
  charge(ms: number): void {
    this.#left -= ms;
  }
}

type Decoded<S> = ReturnType<Lineage<S>['decode']>;
type Read<S> =
  { ok: true; record: StoreRecord | undefined; stored: Decoded<S> } | { ok: false; error: TokenwardenError };

/**
 * The fleet protocol for one participant (a `TokenManager`, a `UserTokens`) over one store.
 *
 * @example
 * ```ts
 * const fleet = new Fleet({ store, lineage, clock, storeTimeoutMs: 2000, lockTtlMs: 30_000, lockWaitMs: 30_000,
 *   unlockedRefresh: false, closing: controller.signal, slots: () => [slot] });
 * await fleet.run(attempt); // afterwards attempt.held() satisfies the caller, or it threw a coded error
 * ```
 */
export class Fleet<S> {
  readonly #o: FleetOptions<S>;
  /** The store is private to this process: nobody else can spend, so no lock is needed when it fails. */
  readonly #private: boolean;
  readonly #pending = new Map<string, Pending<S>>();
  /**
   * Writes on their way that nothing orders after a sign-out (write-backs of held states, retried pending writes),
   * by key: each learns of a deletion on purpose or a replacement ({@link Fleet.forget}) made meanwhile.
   */
  readonly #writingBack = new Map<string, Set<Flight>>();
  /** The last write of each key in this process, while one is under way (see #oneAtATime). */
  readonly #writing = new Map<string, Promise<void>>();
  /**
   * Keys whose last write here answered during this macrotask, with nothing queued behind it: a write of one waits
   * for {@link Fleet.#nextMacrotask}. Cleared there. At most {@link SETTLING_MAX} (a loop that never yields writes
   * thousands of keys in one macrotask): past that, `#settlingAll` makes every write wait, which costs one macrotask
   * and no memory per key.
   */
  readonly #settling = new Set<string>();
  #settlingAll = false;
  /** The next macrotask, one for every write waiting on it (see #oneAtATime). */
  #nextTurn: Promise<void> | undefined;
  /** Lock releases under way (`close()` waits for them: a store closed under one leaves a lease behind). */
  readonly #releasing = new Set<Promise<void>>();
  #settleUntil = 0;
  #storeDown = false;
  /** `closing`, or `waiting` when that comes first: what waits and new spends stop at. */
  readonly #waits: AbortSignal;
  #flushTimer: NodeJS.Timeout | undefined;
  /** When pending writes were last retried (see `storeCall`). */
  #flushedAt = 0;
  readonly #onReset = (): void => this.#reset();

  constructor(options: FleetOptions<S>) {
    this.#o = options;
    this.#waits = options.waiting === undefined ? options.closing : AbortSignal.any([options.closing, options.waiting]);
    setMaxListeners(0, this.#waits); // every lock wait in flight listens to it (a UserTokens: many subjects)
    this.#private = options.store instanceof MemoryStore;
    listeners.add(options.store, this.#onReset);
  }

  /**
   * Runs the protocol until `attempt.satisfied()`, or throws a coded error. The state it ends with has been
   * handed to `attempt.take()`.
   */
  async run(attempt: Attempt<S>): Promise<void> {
    const budget = new Budget(this.#o.storeTimeoutMs);
    // 1. Another process may already have done it: read first.
    let first = await this.#read(attempt, budget);
    if (first.ok) await this.#reconcile(attempt, first, budget);
    if (attempt.satisfied()) return;
    if (!first.ok) return this.#withoutStore(attempt, first.error, budget);
    if (first.record === undefined && this.#o.lineage.placeholder === undefined) {
      first = await this.#afterReset(attempt, first);
      if (attempt.satisfied()) return;
    }
    attempt.precheck?.();

    // 2. The lock, then 3. re-read under it: the previous holder may have just rotated the refresh token.
    const lock = await this.#lock(attempt, budget);
    if (lock === undefined) {
      const again = await this.#read(attempt, budget);
      if (again.ok) await this.#reconcile(attempt, again, budget);
      if (attempt.satisfied()) return;
      throw new TokenwardenError(
        'ERR_LOCK_TIMEOUT',
        `another process held the refresh lock for more than ${this.#o.lockWaitMs} ms`,
      );
    }
    if (!lock.ok) return this.#withoutStore(attempt, lock.error, budget);
    let keep = false;
    try {
      const read = await this.#read(attempt, budget);
      if (!read.ok) {
        if (attempt.exclusive && !this.#mayGoAlone()) throw read.error;
        this.#checkOpen();
        await this.#spendAndWrite(attempt, lock.lock, undefined, budget, () => (keep = true));
        return;
      }
      let current: Read<S> & { ok: true } = read;
      await this.#reconcile(attempt, current, budget);
      if (attempt.satisfied()) return;
      attempt.precheck?.();
      if (attempt.exclusive && !this.#private) {
        current = await this.#settle(attempt, current, budget, lock.lock.takenOver === true);
        if (attempt.satisfied()) return;
      }
      this.#checkOpen();
      // 4. Spend, and 5. write by compare-and-set on the version read under the lock.
      await this.#spendAndWrite(attempt, lock.lock, current.record?.version ?? 0, budget, () => (keep = true));
    } finally {
      // 6. Release — unless the write did not land: the lease then keeps others off until it does.
      if (!keep) this.#release(lock.lock);
    }
  }

  /**
   * Reads the key and makes this process and the store agree (see the rules above); never spends.
   * `restore`: the store may have lost the entry (after a reset), so what this process holds is written back
   * into a missing entry too (as it is during the settle after a reset, whatever `restore` says). Resolves to
   * the store's error when it did not answer.
   */
  async sync(slot: Slot<S>, restore = false): Promise<TokenwardenError | undefined> {
    const budget = new Budget(this.#o.storeTimeoutMs);
    const read = await this.#read(slot, budget);
    if (!read.ok) return read.error;
    await this.#reconcile(slot, read, budget, restore);
    return undefined;
  }

  /**
   * Drops a pending write of `key`, and tells write-backs of it on their way: its entry was deleted on purpose (a
   * sign-out is not undone), or is being replaced (`'replaced'`: a new login, written unconditionally after this).
   */
  forget(key: string, how: 'deleted' | 'replaced' = 'deleted'): void {
    const pending = this.#pending.get(key);
    if (pending !== undefined) this.#drop(pending);
    for (const flight of this.#writingBack.get(key) ?? []) flight[how] = true;
  }

  /** Writes every pending state (bounded by one store time limit each); for `close()`. */
  async flush(): Promise<void> {
    if (this.#flushTimer !== undefined) clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    await Promise.all([...this.#pending.values()].map((p) => this.#writeBack(p)));
  }

  /**
   * Stops listening to the store and waits for lock releases under way; pending writes are abandoned (call
   * {@link Fleet.flush} first).
   */
  async close(): Promise<void> {
    listeners.remove(this.#o.store, this.#onReset);
    if (this.#flushTimer !== undefined) clearTimeout(this.#flushTimer);
    this.#flushTimer = undefined;
    for (const p of this.#pending.values()) if (p.lock) this.#release(p.lock);
    this.#pending.clear();
    await Promise.allSettled([...this.#releasing]);
  }

  /**
   * A store call bounded by what is left of the budget; failures become results and events. The lock is also
   * given the lock wait (waiting for another process's refresh is not the store being slow).
   */
  async storeCall<T>(
    slot: Slot<S>,
    operation: StoreOperation,
    call: (store: TokenStore) => Promise<T>,
    budget?: Budget,
  ): Promise<{ ok: true; value: T } | { ok: false; error: TokenwardenError }> {
    const limit = budget === undefined ? this.#o.storeTimeoutMs : budget.remaining();
    const budgetMs = operation === 'lock' ? limit + this.#o.lockWaitMs : limit;
    const started = Date.now();
    const waitStarted = operation === 'lock' ? performance.now() : 0;
    if (limit <= 0) {
      const error = new TokenwardenError(
        'ERR_STORE_TIMEOUT',
        `the store took longer than ${this.#o.storeTimeoutMs} ms in all`,
      );
      this.#failed(slot, operation, error);
      return { ok: false, error };
    }
    // This process's writes of one key go to the store one at a time (see #oneAtATime).
    let gaveUp = false;
    let giveUp = (): void => undefined;
    const run =
      operation === 'set'
        ? () =>
            this.#oneAtATime(
              slot.key,
              () => (gaveUp ? Promise.reject(new Error('given up while waiting its turn')) : call(this.#o.store)),
              new Promise<void>((resolve) => (giveUp = resolve)),
            )
        : () => call(this.#o.store);
    try {
      const value = await bounded(run, budgetMs, `store ${operation}`, releaseLate);
      if (operation !== 'lock') budget?.charge(Date.now() - started);
      else telemetry.lockWaited(performance.now() - waitStarted, value === undefined ? 'timeout' : 'acquired');
      if (this.#storeDown) {
        this.#storeDown = false;
        slot.storeRecovered();
        // Pending writes go at once — unless tried moments ago: a store may refuse one key and take the others
        // (a Cluster slot down, a value too large), and every other key's success is not a reason to try again.
        if (Date.now() - this.#flushedAt >= RETRY_MIN_MS) this.#flushSoon(0);
      }
      return { ok: true, value };
    } catch (err) {
      gaveUp = true;
      giveUp();
      if (operation === 'lock') telemetry.lockWaited(performance.now() - waitStarted, 'error');
      budget?.charge(Math.min(Date.now() - started, limit));
      if (this.#waits.aborted && isTokenwardenError(err, 'ERR_CLOSED', 'ERR_ABORTED')) throw err;
      const error = isTokenwardenError(err)
        ? err
        : new TokenwardenError('ERR_STORE', `store ${operation} failed`, { cause: driverCause(err) });
      this.#failed(slot, operation, error);
      return { ok: false, error };
    }
  }

  /**
   * Runs this process's writes of `key` one at a time, each after the one before it answered and its caller took
   * what it wrote (the turn passes on at the next macrotask, after the caller's synchronous continuation). A write
   * queued in the store (behind a FileStore's file lock, a slow connection) cannot then land after a later write
   * of this process, with an older state: into a store emptied again meanwhile, nothing else would stop it. A
   * caller that gives up (its time limit: `abandoned`) passes its turn on at once, so that a store call that never
   * answers holds up the key's later writes for one time limit, not for ever.
   */
  async #oneAtATime<T>(key: string, write: () => Promise<T>, abandoned: Promise<void>): Promise<T> {
    const before =
      this.#writing.get(key) ?? (this.#settlingAll || this.#settling.has(key) ? this.#nextMacrotask() : undefined);
    let release!: () => void;
    const mine = new Promise<void>((resolve) => (release = resolve));
    const tail = before === undefined ? mine : before.then(() => mine);
    this.#writing.set(key, tail);
    let passed = false;
    const pass = (): void => {
      if (passed) return;
      passed = true;
      if (this.#writing.get(key) !== tail) {
        void this.#nextMacrotask().then(release); // the write queued behind this one
        return;
      }
      // Nothing queued behind: the key is marked until the next macrotask and this write's state let go now. (Held
      // until then, it cost about 0.5 KiB a write: 50 000 users saved in a loop that never yields kept 27 MB; the
      // keys themselves, another 0.1 KiB each, are why the marks stop at SETTLING_MAX.)
      this.#writing.delete(key);
      if (this.#settling.size < SETTLING_MAX) this.#settling.add(key);
      else this.#settlingAll = true;
      void this.#nextMacrotask();
      release();
    };
    void abandoned.then(pass);
    if (before !== undefined) await Promise.race([before, abandoned]);
    const writing = write();
    writing.then(pass, pass);
    return writing;
  }

  /** Resolves at the next macrotask (one `setImmediate` for all who wait), clearing {@link Fleet.#settling}. */
  #nextMacrotask(): Promise<void> {
    return (this.#nextTurn ??= new Promise<void>((resolve) =>
      setImmediate(() => {
        this.#nextTurn = undefined;
        this.#settling.clear();
        this.#settlingAll = false;
        resolve();
      }),
    ));
  }

  // ---------------------------------------------------------------------------------------------

  #failed(slot: Slot<S>, operation: StoreOperation, error: TokenwardenError): void {
    this.#storeDown = true;
    telemetry.storeFailed(operation, error.code);
    slot.storeFailed(operation, error);
  }

  async #read(slot: Slot<S>, budget: Budget): Promise<Read<S>> {
    const result = await this.storeCall(slot, 'get', (s) => s.get(slot.key), budget);
    if (!result.ok) return result;
    const record = result.value;
    let stored: Decoded<S> = undefined;
    if (record !== undefined) {
      stored = this.#o.lineage.decode(slot.key, record.value);
      if (stored !== undefined && slot.owns !== undefined && !slot.owns(stored.state)) stored = undefined;
      if (stored === undefined) {
        // A corrupt or foreign entry is a miss (the next write replaces it); the store itself is fine.
        slot.storeFailed('get', new TokenwardenError('ERR_STORE', 'the stored entry is not ours; ignoring it'));
      }
    }
    return { ok: true, record: stored === undefined ? undefined : record, stored };
  }

  /**
   * Makes this process and the store agree after a read: the newer of the two (by `seq`) wins. The store's
   * state is taken when newer (or at the same place in the history, as another write); ours is written back
   * when the store is behind — or, with `missingToo` (after a reset: also while the fleet settles) or for a
   * pending write, when the store has nothing. A missing entry is otherwise left missing: a deletion (a
   * sign-out) is not undone.
   */
  async #reconcile(slot: Slot<S>, read: Read<S> & { ok: true }, budget: Budget, missingToo = false): Promise<void> {
    // Right after a reset, a missing entry is one the store lost, not one someone deleted.
    missingToo ||= this.#o.clock.now() < this.#settleUntil;
    const held = slot.held();
    const pending = this.#pending.get(slot.key);
    const { stored, record } = read;
    if (stored === undefined || record === undefined) {
      if (pending !== undefined && !missingToo && this.#abandon(pending)) return;
      const mine = pending?.value ?? held;
      if ((missingToo || pending !== undefined) && mine !== undefined && this.#o.lineage.precious(mine.state)) {
        await this.#writeBackHeld(slot, mine, 0, budget);
      } else if (pending === undefined) {
        slot.missing?.();
      }
      return;
    }
    if (pending !== undefined && stored.seq >= pending.value.seq) this.#drop(pending);
    // What this process has: what it holds — or, should the participant hold nothing now, a write still pending
    // (never replaced by the older state the store has).
    const still = this.#pending.get(slot.key);
    const ours = held ?? still?.value;
    if (ours === undefined || stored.seq > ours.seq || (stored.seq === ours.seq && record.version !== ours.version)) {
      slot.take({ state: stored.state, seq: stored.seq, version: record.version }, 'store');
    } else if (ours.seq > stored.seq && this.#o.lineage.precious(ours.state)) {
      await this.#writeBackHeld(slot, still?.value ?? ours, record.version, budget);
    }
  }

  /**
   * Right after a store reset, an entry missing here (and held nowhere in this process) may be one that another
   * process holds and is writing back — it hears of the reset within the store's generation watch. Where
   * nothing is ever spent from configuration (`UserTokens`: a missing record means "sign in again"), the
   * attempt waits for the settle and reads once more rather than report the subject signed out.
   */
  async #afterReset(attempt: Attempt<S>, read: Read<S> & { ok: true }): Promise<Read<S> & { ok: true }> {
    const wait = this.#settleUntil - this.#o.clock.now();
    if (wait <= 0) return read;
    const again = await this.#rereadAfter(attempt, wait);
    return again.ok ? again : read;
  }

  /** Waits `ms` (closing cuts it short), then reads the key again and reconciles. */
  async #rereadAfter(attempt: Attempt<S>, ms: number): Promise<Read<S>> {
    const clock = this.#o.clock === systemClock ? waitClock : this.#o.clock;
    await sleep(clock, ms, this.#waits).catch(() => undefined);
    this.#checkOpen();
    const budget = new Budget(this.#o.storeTimeoutMs);
    const again = await this.#read(attempt, budget);
    if (again.ok) await this.#reconcile(attempt, again, budget);
    return again;
  }

  /**
   * Writes a state this process holds over an older (or missing) entry, marked as restored from memory.
   *
   * The write may land long after `value` was read from this process (queued behind a file lock, a slow
   * connection), and into a store emptied again meanwhile, where nothing stops it. This process's writes of the
   * key go one at a time (#oneAtATime), and this one writes the state held when its turn comes, so it never lands
   * over a newer write of this process. A deletion on purpose made while it was on its way (a sign-out) is not
   * undone: the entry just written is deleted again — unless a new login replaced it since, which stands.
   */
  async #writeBackHeld(slot: Slot<S>, value: Versioned<S>, ifVersion: number, budget: Budget): Promise<void> {
    const flight = this.#takeOff(slot.key);
    try {
      const written = await this.storeCall(
        slot,
        'set',
        (s) => {
          // Its turn come (#oneAtATime), the state held now: a write of this process that landed meanwhile
          // (an invalidate()) moved it on.
          const held = slot.held();
          if (held !== undefined && movedOn(held, value) && this.#o.lineage.precious(held.state)) value = held;
          const now = this.#o.clock.now();
          const text = this.#o.lineage.encode(value.state, value.seq, now);
          const ttl = this.#o.lineage.ttlMs(value.state, now);
          return s.set(slot.key, text, { ifVersion, ...(ttl !== undefined && { ttlMs: ttl }) });
        },
        budget,
      );
      if (!written.ok || written.value === null) return;
      if (await this.#overtaken(slot, flight)) return;
      // Held moved on while it was on its way (a newer state read meanwhile): what was written is not taken back.
      const held = slot.held();
      if (held !== undefined && movedOn(held, value)) return;
      slot.take({ ...value, version: written.value }, 'store');
      const pending = this.#pending.get(slot.key);
      if (pending !== undefined && pending.value.seq <= value.seq) this.#drop(pending);
    } finally {
      this.#land(slot.key, flight);
    }
  }

  /** A write of `key` on its way: {@link Fleet.forget} marks it. */
  #takeOff(key: string): Flight {
    const flight = { deleted: false, replaced: false };
    const flights = this.#writingBack.get(key) ?? new Set();
    flights.add(flight);
    this.#writingBack.set(key, flights);
    return flight;
  }

  #land(key: string, flight: Flight): void {
    const flights = this.#writingBack.get(key);
    if (flights === undefined) return;
    flights.delete(flight);
    if (flights.size === 0) this.#writingBack.delete(key);
  }

  /**
   * After a write that landed: whether the key was deleted on purpose (a sign-out: the entry just written is
   * deleted again, with a store time limit of its own) or replaced (a login saved here, written after it) while
   * it was on its way — nothing of it is taken then.
   */
  async #overtaken(slot: Slot<S>, flight: Flight): Promise<boolean> {
    if (flight.replaced) return true;
    if (!flight.deleted) return false;
    await this.storeCall(slot, 'delete', (s) => s.delete(slot.key));
    return true;
  }

  /** The lock, or `undefined` when another process held it past the wait. */
  async #lock(
    slot: Slot<S>,
    budget: Budget,
  ): Promise<{ ok: true; lock: StoreLock } | { ok: false; error: TokenwardenError } | undefined> {
    const { lockTtlMs: ttlMs, lockWaitMs: waitMs } = this.#o;
    const signal = this.#waits;
    const result = await this.storeCall(slot, 'lock', (s) => s.lock(slot.key, { ttlMs, waitMs, signal }), budget);
    if (!result.ok) return result;
    return result.value === undefined ? undefined : { ok: true, lock: result.value };
  }

  /**
   * No spend until the fleet has settled: after a store reset seen here, while the entry was restored from
   * memory moments ago, or when the lock was taken over from a holder that never released it (its lease ran
   * out during a store outage or a partition: it may hold a spend's result, retrying its write every 2 s at
   * most). A spend from configuration (nothing stored) is announced first — what this process holds, or the
   * lineage's placeholder — and given the same time, so that a process holding a newer state can overwrite it.
   * Resolves to the read to spend from.
   */
  async #settle(
    attempt: Attempt<S>,
    current: Read<S> & { ok: true },
    budget: Budget,
    takenOver: boolean,
  ): Promise<Read<S> & { ok: true }> {
    const now = this.#o.clock.now();
    // Another host's clock: one running ahead (or a corrupt entry) must not hold refreshes up past the settle.
    const healedAt = current.stored?.healedAt;
    let until = Math.max(
      this.#settleUntil,
      healedAt === undefined ? 0 : Math.min(healedAt, now) + SETTLE_MS,
      takenOver ? now + SETTLE_MS : 0,
    );
    if (current.record === undefined) {
      const held = attempt.held();
      const { lineage } = this.#o;
      if (held !== undefined && lineage.precious(held.state)) {
        await this.#writeBackHeld(attempt, held, 0, budget);
      } else if (lineage.placeholder !== undefined) {
        const text = lineage.encode(lineage.placeholder(now), 0, now);
        await this.storeCall(attempt, 'set', (s) => s.set(attempt.key, text, { ifVersion: 0 }), budget);
      } else {
        return current; // nothing single-use to spend from configuration
      }
      until = Math.max(until, now + SETTLE_MS);
    }
    if (now >= until) return current;
    const again = await this.#rereadAfter(attempt, until - now);
    if (!again.ok) throw again.error;
    return again;
  }

  /**
   * Spends and writes the result, compare-and-set on `base` (the version read under the lock). `keepLock` is
   * called when the write did not land (it is retried, and the lease must keep others off until it does) —
   * before an error is rethrown, so that the caller does not release the lock on its way out.
   */
  async #spendAndWrite(
    attempt: Attempt<S>,
    lock: StoreLock | undefined,
    base: number | undefined,
    budget: Budget,
    keepLock: () => void,
  ): Promise<void> {
    if (lock !== undefined && attempt.exclusive) await this.#confirm(attempt, lock, budget);
    const current = attempt.held();
    const spendLimit = Math.max(1000, this.#o.lockTtlMs - this.#o.storeTimeoutMs);
    const signal = AbortSignal.any([this.#o.closing, AbortSignal.timeout(spendLimit)]);
    let state: S;
    let failure: unknown;
    try {
      state = await attempt.spend(current, signal);
    } catch (err) {
      const rotated = rotatedOf<S>(err);
      if (rotated === undefined) throw err;
      // The server acted (it rotated the refresh token) but its answer failed a later check: keep the new
      // refresh token first, then report the error.
      state = rotated;
      failure = err;
    }
    const value: Versioned<S> = { state, seq: (current?.seq ?? 0) + 1, version: undefined };
    // The caller waits for the write only as long as the new token can spare (a frozen store would age it).
    const wait = patience(this.#o.lineage.expiresAt?.(state), this.#o.clock.now());
    const writing = wait !== undefined && wait < budget.remaining() ? new Budget(wait) : budget;
    if (await this.#write(attempt, value, base, lock, writing)) keepLock();
    if (failure !== undefined) throw failure;
  }

  /**
   * Right before a single-use state is spent: the lock must still be ours. A lease that ran out while the fleet
   * settled, or a lock the store dropped (a Redis evicting keys under memory pressure), may already be held by
   * another process, which re-reads the same refresh token: spending it here too would revoke the grant. A
   * store that can tell (`StoreLock.renew`) confirms ownership and restarts the lease in one round trip; when it
   * cannot answer, nothing is spent either (unless spending alone is allowed).
   */
  async #confirm(attempt: Attempt<S>, lock: StoreLock, budget: Budget): Promise<void> {
    const { renew } = lock;
    if (renew === undefined) return;
    const limit = budget.remaining();
    const started = Date.now();
    let error: TokenwardenError;
    try {
      if (limit <= 0) {
        throw new TokenwardenError(
          'ERR_STORE_TIMEOUT',
          `the store took longer than ${this.#o.storeTimeoutMs} ms in all`,
        );
      }
      if (await bounded(() => renew.call(lock), limit, 'store lock renewal')) return;
      error = new TokenwardenError(
        'ERR_STORE',
        'the refresh lock was lost before the refresh (its lease ran out, or the store dropped it: a Redis evicting keys?); nothing was spent',
      );
    } catch (err) {
      if (this.#waits.aborted && isTokenwardenError(err, 'ERR_CLOSED', 'ERR_ABORTED')) throw err;
      error = isTokenwardenError(err)
        ? err
        : new TokenwardenError('ERR_STORE', 'store lock renewal failed', { cause: driverCause(err) });
      if (this.#mayGoAlone()) return;
    } finally {
      budget.charge(Math.min(Date.now() - started, limit));
    }
    this.#failed(attempt, 'lock', error);
    throw error;
  }

  /** Writes a spend's result; when the store does not take it, holds it as pending and retries. */
  async #write(
    slot: Slot<S>,
    value: Versioned<S>,
    base: number | undefined,
    lock: StoreLock | undefined,
    budget: Budget,
  ): Promise<boolean> {
    const now = this.#o.clock.now();
    const text = this.#o.lineage.encode(value.state, value.seq);
    const ttl = this.#o.lineage.ttlMs(value.state, now);
    const options = { ...(ttl !== undefined && { ttlMs: ttl }), ...(base !== undefined && { ifVersion: base }) };
    const written = await this.storeCall(slot, 'set', (s) => s.set(slot.key, text, options), budget);
    if (written.ok && written.value !== null) {
      slot.take({ ...value, version: written.value }, 'source');
      return false;
    }
    // Not written (yet): hold it, keep the lock, and retry until it lands or the store holds something newer.
    slot.take(value, 'source');
    const pending: Pending<S> = { slot, value, base: base ?? 0, lock, attempts: 0 };
    this.#pending.set(slot.key, pending);
    if (written.ok) {
      // The version moved under our lock: deleted (a sign-out while we spent — not undone, see #abandon), or
      // written by someone whose lease ran out or who restored it from memory (settled by seq).
      await this.#writeBack(pending, budget);
      return true; // the lock is the pending write's now: kept while it is pending, released when it is dropped
    }
    this.#flushSoon(250);
    return lock !== undefined;
  }

  /** One try at writing a pending state: read, and write it unless the store holds something as new. */
  async #writeBack(pending: Pending<S>, budget = new Budget(this.#o.storeTimeoutMs)): Promise<void> {
    if (this.#pending.get(pending.slot.key) !== pending) return;
    const flight = this.#takeOff(pending.slot.key);
    try {
      await this.#writePending(pending, budget, flight);
    } finally {
      this.#land(pending.slot.key, flight);
    }
  }

  async #writePending(pending: Pending<S>, budget: Budget, flight: Flight): Promise<void> {
    pending.attempts += 1;
    const read = await this.#read(pending.slot, budget);
    if (!read.ok) return;
    const { stored, record } = read;
    if (record === undefined && this.#o.clock.now() >= this.#settleUntil && this.#abandon(pending)) return;
    if (stored !== undefined && record !== undefined && stored.seq >= pending.value.seq) {
      // Ours landed after all (a write that timed out), or a state as new came from elsewhere: the store wins.
      pending.slot.take({ state: stored.state, seq: stored.seq, version: record.version }, 'store');
      this.#drop(pending);
      return;
    }
    const now = this.#o.clock.now();
    const text = this.#o.lineage.encode(pending.value.state, pending.value.seq);
    const ttl = this.#o.lineage.ttlMs(pending.value.state, now);
    const written = await this.storeCall(
      pending.slot,
      'set',
      (s) =>
        s.set(pending.slot.key, text, { ifVersion: record?.version ?? 0, ...(ttl !== undefined && { ttlMs: ttl }) }),
      budget,
    );
    if (written.ok && written.value !== null) {
      if (await this.#overtaken(pending.slot, flight)) return;
      pending.slot.take({ ...pending.value, version: written.value }, 'store');
      this.#drop(pending);
    }
  }

  /**
   * The entry a pending write was based on is gone (read as missing, the store not settling after a reset):
   * for a participant whose entries are deleted on purpose (`Slot.abandoned`: a sign-out), that is a deletion
   * made while the write was pending — on another instance, which could not forget this one's write. Not undone:
   * the write is dropped and its state abandoned. A write based on nothing stored (`base` 0) is written as usual.
   */
  #abandon(pending: Pending<S>): boolean {
    const { slot } = pending;
    if (pending.base === 0 || slot.abandoned === undefined) return false;
    this.#drop(pending);
    slot.missing?.();
    slot.abandoned(pending.value.state);
    return true;
  }

  #drop(pending: Pending<S>): void {
    if (this.#pending.get(pending.slot.key) !== pending) return;
    this.#pending.delete(pending.slot.key);
    if (pending.lock) this.#release(pending.lock);
  }

  /** Retries pending writes after `ms` (sooner when the store comes back), with backoff up to 2 s. */
  #flushSoon(ms: number): void {
    if (this.#pending.size === 0 || this.#o.closing.aborted) return;
    if (this.#flushTimer !== undefined) {
      if (ms > 0) return;
      clearTimeout(this.#flushTimer);
    }
    this.#flushTimer = setTimeout(() => {
      this.#flushTimer = undefined;
      this.#flushedAt = Date.now();
      void Promise.all([...this.#pending.values()].map((p) => this.#writeBack(p))).then(() => {
        const attempts = Math.max(0, ...[...this.#pending.values()].map((p) => p.attempts));
        this.#flushSoon(Math.min(2000, 250 * 2 ** Math.min(attempts, 4)));
      });
    }, ms);
    this.#flushTimer.unref();
  }

  /** The store lost data or changed server: write back everything held, and let the fleet settle. */
  #reset(): void {
    this.#settleUntil = this.#o.clock.now() + SETTLE_MS;
    this.#flushSoon(0);
    const slots = [...this.#o.slots()].filter((s) => {
      const held = s.held();
      return held !== undefined && this.#o.lineage.precious(held.state) && !this.#pending.has(s.key);
    });
    // A few at a time: a UserTokens instance may hold thousands of subjects.
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < slots.length && !this.#o.closing.aborted) {
        const slot = slots[next++] as Slot<S>;
        await this.sync(slot, true).catch(() => undefined);
      }
    };
    for (let i = 0; i < Math.min(16, slots.length); i++) void worker();
  }

  /** Without the store: a state that is not single-use (or a private store) is spent alone; otherwise the error. */
  async #withoutStore(attempt: Attempt<S>, error: TokenwardenError, budget: Budget): Promise<void> {
    if (attempt.exclusive && !this.#mayGoAlone()) throw error;
    attempt.precheck?.();
    this.#checkOpen();
    await this.#spendAndWrite(attempt, undefined, undefined, budget, () => undefined);
  }

  #mayGoAlone(): boolean {
    return this.#private || this.#o.unlockedRefresh;
  }

  /** Releases a lock without making the caller wait (the store may be slow; the result is in hand). */
  #release(lock: StoreLock): void {
    const released = lock.release().catch(() => undefined);
    this.#releasing.add(released);
    void released.then(() => this.#releasing.delete(released));
  }

  #checkOpen(): void {
    if (this.#waits.aborted) throw new TokenwardenError('ERR_CLOSED', 'closed');
  }
}
