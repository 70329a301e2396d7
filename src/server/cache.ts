/**
 * The validation cache: a bounded LRU of verification results keyed by the SHA-256 of the token, with a
 * deadline per entry read from the injected clock on every hit, and single flight for concurrent misses.
 *
 * Why SHA-256 of the whole token: two different tokens must never share an entry (fast-jwt cached by a
 * prefix and let one token authenticate as another, GHSA-rp9m-7r4c-75qg), and a long-lived cache should
 * not hold bearer tokens as keys (heap dumps, debuggers).
 *
 * @module
 */
import { hash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Clock, Timer } from '../clock.js';

/**
 * The cache key of a token: base64url SHA-256 over all of it.
 *
 * @example
 * ```ts
 * cacheKey('abc'); // 'ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0'
 * ```
 */
export function cacheKey(token: string): string {
  return hash('sha256', token, 'base64url');
}

/** How long {@link RecentKeys} holds a token it has seen (at most twice this, until its sweep runs). */
export const RECENT_MS = 1000;
/** How many tokens {@link RecentKeys} holds at most. */
export const RECENT_MAX = 1024;
/** Characters of a token's end that {@link RecentKeys} looks it up by (a JWT's signature, or most of it). */
const TAIL = 43;

/**
 * The cache keys of the valid tokens seen in the last second, found without hashing: a token presented again
 * within {@link RECENT_MS} (the common case: a client sends one token with every call) costs a lookup by
 * its last characters and one full string comparison instead of a SHA-256. Only exact equality with the
 * token that was hashed returns its key, so two tokens never share one. The price is that these tokens
 * stay in memory as strings for about a second after they were first seen (no longer than the requests
 * that carried them); the validation cache itself holds only hashes. Bounded to {@link RECENT_MAX} tokens,
 * emptied by a timer (never keeping the process alive) every {@link RECENT_MS} while it holds any.
 *
 * @example
 * ```ts
 * const recent = new RecentKeys(systemClock);
 * const known = recent.known(token, Date.now()); // undefined: not remembered
 * const key = known ?? cacheKey(token);
 * if (known === undefined && cache.get(key, Date.now())?.ok) recent.remember(token, key, Date.now());
 * ```
 */
export class RecentKeys {
  readonly #clock: Clock;
  readonly #seen = new Map<string, { token: string; key: string; until: number }>();
  #sweep: Timer | undefined;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** The key remembered for exactly `token` less than a second ago, or `undefined`. */
  known(token: string, now: number): string | undefined {
    const seen = this.#seen.get(token.length > TAIL ? token.slice(-TAIL) : token);
    return seen !== undefined && seen.token === token && now < seen.until ? seen.key : undefined;
  }

  /**
   * Remembers `token`'s `key` for {@link RECENT_MS} (the verifier calls this for tokens its cache accepted,
   * so that nothing a stranger sends — garbage, forgeries, unknown tokens — is ever held here).
   */
  remember(token: string, key: string, now: number): void {
    const tail = token.length > TAIL ? token.slice(-TAIL) : token;
    const seen = this.#seen.get(tail);
    if (seen !== undefined && seen.token === token && now < seen.until) return;
    if (seen === undefined && this.#seen.size >= RECENT_MAX) {
      this.#seen.delete(this.#seen.keys().next().value as string);
    }
    this.#seen.set(tail, { token, key, until: now + RECENT_MS });
    this.#sweep ??= this.#clock.setTimer(() => this.clear(), RECENT_MS);
  }

  /** Tokens held now. */
  get size(): number {
    return this.#seen.size;
  }

  /** Forgets every token (and stops the sweep until one is seen again). */
  clear(): void {
    this.#seen.clear();
    this.#sweep?.cancel();
    this.#sweep = undefined;
  }
}

/**
 * A bounded map from token hash to a value that is dead from its deadline on. The caller passes the time
 * (from its clock) to every read and write, so no entry can be served after its deadline whatever the
 * LRU's own bookkeeping does.
 *
 * @example
 * ```ts
 * const cache = new ValidationCache<string>({ max: 1000 });
 * const key = cacheKey(token);
 * cache.set(key, 'ok', clock.now() + 60_000, clock.now());
 * cache.get(key, clock.now()); // 'ok' for one minute, then undefined
 * const v = await cache.flight(key, () => verifySlowly(token)); // concurrent callers share one call
 * ```
 */
export class ValidationCache<T> {
  readonly #entries: LRUCache<string, { value: T; until: number }> | undefined;
  readonly #inflight = new Map<string, Promise<T>>();

  /** `max: 0` disables storage (single flight still applies). */
  constructor(options: { max: number }) {
    this.#entries = options.max > 0 ? new LRUCache({ max: options.max }) : undefined;
  }

  /** The live value for `key` at `now`, or `undefined` (expired entries are dropped). */
  get(key: string, now: number): T | undefined {
    const entry = this.#entries?.get(key);
    if (entry === undefined) return undefined;
    if (now < entry.until) return entry.value;
    this.#entries?.delete(key);
    return undefined;
  }

  /** Stores `value` until `until` (epoch ms); a deadline not after `now` stores nothing. */
  set(key: string, value: T, until: number, now: number): void {
    if (until > now) this.#entries?.set(key, { value, until });
  }

  /**
   * Runs `fn` once for all concurrent callers with the same `key`: while a promise it returned is pending,
   * callers get that promise. A value returned at once is returned as it is (nothing was in flight).
   */
  flight(key: string, fn: () => T | Promise<T>): T | Promise<T> {
    const running = this.#inflight.get(key);
    if (running !== undefined) return running;
    const result = fn();
    if (!(result instanceof Promise)) return result;
    const promise = result.finally(() => this.#inflight.delete(key));
    this.#inflight.set(key, promise);
    return promise;
  }

  /** Number of stored entries (live or not yet noticed as expired). */
  get size(): number {
    return this.#entries?.size ?? 0;
  }

  /** Forgets every stored entry. */
  clear(): void {
    this.#entries?.clear();
  }
}
