/**
 * A TokenStore around a real one (a MemoryStore) whose chosen operations fail as a store refusing them would, or
 * never answer, or answer late: the faults of a store, simulated where a real server's cannot be timed to a step.
 */
import type { LockOptions, SetOptions, StoreLock, StoreRecord, TokenStore } from '../../src/stores/store.js';

export type Operation = 'get' | 'set' | 'lock' | 'delete';

/**
 * A store whose operations fail (`failing`), hang (`hang`, `hanging`) or answer reads late (`delayReads`) on
 * demand.
 */
export class FailingStore implements TokenStore {
  readonly failing = new Set<Operation>();
  /** Every operation never answers. */
  hang = false;
  /** These operations never answer (those already sent answer when it is emptied). */
  readonly hanging = new Set<Operation>();
  readonly #held: (() => void)[] = [];
  constructor(readonly inner: TokenStore) {}
  /** Stops the chosen operations hanging: those waiting go through now. */
  unhang(): void {
    this.hanging.clear();
    for (const go of this.#held.splice(0)) go();
  }
  async #check(operation: Operation): Promise<void> {
    if (this.hang) return new Promise(() => undefined);
    if (this.hanging.has(operation)) await new Promise<void>((resolve) => this.#held.push(resolve));
    if (this.failing.has(operation)) return Promise.reject(new Error(`ECONNREFUSED (${operation})`));
    return Promise.resolve();
  }
  /** Reads answered late: each read takes the value at once and answers when {@link FailingStore.answer} is called. */
  delayReads = false;
  readonly #late: (() => void)[] = [];
  async get(key: string): Promise<StoreRecord | undefined> {
    await this.#check('get');
    const value = await this.inner.get(key);
    if (this.delayReads) await new Promise<void>((resolve) => this.#late.push(resolve));
    return value;
  }
  /** Lets the late reads answer (with what they read when asked). */
  async answer(): Promise<void> {
    for (const resolve of this.#late.splice(0)) resolve();
    await new Promise((resolve) => setImmediate(resolve));
  }
  /** Writes of these keys are refused (a key the store will not take: a value too large, a slot down). */
  readonly refusedKeys = new Set<string>();
  /** Every write tried, by key. */
  readonly writes = new Map<string, number>();
  async set(key: string, value: string, options?: SetOptions): Promise<number | null> {
    this.writes.set(key, (this.writes.get(key) ?? 0) + 1);
    if (this.refusedKeys.has(key)) throw new Error(`ERR value refused (${key.length})`);
    await this.#check('set');
    return this.inner.set(key, value, options);
  }
  async delete(key: string): Promise<void> {
    await this.#check('delete');
    return this.inner.delete(key);
  }
  async lock(key: string, options: LockOptions): Promise<StoreLock | undefined> {
    await this.#check('lock');
    return this.inner.lock(key, options);
  }
  close(): Promise<void> {
    return this.inner.close();
  }
}
