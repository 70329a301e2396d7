/**
 * The TokenManager: keeps one token valid for as long as you need it.
 *
 * The data path of `getToken()`, in one line:
 * memory → (stale?) shared store → (still stale?) lock → re-read → source → store → release.
 *
 * @module
 */
import { EventEmitter, setMaxListeners } from 'node:events';
import { inspect } from 'node:util';
import type { DPoPHandle } from 'oauth4webapi';
import { abortable } from './abort.js';
import { type Clock, type Timer, systemClock } from './clock.js';
import { type Duration, toMs } from './duration.js';
import { TokenwardenError, isTokenwardenError, restated } from './errors.js';
import { type Attempt, Fleet, type Lineage, type Slot, type Versioned, lockLease, withRotated } from './fleet/fleet.js';
import { type AuthFetchOptions, authFetch } from './http/auth-fetch.js';
import type { FetchLike } from './http/transport.js';
import {
  type RefreshPolicy,
  type RefreshPolicyOptions,
  backoffDelay,
  blockedForMs,
  forceRefresh,
  refreshFloor,
  resolvePolicy,
  staleAt,
  statusAt,
} from './policy.js';
import { rotatedRefreshToken } from './sources/client.js';
import type { TokenSource } from './sources/source.js';
import { MemoryStore } from './stores/memory.js';
import type { TokenStore } from './stores/store.js';
import * as telemetry from './telemetry/hooks.js';
import {
  type StoredRefusal,
  type Token,
  type TokenStatus,
  expiredOnArrival,
  isValid,
  parseStoredEntry,
  remainingMs,
  serializeStoredToken,
} from './token.js';

/**
 * Options for {@link TokenManager}.
 *
 * @example
 * ```ts
 * const options: TokenManagerOptions = {
 *   source: clientCredentials({ issuer, clientId, clientSecret }),
 *   store: new FileStore({ path: '/var/cache/my-app/tokens' }),
 *   refresh: { beforeExpiry: '1m' },
 *   lock: { ttl: '30s', wait: '10s' },
 * };
 * ```
 */
export interface TokenManagerOptions {
  /** Where tokens come from. */
  source: TokenSource;
  /**
   * Where tokens are kept and shared (and locked for refresh). Default: a private `MemoryStore`. Pass a
   * `FileStore`, `RedisStore` or `PostgresStore` to share one token across processes and restarts.
   */
  store?: TokenStore;
  /** Store key. Default: `source.key`. */
  key?: string;
  /**
   * A name for this token in metrics: the `tokenwarden.name` attribute of `tokenwarden.token.time_to_expiry`
   * (next to the store key). Default: the name given to {@link TokenManager.named}, else none. Not a secret.
   */
  name?: string;
  /** When to refresh. See {@link RefreshPolicyOptions} for the defaults. */
  refresh?: RefreshPolicyOptions;
  /**
   * The refresh lock: `ttl`, its lease — longer than a refresh can take under it (default `'30s'`, or the
   * settle of 3.5 s, the source's `timeout`, twice `storeTimeout` and 5 s together when that is longer; a `ttl`
   * not longer than the settle, the `timeout` and twice `storeTimeout` together is `ERR_CONFIG`), and `wait`,
   * how long a caller without a valid token waits for another process's refresh
   * (default = `ttl`).
   */
  lock?: { ttl?: Duration; wait?: Duration };
  /**
   * The time budget of one refresh's store steps (read, lock, re-read, write), default `'2s'`. A caller
   * holding a valid token never waits on the store at all.
   */
  storeTimeout?: Duration;
  /**
   * Let a source that spends a single-use refresh token refresh without the store's lock when the store is
   * down and no valid token is left. Default `false`: such callers get `ERR_STORE`/`ERR_STORE_TIMEOUT` until
   * the store answers, because another process may be spending the same refresh token — which servers punish
   * by revoking the whole grant. Set it only for a store no other process uses.
   */
  unlockedRefresh?: boolean;
  /** Clock. Default: the system clock. */
  clock?: Clock;
  /** Random numbers in [0, 1) for jitter. Default `Math.random`. */
  random?: () => number;
  /** Options of {@link TokenManager.fetch} (which 401 responses are retried). */
  fetch?: AuthFetchOptions;
  /**
   * The window for refreshes forced by rejected tokens ({@link TokenManager.invalidate}, which
   * `manager.fetch`, axios and undici call on a 401 `invalid_token`): at most two per window, across every
   * process sharing the store (their times are kept with the token). A rejection beyond that is ignored (the
   * caller gets the API's 401) — so an API that rejects every token costs two token requests per window, not one
   * per call. Default `'30s'`.
   */
  forcedRefreshInterval?: Duration;
}

/**
 * Options for {@link TokenManager.getToken}.
 *
 * @example
 * ```ts
 * await manager.getToken({ minTtl: '2m', signal: AbortSignal.timeout(5000) });
 * ```
 */
export interface GetTokenOptions {
  /** Stop waiting (the shared refresh itself goes on for other callers). */
  signal?: AbortSignal;
  /**
   * Require at least this much remaining life; a token with less is replaced first. A token this manager obtained
   * under its refresh floor (a second) ago is the longest the server gives and satisfies any `minTtl`: a server
   * whose tokens live shorter is asked at most once a second, not on every call.
   */
  minTtl?: Duration;
}

/**
 * Token metadata for events and diagnostics: never the token itself.
 *
 * @example
 * ```ts
 * const info: TokenInfo | undefined = manager.peek().info;
 * if (info) console.log(`expires ${new Date(info.expiresAt ?? 0).toISOString()}`);
 * ```
 */
export interface TokenInfo {
  readonly key: string;
  readonly tokenType: string;
  readonly issuedAt: number;
  readonly expiresAt: number | undefined;
  readonly staleAt: number;
  readonly scope: string | undefined;
}

/**
 * Events of a {@link TokenManager}. No event carries a token or a secret.
 *
 * @example
 * ```ts
 * manager.on('refreshFailed', ({ error, retryInMs, validUntil }) => log.warn({ code: error.code, retryInMs, validUntil }));
 * manager.on('storeError', ({ operation, error }) => log.warn({ operation, code: error.code }));
 * ```
 */
export interface TokenManagerEvents {
  /** A new token is held: fetched from the source, or adopted from the shared store. */
  token: [TokenInfo & { from: 'source' | 'store' }];
  /** A refresh failed. `retryInMs` is set when a background retry is scheduled. */
  refreshFailed: [
    {
      key: string;
      error: TokenwardenError;
      failures: number;
      retryInMs: number | undefined;
      validUntil: number | undefined;
    },
  ];
  /** The held token expired before a new one could be obtained. */
  expired: [{ key: string; expiredAt: number }];
  /** The store failed or timed out; the manager carries on in-process. */
  storeError: [{ key: string; operation: 'get' | 'set' | 'lock'; error: TokenwardenError }];
  /** The store answers again after a `storeError`. */
  storeRecovered: [{ key: string }];
}

interface Held {
  readonly token: Token;
  readonly staleAt: number;
  /** Version of the store entry this token was read from or written as; `undefined` if never synced. */
  version: number | undefined;
  /** Its place in the key's history (see the fleet core). */
  seq: number;
  /** When refreshes were last forced for this key (rejected tokens, `invalidate()`), fleet-wide; newest last. */
  readonly forced: readonly number[];
  readonly generation: number;
  /** The wall clock and the monotonic clock when it was installed: its age is judged by the time that has passed. */
  readonly since: number;
  readonly tickAt: number;
  /** Obtained from the source by this manager (not read from the store). */
  readonly fetched: boolean;
  /**
   * Until when `getToken()` serves it by the wall clock alone (one clock read): `staleAt` while it is fresh,
   * `-Infinity` once it is stale by the time that has passed (see `#watchWall`).
   */
  fastUntil: number;
}

/**
 * What the fleet core keeps for a manager's key: the token, when refreshes were last forced, and whether the server
 * refused the token's refresh token (the configured one, for the placeholder of a first refresh).
 */
interface TokenState {
  readonly token: Token;
  readonly forced?: readonly number[] | undefined;
  readonly refused?: StoredRefusal | undefined;
}

interface Want {
  /** Only a fresh token will do (background refresh of a stale one); otherwise a valid one. */
  fresh?: boolean;
  /** Only a token obtained after this generation will do (forced refresh). */
  afterGeneration?: number;
  /** Least remaining life. */
  minTtlMs?: number;
}

/**
 * After a transient failure, callers without a valid token get that failure at once for up to this long
 * (or the backoff delay, if shorter) instead of each starting a request: a down authorization server sees
 * about one attempt per second per process, and a recovered one is used again within a second.
 */
export const DEMAND_RETRY_FLOOR_MS = 1000;

/** Longest background retry delay while no valid token is held (so a recovered server is used soon). */
const NO_TOKEN_RETRY_MAX_MS = 5000;

const STORE_CODES: ReadonlySet<string> = new Set(['ERR_STORE', 'ERR_STORE_TIMEOUT', 'ERR_LOCK_TIMEOUT']);

/** Whether a failure is the store's (or another process holding the lock), not the authorization server's. */
export function isStoreFailure(error: TokenwardenError): boolean {
  return STORE_CODES.has(error.code);
}

/**
 * Keeps a token valid: serves it from memory, refreshes it ahead of expiry (in the background and on
 * demand), one refresh at a time, sharing it through a store across processes, and keeps serving a
 * still-valid token while the authorization server is slow or down.
 *
 * - `fresh` token: returned from memory — no I/O, no await on anything but the promise itself.
 * - `stale` token: returned at once; one refresh starts in the background.
 * - no valid token: callers wait for the one shared refresh.
 *
 * Refresh failures are retried in the background with capped, jittered exponential backoff (honouring
 * `Retry-After`) for transient errors (network, timeouts, 5xx, 429); errors that will not heal by waiting
 * (`invalid_client`, `invalid_grant`, misconfiguration) are not retried in the background.
 *
 * @example
 * ```ts
 * import { TokenManager, clientCredentials } from 'tokenwarden';
 * const manager = new TokenManager({
 *   source: clientCredentials({ issuer: 'https://login.example.com', clientId: 'svc', clientSecret: process.env.SECRET, scope: 'read' }),
 * });
 * const res = await manager.fetch('https://api.example.com/things'); // Authorization attached, one retry on 401
 * const token = await manager.getToken();                              // Token, valid
 * await manager.close();
 * ```
 */
export class TokenManager extends EventEmitter<TokenManagerEvents> {
  /** The store key of this manager's token. */
  readonly key: string;
  /** The source. */
  readonly source: TokenSource;
  /** The store (the private `MemoryStore` when none was given). */
  readonly store: TokenStore;
  /**
   * A `fetch` that attaches this manager's token and retries once on a 401 `invalid_token`. See
   * {@link authFetch}.
   */
  readonly fetch: FetchLike;

  readonly #policy: RefreshPolicy;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #ownsStore: boolean;
  readonly #fleet: Fleet<TokenState>;
  readonly #slot: Slot<TokenState>;
  readonly #forcedIntervalMs: number;
  readonly #closing = new AbortController();
  /** Aborted first by `close()`: waits for other processes end at once; a spend under way runs on. */
  readonly #stopWaiting = new AbortController();
  #held: Held | undefined;
  #generation = 0;
  #inflight: Promise<Token> | undefined;
  #failures = 0;
  #lastError: TokenwardenError | undefined;
  // The three deadlines below are on the monotonic clock (#tick): a wall clock stepped back must not stretch them.
  /** No attempt (background or on demand) before this: the server sent `Retry-After`. */
  #blockedUntil = 0;
  /** No background attempt before this (backoff). */
  #nextAttemptAt = 0;
  /** After a failure, callers without a valid token get it again until this time, without a request. */
  #failFastUntil = 0;
  #timer: Timer | undefined;
  /** See {@link TokenManager.#watchWall}. */
  #wallTimer: Timer | undefined;
  #closed = false;
  #expiredReported: Token | undefined;
  /**
   * The last refresh token the server answered `invalid_grant` to (`undefined`: the configured one): not presented
   * again while it is the one held. A dead refresh token sent again changes nothing but the server's logs — where
   * the reuse of a revoked refresh token reads as a replay (some providers raise breach alerts). The refusal is
   * written to the store with the token (`stored`), so that no other process, and no restart, presents it either;
   * one read from the store is held here the same way. A newer refresh token from the store is spent as usual.
   * A refusal of the configured refresh token, with no token held, is kept as the placeholder it was written as
   * (`alone`, at its place in the key's history): the fleet writes it back after a store reset like a token.
   */
  #refused:
    | {
        refreshToken: string | undefined;
        error: TokenwardenError;
        stored: StoredRefusal;
        alone?: Versioned<TokenState>;
      }
    | undefined;
  /** The grant type in metrics (`custom` for a source that is not a built-in grant). */
  readonly #grant: string;
  /** What the time-to-expiry gauge reads (held here: the gauge holds it weakly). */
  readonly #expiry: telemetry.ExpiryTarget;
  readonly #unwatch: () => void;

  constructor(options: TokenManagerOptions) {
    super();
    if (options === null || typeof options !== 'object' || !options.source) {
      throw new TokenwardenError('ERR_CONFIG', 'TokenManager needs a source');
    }
    const { source } = options;
    if (typeof source.fetchToken !== 'function') {
      throw new TokenwardenError('ERR_CONFIG', 'source must have a fetchToken(context) method');
    }
    const key = options.key ?? source.key;
    if (typeof key !== 'string' || key === '')
      throw new TokenwardenError('ERR_CONFIG', 'the source has no key; pass key');
    if (options.name !== undefined && typeof options.name !== 'string') {
      throw new TokenwardenError('ERR_CONFIG', 'name must be a string');
    }
    this.key = key;
    this.source = source;
    this.#policy = resolvePolicy(options.refresh);
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    const storeTimeoutMs = toMs(options.storeTimeout ?? '2s', 'storeTimeout');
    this.#forcedIntervalMs = toMs(options.forcedRefreshInterval ?? '30s', 'forcedRefreshInterval');
    const lockTtlMs = lockLease(options.lock?.ttl, requestTimeoutOf(source), storeTimeoutMs);
    const lockWaitMs = options.lock?.wait === undefined ? lockTtlMs : toMs(options.lock.wait, 'lock.wait');
    this.#ownsStore = options.store === undefined;
    this.store = options.store ?? new MemoryStore({ max: 16, clock: this.#clock });
    this.fetch = authFetch(this, options.fetch);
    setMaxListeners(0, this.#closing.signal); // shared by every refresh and lock wait in flight
    this.#slot = {
      key,
      held: () => {
        const held = this.#held;
        if (held === undefined) return this.#refused?.alone;
        return { state: this.#stateOf(held.token, held.forced), seq: held.seq, version: held.version };
      },
      take: (value, from) => this.#take(value, from),
      storeFailed: (operation, error) =>
        this.emit('storeError', { key, operation: operation === 'delete' ? 'set' : operation, error }),
      storeRecovered: () => this.emit('storeRecovered', { key }),
    };
    this.#fleet = new Fleet({
      store: this.store,
      lineage: tokenLineage(source.exclusive === true),
      clock: this.#clock,
      storeTimeoutMs,
      lockTtlMs,
      lockWaitMs,
      unlockedRefresh: options.unlockedRefresh === true,
      closing: this.#closing.signal,
      waiting: this.#stopWaiting.signal,
      slots: () => [this.#slot],
    });
    const grant = (source as { grant?: unknown }).grant;
    this.#grant = typeof grant === 'string' ? grant : 'custom';
    this.#expiry = {
      attributes: telemetry.managerAttributes(key, this.#grant, options.name),
      secondsLeft: () => {
        const held = this.#held;
        const expiresAt = held?.token.expiresAt;
        return held === undefined || expiresAt === undefined ? undefined : (expiresAt - this.#nowFor(held)) / 1000;
      },
    };
    this.#unwatch = telemetry.watchExpiry(this.#expiry);
  }

  /**
   * A valid token. Fresh: from memory at once. Stale: at once, while one background refresh runs.
   * Expired or none: waits for the one shared refresh.
   *
   * @example
   * ```ts
   * const { accessToken, tokenType, expiresAt } = await manager.getToken();
   * const longLived = await manager.getToken({ minTtl: '5m' }); // at least five minutes left
   * ```
   */
  getToken(options?: GetTokenOptions): Promise<Token> {
    const held = this.#held;
    if (held !== undefined && options === undefined && this.#clock.now() < held.fastUntil) {
      return Promise.resolve(held.token);
    }
    return this.#getTokenSlow(options);
  }

  /**
   * The access token string of {@link TokenManager.getToken}.
   *
   * @example
   * ```ts
   * const headers = { authorization: `Bearer ${await manager.getAccessToken()}` };
   * ```
   */
  async getAccessToken(options?: GetTokenOptions): Promise<string> {
    return (await this.getToken(options)).accessToken;
  }

  /**
   * Obtains a new token now (or takes one another process obtained after this call began), even if the
   * current one is fresh. Concurrent calls share one request.
   *
   * @example
   * ```ts
   * const token = await manager.refresh();
   * ```
   */
  async refresh(): Promise<Token> {
    this.#checkOpen();
    return this.#refresh({ afterGeneration: this.#generation });
  }

  /**
   * Drops the current token (for example after an API answered 401 `invalid_token`), here and — if the
   * store still holds it — for every process sharing the store. The refresh token is kept. Pass the
   * access token that failed so that a newer token obtained meanwhile is not dropped. Ignored when two
   * refreshes of this key were already forced within `forcedRefreshInterval` (default 30 s), fleet-wide.
   *
   * @example
   * ```ts
   * if (res.status === 401) await manager.invalidate(token.accessToken);
   * ```
   */
  async invalidate(accessToken?: string): Promise<void> {
    const held = this.#held;
    if (held === undefined || this.#closed) return;
    if (accessToken !== undefined && held.token.accessToken !== accessToken) return;
    const now = this.#nowFor(held);
    // At most two forced refreshes per forcedRefreshInterval (their times are kept with the token).
    const forced = forceRefresh(held.forced, now, this.#forcedIntervalMs);
    if (forced === undefined) return;
    const dead = Object.freeze({ ...held.token, expiresAt: Math.min(held.token.expiresAt ?? now, now) });
    this.#timer?.cancel();
    const next: Held = { ...held, token: dead, staleAt: now, fastUntil: -Infinity, forced };
    this.#held = next;
    if (held.version === undefined) return;
    const text = encodeToken(this.#stateOf(dead, forced), held.seq);
    const written = await this.#fleet.storeCall(this.#slot, 'set', (store) =>
      store.set(this.key, text, { ifVersion: held.version as number, ...storeTtl(dead, now) }),
    );
    if (written.ok && written.value !== null && this.#held === next) next.version = written.value;
  }

  /**
   * What the manager holds, without any I/O or refresh: the status and the token (if any).
   *
   * @example
   * ```ts
   * const { status, token } = manager.peek(); // status: 'fresh' | 'stale' | 'expired' | 'none'
   * ```
   */
  peek(): { status: TokenStatus | 'none'; token: Token | undefined; info: TokenInfo | undefined } {
    const held = this.#held;
    if (held === undefined) return { status: 'none', token: undefined, info: undefined };
    return {
      status: statusAt(held.token, held.staleAt, this.#nowFor(held)),
      token: held.token,
      info: this.#info(held),
    };
  }

  /**
   * Stops background refreshes, waits for a refresh in flight to finish (so a rotated refresh token is
   * never lost), and closes the store if the manager created it. Later calls fail with `ERR_CLOSED`.
   *
   * @example
   * ```ts
   * process.on('SIGTERM', () => manager.close());
   * ```
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#timer?.cancel();
    this.#wallTimer?.cancel();
    // A refresh waiting for another process's lock (up to lock.wait, 30 s) must not hold up a shutdown: it ends
    // now with ERR_CLOSED; one already spending runs on, and its rotated refresh token is written.
    this.#stopWaiting.abort(new TokenwardenError('ERR_CLOSED', 'the token manager was closed'));
    await this.#inflight?.catch(() => undefined);
    // A rotated refresh token the store did not take yet is written now (bounded), never dropped silently.
    await this.#fleet.flush();
    this.#closing.abort(new TokenwardenError('ERR_CLOSED', 'the token manager was closed'));
    await this.#fleet.close();
    this.#held = undefined;
    this.#unwatch();
    registry.forget(this);
    if (this.#ownsStore) await this.store.close();
  }

  /** The DPoP handle of the source (when it sender-constrains tokens), used by {@link TokenManager.fetch}. */
  get dpop(): DPoPHandle | undefined {
    return (this.source as { dpop?: DPoPHandle }).dpop;
  }

  /**
   * The manager registered under `name`, created from `options` on first use: one manager (and one
   * token) per credential for the whole process — the seed's named singleton. A later call with a
   * different source key is a configuration error.
   *
   * @example
   * ```ts
   * // anywhere in the app:
   * const billing = TokenManager.named('billing', () => ({ source: clientCredentials(billingOptions) }));
   * ```
   */
  static named(name: string, options: TokenManagerOptions | (() => TokenManagerOptions)): TokenManager {
    return registry.get(name, options);
  }

  /** Closes every manager created through {@link TokenManager.named}. */
  static async closeAll(): Promise<void> {
    await registry.closeAll();
  }

  toJSON(): Record<string, unknown> {
    const { status, info } = this.peek();
    return { key: this.key, status, token: info, source: (this.source as { toJSON?: () => unknown }).toJSON?.() };
  }

  [inspect.custom](): string {
    return `TokenManager ${inspect(this.toJSON())}`;
  }

  // ---------------------------------------------------------------------------------------------

  async #getTokenSlow(options: GetTokenOptions | undefined): Promise<Token> {
    this.#checkOpen();
    const minTtlMs = options?.minTtl === undefined ? 0 : toMs(options.minTtl, 'minTtl');
    const held = this.#held;
    if (held !== undefined) {
      const now = this.#nowFor(held);
      const status = statusAt(held.token, held.staleAt, now);
      if (status !== 'expired' && (minTtlMs === 0 || remainingMs(held.token, now) > this.#neededTtl(held, minTtlMs))) {
        if (status === 'stale') {
          telemetry.staleServed(this.#grant);
          this.#refreshInBackground();
        }
        return held.token;
      }
      if (status === 'expired' && this.#expiredReported !== held.token) {
        this.#expiredReported = held.token;
        this.emit('expired', { key: this.key, expiredAt: held.token.expiresAt as number });
      }
    }
    const demand = this.#demand(minTtlMs);
    return options?.signal ? abortable(demand, options.signal, 'getToken()') : demand;
  }

  /** No usable token: one attempt now, unless the server told us to wait or a permanent error is fresh. */
  #demand(minTtlMs: number): Promise<Token> {
    const now = this.#tick();
    const last = this.#lastError;
    if (last !== undefined && now < this.#blockedUntil) {
      return Promise.reject(
        new TokenwardenError('ERR_RETRY_LATER', `the authorization server asked to wait; no valid token until then`, {
          cause: last,
          retryAfterMs: this.#blockedUntil - now,
          ...(last.status !== undefined && { status: last.status }),
        }),
      );
    }
    if (last !== undefined && now < this.#failFastUntil) return Promise.reject(last);
    return this.#refresh(minTtlMs > 0 ? { minTtlMs } : {});
  }

  #refreshInBackground(): void {
    const now = this.#tick();
    if (this.#inflight !== undefined || now < this.#nextAttemptAt || now < this.#blockedUntil) return;
    if (this.#lastError !== undefined && !isTransient(this.#lastError) && now < this.#failFastUntil) return;
    this.#refresh({ fresh: true }).catch(() => undefined); // reported through 'refreshFailed'
  }

  /** Single flight: joins the refresh in flight; starts one if none, or if the joined one does not satisfy. */
  async #refresh(want: Want): Promise<Token> {
    const joined = this.#inflight;
    if (joined !== undefined) {
      const token = await joined;
      if (this.#satisfies(token, want)) return token;
    }
    if (this.#inflight !== undefined) return this.#inflight;
    const run = this.#run(want).finally(() => {
      if (this.#inflight === run) this.#inflight = undefined;
    });
    this.#inflight = run;
    return run;
  }

  #satisfies(token: Token, want: Want): boolean {
    const held = this.#held;
    if (held === undefined || held.token !== token) return false;
    if (want.afterGeneration !== undefined && held.generation <= want.afterGeneration) return false;
    const now = this.#nowFor(held);
    const status = statusAt(token, held.staleAt, now);
    if (status === 'expired' || (want.fresh === true && status !== 'fresh')) return false;
    return want.minTtlMs === undefined || remainingMs(token, now) > this.#neededTtl(held, want.minTtlMs);
  }

  /**
   * The life `held` must have left to satisfy `getToken({ minTtl })`: `minTtl`, unless this manager obtained it from
   * the source under its refresh floor (a second) ago — it is then the longest the server gives, and a caller asking
   * for more than the server ever gives costs a token request a second at most, not one per call.
   */
  #neededTtl(held: Held, minTtlMs: number): number {
    return held.fetched && this.#tick() - held.tickAt < refreshFloor(held.token) ? 0 : minTtlMs;
  }

  /** The fleet protocol (src/fleet/), for this manager's one key. */
  async #run(want: Want): Promise<Token> {
    const attempt: Attempt<TokenState> = {
      ...this.#slot,
      exclusive: this.source.exclusive === true,
      satisfied: () => this.#held !== undefined && this.#satisfies(this.#held.token, want),
      // Before the lock and again before the spend: a refresh token the server refused is not presented again.
      precheck: () => {
        const refused = this.#refused;
        if (refused !== undefined && refused.refreshToken === this.#held?.token.refreshToken) {
          const { error } = refused;
          throw restated(error, `${error.message} (this refresh token was refused before; it is not presented again)`);
        }
      },
      spend: async (current, signal) => {
        const forced = current?.state.forced;
        const previous = current?.state.token;
        try {
          const token = await this.source.fetchToken({ signal, ...(previous !== undefined && { previous }) });
          return { token, forced };
        } catch (err) {
          const now = this.#clock.now();
          if (this.source.exclusive === true && isTokenwardenError(err, 'ERR_OAUTH') && err.error === 'invalid_grant') {
            const stored = { error: err.error, ...(err.status !== undefined && { status: err.status }) };
            this.#refused = { refreshToken: previous?.refreshToken, error: err, stored };
            // Written for the fleet (the token it came with is still served until it expires): no other process,
            // and no restart, presents this refresh token again.
            throw withRotated(err, { token: previous ?? PLACEHOLDER(now), forced, refused: stored });
          }
          // The server rotated the refresh token before a later check of its answer failed: keep the new one.
          const rotated = rotatedRefreshToken(err);
          if (rotated === undefined) throw err;
          const kept: Token = Object.freeze({
            ...PLACEHOLDER(now),
            tokenType: current?.state.token.tokenType ?? 'Bearer',
            refreshToken: rotated,
          });
          throw withRotated(err as Error, { token: kept, forced });
        }
      },
    };
    try {
      await this.#fleet.run(attempt);
      const { token } = this.#held as Held;
      // Obtained, but past its expiry already (a lifetime shorter than the request took): not a valid token.
      if (!isValid(token, this.#clock.now())) throw expiredOnArrival();
      return token;
    } catch (err) {
      throw this.#failed(err);
    }
  }

  /**
   * Holds a token the fleet core obtained or read (a placeholder announcing someone's first refresh is not one),
   * and a refusal of its refresh token written with it (by this process or another).
   */
  #take(value: Versioned<TokenState>, from: 'store' | 'source'): void {
    const held = this.#held;
    const { token, forced, refused } = value.state;
    const known = this.#refused;
    if (refused !== undefined && (known === undefined || known.refreshToken !== token.refreshToken)) {
      this.#refused = { refreshToken: token.refreshToken, error: refusedBefore(refused), stored: refused };
    }
    if (
      held !== undefined &&
      value.seq >= held.seq &&
      held.token.accessToken === token.accessToken &&
      held.token.expiresAt === token.expiresAt &&
      held.token.refreshToken === token.refreshToken
    ) {
      // The same token, now written (or found) in the store — at its place in the history, or a later one that
      // changed nothing but what is recorded beside it (a refusal of its refresh token): no new token to install.
      held.version = value.version;
      held.seq = value.seq;
      return;
    }
    if (isPlaceholder(token) && (from === 'store' || refused !== undefined)) {
      // No token. One that records the refusal of the configured refresh token while nothing is held is kept as
      // written (its place in the history too): the fleet writes it back after a reset, as it would a token.
      const record = this.#refused; // set above when `refused` is
      if (
        refused !== undefined &&
        record !== undefined &&
        held === undefined &&
        value.seq >= (record.alone?.seq ?? 0)
      ) {
        record.alone = value;
      }
      return;
    }
    this.#install(token, value.version, value.seq, from, forced ?? []);
  }

  /** `token` as the fleet keeps it, with the refusal of its refresh token when it has one. */
  #stateOf(token: Token, forced: readonly number[]): TokenState {
    const refused = this.#refused;
    return refused !== undefined && refused.refreshToken === token.refreshToken
      ? { token, forced, refused: refused.stored }
      : { token, forced };
  }

  #install(
    token: Token,
    version: number | undefined,
    seq: number,
    from: 'source' | 'store',
    forced: readonly number[],
  ): void {
    const now = this.#clock.now();
    const tick = this.#tick();
    const stale = staleAt(token, this.#policy, this.#random());
    const held: Held = {
      token,
      staleAt: stale,
      version,
      seq,
      forced,
      generation: ++this.#generation,
      since: now,
      tickAt: tick,
      fetched: from === 'source',
      fastUntil: stale > now ? stale : -Infinity,
    };
    this.#held = held;
    this.#watchWall(held, now);
    // A token expired on arrival ends no run of failures (see #run): the backoff keeps growing.
    if (statusAt(token, held.staleAt, now) !== 'expired') {
      this.#failures = 0;
      this.#lastError = undefined;
      this.#blockedUntil = this.#failFastUntil = 0;
      // The floor belongs to the token, not to the process: a token another process has just fetched
      // (adopted from the store) is not refreshed again sooner than its fetcher would, or a fleet refreshes
      // short-lived tokens at the pace of its most eager member. Capped at now + floor (clock skew).
      const floor = refreshFloor(token);
      this.#nextAttemptAt = tick + (from === 'source' ? 0 : Math.min(token.issuedAt - now, 0)) + floor;
    }
    this.emit('token', { ...this.#info(held), from });
    this.#schedule(held.staleAt - now);
  }

  #failed(err: unknown): TokenwardenError {
    const error = isTokenwardenError(err)
      ? err
      : new TokenwardenError(
          'ERR_NETWORK',
          `token source failed: ${String((err as Error)?.message ?? err).slice(0, 200)}`,
          {
            cause: err,
          },
        );
    if (this.#closed) return error;
    const held = this.#held;
    const now = held === undefined ? this.#clock.now() : this.#nowFor(held);
    const tick = this.#tick();
    this.#failures += 1;
    this.#lastError = error;
    const validUntil =
      held && statusAt(held.token, held.staleAt, now) !== 'expired' ? (held.token.expiresAt ?? Infinity) : undefined;
    let delay = backoffDelay(this.#policy, this.#failures, this.#random(), error.retryAfterMs);
    if (error.retryAfterMs !== undefined) this.#blockedUntil = tick + blockedForMs(error.retryAfterMs);
    else if (validUntil === undefined) {
      // Nothing to serve: whoever needs a token is failing, so do not let backoff grow past a few seconds.
      delay = Math.min(delay, NO_TOKEN_RETRY_MAX_MS);
    } else if (validUntil !== Infinity) {
      // Make sure at least one more attempt happens before the token we serve expires.
      delay = Math.min(delay, Math.max(100, (validUntil - now) / 2));
    }
    let retryInMs: number | undefined;
    if (isTransient(error)) {
      this.#nextAttemptAt = tick + delay;
      // Protect the authorization server from callers without a token; a store problem is not its fault.
      if (!isStoreFailure(error)) this.#failFastUntil = tick + Math.min(delay, DEMAND_RETRY_FLOOR_MS);
      if (this.#policy.background) {
        retryInMs = delay;
        this.#schedule(delay);
      }
    } else {
      this.#failFastUntil = tick + delay;
      this.#timer?.cancel();
    }
    this.emit('refreshFailed', {
      key: this.key,
      error,
      failures: this.#failures,
      retryInMs,
      validUntil: validUntil === Infinity ? undefined : validUntil,
    });
    return error;
  }

  /** Arms the background timer `inMs` from now (not before the backoff allows). */
  #schedule(inMs: number): void {
    this.#timer?.cancel();
    this.#timer = undefined;
    if (!this.#policy.background || this.#closed || inMs === Infinity) return;
    const delay = Math.max(0, inMs, this.#nextAttemptAt - this.#tick());
    this.#timer = this.#clock.setTimer(() => this.#onTimer(), delay);
  }

  #onTimer(): void {
    this.#timer = undefined;
    if (this.#closed || this.#inflight !== undefined) return;
    const held = this.#held;
    if (held !== undefined) {
      const now = this.#nowFor(held);
      if (statusAt(held.token, held.staleAt, now) === 'fresh') {
        this.#schedule(held.staleAt - now);
        return;
      }
    }
    const tick = this.#tick();
    if (tick < this.#blockedUntil || tick < this.#nextAttemptAt) {
      this.#schedule(Math.max(this.#blockedUntil, this.#nextAttemptAt) - tick);
      return;
    }
    this.#refresh({ fresh: true }).catch(() => undefined); // reported through 'refreshFailed'
  }

  /**
   * The fast path judges a held token by the wall clock alone (a second clock read would cost as much as the rest
   * of it), and only while it is fresh. A wall clock stepped back (NTP, a VM restored) would keep a stale — in the
   * end an expired — token served that way: a timer, which counts the time that has passed, ends the fast path for
   * it when it turns stale, whatever the wall clock says then; the slow path judges by the time that has passed
   * (`#nowFor`).
   */
  #watchWall(held: Held, now: number): void {
    this.#wallTimer?.cancel();
    this.#wallTimer = undefined;
    if (held.fastUntil <= now || held.fastUntil === Infinity || this.#closed) return;
    this.#wallTimer = this.#clock.setTimer(() => {
      this.#wallTimer = undefined;
      held.fastUntil = -Infinity;
    }, held.fastUntil - now);
  }

  /** The monotonic clock (the wall clock when the clock has none): what backoff deadlines are kept on. */
  #tick(): number {
    return this.#clock.monotonic?.() ?? this.#clock.now();
  }

  /**
   * The time to judge `held` by: the wall clock, but never less than the time that has passed since it was
   * installed — a wall clock stepped back (NTP, a VM restored) must not keep a token in use past its real expiry
   * for as long as the step. Tokens obtained later are stamped with the wall clock as it is then.
   */
  #nowFor(held: Held): number {
    return Math.max(this.#clock.now(), held.since + (this.#tick() - held.tickAt));
  }

  #info(held: Held): TokenInfo {
    return {
      key: this.key,
      tokenType: held.token.tokenType,
      issuedAt: held.token.issuedAt,
      expiresAt: held.token.expiresAt,
      staleAt: held.staleAt,
      scope: held.token.scope,
    };
  }

  #checkOpen(): void {
    if (this.#closed) throw new TokenwardenError('ERR_CLOSED', 'the token manager was closed');
  }
}

/**
 * Errors worth retrying in the background: the server or the network may heal. Others (`invalid_client`,
 * `invalid_grant`, misconfiguration) are not retried by the manager.
 *
 * @example
 * ```ts
 * manager.on('refreshFailed', ({ error }) => {
 *   if (!isTransient(error)) pageOps(error.code);
 * });
 * ```
 */
export function isTransient(error: TokenwardenError): boolean {
  switch (error.code) {
    case 'ERR_NETWORK':
    case 'ERR_TIMEOUT':
    case 'ERR_INVALID_RESPONSE':
    case 'ERR_RESPONSE_TOO_LARGE':
    case 'ERR_STORE':
    case 'ERR_STORE_TIMEOUT':
    case 'ERR_LOCK_TIMEOUT':
    case 'ERR_CREDENTIAL': // a workload identity file the platform has not written (or rotated) yet
      return true;
    case 'ERR_HTTP_STATUS':
    case 'ERR_OAUTH':
      return (
        error.status === undefined ||
        error.status >= 500 ||
        error.status === 429 ||
        error.status === 408 ||
        error.error === 'temporarily_unavailable' ||
        error.error === 'server_error' ||
        error.error === 'slow_down'
      );
    default:
      return false;
  }
}

/** How a manager's token is stored (see the fleet core). */
function tokenLineage(exclusive: boolean): Lineage<TokenState> {
  return {
    decode: (_key, value) => {
      const entry = parseStoredEntry(value);
      if (entry === undefined) return undefined;
      return {
        state: { token: entry.token, forced: entry.forced, refused: entry.refused },
        seq: entry.seq,
        ...(entry.healedAt !== undefined && { healedAt: entry.healedAt }),
      };
    },
    encode: (state, seq, healedAt) => encodeToken(state, seq, healedAt),
    // A refusal is kept too: without it, the next process would present the dead refresh token again.
    precious: (state) => state.token.refreshToken !== undefined || state.refused !== undefined,
    // A refusal is kept until replaced: one of the configured refresh token has no token to keep it otherwise.
    ttlMs: (state, now) => (state.refused === undefined ? storeTtl(state.token, now).ttlMs : undefined),
    expiresAt: (state) => state.token.expiresAt,
    ...(exclusive && { placeholder: (now: number) => ({ token: PLACEHOLDER(now) }) }),
  };
}

/** Announces a first refresh from configuration: no token, nothing single-use, expired. */
const PLACEHOLDER = (now: number): Token =>
  Object.freeze({ accessToken: '', tokenType: 'Bearer', issuedAt: now, expiresAt: now, raw: {} });

function isPlaceholder(token: Token): boolean {
  return token.accessToken === '' && token.refreshToken === undefined;
}

const encodeToken = (state: TokenState, seq: number, healedAt?: number): string =>
  serializeStoredToken(state.token, { seq, healedAt, forced: state.forced, refused: state.refused });

/** The error for a refresh token whose refusal was read from the store (found by another process, or an earlier run). */
function refusedBefore(refused: StoredRefusal): TokenwardenError {
  return new TokenwardenError(
    'ERR_OAUTH',
    `the authorization server refused this refresh token (${refused.error}), as the store records`,
    { error: refused.error, ...(refused.status !== undefined && { status: refused.status }) },
  );
}

/** The request time limit of a built-in source (`GrantSource`), if it has one. */
function requestTimeoutOf(source: TokenSource): number | undefined {
  const timeoutMs = (source as { client?: { timeoutMs?: unknown } }).client?.timeoutMs;
  return typeof timeoutMs === 'number' && Number.isFinite(timeoutMs) ? timeoutMs : undefined;
}

/** How long a store keeps an entry: while it has a refresh token, until deleted; otherwise its life. */
function storeTtl(token: Token, now: number): { ttlMs?: number } {
  if (token.refreshToken !== undefined || token.expiresAt === undefined) return {};
  return { ttlMs: Math.max(1000, token.expiresAt - now + 60_000) };
}

class Registry {
  readonly #managers = new Map<string, TokenManager>();

  get(name: string, options: TokenManagerOptions | (() => TokenManagerOptions)): TokenManager {
    const existing = this.#managers.get(name);
    if (existing !== undefined) {
      if (typeof options !== 'function') {
        const key = options.key ?? options.source.key;
        if (key !== existing.key) {
          throw new TokenwardenError('ERR_CONFIG', `a different credential is already registered as '${name}'`);
        }
      }
      return existing;
    }
    const resolved = typeof options === 'function' ? options() : options;
    const manager = new TokenManager({ name, ...resolved });
    this.#managers.set(name, manager);
    return manager;
  }

  forget(manager: TokenManager): void {
    for (const [name, m] of this.#managers) if (m === manager) this.#managers.delete(name);
  }

  async closeAll(): Promise<void> {
    await Promise.all([...this.#managers.values()].map((m) => m.close()));
  }
}

const registry = new Registry();
