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
 * Refusals live in an LRU of their own, beside the one of accepted tokens: anyone can send a flood of
 * distinct bad tokens (unknown API keys, unknown opaque tokens), and in one shared LRU each refusal
 * remembered would push out an accepted token, until every valid client's next request went back to the
 * authorization server or the provider. Refusals only ever push out refusals.
 *
 * @example
 * ```ts
 * const cache = new ValidationCache<string>({ max: 1000 });
 * const key = cacheKey(token);
 * cache.set(key, 'ok', clock.now() + 60_000, clock.now());
 * cache.get(key, clock.now()); // 'ok' for one minute, then undefined
 * cache.set(cacheKey(other), 'bad', clock.now() + 10_000, clock.now(), true); // a refusal: its own LRU
 * const generation = cache.generation; // before a slow check: its result is dropped if clear() runs meanwhile
 * cache.set(key, await verifySlowly(token), deadline, clock.now(), false, generation);
 * const v = await cache.flight(key, () => verifySlowly(token)); // concurrent callers share one call
 * ```
 */
export class ValidationCache<T> {
  readonly #entries: LRUCache<string, { value: T; until: number }> | undefined;
  readonly #refusals: LRUCache<string, { value: T; until: number }> | undefined;
  readonly #inflight = new Map<string, Promise<T>>();
  #generation = 0;

  /**
   * `max: 0` disables storage (single flight still applies). Refusals are bounded by `maxRefusals`,
   * default a quarter of `max` (at least one).
   */
  constructor(options: { max: number; maxRefusals?: number }) {
    const maxRefusals = options.maxRefusals ?? Math.max(1, Math.ceil(options.max / 4));
    this.#entries = options.max > 0 ? new LRUCache({ max: options.max }) : undefined;
    this.#refusals = options.max > 0 && maxRefusals > 0 ? new LRUCache({ max: maxRefusals }) : undefined;
  }

  /** The live value for `key` at `now`, or `undefined` (expired entries are dropped). */
  get(key: string, now: number): T | undefined {
    return live(this.#entries, key, now) ?? live(this.#refusals, key, now);
  }

  /**
   * Which {@link ValidationCache.clear} the cache is at: read it before verifying, and pass it to `set`.
   */
  get generation(): number {
    return this.#generation;
  }

  /**
   * Stores `value` until `until` (epoch ms); a deadline not after `now` stores nothing. `refusal` puts it
   * in the refusals' LRU, where it can push out only other refusals. `generation` is the
   * {@link ValidationCache.generation} read when the verification began: a result judged before a `clear()`
   * (a token revoked, then the cache cleared, while its check was in flight) is not stored after it.
   */
  set(key: string, value: T, until: number, now: number, refusal = false, generation = this.#generation): void {
    if (!(until > now) || generation !== this.#generation) return;
    const [into, other] = refusal ? [this.#refusals, this.#entries] : [this.#entries, this.#refusals];
    other?.delete(key);
    into?.set(key, { value, until });
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
    const promise: Promise<T> = result.finally(() => {
      if (this.#inflight.get(key) === promise) this.#inflight.delete(key);
    });
    this.#inflight.set(key, promise);
    return promise;
  }

  /** Number of stored entries, accepted and refused (live or not yet noticed as expired). */
  get size(): number {
    return (this.#entries?.size ?? 0) + (this.#refusals?.size ?? 0);
  }

  /**
   * Forgets every stored entry, and every verification in flight: a caller after this waits for a check
   * of its own, and what the earlier checks find is not stored.
   */
  clear(): void {
    this.#generation++;
    this.#entries?.clear();
    this.#refusals?.clear();
    this.#inflight.clear();
  }
}

/** The value stored for `key` in `entries` if its deadline is after `now`; an expired entry is dropped. */
function live<T>(
  entries: LRUCache<string, { value: T; until: number }> | undefined,
  key: string,
  now: number,
): T | undefined {
  const entry = entries?.get(key);
  if (entry === undefined) return undefined;
  if (now < entry.until) return entry.value;
  entries?.delete(key);
  return undefined;
}
