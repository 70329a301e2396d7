/**
 * UserTokens: the tokens of signed-in users (by subject), kept valid from any instance of an app.
 *
 * The data path of `getAccessToken(subject)`, in one line:
 * memory (LRU) → (stale?) shared store → (still stale?) lock → re-read → refresh_token grant → CAS write → release.
 *
 * @module
 */
import { createHash, randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { inspect } from 'node:util';
import { type JWTPayload, decodeJwt } from 'jose';
import { LRUCache } from 'lru-cache';
import * as oauth from 'oauth4webapi';
import { abortable } from './abort.js';
import { type Clock, systemClock } from './clock.js';
import { type Duration, toMs } from './duration.js';
import { TokenwardenError, isTokenwardenError } from './errors.js';
import { boundedFetch } from './http/transport.js';
import { type UserClaims, checkIdToken, signatureVerifier, userClaims } from './id-token.js';
import { parseJsonObject } from './json.js';
import { isTransient } from './manager.js';
import { type RefreshPolicy, type RefreshPolicyOptions, backoffDelay, resolvePolicy, staleAt } from './policy.js';
import { type ClientOptions, OAuthClient } from './sources/client.js';
import { toTokenwardenError } from './sources/errors.js';
import { MemoryStore } from './stores/memory.js';
import { bounded, releaseLate } from './stores/shared.js';
import type { StoreLock, TokenStore } from './stores/store.js';
import { type Token, toToken, tokenFromResponse } from './token.js';

/**
 * Options for {@link UserTokens}. The client options are those of every grant (`clientSecret`,
 * `clientAuth`, `privateKey`, `fetch`, `timeout`, `allowInsecureRequests`…), minus the per-request ones
 * (`scope`, `resource`, `audience`, `extraParams`), which {@link UserTokens.getAccessToken} takes.
 *
 * @example
 * ```ts
 * const options: UserTokensOptions = {
 *   issuer: 'https://login.example.com',
 *   clientId: 'web',
 *   clientSecret: process.env.CLIENT_SECRET,
 *   store: new RedisStore({ url: process.env.REDIS_URL }),
 *   cache: { max: 50_000, revalidate: '1s' },
 * };
 * ```
 */
export interface UserTokensOptions extends Omit<
  ClientOptions,
  'issuer' | 'tokenEndpoint' | 'scope' | 'resource' | 'audience' | 'extraParams' | 'key'
> {
  /** The issuer URL. Its metadata (token, revocation, userinfo endpoints, `jwks_uri`) is discovered. */
  issuer: string;
  /**
   * Where each subject's record lives (shared by every instance of the app). Default: a private
   * `MemoryStore` of 10 000 entries. Pass a `RedisStore`/`PostgresStore` to share users across instances.
   */
  store?: TokenStore;
  /**
   * When an access token is refreshed. Same options as `TokenManager`'s, with one different default:
   * `maxBeforeExpiryRatio` is `0.25` (a short token is refreshed at ~70 % of its life rather than 50 %),
   * because each user refresh spends a rotating refresh token and there may be many users. `background`
   * does not apply: user tokens are refreshed when asked for, never on a timer.
   */
  refresh?: Omit<RefreshPolicyOptions, 'background'>;
  /** The per-subject refresh lock: `ttl` (default `'30s'`), `wait` (default = `ttl`). */
  lock?: { ttl?: Duration; wait?: Duration };
  /** Longest wait for a store read or write. Default `'2s'`. */
  storeTimeout?: Duration;
  /**
   * The in-process layer: an LRU of up to `max` subjects (default `10000`) whose access tokens are served
   * without I/O for up to `revalidate` (default `'1s'`) before the store is read again — the bound on how
   * long another instance's `revoke()` or `delete()` can go unnoticed here. `revalidate: 0` reads the
   * store on every call.
   */
  cache?: { max?: number; revalidate?: Duration };
  /** Most access tokens kept per subject (one per scope/resource combination). Default `16`. */
  maxAccessTokens?: number;
  /**
   * Verify ID token signatures in {@link UserTokens.save} against the issuer's JWKS (or the client secret
   * for `HS*`). Default `true`.
   */
  verifyIdTokenSignature?: boolean;
  /** {@link UserTokens.revoke} also revokes the subject's unexpired access tokens. Default `true`. */
  revokeAccessTokens?: boolean;
  /** How long a record is kept after its last write. Default: until deleted (or revoked). */
  recordTtl?: Duration;
  /** Random numbers in [0, 1) for jitter. Default `Math.random`. */
  random?: () => number;
}

/**
 * Which access token is wanted. A stored token serves a request when its granted scope includes every
 * requested scope, its `resource` set is the requested one, and its `extraParams` are the requested ones.
 * Without `scope`, only a token obtained without a `scope` parameter (the grant's default) serves.
 *
 * @example
 * ```ts
 * const token = await users.getAccessToken('alice', { scope: 'invoices:read', resource: 'https://api.example.com' });
 * ```
 */
export interface AccessTokenRequest {
  /** Scope(s) the token must cover. When a refresh is needed, sent as `scope` (down-scoping). */
  scope?: string | string[];
  /** Resource indicator(s), RFC 8707: the token must be for exactly these. Sent as `resource`. */
  resource?: string | string[];
  /** Further token request parameters (`audience`, …). Part of the token's identity. */
  extraParams?: Record<string, string | string[]>;
  /** Stop waiting (the refresh itself goes on for other callers). */
  signal?: AbortSignal;
}

/**
 * Options for {@link UserTokens.save}: what the login's token request asked for, when the response does
 * not say.
 *
 * @example
 * ```ts
 * await users.save(sub, json, { scope: 'openid orders:read', resource: 'https://api.example.com', issuedAt: sentAt });
 * ```
 */
export interface SaveOptions {
  /** The scope the login requested; what the access token covers when the response has no `scope`. */
  scope?: string | string[];
  /** The resource(s) the access token is for (the `resource` parameters of the login). */
  resource?: string | string[];
  /** Further parameters the login's token request carried, as in {@link AccessTokenRequest}. */
  extraParams?: Record<string, string | string[]>;
  /** When the token request was sent (epoch ms); `expires_in` counts from there. Default: now. */
  issuedAt?: number;
}

/**
 * Options for {@link UserTokens.getClaims}.
 *
 * @example
 * ```ts
 * const claims = await users.getClaims('alice', { userinfo: { maxAge: '15m' } });
 * ```
 */
export interface GetClaimsOptions {
  /**
   * Also read the UserInfo endpoint, with the subject's access token for `token` (default: the default
   * request), and merge its claims over the ID token's: `true` every time, or `{ maxAge }` when the stored
   * claims are older than that. The merged claims are stored.
   */
  userinfo?: true | { maxAge?: Duration; token?: AccessTokenRequest };
}

/**
 * A subject's claims with when and where they were last updated.
 *
 * @example
 * ```ts
 * const { claims, updatedAt, from } = (await users.getClaimsInfo('alice'))!;
 * ```
 */
export interface ClaimsInfo {
  readonly claims: UserClaims;
  /** When these claims were stored (epoch ms). */
  readonly updatedAt: number;
  /** From the latest ID token, or merged with a UserInfo response. */
  readonly from: 'id_token' | 'userinfo';
}

/**
 * A stored access token and the request it answers.
 *
 * @example
 * ```ts
 * const [first]: StoredAccessToken[] = await users.listAccessTokens('alice');
 * console.log(first?.scope, first?.resource, first?.token.expiresAt);
 * ```
 */
export interface StoredAccessToken {
  readonly token: Token;
  /** The scope requested when it was obtained (`undefined`: the grant's default). */
  readonly scope: string | undefined;
  /** Its resource indicators (`undefined`: none requested). */
  readonly resource: readonly string[] | undefined;
  /** Further parameters it was obtained with. */
  readonly extraParams: Readonly<Record<string, readonly string[]>> | undefined;
}

/**
 * What {@link UserTokens.revoke} did.
 *
 * @example
 * ```ts
 * const { refreshToken, accessTokens } = await users.revoke('alice');
 * ```
 */
export interface RevokeResult {
  /** The refresh token was revoked at the authorization server (`false`: there was none). */
  readonly refreshToken: boolean;
  /** Access tokens the server accepted to revoke (JWT access tokens usually cannot be). */
  readonly accessTokens: number;
}

/**
 * Events of {@link UserTokens}. None carries a token or a secret (they do carry the subject).
 *
 * @example
 * ```ts
 * users.on('loginRequired', ({ subject }) => sessions.markSignedOut(subject));
 * users.on('storeError', ({ operation, error }) => log.warn({ operation, code: error.code }, 'token store'));
 * ```
 */
export interface UserTokensEvents {
  /** An access token was obtained (`from: 'source'`) or adopted from another instance (`'store'`). */
  token: [{ subject: string; from: 'source' | 'store'; scope: string | undefined; expiresAt: number | undefined }];
  /** A refresh failed; a still-valid token, if any, keeps being served. */
  refreshFailed: [{ subject: string; error: TokenwardenError; failures: number }];
  /** The subject must sign in again (no refresh token, or the server rejected it). */
  loginRequired: [{ subject: string; error: TokenwardenError }];
  /** The store failed or timed out. Cached tokens are served; no refresh happens without the store. */
  storeError: [{ subject: string; operation: 'get' | 'set' | 'lock' | 'delete'; error: TokenwardenError }];
  /** The store answers again after a `storeError`. */
  storeRecovered: [];
}

// ---------------------------------------------------------------------------------------------------
// The stored record: one per (issuer, client, subject), holding everything about the subject, so that
// listing is one read and every update is one compare-and-set.

/** The identity of an access token inside a record: what was asked for. */
interface Spec {
  /** Canonical JSON of the three fields below: the entry's key in the record. */
  readonly key: string;
  readonly scope: readonly string[] | null;
  readonly resource: readonly string[] | null;
  readonly params: Readonly<Record<string, readonly string[]>> | null;
}

interface StoredEntry {
  spec: { scope: string[] | null; resource: string[] | null; params: Record<string, string[]> | null };
  token: Token;
}

interface UserRecord {
  v: 1;
  issuer: string;
  clientId: string;
  subject: string;
  /** New on every `save()` (a login); lets a refresh that raced a new login tell the two apart. */
  session: string;
  refreshToken?: string;
  /** When the refresh token expires, if the server said (`refresh_expires_in`). */
  refreshExpiresAt?: number;
  idToken?: string;
  claims?: UserClaims;
  claimsUpdatedAt?: number;
  claimsFrom?: 'id_token' | 'userinfo';
  accessTokens: StoredEntry[];
  updatedAt: number;
}

/** An access token held in memory, with the moment it turns stale in this process. */
interface Held {
  readonly spec: Spec;
  readonly granted: ReadonlySet<string> | null;
  readonly token: Token;
  readonly staleAt: number;
  /** Served until then: a little before `expiresAt`, so that it is still valid when it reaches the API. */
  readonly usableUntil: number;
}

interface Failure {
  failures: number;
  lastError: TokenwardenError;
  /** No background attempt before this (backoff). */
  nextAttemptAt: number;
  /** No attempt at all before this (`Retry-After`). */
  blockedUntil: number;
  /** An error that waiting will not heal is returned again until this time. */
  permanentUntil: number;
}

/** What this process knows about one subject. */
interface Cached {
  readonly recordKey: string;
  version: number | undefined;
  session: string;
  hasRefreshToken: boolean;
  entries: Held[];
  /** The entry serving the default request (no options): the hot path. */
  dflt: Held | undefined;
  /** The hot path, flattened: `dflt.token` is served without I/O until `min(dflt.staleAt, revalidateAt)`. */
  hotToken: Token | undefined;
  hotUntil: number;
  /** Serve from memory until then; afterwards read the store first. */
  revalidateAt: number;
  failures: Map<string, Failure> | undefined;
  /** A record this process could not write (the store failed after a refresh): written on the next read. */
  pending: { record: UserRecord; baseVersion: number | undefined } | undefined;
}

type Want = 'valid' | 'fresh';

type StoreResult<T> = { ok: true; value: T } | { ok: false; error: TokenwardenError };

interface ReadResult {
  readonly record: UserRecord | undefined;
  readonly version: number | undefined;
  /** What this process now holds for the subject (`undefined`: nothing stored). */
  readonly cached?: Cached | undefined;
}

const DEFAULT_SPEC: Spec = spec(undefined);
/**
 * A token is served until `min(5 s, 15 % of its lifetime)` before it expires, so that it is still valid when
 * it reaches the API even if the event loop or the network is slow; past that, callers wait for the refresh
 * (which starts at about 70 % of the lifetime).
 */
const EXPIRY_LEEWAY_MS = 5_000;
const EXPIRY_LEEWAY_RATIO = 0.15;
/**
 * Longest subject accepted (characters). Subjects are hashed into keys, so this only bounds record size.
 *
 * @example
 * ```ts
 * if (sub.length > MAX_SUBJECT_LENGTH) throw new Error('subject too long');
 * ```
 */
export const MAX_SUBJECT_LENGTH = 65_536;
const RESERVED_PARAMS = new Set([
  'grant_type',
  'refresh_token',
  'scope',
  'resource',
  'client_id',
  'client_secret',
  'client_assertion',
  'client_assertion_type',
]);

/**
 * The tokens of signed-in users, by subject: what a web app or BFF needs to call APIs on their behalf for
 * hours, from whichever instance serves the request.
 *
 * - {@link UserTokens.save} files the token response of a login (from any library) under the subject,
 *   after checking that its ID token was issued by this issuer, to this client, about this subject;
 * - {@link UserTokens.getAccessToken} returns a valid access token covering the requested scope/resource,
 *   refreshing it with the subject's (rotating) refresh token when stale — one refresh per subject at a
 *   time across every process sharing the store, re-reading the store under the lock so that no process
 *   spends a refresh token another one already rotated;
 * - {@link UserTokens.revoke} signs the subject out at the authorization server (RFC 7009) and forgets
 *   everything; {@link UserTokens.delete} only forgets.
 *
 * A subject without a usable refresh token (none, expired, revoked, or rejected with `invalid_grant`)
 * gets `ERR_LOGIN_REQUIRED` — at once, without retrying: the user must sign in again.
 *
 * Keys: each subject has one store record under `tw1:user:<SHA-256 of issuer and client>:<SHA-256 of
 * subject>`, so no subject string (`*`, `../`, `'; drop …`, 10 KB) can reach another key or key space.
 * The record names its issuer, client and subject, and a record that does not match is a miss.
 *
 * @example
 * ```ts
 * import { UserTokens } from 'tokenwarden';
 * import { RedisStore } from 'tokenwarden/redis';
 * const users = new UserTokens({ issuer, clientId, clientSecret, store: new RedisStore({ url }) });
 *
 * // in the login callback, with the token endpoint's JSON (from any OAuth library):
 * await users.save(claims.sub, tokenResponse);
 * // on any instance, on every API call:
 * const token = await users.getAccessToken(session.sub, { scope: 'orders:read' });
 * await fetch(url, { headers: { authorization: `${token.tokenType} ${token.accessToken}` } });
 * // at logout:
 * await users.revoke(session.sub);
 * ```
 */
export class UserTokens extends EventEmitter<UserTokensEvents> {
  /** The issuer. */
  readonly issuer: string;
  /** The client identifier. */
  readonly clientId: string;
  /** The store (a private `MemoryStore` when none was given). */
  readonly store: TokenStore;
  /** The OAuth client used for refresh, revocation and UserInfo requests. */
  readonly client: OAuthClient;

  readonly #namespace: string;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #policy: RefreshPolicy;
  readonly #lockTtlMs: number;
  readonly #lockWaitMs: number;
  readonly #storeTimeoutMs: number;
  readonly #revalidateMs: number;
  readonly #maxAccessTokens: number;
  readonly #recordTtlMs: number | undefined;
  readonly #revokeAccessTokens: boolean;
  readonly #verify: ((idToken: string, alg: string) => Promise<void>) | undefined;
  readonly #ownsStore: boolean;
  readonly #cache: LRUCache<string, Cached>;
  readonly #inflight = new Map<string, Promise<Token>>();
  readonly #scopeSets = new Map<string, ReadonlySet<string>>();
  readonly #releasing = new Set<Promise<void>>();
  readonly #closing = new AbortController();
  #storeDown = false;
  #closed = false;

  constructor(options: UserTokensOptions) {
    super();
    if (options === null || typeof options !== 'object') {
      throw new TokenwardenError('ERR_CONFIG', 'UserTokens needs options');
    }
    if (typeof options.issuer !== 'string' || options.issuer === '') {
      throw new TokenwardenError('ERR_CONFIG', 'issuer is required');
    }
    for (const name of ['scope', 'resource', 'audience', 'extraParams', 'tokenEndpoint'] as const) {
      if ((options as unknown as Record<string, unknown>)[name] !== undefined) {
        throw new TokenwardenError(
          'ERR_CONFIG',
          `UserTokens does not take '${name}': pass scope/resource/extraParams to getAccessToken()`,
        );
      }
    }
    this.client = new OAuthClient(options);
    this.issuer = options.issuer;
    this.clientId = options.clientId;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#policy = resolvePolicy({ maxBeforeExpiryRatio: 0.25, ...options.refresh, background: false });
    this.#lockTtlMs = toMs(options.lock?.ttl ?? '30s', 'lock.ttl');
    this.#lockWaitMs = options.lock?.wait === undefined ? this.#lockTtlMs : toMs(options.lock.wait, 'lock.wait');
    this.#storeTimeoutMs = toMs(options.storeTimeout ?? '2s', 'storeTimeout');
    this.#revalidateMs = toMs(options.cache?.revalidate ?? '1s', 'cache.revalidate');
    this.#recordTtlMs = options.recordTtl === undefined ? undefined : toMs(options.recordTtl, 'recordTtl');
    const max = options.cache?.max ?? 10_000;
    if (!(Number.isInteger(max) && max > 0)) {
      throw new TokenwardenError('ERR_CONFIG', 'cache.max must be a positive integer');
    }
    this.#maxAccessTokens = options.maxAccessTokens ?? 16;
    if (!(Number.isInteger(this.#maxAccessTokens) && this.#maxAccessTokens > 0)) {
      throw new TokenwardenError('ERR_CONFIG', 'maxAccessTokens must be a positive integer');
    }
    this.#revokeAccessTokens = options.revokeAccessTokens ?? true;
    this.#cache = new LRUCache({ max });
    this.#ownsStore = options.store === undefined;
    this.store = options.store ?? new MemoryStore({ max: 10_000, clock: this.#clock });
    this.#namespace = sha256(JSON.stringify([this.issuer, this.clientId]));
    if (options.verifyIdTokenSignature !== false) {
      const client = this.client;
      this.#verify = signatureVerifier({
        jwksUri: async () => (await client.authorizationServer()).jwks_uri,
        clientSecret: options.clientSecret,
        fetch: boundedFetch({
          timeoutMs: client.timeoutMs,
          maxResponseBytes: client.maxResponseBytes,
          ...(options.fetch && { fetch: options.fetch }),
        }),
        timeoutMs: client.timeoutMs,
      });
    }
  }

  /**
   * The store key of a subject's record: fixed-length, made of `[A-Za-z0-9_:-]` only, whatever the subject.
   *
   * @example
   * ```ts
   * users.keyFor('alice'); // 'tw1:user:Jx3…:2bd8…'
   * ```
   */
  keyFor(subject: string): string {
    checkSubject(subject);
    return `tw1:user:${this.#namespace}:${sha256(subject)}`;
  }

  /** The record key, from the in-process layer when the subject is there (hashing a long subject costs). */
  #key(subject: string): string {
    return this.#cache.peek(subject)?.recordKey ?? this.keyFor(subject);
  }

  /** Subjects held in the in-process layer (at most `cache.max`). */
  get cachedSubjects(): number {
    return this.#cache.size;
  }

  /**
   * Files a login's token endpoint response (the raw JSON, from any library) under `subject`, replacing
   * whatever the subject had: access token, refresh token, ID token and its claims.
   *
   * An ID token, when present, must have been issued by this issuer (`iss`), to this client (`aud`, and
   * `azp` when present or when there are several audiences) about this subject (`sub` equal to `subject`),
   * and its signature must verify with the issuer's keys (unless `verifyIdTokenSignature: false`);
   * otherwise `ERR_ID_TOKEN_INVALID` and nothing is stored. Its expiry is not checked: `save()` files a
   * response, it does not authenticate anyone. A response without an ID token keeps the subject's
   * previous ID token and claims, if any.
   *
   * @example
   * ```ts
   * const json = await (await fetch(tokenEndpoint, { method: 'POST', body })).json();
   * await users.save('alice', json, { issuedAt: sentAt });
   * ```
   */
  async save(
    subject: string,
    tokenResponse: Readonly<Record<string, unknown>>,
    options: SaveOptions = {},
  ): Promise<Token> {
    this.#checkOpen();
    const key = this.keyFor(subject);
    const json = checkTokenResponse(tokenResponse);
    const now = this.#clock.now();
    // The login's token is the subject's default token; `options.scope` is what it covers when the response does not say.
    const want = spec({ resource: options.resource, extraParams: options.extraParams });
    const requested = spec({ scope: options.scope });
    let claims: UserClaims | undefined;
    if (typeof json['id_token'] === 'string') {
      const payload = await checkIdToken(json['id_token'], {
        issuer: this.issuer,
        clientId: this.clientId,
        subject,
        ...(this.#verify && { verify: this.#verify }),
      });
      claims = userClaims(payload);
    }
    const token = tokenFromResponse(json, { issuedAt: options.issuedAt ?? now });
    const previous = await this.#storeCall(subject, 'get', (s) => s.get(key));
    const before = previous.ok && previous.value ? this.#decode(subject, previous.value.value) : undefined;
    const record: UserRecord = {
      v: 1,
      issuer: this.issuer,
      clientId: this.clientId,
      subject,
      session: randomUUID(),
      ...(token.refreshToken !== undefined && { refreshToken: token.refreshToken }),
      ...refreshExpiry(json, token.issuedAt),
      accessTokens: [],
      updatedAt: now,
    };
    if (claims !== undefined) {
      Object.assign(record, { idToken: json['id_token'], claims, claimsUpdatedAt: now, claimsFrom: 'id_token' });
    } else if (before?.idToken !== undefined || before?.claims !== undefined) {
      const { idToken, claims: c, claimsUpdatedAt, claimsFrom } = before;
      Object.assign(record, { idToken, claims: c, claimsUpdatedAt, claimsFrom });
    }
    const stored = accessEntry(want, token, requested.scope);
    record.accessTokens.push(stored);
    // A login is authoritative: written unconditionally. A refresh racing it fails its compare-and-set,
    // sees the new session and leaves it alone.
    const version = await this.#storeCall(subject, 'set', (s) => s.set(key, JSON.stringify(record), this.#ttl()));
    if (!version.ok) throw version.error;
    this.#adopt(subject, key, record, version.value ?? undefined, false);
    return stored.token;
  }

  /**
   * A valid access token of `subject` for `request`: from memory when fresh; when stale, at once while
   * one refresh runs in the background; otherwise after the one shared refresh (down-scoped to
   * `request.scope`, for `request.resource`). Rejects with `ERR_LOGIN_REQUIRED` when the subject has no
   * usable refresh token, with the server's `ERR_OAUTH` (`invalid_scope`, `invalid_target`…) when it
   * refuses the request, and with `ERR_STORE`/`ERR_STORE_TIMEOUT` when a refresh is needed and the store
   * does not answer (a rotating refresh token must not be spent without it).
   *
   * @example
   * ```ts
   * const token = await users.getAccessToken('alice');                      // the login's default token
   * const read = await users.getAccessToken('alice', { scope: 'read' });    // a token covering "read"
   * ```
   */
  getAccessToken(subject: string, request?: AccessTokenRequest): Promise<Token> {
    if (request === undefined) {
      const cached = this.#cache.get(subject);
      if (cached !== undefined) {
        if (this.#clock.now() < cached.hotUntil) return Promise.resolve(cached.hotToken as Token);
      }
    }
    return this.#getSlow(subject, request);
  }

  /**
   * The subject's unexpired access tokens and the requests they answer (one store read, no scan).
   *
   * @example
   * ```ts
   * for (const { token, scope, resource } of await users.listAccessTokens('alice')) console.log(scope, resource, token.expiresAt);
   * ```
   */
  async listAccessTokens(subject: string): Promise<StoredAccessToken[]> {
    const { record } = await this.#read(subject);
    const now = this.#clock.now();
    return (record?.accessTokens ?? [])
      .filter((e) => e.token.expiresAt === undefined || e.token.expiresAt > now)
      .map((e) => ({
        token: e.token,
        scope: e.spec.scope === null ? undefined : e.spec.scope.join(' '),
        resource: e.spec.resource ?? undefined,
        extraParams: e.spec.params ?? undefined,
      }));
  }

  /**
   * The subject's claims: from the latest ID token, merged with a UserInfo response when asked for
   * (`userinfo`). `undefined` when nothing is stored or no ID token was ever saved.
   *
   * @example
   * ```ts
   * const claims = await users.getClaims('alice');                                  // { sub: 'alice', email: … }
   * const fresh = await users.getClaims('alice', { userinfo: { maxAge: '10m' } });  // UserInfo at most every 10 min
   * ```
   */
  async getClaims(subject: string, options: GetClaimsOptions = {}): Promise<UserClaims | undefined> {
    return (await this.getClaimsInfo(subject, options))?.claims;
  }

  /**
   * {@link UserTokens.getClaims} with when the claims were stored and where they came from.
   *
   * @example
   * ```ts
   * const info = await users.getClaimsInfo('alice'); // { claims, updatedAt, from: 'id_token' }
   * ```
   */
  async getClaimsInfo(subject: string, options: GetClaimsOptions = {}): Promise<ClaimsInfo | undefined> {
    const read = await this.#read(subject);
    const { record } = read;
    if (record === undefined) return undefined;
    const userinfo = options.userinfo;
    if (userinfo !== undefined) {
      const maxAgeMs =
        userinfo === true || userinfo.maxAge === undefined ? 0 : toMs(userinfo.maxAge, 'userinfo.maxAge');
      const age = this.#clock.now() - (record.claimsUpdatedAt ?? -Infinity);
      if (record.claims === undefined || record.claimsFrom !== 'userinfo' || age >= maxAgeMs) {
        return this.#userinfo(subject, userinfo === true ? undefined : userinfo.token);
      }
    }
    return claimsInfo(record);
  }

  /**
   * The subject's latest ID token, even when expired (it is still what OpenID Connect RP-initiated logout
   * wants as `id_token_hint`). `undefined` when none was saved.
   *
   * @example
   * ```ts
   * const hint = await users.getIdToken('alice');
   * res.redirect(`${endSessionEndpoint}?id_token_hint=${hint}&post_logout_redirect_uri=${back}`);
   * ```
   */
  async getIdToken(subject: string): Promise<string | undefined> {
    return (await this.#read(subject)).record?.idToken;
  }

  /**
   * Signs the subject out at the authorization server and forgets everything stored for them: revokes the
   * refresh token (RFC 7009), then — unless `revokeAccessTokens: false` — each unexpired access token
   * (a server that cannot revoke one, e.g. a JWT, says `unsupported_token_type`; that is not an error),
   * then deletes the record. Runs under the subject's refresh lock, so the newest rotated refresh token is
   * the one revoked.
   *
   * When revoking the refresh token fails (network, server error, no revocation endpoint), the record is
   * still deleted and the promise rejects with that error: the user is signed out here, but the server may
   * still honour the refresh token until it expires.
   *
   * @example
   * ```ts
   * app.post('/logout', async (req, res) => {
   *   const idToken = await users.getIdToken(req.session.sub);
   *   await users.revoke(req.session.sub);
   *   res.redirect(logoutUrl(idToken));
   * });
   * ```
   */
  async revoke(subject: string): Promise<RevokeResult> {
    this.#checkOpen();
    const key = this.keyFor(subject);
    const lock = await this.#storeCall(subject, 'lock', (s) =>
      s.lock(key, { ttlMs: this.#lockTtlMs, waitMs: this.#lockWaitMs, signal: this.#closing.signal }),
    );
    try {
      const { record } = await this.#read(subject);
      let refreshError: TokenwardenError | undefined;
      let revokedRefresh = false;
      let revokedAccess = 0;
      if (record?.refreshToken !== undefined) {
        try {
          await this.client.revoke(record.refreshToken, 'refresh_token');
          revokedRefresh = true;
        } catch (err) {
          refreshError = isTokenwardenError(err) ? err : toTokenwardenError(err, 'revocation');
        }
      }
      if (record !== undefined && this.#revokeAccessTokens && refreshError?.code !== 'ERR_UNSUPPORTED') {
        const now = this.#clock.now();
        for (const entry of record.accessTokens) {
          if (entry.token.expiresAt !== undefined && entry.token.expiresAt <= now) continue;
          try {
            await this.client.revoke(entry.token.accessToken, 'access_token');
            revokedAccess += 1;
          } catch {
            // Best effort: JWT access tokens are usually not revocable (unsupported_token_type).
          }
        }
      }
      await this.#remove(subject, key);
      if (refreshError !== undefined) {
        throw new TokenwardenError(
          refreshError.code,
          `the subject's tokens were removed, but revoking the refresh token failed: ${refreshError.message}`,
          {
            cause: refreshError,
            ...(refreshError.error !== undefined && { error: refreshError.error }),
            ...(refreshError.status !== undefined && { status: refreshError.status }),
          },
        );
      }
      return { refreshToken: revokedRefresh, accessTokens: revokedAccess };
    } finally {
      if (lock.ok && lock.value !== undefined) this.#release(lock.value);
    }
  }

  /**
   * Forgets everything stored for the subject without telling the authorization server (for when the
   * server already knows, or the grant is dead anyway).
   *
   * @example
   * ```ts
   * await users.delete('alice');
   * ```
   */
  async delete(subject: string): Promise<void> {
    this.#checkOpen();
    await this.#remove(subject, this.keyFor(subject));
  }

  /**
   * Waits for refreshes in flight (so a rotated refresh token is never lost) and closes the store if this
   * instance created it. Later calls fail with `ERR_CLOSED`.
   *
   * @example
   * ```ts
   * process.on('SIGTERM', () => users.close());
   * ```
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#closing.abort(new TokenwardenError('ERR_CLOSED', 'UserTokens was closed'));
    await Promise.allSettled([...this.#inflight.values()]);
    await Promise.allSettled([...this.#releasing]);
    this.#cache.clear();
    if (this.#ownsStore) await this.store.close();
  }

  toJSON(): Record<string, unknown> {
    return {
      issuer: this.issuer,
      clientId: this.clientId,
      cachedSubjects: this.#cache.size,
      client: this.client.toJSON(),
    };
  }

  [inspect.custom](): string {
    return `UserTokens ${inspect(this.toJSON())}`;
  }

  // ---------------------------------------------------------------------------------------------

  async #getSlow(subject: string, request: AccessTokenRequest | undefined): Promise<Token> {
    this.#checkOpen();
    checkSubject(subject);
    const want = request === undefined ? DEFAULT_SPEC : spec(request);
    const now = this.#clock.now();
    const cached = this.#cache.get(subject);
    if (cached !== undefined && now < cached.revalidateAt) {
      const held = find(cached, want, now, 'valid');
      if (held !== undefined) {
        // Renew the stale token itself (which may be a broader one covering this request).
        if (now >= held.staleAt) this.#refreshInBackground(subject, cached, held.spec, now);
        return held.token;
      }
    }
    const run = this.#single(subject, want, 'valid');
    return request?.signal ? abortable(run, request.signal, 'getAccessToken()') : run;
  }

  #refreshInBackground(subject: string, cached: Cached, want: Spec, now: number): void {
    if (!cached.hasRefreshToken) return;
    const failure = cached.failures?.get(want.key);
    if (failure && (now < failure.nextAttemptAt || now < failure.blockedUntil || now < failure.permanentUntil)) return;
    this.#single(subject, want, 'fresh').catch(() => undefined); // reported through 'refreshFailed'
  }

  /** One run per subject and request in this process; later callers join it. */
  #single(subject: string, want: Spec, level: Want): Promise<Token> {
    const flightKey = `${want.key}\u0000${subject}`;
    const joined = this.#inflight.get(flightKey);
    if (joined !== undefined) return joined;
    const run = this.#obtain(subject, want, level).finally(() => {
      if (this.#inflight.get(flightKey) === run) this.#inflight.delete(flightKey);
    });
    this.#inflight.set(flightKey, run);
    return run;
  }

  /** The fleet protocol for one subject: store → lock → re-read → refresh → compare-and-set → release. */
  async #obtain(subject: string, want: Spec, level: Want): Promise<Token> {
    const key = this.#key(subject);
    try {
      // Another instance may already have refreshed (or the subject signed out): read the store first.
      const first = await this.#readOrServe(subject, key, want);
      if ('token' in first) return first.token;
      const now = (): number => this.#clock.now();
      let held = first.cached && find(first.cached, want, now(), level);
      if (held !== undefined) return held.token;
      this.#mayRefresh(subject, first.record, want);

      const lock = await this.#storeCall(subject, 'lock', (s) =>
        s.lock(key, { ttlMs: this.#lockTtlMs, waitMs: this.#lockWaitMs, signal: this.#closing.signal }),
      );
      if (!lock.ok) return this.#serveOrThrow(subject, want, lock.error);
      if (lock.value === undefined) {
        // Someone else holds the lock for longer than we wait: take what they may have written.
        const again = await this.#readOrServe(subject, key, want);
        if ('token' in again) return again.token;
        held = again.cached && find(again.cached, want, now(), 'valid');
        if (held !== undefined) return held.token;
        throw new TokenwardenError(
          'ERR_LOCK_TIMEOUT',
          `another process held the subject's refresh lock for more than ${this.#lockWaitMs} ms`,
        );
      }
      try {
        // Re-read under the lock: the previous holder may have just rotated the refresh token.
        const current = await this.#readOrServe(subject, key, want);
        if ('token' in current) return current.token;
        held = current.cached && find(current.cached, want, now(), level);
        if (held !== undefined) return held.token;
        const record = this.#mayRefresh(subject, current.record, want);
        this.#checkOpen();
        return await this.#refresh(subject, key, record, current.version, want);
      } finally {
        this.#release(lock.value);
      }
    } catch (err) {
      throw this.#failed(subject, want, err);
    }
  }

  /**
   * Releases a lock without making the caller wait: the token is in hand, and a slow store must not eat
   * into its remaining life on the way to the caller. `close()` waits for releases still running.
   */
  #release(lock: StoreLock): void {
    const released = lock.release().catch(() => undefined);
    this.#releasing.add(released);
    void released.then(() => this.#releasing.delete(released));
  }

  /** Reads the subject's record and adopts it; when the store fails, serves a still-valid cached token. */
  async #readOrServe(subject: string, key: string, want: Spec): Promise<ReadResult | { token: Token }> {
    const result = await this.#storeCall(subject, 'get', (s) => s.get(key));
    if (!result.ok) return { token: this.#serveOrThrow(subject, want, result.error) };
    const cached = this.#cache.peek(subject);
    const stored = result.value;
    if (stored !== undefined && cached?.version === stored.version && cached.pending === undefined) {
      // Unchanged since this process last read it (the common revalidation): parsed only if a refresh needs it.
      revalidated(cached, this.#clock.now() + this.#revalidateMs);
      const decode = (): UserRecord | undefined => this.#decode(subject, stored.value);
      let parsed: { record: UserRecord | undefined } | undefined;
      return {
        version: stored.version,
        cached,
        get record() {
          parsed ??= { record: decode() };
          return parsed.record;
        },
      };
    }
    let record = stored === undefined ? undefined : this.#decode(subject, stored.value);
    let version = record === undefined ? undefined : stored?.version;
    const pending = cached?.pending;
    if (pending !== undefined && record !== undefined && version === pending.baseVersion) {
      // Nobody wrote since our refresh that the store did not take: write it now (it holds the newest refresh token).
      const written = await this.#storeCall(subject, 'set', (s) =>
        s.set(key, JSON.stringify(pending.record), { ...this.#ttl(), ifVersion: version ?? 0 }),
      );
      if (!written.ok) return { token: this.#serveOrThrow(subject, want, written.error) };
      if (written.value !== null) {
        record = pending.record;
        version = written.value;
      }
    }
    if (record === undefined) {
      this.#cache.delete(subject);
      return { record, version };
    }
    return { record, version, cached: this.#adopt(subject, key, record, version, true) };
  }

  /** Without the store no refresh may happen (the refresh token there may be newer): a cached valid token or the error. */
  #serveOrThrow(subject: string, want: Spec, error: TokenwardenError): Token {
    const held = this.#usable(subject, want, 'valid');
    if (held !== undefined) return held.token;
    throw error;
  }

  #usable(subject: string, want: Spec, level: Want): Held | undefined {
    const cached = this.#cache.peek(subject);
    return cached === undefined ? undefined : find(cached, want, this.#clock.now(), level);
  }

  /** Throws when the subject cannot be refreshed now: no record, no refresh token, or a recent failure. */
  #mayRefresh(subject: string, record: UserRecord | undefined, want: Spec): UserRecord & { refreshToken: string } {
    if (record === undefined) {
      throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'nothing is stored for this subject: the user must sign in');
    }
    const now = this.#clock.now();
    if (
      record.refreshToken === undefined ||
      (record.refreshExpiresAt !== undefined && record.refreshExpiresAt <= now)
    ) {
      throw new TokenwardenError(
        'ERR_LOGIN_REQUIRED',
        'no usable refresh token is stored for this subject: the user must sign in again',
      );
    }
    const failure = this.#cache.peek(subject)?.failures?.get(want.key);
    if (failure !== undefined) {
      if (now < failure.blockedUntil) {
        throw new TokenwardenError(
          'ERR_RETRY_LATER',
          'the authorization server asked to wait before the next refresh',
          {
            cause: failure.lastError,
            retryAfterMs: failure.blockedUntil - now,
            ...(failure.lastError.status !== undefined && { status: failure.lastError.status }),
          },
        );
      }
      if (now < failure.permanentUntil) throw failure.lastError;
    }
    return record as UserRecord & { refreshToken: string };
  }

  /** Spends the refresh token (we hold the lock and have just re-read) and writes the result. */
  async #refresh(
    subject: string,
    key: string,
    record: UserRecord & { refreshToken: string },
    version: number | undefined,
    want: Spec,
  ): Promise<Token> {
    const spent = record.refreshToken;
    const params = new URLSearchParams({ refresh_token: spent });
    if (want.scope !== null) params.set('scope', want.scope.join(' '));
    for (const r of want.resource ?? []) params.append('resource', r);
    for (const [name, values] of Object.entries(want.params ?? {})) for (const v of values) params.append(name, v);
    let token: Token;
    try {
      token = await this.client.tokenRequest('refresh_token', params, {
        refreshToken: spent,
        signal: this.#closing.signal,
      });
    } catch (err) {
      if (isTokenwardenError(err, 'ERR_OAUTH') && err.error === 'invalid_grant') {
        // The refresh token is dead (expired, revoked, or reused): no process may try it again.
        await this.#update(subject, key, version, (r) => {
          if (r.refreshToken !== spent) return undefined; // a new login meanwhile: not ours to touch
          const { refreshToken: _rt, refreshExpiresAt: _re, ...rest } = r;
          return { ...rest, updatedAt: this.#clock.now() };
        });
        throw new TokenwardenError(
          'ERR_LOGIN_REQUIRED',
          'the authorization server rejected the refresh token (invalid_grant): the user must sign in again',
          { cause: err, error: 'invalid_grant', ...(err.status !== undefined && { status: err.status }) },
        );
      }
      throw err;
    }
    let claims: UserClaims | undefined;
    if (token.idToken !== undefined) {
      // oauth4webapi checked iss, aud, azp, exp and iat; the subject must be the one that logged in (OIDC Core §12.2).
      const sub = safeDecode(token.idToken)?.sub;
      if (sub !== subject) {
        await this.#update(subject, key, version, (r) => {
          if (r.session !== record.session) return undefined;
          const { refreshToken: _rt, refreshExpiresAt: _re, ...rest } = r;
          return { ...rest, updatedAt: this.#clock.now() };
        });
        throw new TokenwardenError(
          'ERR_ID_TOKEN_INVALID',
          'the refresh response carries an ID token about another subject',
        );
      }
      claims = userClaims(safeDecode(token.idToken) ?? { sub: subject });
    }
    const entry = accessEntry(want, token, want.scope);
    const now = this.#clock.now();
    const apply = (r: UserRecord): UserRecord | undefined => {
      if (r.session !== record.session) return undefined; // a new login replaced the grant: keep it
      const next: UserRecord = {
        ...r,
        accessTokens: this.#prune([...r.accessTokens.filter((e) => specKey(e.spec) !== want.key), entry], now, entry),
        updatedAt: now,
      };
      if (token.refreshToken !== undefined && (r.refreshToken === spent || r.refreshToken === undefined)) {
        next.refreshToken = token.refreshToken;
        const expiry = refreshExpiry(token.raw, token.issuedAt).refreshExpiresAt;
        if (expiry !== undefined) next.refreshExpiresAt = expiry;
      }
      if (claims !== undefined) {
        Object.assign(next, { idToken: token.idToken, claims, claimsUpdatedAt: now, claimsFrom: 'id_token' });
      }
      return next;
    };
    const outcome = await this.#update(subject, key, version, apply, record);
    if (outcome === 'gone') {
      // Signed out (revoke/delete) while we refreshed: do not bring the subject back; best effort revoke.
      if (token.refreshToken !== undefined && token.refreshToken !== spent) {
        this.client.revoke(token.refreshToken, 'refresh_token').catch(() => undefined);
      }
      throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'the subject was signed out during the refresh');
    }
    this.emit('token', { subject, from: 'source', scope: token.scope, expiresAt: token.expiresAt });
    return entry.token;
  }

  /**
   * Compare-and-set update of a subject's record: `change` maps the current record to the next one (or
   * `undefined`: leave it). Retries on a concurrent write. `'gone'` when the record was deleted. When the
   * store cannot be written, the change is kept in this process (`fallback`) so the caller's token is
   * still served; the refresh token it holds is then only here until the next successful write.
   */
  async #update(
    subject: string,
    key: string,
    version: number | undefined,
    change: (record: UserRecord) => UserRecord | undefined,
    fallback?: UserRecord,
  ): Promise<'written' | 'unchanged' | 'gone' | 'failed'> {
    let base = fallback;
    let baseVersion = version;
    let next: UserRecord | undefined;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (base === undefined || attempt > 0) {
        const read = await this.#storeCall(subject, 'get', (s) => s.get(key));
        if (!read.ok) break;
        base = read.value === undefined ? undefined : this.#decode(subject, read.value.value);
        baseVersion = base === undefined ? undefined : read.value?.version;
        if (base === undefined) {
          this.#cache.delete(subject);
          return 'gone';
        }
      }
      const proposed = change(base);
      if (proposed === undefined) return 'unchanged';
      next = proposed;
      const written = await this.#storeCall(subject, 'set', (s) =>
        s.set(key, JSON.stringify(proposed), { ...this.#ttl(), ifVersion: baseVersion ?? 0 }),
      );
      if (!written.ok) break;
      if (written.value !== null) {
        this.#adopt(subject, key, proposed, written.value, false);
        return 'written';
      }
    }
    if (next !== undefined) this.#keepPending(subject, key, next, baseVersion);
    return 'failed';
  }

  /** Holds a record the store did not take, so its tokens are served and it is written on the next read. */
  #keepPending(subject: string, key: string, record: UserRecord, baseVersion: number | undefined): void {
    this.#adopt(subject, key, record, undefined, false).pending = { record, baseVersion };
  }

  async #userinfo(subject: string, request: AccessTokenRequest | undefined): Promise<ClaimsInfo> {
    const key = this.keyFor(subject);
    const token = await this.getAccessToken(subject, request);
    if (token.tokenType !== 'Bearer') {
      throw new TokenwardenError(
        'ERR_UNSUPPORTED',
        `UserInfo requests with ${token.tokenType} tokens are not supported`,
      );
    }
    let fetched: oauth.UserInfoResponse;
    try {
      const as = await this.client.authorizationServer();
      const response = await oauth.userInfoRequest(
        as,
        this.client.client,
        token.accessToken,
        this.client.requestOptions() as unknown as oauth.UserInfoRequestOptions,
      );
      fetched = await oauth.processUserInfoResponse(as, this.client.client, subject, response);
    } catch (err) {
      throw toTokenwardenError(err, 'userinfo');
    }
    const now = this.#clock.now();
    let result: ClaimsInfo | undefined;
    const outcome = await this.#update(subject, key, undefined, (r) => {
      const claims = { ...(r.claims ?? {}), ...(fetched as Record<string, unknown>), sub: subject } as UserClaims;
      result = { claims, updatedAt: now, from: 'userinfo' };
      return { ...r, claims, claimsUpdatedAt: now, claimsFrom: 'userinfo', updatedAt: now };
    });
    if (outcome === 'gone') throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'the subject was signed out');
    return result as ClaimsInfo;
  }

  /** One store read of the subject's record (adopted into the cache). Store failures reject. */
  async #read(subject: string): Promise<ReadResult> {
    this.#checkOpen();
    const key = this.#key(subject);
    const result = await this.#storeCall(subject, 'get', (s) => s.get(key));
    if (!result.ok) throw result.error;
    const record = result.value === undefined ? undefined : this.#decode(subject, result.value.value);
    if (record === undefined) {
      this.#cache.delete(subject);
      return { record: undefined, version: undefined };
    }
    this.#adopt(subject, key, record, result.value?.version, true);
    return { record, version: result.value?.version };
  }

  async #remove(subject: string, key: string): Promise<void> {
    const result = await this.#storeCall(subject, 'delete', (s) => s.delete(key));
    this.#cache.delete(subject);
    if (!result.ok) throw result.error;
  }

  /** Makes the in-process layer reflect `record` (as of `version`). */
  #adopt(subject: string, key: string, record: UserRecord, version: number | undefined, fromStore: boolean): Cached {
    const now = this.#clock.now();
    const previous = this.#cache.peek(subject);
    if (
      previous !== undefined &&
      version !== undefined &&
      previous.version === version &&
      previous.pending === undefined
    ) {
      revalidated(previous, now + this.#revalidateMs);
      return previous;
    }
    const entries: Held[] = [];
    for (const stored of record.accessTokens) {
      const { scope, resource, params } = stored.spec;
      const s =
        scope === null && resource === null && params === null
          ? DEFAULT_SPEC
          : spec({ scope: scope ?? undefined, resource: resource ?? undefined, extraParams: params ?? undefined });
      const old = previous?.entries.find((h) => h.token.accessToken === stored.token.accessToken);
      if (old !== undefined) {
        entries.push(old);
        continue;
      }
      const { token } = stored;
      const lifetime = token.expiresAt === undefined ? 0 : Math.max(0, token.expiresAt - token.issuedAt);
      entries.push({
        spec: s,
        granted: this.#scopeSet(token.scope),
        token,
        staleAt: staleAt(token, this.#policy, this.#random()),
        usableUntil:
          token.expiresAt === undefined
            ? Infinity
            : token.expiresAt - Math.min(EXPIRY_LEEWAY_MS, lifetime * EXPIRY_LEEWAY_RATIO),
      });
      if (fromStore && previous !== undefined) {
        this.emit('token', { subject, from: 'store', scope: stored.token.scope, expiresAt: stored.token.expiresAt });
      }
    }
    const sameSession = previous !== undefined && previous.session === record.session;
    const dflt = entries.find((h) => h.spec.key === DEFAULT_SPEC.key);
    const cached: Cached = {
      recordKey: key,
      version,
      session: record.session,
      hasRefreshToken: record.refreshToken !== undefined,
      entries,
      dflt,
      hotToken: dflt?.token,
      hotUntil: -Infinity,
      revalidateAt: -Infinity,
      failures: sameSession ? previous.failures : undefined,
      pending: undefined,
    };
    revalidated(cached, version === undefined ? now : now + this.#revalidateMs);
    this.#cache.set(subject, cached);
    return cached;
  }

  /** The set of a scope string, shared by every token with the same scope (most users have the same). */
  #scopeSet(scope: string | undefined): ReadonlySet<string> | null {
    if (scope === undefined) return null;
    let set = this.#scopeSets.get(scope);
    if (set === undefined) {
      if (this.#scopeSets.size >= 1000) this.#scopeSets.clear();
      set = new Set(splitScope(scope));
      this.#scopeSets.set(scope, set);
    }
    return set;
  }

  /** Parses a stored record; anything that is not this subject's record (corrupt, foreign, collided) is a miss. */
  #decode(subject: string, text: string): UserRecord | undefined {
    const record = parseRecord(text);
    if (
      record === undefined ||
      record.issuer !== this.issuer ||
      record.clientId !== this.clientId ||
      record.subject !== subject
    ) {
      const error = new TokenwardenError('ERR_STORE', "the stored entry is not this subject's record; ignoring it");
      this.emit('storeError', { subject, operation: 'get', error });
      return undefined;
    }
    return record;
  }

  /** Drops expired access tokens and keeps at most `maxAccessTokens` (those expiring last; `keep` always). */
  #prune(entries: StoredEntry[], now: number, keep: StoredEntry): StoredEntry[] {
    const live = entries.filter((e) => e === keep || e.token.expiresAt === undefined || e.token.expiresAt > now);
    if (live.length <= this.#maxAccessTokens) return live;
    const others = live
      .filter((e) => e !== keep)
      .sort((a, b) => (b.token.expiresAt ?? Infinity) - (a.token.expiresAt ?? Infinity))
      .slice(0, this.#maxAccessTokens - 1);
    return [...others, keep];
  }

  #failed(subject: string, want: Spec, err: unknown): TokenwardenError {
    const error = isTokenwardenError(err)
      ? err
      : new TokenwardenError('ERR_NETWORK', `refresh failed: ${String((err as Error)?.message ?? err).slice(0, 200)}`, {
          cause: err,
        });
    if (this.#closed) return error;
    if (error.code === 'ERR_LOGIN_REQUIRED') {
      const cached = this.#cache.peek(subject);
      if (cached !== undefined) cached.hasRefreshToken = false;
      this.emit('loginRequired', { subject, error });
      return error;
    }
    if (error.code === 'ERR_RETRY_LATER' || error.code === 'ERR_CLOSED' || error.code === 'ERR_ABORTED') return error;
    const cached = this.#cache.peek(subject);
    const now = this.#clock.now();
    let failure: Failure | undefined;
    if (cached !== undefined) {
      cached.failures ??= new Map();
      failure = cached.failures.get(want.key);
      if (failure === undefined) {
        failure = { failures: 0, lastError: error, nextAttemptAt: 0, blockedUntil: 0, permanentUntil: 0 };
        cached.failures.set(want.key, failure);
      }
      failure.failures += 1;
      failure.lastError = error;
      const delay = backoffDelay(this.#policy, failure.failures, this.#random(), error.retryAfterMs);
      if (error.retryAfterMs !== undefined) failure.blockedUntil = now + error.retryAfterMs;
      if (isTransient(error)) failure.nextAttemptAt = now + delay;
      else failure.permanentUntil = now + delay;
    }
    this.emit('refreshFailed', { subject, error, failures: failure?.failures ?? 1 });
    return error;
  }

  #ttl(): { ttlMs?: number } {
    return this.#recordTtlMs === undefined ? {} : { ttlMs: this.#recordTtlMs };
  }

  /** Runs a store operation with a time limit; failures become results (and events), never crashes. */
  async #storeCall<T>(
    subject: string,
    operation: 'get' | 'set' | 'lock' | 'delete',
    call: (store: TokenStore) => Promise<T>,
  ): Promise<StoreResult<T>> {
    const limit = operation === 'lock' ? this.#lockWaitMs + this.#storeTimeoutMs : this.#storeTimeoutMs;
    try {
      // A lock that arrives after the limit is released at once rather than held until its lease ends.
      const value = await bounded(() => call(this.store), limit, `store ${operation}`, releaseLate);
      if (this.#storeDown) {
        this.#storeDown = false;
        this.emit('storeRecovered');
      }
      return { ok: true, value };
    } catch (err) {
      if (this.#closing.signal.aborted) throw this.#closing.signal.reason as Error;
      const error = err as TokenwardenError;
      this.#storeFailed(subject, operation, error);
      return { ok: false, error };
    }
  }

  #storeFailed(subject: string, operation: 'get' | 'set' | 'lock' | 'delete', error: TokenwardenError): void {
    this.#storeDown = true;
    this.emit('storeError', { subject, operation, error });
  }

  #checkOpen(): void {
    if (this.#closed) throw new TokenwardenError('ERR_CLOSED', 'UserTokens was closed');
  }
}

// ---------------------------------------------------------------------------------------------------

/** Sets when a subject's record is next read from the store, and with it the hot path's deadline. */
function revalidated(cached: Cached, at: number): void {
  cached.revalidateAt = at;
  cached.hotUntil = cached.dflt === undefined ? -Infinity : Math.min(cached.dflt.staleAt, at);
}

function sha256(text: string): string {
  return createHash('sha256').update(text).digest('base64url');
}

function checkSubject(subject: unknown): asserts subject is string {
  if (typeof subject !== 'string' || subject === '') {
    throw new TokenwardenError('ERR_CONFIG', 'subject must be a non-empty string');
  }
  if (subject.length > MAX_SUBJECT_LENGTH) {
    throw new TokenwardenError('ERR_CONFIG', `subject is longer than ${MAX_SUBJECT_LENGTH} characters`);
  }
}

function splitScope(scope: string): string[] {
  return scope.split(/\s+/).filter((s) => s !== '');
}

function toList(value: string | readonly string[] | undefined, name: string): string[] | null {
  if (value === undefined) return null;
  const list = typeof value === 'string' ? [value] : [...value];
  for (const item of list) {
    if (typeof item !== 'string' || item === '')
      throw new TokenwardenError('ERR_CONFIG', `${name} must be non-empty strings`);
  }
  return list;
}

/** The canonical identity of a request: sorted, de-duplicated scope and resources, sorted parameters. */
function spec(
  request:
    | {
        scope?: string | readonly string[] | undefined;
        resource?: string | readonly string[] | undefined;
        extraParams?: Readonly<Record<string, string | readonly string[]>> | undefined;
      }
    | undefined,
): Spec {
  const scopeList = toList(request?.scope, 'scope');
  const scopes = scopeList === null ? null : [...new Set(scopeList.flatMap(splitScope))].sort();
  const resourceList = toList(request?.resource, 'resource');
  const resource = resourceList === null ? null : [...new Set(resourceList)].sort();
  let params: Record<string, string[]> | null = null;
  if (request?.extraParams !== undefined) {
    const names = Object.keys(request.extraParams).sort();
    if (names.length > 0) params = {};
    for (const name of names) {
      if (RESERVED_PARAMS.has(name)) {
        throw new TokenwardenError('ERR_CONFIG', `extraParams cannot set '${name}'; use the dedicated option`);
      }
      (params as Record<string, string[]>)[name] = toList(request.extraParams[name], `extraParams.${name}`) as string[];
    }
  }
  const s = { scope: scopes !== null && scopes.length === 0 ? null : scopes, resource, params };
  return { ...s, key: specKey(s) };
}

function specKey(s: {
  scope: readonly string[] | null;
  resource: readonly string[] | null;
  params: Readonly<Record<string, readonly string[]>> | null;
}): string {
  return JSON.stringify([s.scope, s.resource, s.params]);
}

/** The held token serving `want`: the exact request first, then any whose granted scope covers it. */
function find(cached: Cached, want: Spec, now: number, level: Want): Held | undefined {
  let best: Held | undefined;
  for (const held of cached.entries) {
    if (now >= held.usableUntil) continue;
    if (level === 'fresh' && now >= held.staleAt) continue;
    if (!covers(held, want)) continue;
    if (held.spec.key === want.key) return held;
    if (best === undefined || (held.token.expiresAt ?? Infinity) > (best.token.expiresAt ?? Infinity)) best = held;
  }
  return best;
}

function covers(held: Held, want: Spec): boolean {
  if (held.spec.key === want.key) return true;
  if (want.scope === null) return false; // the default request is served only by a default token
  if (
    specKey({ scope: null, resource: held.spec.resource, params: held.spec.params }) !==
    specKey({ scope: null, resource: want.resource, params: want.params })
  ) {
    return false;
  }
  const granted = held.granted;
  return granted !== null && want.scope.every((s) => granted.has(s));
}

/**
 * The stored form of a new access token: without the refresh and ID tokens (kept once, in the record), and
 * with the granted scope — the requested one when the server did not say (RFC 6749 §5.1).
 */
function accessEntry(want: Spec, token: Token, requestedScope: readonly string[] | null): StoredEntry {
  const scope = token.scope ?? requestedScope?.join(' ');
  const { access_token: _a, refresh_token: _r, id_token: _i, ...raw } = token.raw as Record<string, unknown>;
  const stored: Token = Object.freeze({
    accessToken: token.accessToken,
    tokenType: token.tokenType,
    issuedAt: token.issuedAt,
    ...(token.expiresAt !== undefined && { expiresAt: token.expiresAt }),
    ...(scope !== undefined && { scope }),
    raw,
  });
  return {
    spec: {
      scope: want.scope === null ? null : [...want.scope],
      resource: want.resource === null ? null : [...want.resource],
      params:
        want.params === null ? null : Object.fromEntries(Object.entries(want.params).map(([k, v]) => [k, [...v]])),
    },
    token: stored,
  };
}

function refreshExpiry(json: Readonly<Record<string, unknown>>, issuedAt: number): { refreshExpiresAt?: number } {
  const value = json['refresh_expires_in'];
  const seconds = typeof value === 'string' ? Number(value) : value;
  return typeof seconds === 'number' && Number.isFinite(seconds) && seconds > 0
    ? { refreshExpiresAt: issuedAt + seconds * 1000 }
    : {};
}

/** Checks the shape of a token endpoint response given to `save()`. */
function checkTokenResponse(json: unknown): Record<string, unknown> {
  const bad = (why: string): TokenwardenError =>
    new TokenwardenError('ERR_INVALID_RESPONSE', `the token response ${why}`);
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw bad('is not a JSON object');
  const j = json as Record<string, unknown>;
  if (typeof j['access_token'] !== 'string' || j['access_token'] === '') throw bad('has no access_token');
  if (typeof j['token_type'] !== 'string' || j['token_type'] === '') throw bad('has no token_type');
  for (const field of ['refresh_token', 'id_token', 'scope'] as const) {
    if (j[field] !== undefined && typeof j[field] !== 'string') throw bad(`has a ${field} that is not a string`);
  }
  const expiresIn = j['expires_in'];
  if (expiresIn !== undefined) {
    const n = typeof expiresIn === 'string' ? Number(expiresIn) : expiresIn;
    if (typeof n !== 'number' || !Number.isFinite(n) || n < 0) throw bad('has an invalid expires_in');
    return { ...j, expires_in: n };
  }
  return { ...j };
}

function safeDecode(jwt: string): JWTPayload | undefined {
  try {
    return decodeJwt(jwt);
  } catch {
    return undefined;
  }
}

function claimsInfo(record: UserRecord): ClaimsInfo | undefined {
  if (record.claims === undefined) return undefined;
  return {
    claims: record.claims,
    updatedAt: record.claimsUpdatedAt ?? record.updatedAt,
    from: record.claimsFrom ?? 'id_token',
  };
}

function parseRecord(text: string): UserRecord | undefined {
  const d = parseJsonObject(text);
  if (d === undefined) return undefined;
  if (d['v'] !== 1 || typeof d['issuer'] !== 'string' || typeof d['clientId'] !== 'string') return undefined;
  if (typeof d['subject'] !== 'string' || typeof d['session'] !== 'string') return undefined;
  if (typeof d['updatedAt'] !== 'number' || !Array.isArray(d['accessTokens'])) return undefined;
  for (const field of ['refreshToken', 'idToken'] as const) {
    if (d[field] !== undefined && typeof d[field] !== 'string') return undefined;
  }
  for (const field of ['refreshExpiresAt', 'claimsUpdatedAt'] as const) {
    if (d[field] !== undefined && typeof d[field] !== 'number') return undefined;
  }
  const claims = d['claims'];
  if (
    claims !== undefined &&
    (claims === null || typeof claims !== 'object' || (claims as { sub?: unknown }).sub !== d['subject'])
  ) {
    return undefined;
  }
  const accessTokens: StoredEntry[] = [];
  for (const e of d['accessTokens'] as unknown[]) {
    if (e === null || typeof e !== 'object') return undefined;
    const entry = e as { spec?: unknown; token?: unknown };
    const token = toToken(entry.token);
    const s = entry.spec as StoredEntry['spec'] | undefined;
    if (token === undefined || s === null || typeof s !== 'object') return undefined;
    if (!isListOrNull(s.scope) || !isListOrNull(s.resource)) return undefined;
    if (s.params !== null && (typeof s.params !== 'object' || !Object.values(s.params).every(isListOrNull))) {
      return undefined;
    }
    accessTokens.push({ spec: { scope: s.scope, resource: s.resource, params: s.params }, token });
  }
  return { ...(d as unknown as UserRecord), accessTokens };
}

function isListOrNull(value: unknown): value is string[] | null {
  return value === null || (Array.isArray(value) && value.every((v) => typeof v === 'string'));
}
