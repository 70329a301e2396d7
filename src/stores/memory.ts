import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { LRUCache } from 'lru-cache';
import { type Clock, systemClock } from '../clock.js';
import { TokenwardenError } from '../errors.js';
import { Codec, type EncryptionOption, decodeOrMiss } from './codec.js';
import { LockWaiters } from './lock-waiters.js';
import { checkKey } from './shared.js';
import type { LockOptions, SetOptions, StoreEvents, StoreLock, StoreRecord, TokenStore } from './store.js';

/** Up to this bound, the LRU's arrays are allocated at full size when the store is made. */
const PREALLOCATED_MAX = 65_536;

/**
 * Options for {@link MemoryStore}.
 *
 * @example
 * ```ts
 * const store = new MemoryStore({ max: 50_000 });
 * ```
 */
export interface MemoryStoreOptions {
  /** Most entries kept; the least recently used go first. Default `10000`. */
  max?: number;
  /** Encrypt values (useful only to test a configuration; memory is not "at rest"). */
  encryptionKey?: EncryptionOption;
  /** Clock for TTLs and lock leases. Default: the system clock. */
  clock?: Clock;
}

let versionCounter = 0;

/** Keys longer than this are held by a digest (see {@link heldKey}). */
const LONGEST_HELD_AS_IS = 32;

/**
 * The key an entry is held under. A long key — `UserTokens` writes 96-character ones, one per signed-in
 * user — is held as NUL followed by the first 15 bytes of its SHA-256 as Latin-1 (16 one-byte characters:
 * 32 bytes of heap instead of 112 for such a key). A key given by a caller never holds NUL (`checkKey`), so a
 * digest never equals a short key; two long keys share an entry only if 120 bits of SHA-256 collide.
 */
function heldKey(key: string): string {
  if (key.length <= LONGEST_HELD_AS_IS) return key;
  const digest = createHash('sha256').update(key).digest();
  digest.copyWithin(1, 0, 15)[0] = 0; // one flat string (a concatenation would be a cons string in V8)
  return digest.toString('latin1', 0, 16);
}

/**
 * A bounded in-process store: the default of every `TokenManager`, and a way for several managers (or
 * `UserTokens`) in one process to share tokens. The lock is an in-process mutex with a lease.
 *
 * @example
 * ```ts
 * import { MemoryStore, TokenManager, clientCredentials } from 'tokenwarden';
 * const store = new MemoryStore({ max: 1000 });
 * const a = new TokenManager({ source: clientCredentials(opts), store });
 * const b = new TokenManager({ source: clientCredentials(opts), store }); // shares a's token
 * ```
 */
export class MemoryStore extends EventEmitter<StoreEvents> implements TokenStore {
  readonly #entries: LRUCache<string, { value: string; version: number }>;
  readonly #locks = new Map<string, { owner: string; until: number }>();
  readonly #codec: Codec;
  readonly #clock: Clock;
  readonly #waiters: LockWaiters;
  #closed = false;

  constructor(options: MemoryStoreOptions = {}) {
    super();
    const max = options.max ?? 10_000;
    if (!(Number.isInteger(max) && max > 0)) throw new TokenwardenError('ERR_CONFIG', 'max must be a positive integer');
    this.#clock = options.clock ?? systemClock;
    const clock = this.#clock;
    // lru-cache allocates arrays of `max` slots up front (28 MB for a million entries): a large bound is
    // kept as a size limit instead (one unit per entry), whose arrays grow with the entries.
    this.#entries =
      max <= PREALLOCATED_MAX
        ? new LRUCache({ max, perf: { now: () => clock.now() } })
        : new LRUCache({ maxSize: max, sizeCalculation: () => 1, perf: { now: () => clock.now() } });
    this.#codec = new Codec(options.encryptionKey);
    this.#waiters = new LockWaiters(this.#clock);
  }

  /** Number of entries held. */
  get size(): number {
    return this.#entries.size;
  }

  async get(key: string): Promise<StoreRecord | undefined> {
    this.#check();
    checkKey(key);
    const entry = this.#entries.get(heldKey(key));
    if (!entry) return undefined;
    const value = decodeOrMiss(this.#codec, key, entry.value, (event) => this.emit('corrupt', event));
    return value === undefined ? undefined : { value, version: entry.version };
  }

  async set(key: string, value: string, options: SetOptions = {}): Promise<number | null> {
    this.#check();
    checkKey(key);
    const held = heldKey(key);
    if (options.ifVersion !== undefined) {
      const current = this.#entries.get(held)?.version ?? 0;
      if (current !== options.ifVersion) return null;
    }
    const version = ++versionCounter;
    const ttl = options.ttlMs === undefined ? undefined : Math.max(1, Math.ceil(options.ttlMs));
    this.#entries.set(held, { value: this.#codec.encode(key, value), version }, ttl === undefined ? {} : { ttl });
    return version;
  }

  async delete(key: string): Promise<void> {
    this.#check();
    checkKey(key);
    this.#entries.delete(heldKey(key));
  }

  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    this.#check();
    checkKey(key);
    const owner = randomUUID();
    const deadline = this.#clock.now() + options.waitMs;
    for (;;) {
      const now = this.#clock.now();
      const held = this.#locks.get(key);
      if (!held || held.until <= now) {
        this.#locks.set(key, { owner, until: now + options.ttlMs });
        return {
          takenOver: held !== undefined, // a lock never released stays in the map until taken over
          release: async () => {
            if (this.#locks.get(key)?.owner === owner) this.#locks.delete(key);
            this.#waiters.notify(key);
          },
          renew: async () => {
            this.#check();
            const current = this.#locks.get(key);
            const at = this.#clock.now();
            if (current?.owner !== owner || current.until <= at) return false;
            current.until = at + options.ttlMs;
            return true;
          },
        };
      }
      if (now >= deadline) return undefined;
      await this.#waiters.wait(key, Math.min(deadline, held.until) - now, options.signal);
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#entries.clear();
  }

  #check(): void {
    if (this.#closed) throw new TokenwardenError('ERR_CLOSED', 'the store is closed');
  }
}
