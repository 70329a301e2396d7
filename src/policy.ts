/**
 * When to refresh: the early-refresh margin (capped for short tokens), `every`, random early jitter and
 * capped exponential backoff.
 *
 * @module
 */
import { type Duration, toMs } from './duration.js';
import { TokenwardenError } from './errors.js';
import type { Token, TokenStatus } from './token.js';

/**
 * How a {@link TokenManager} decides to refresh. Every field is optional; the defaults are listed.
 *
 * A token becomes *stale* (refreshed in the background while still served) at
 * `expiresAt − min(beforeExpiry, maxBeforeExpiryRatio × lifetime) − jitter`, or at `issuedAt + every`
 * if that comes first. So a one-hour token is refreshed 30 s (+ up to 60 s of jitter) before it expires,
 * and a 4 s token after about 1.6–2 s — never on every call.
 *
 * @example
 * ```ts
 * new TokenManager({ source, refresh: { beforeExpiry: '2m', every: '30m', backoff: { max: '1m' } } });
 * ```
 */
export interface RefreshPolicyOptions {
  /** Refresh this long before expiry. Default `'30s'` (the seed's `seconds_before_expires`). */
  beforeExpiry?: Duration;
  /** The margin never exceeds this fraction of the token's lifetime. Default `0.5`. */
  maxBeforeExpiryRatio?: number;
  /**
   * Refresh when the token is older than this (the seed's `every_seconds`). Default: off when the
   * expiry is known, `'5m'` when the server gave no lifetime.
   */
  every?: Duration;
  /** Largest random early jitter, spreading a fleet's refreshes. Default `'60s'`. */
  jitter?: Duration;
  /** Jitter never exceeds this fraction of the token's lifetime. Default `0.1`. */
  jitterRatio?: number;
  /** Backoff between failed refreshes. */
  backoff?: BackoffOptions;
  /** Refresh in the background on a timer (besides the check on every call). Default `true`. */
  background?: boolean;
}

/**
 * Capped exponential backoff with jitter. The n-th consecutive failure waits
 * `d = min(max, initial × multiplier^(n−1))`, jittered uniformly into `[d/2, d]`; a `Retry-After` from the
 * server is honoured (up to one hour). While a valid token is held, retries are also pulled in so that
 * at least one more attempt happens before it expires.
 *
 * @example
 * ```ts
 * const backoff: BackoffOptions = { initial: '500ms', max: '2m', multiplier: 3 };
 * ```
 */
export interface BackoffOptions {
  /** First delay. Default `'200ms'`. */
  initial?: Duration;
  /** Largest delay. Default `'30s'`. */
  max?: Duration;
  /** Growth per failure. Default `2`. */
  multiplier?: number;
}

/** Default `every` when a token's lifetime is unknown. */
export const UNKNOWN_LIFETIME_EVERY_MS = 5 * 60_000;
const MAX_RETRY_AFTER_MS = 3_600_000;

/**
 * The resolved policy: all durations in milliseconds. Built once per manager by {@link resolvePolicy}.
 *
 * @example
 * ```ts
 * const policy: RefreshPolicy = resolvePolicy({ beforeExpiry: '1m' });
 * policy.beforeExpiryMs; // 60000
 * ```
 */
export interface RefreshPolicy {
  readonly beforeExpiryMs: number;
  readonly maxBeforeExpiryRatio: number;
  readonly everyMs: number | undefined;
  readonly jitterMs: number;
  readonly jitterRatio: number;
  readonly backoffInitialMs: number;
  readonly backoffMaxMs: number;
  readonly backoffMultiplier: number;
  readonly background: boolean;
}

/**
 * Validates options and fills in the defaults.
 *
 * @example
 * ```ts
 * resolvePolicy({ beforeExpiry: '10s' }).beforeExpiryMs; // 10000
 * ```
 */
export function resolvePolicy(options: RefreshPolicyOptions = {}): RefreshPolicy {
  const ratio = (value: number | undefined, fallback: number, name: string): number => {
    const r = value ?? fallback;
    if (typeof r !== 'number' || !(r >= 0 && r <= 1)) {
      throw new TokenwardenError('ERR_CONFIG', `refresh.${name} must be a number between 0 and 1`);
    }
    return r;
  };
  const multiplier = options.backoff?.multiplier ?? 2;
  if (typeof multiplier !== 'number' || !(multiplier >= 1 && multiplier <= 100)) {
    throw new TokenwardenError('ERR_CONFIG', 'refresh.backoff.multiplier must be a number from 1 to 100');
  }
  const policy: RefreshPolicy = {
    beforeExpiryMs: toMs(options.beforeExpiry ?? '30s', 'refresh.beforeExpiry'),
    maxBeforeExpiryRatio: ratio(options.maxBeforeExpiryRatio, 0.5, 'maxBeforeExpiryRatio'),
    everyMs: options.every === undefined ? undefined : toMs(options.every, 'refresh.every'),
    jitterMs: toMs(options.jitter ?? '60s', 'refresh.jitter'),
    jitterRatio: ratio(options.jitterRatio, 0.1, 'jitterRatio'),
    backoffInitialMs: Math.max(1, toMs(options.backoff?.initial ?? '200ms', 'refresh.backoff.initial')),
    backoffMaxMs: toMs(options.backoff?.max ?? '30s', 'refresh.backoff.max'),
    backoffMultiplier: multiplier,
    background: options.background ?? true,
  };
  if (policy.everyMs === 0) throw new TokenwardenError('ERR_CONFIG', 'refresh.every must be more than 0');
  return policy;
}

/**
 * The moment `token` becomes stale under `policy`. `random` is a number in [0, 1) drawn once per token
 * and process, so each process of a fleet picks its own moment.
 *
 * @example
 * ```ts
 * const at = staleAt(token, resolvePolicy(), Math.random());
 * ```
 */
export function staleAt(token: Token, policy: RefreshPolicy, random: number): number {
  const every = policy.everyMs ?? (token.expiresAt === undefined ? UNKNOWN_LIFETIME_EVERY_MS : undefined);
  let at = every === undefined ? Infinity : token.issuedAt + every;
  if (token.expiresAt !== undefined) {
    const lifetime = Math.max(0, token.expiresAt - token.issuedAt);
    const margin = Math.min(policy.beforeExpiryMs, lifetime * policy.maxBeforeExpiryRatio);
    const jitter = random * Math.min(policy.jitterMs, lifetime * policy.jitterRatio);
    at = Math.min(at, token.expiresAt - margin - jitter);
  }
  return at;
}

/**
 * Status of a token at `now`, given the moment it turns stale.
 *
 * @example
 * ```ts
 * statusAt(token, staleAt(token, policy, 0), Date.now()); // 'fresh' | 'stale' | 'expired'
 * ```
 */
export function statusAt(token: Token, stale: number, now: number): TokenStatus {
  if (token.expiresAt !== undefined && now >= token.expiresAt) return 'expired';
  return now >= stale ? 'stale' : 'fresh';
}

/**
 * Delay before retry number `failures` (1 for the first retry).
 *
 * @example
 * ```ts
 * backoffDelay(resolvePolicy(), 3, Math.random()); // between 400 and 800 ms by default
 * ```
 */
export function backoffDelay(policy: RefreshPolicy, failures: number, random: number, retryAfterMs?: number): number {
  const exponent = Math.max(0, failures - 1);
  const base = Math.min(policy.backoffMaxMs, policy.backoffInitialMs * policy.backoffMultiplier ** exponent);
  const delay = base / 2 + (random * base) / 2;
  // A Retry-After that is not a time (NaN from a custom source) must not become a NaN delay: a timer of 1 ms.
  return retryAfterMs === undefined ? delay : Math.max(delay, blockedForMs(retryAfterMs));
}

/**
 * How long callers are refused (`ERR_RETRY_LATER`) after a failure that asked for `retryAfterMs`: at most an
 * hour, as `Retry-After` is read — also when the failure came from a custom source with a day in it, or
 * something that is not a time at all (then nothing is refused).
 *
 * @example
 * ```ts
 * blockedForMs(86_400_000); // 3_600_000
 * ```
 */
export function blockedForMs(retryAfterMs: number): number {
  return Number.isFinite(retryAfterMs) && retryAfterMs > 0 ? Math.min(retryAfterMs, MAX_RETRY_AFTER_MS) : 0;
}

/**
 * Parses an HTTP `Retry-After` header (seconds or an HTTP date) into milliseconds from `now`. Seconds with a
 * fraction (`1.5`, sent by some rate limiters) are read as such; anything else without a letter (`-5`, `1e3`)
 * is no delay at all rather than a date: `Date.parse('1.5')` is 5 January 2001, which would say "now".
 *
 * @example
 * ```ts
 * parseRetryAfter('120', Date.now()); // 120000
 * ```
 */
export function parseRetryAfter(value: string | null | undefined, now: number): number | undefined {
  if (value == null) return undefined;
  const trimmed = value.trim();
  if (/^\d+(?:\.\d+)?$/.test(trimmed)) return Math.min(Math.ceil(Number(trimmed) * 1000), MAX_RETRY_AFTER_MS);
  // An HTTP-date (RFC 9110 §5.6.7) names its day and month.
  if (!/[a-z]/i.test(trimmed)) return undefined;
  const date = Date.parse(trimmed);
  if (Number.isNaN(date)) return undefined;
  return Math.min(Math.max(0, date - now), MAX_RETRY_AFTER_MS);
}

/**
 * Least time between two background refreshes: a token that is already stale when it arrives (a very short
 * lifetime, a clock far off) must not turn the background refresh into a loop.
 */
export const MIN_REFRESH_INTERVAL_MS = 1000;

/**
 * The floor between background refreshes of `token`, counted from its `issuedAt`:
 * {@link MIN_REFRESH_INTERVAL_MS}, but never past two thirds of a short token's life (a 1 s token is not left
 * to expire before its refresh starts), and never under a quarter of a second.
 *
 * @example
 * ```ts
 * refreshFloor(token); // 1000 for any token living 1.5 s or more
 * ```
 */
export function refreshFloor(token: Token): number {
  if (token.expiresAt === undefined) return MIN_REFRESH_INTERVAL_MS;
  const lifetime = token.expiresAt - token.issuedAt;
  return Math.min(MIN_REFRESH_INTERVAL_MS, Math.max(250, (lifetime * 2) / 3));
}

/** Refreshes forced by rejected tokens allowed within one `forcedRefreshInterval` (TokenManager, UserTokens). */
const FORCED_PER_INTERVAL = 2;

/**
 * The times of forced refreshes with one more at `now` — or `undefined` when {@link FORCED_PER_INTERVAL} were
 * already forced within `intervalMs` (the rejection is then ignored: an API that refuses every token costs two
 * token requests per interval, not one per call). A time in the future (a host whose clock is ahead) does not
 * count: a skewed clock must not block forced refreshes for as long as it is ahead.
 */
export function forceRefresh(
  times: readonly number[] | undefined,
  now: number,
  intervalMs: number,
): number[] | undefined {
  const recent = (times ?? []).filter((t) => now - t < intervalMs && t <= now);
  return recent.length >= FORCED_PER_INTERVAL ? undefined : [...recent, now];
}
