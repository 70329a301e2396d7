/**
 * UserTokens: the tokens of signed-in users (by subject), kept valid from any instance of an app.
 *
 * The data path of `getAccessToken(subject)`, in one line:
 * memory (LRU) → (stale or due?) fleet core: store → lock → re-read → refresh_token grant → CAS write → release.
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { EventEmitter, setMaxListeners } from 'node:events';
import { inspect } from 'node:util';
import { type JWTPayload, decodeJwt } from 'jose';
import * as oauth from 'oauth4webapi';
import { abortable } from '../abort.js';
import { type Clock, systemClock } from '../clock.js';
import { toMs } from '../duration.js';
import { TokenwardenError, isTokenwardenError, restated } from '../errors.js';
import { type Attempt, Fleet, type Slot, type Versioned, lockLease, withRotated } from '../fleet/fleet.js';
import { type AuthFetchOptions, type TokenProvider, authFetch } from '../http/auth-fetch.js';
import { type FetchLike, boundedFetch } from '../http/transport.js';
import { type UserClaims, checkIdToken, signatureVerifier } from '../id-token.js';
import { DEMAND_RETRY_FLOOR_MS, isStoreFailure, isTransient } from '../manager.js';
import { type RefreshPolicy, backoffDelay, blockedForMs, forceRefresh, resolvePolicy } from '../policy.js';
import { OAuthClient, rotatedRefreshToken } from '../sources/client.js';
import { isRefreshTokenRejected, toTokenwardenError } from '../sources/errors.js';
import { MemoryStore } from '../stores/memory.js';
import type { StoreLock, TokenStore } from '../stores/store.js';
import * as telemetry from '../telemetry/hooks.js';
import { type Token, expiredOnArrival, isValid, refreshExpiry, tokenFromResponse } from '../token.js';
import { isWellFormedUnicode } from '../unicode.js';
import { type Cached, type Failure, type Level, SubjectCache, find } from './cache.js';
import {
  type AccessTokenRequest,
  type ClaimsInfo,
  type GetClaimsOptions,
  MAX_SUBJECT_LENGTH,
  type RevokeResult,
  type SaveOptions,
  type StoredAccessToken,
  type UserTokensEvents,
  type UserTokensOptions,
} from './options.js';
import {
  type UserRecord,
  accessEntry,
  isRecordOf,
  newestOf,
  newSession,
  recordClaims,
  recordId,
  checkTokenResponse,
  prune,
  recordLineage,
  withoutRefreshToken,
} from './record.js';
import { DEFAULT_SPEC, type Spec, spec, specKey } from './spec.js';

/** The last moment a `Date` can hold (ECMAScript §21.4.1.1). */
const MAX_DATE_MS = 8.64e15;

/** Records the default (private) `MemoryStore` holds: every signed-in user of a large app. */
const DEFAULT_MAX_RECORDS = 1_000_000;

/**
 * The tokens of signed-in users, by subject: what a web app or BFF needs to call APIs on their behalf for
 * hours, from whichever instance serves the request.
 *
 * - {@link UserTokens.save} files the token response of a login (from any library) under the subject,
 *   after checking that its ID token was issued by this issuer, to this client, about this subject;
 * - {@link UserTokens.getAccessToken} returns a valid access token covering the requested scope/resource,
 *   refreshing it with the subject's (rotating) refresh token when stale — one refresh per subject at a
 *   time across every process sharing the store, re-reading the store under the lock so that no process
 *   spends a refresh token another one already rotated (the fleet core, `src/fleet/`);
 * - {@link UserTokens.revoke} signs the subject out at the authorization server (RFC 7009) and forgets
 *   everything; {@link UserTokens.delete} only forgets.
 *
 * A subject without a usable refresh token (none, expired, revoked, or rejected with `invalid_grant` or
 * GitHub's `bad_refresh_token`) gets `ERR_LOGIN_REQUIRED` — at once, without retrying: the user must sign in
 * again.
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
  readonly #forcedIntervalMs: number;
  readonly #verify: ((idToken: string, alg: string) => Promise<void>) | undefined;
  readonly #ownsStore: boolean;
  readonly #cache: SubjectCache;
  readonly #fleet: Fleet<UserRecord>;
  readonly #lineage: ReturnType<typeof recordLineage>;
  readonly #inflight = new Map<string, Promise<Token>>();
  readonly #revalidating = new Set<string>();
  /** Subjects whose latest record the store has not taken yet (pinned in the in-process layer). */
  readonly #unwritten = new Set<string>();
  readonly #releasing = new Set<Promise<void>>();
  /**
   * Sign-outs done here (`delete()`, `revoke()`), by subject: the count of sign-outs after each, and
   * when (monotonic). A store read that left before a sign-out and answers after it holds the record the sign-out
   * deleted: it must not bring the subject back into the in-process layer (see `#slot`). Kept for as long as such a
   * read may answer (a store call gives up after `storeTimeout`).
   */
  readonly #signedOut = new Map<string, { removal: number; at: number }>();
  #removals = 0;
  readonly #closing = new AbortController();
  /** Aborted first by `close()`: waits for other processes end at once; spends under way run on. */
  readonly #stopWaiting = new AbortController();
  #closed = false;
  #lastId: { subject: string; id: string } | undefined;

  constructor(options: UserTokensOptions) {
    super();
    if (options === null || typeof options !== 'object') {
      throw new TokenwardenError('ERR_CONFIG', 'UserTokens needs options');
    }
    if (typeof options.issuer !== 'string' || options.issuer === '') {
      throw new TokenwardenError('ERR_CONFIG', 'issuer is required');
    }
    for (const name of ['scope', 'resource', 'audience', 'extraParams'] as const) {
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
    const storeTimeoutMs = toMs(options.storeTimeout ?? '2s', 'storeTimeout');
    this.#storeTimeoutMs = storeTimeoutMs;
    this.#lockTtlMs = lockLease(options.lock?.ttl, this.client.timeoutMs, storeTimeoutMs);
    this.#lockWaitMs = options.lock?.wait === undefined ? this.#lockTtlMs : toMs(options.lock.wait, 'lock.wait');
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
    this.#forcedIntervalMs = toMs(options.forcedRefreshInterval ?? '30s', 'forcedRefreshInterval');
    this.#cache = new SubjectCache(max, this.#policy, this.#random, this.#clock, this.#revalidateMs);
    this.#ownsStore = options.store === undefined;
    // Every signed-in user, not the 10 000 most recent: a login evicted here is a user signed out.
    this.store = options.store ?? new MemoryStore({ max: DEFAULT_MAX_RECORDS, clock: this.#clock });
    this.#namespace = sha256(JSON.stringify([this.issuer, this.clientId]));
    this.#lineage = recordLineage(this.issuer, this.clientId, this.#recordTtlMs);
    // One closing signal shared by every operation in flight (many users refresh at once).
    setMaxListeners(0, this.#closing.signal);
    setMaxListeners(0, this.#stopWaiting.signal);
    this.#fleet = new Fleet({
      store: this.store,
      lineage: this.#lineage,
      clock: this.#clock,
      storeTimeoutMs,
      lockTtlMs: this.#lockTtlMs,
      lockWaitMs: this.#lockWaitMs,
      unlockedRefresh: false,
      closing: this.#closing.signal,
      waiting: this.#stopWaiting.signal,
      slots: () => this.#heldSlots(),
    });
    if (options.verifyIdTokenSignature !== false) {
      const client = this.client;
      this.#verify = signatureVerifier({
        jwksUri: async () => (await client.authorizationServer()).jwks_uri,
        clientSecret: options.clientSecret,
        fetch: boundedFetch({
          timeoutMs: client.timeoutMs,
          maxResponseBytes: client.maxResponseBytes,
          ...(client.fetch && { fetch: client.fetch }), // the `fetch` option, or the proxy's
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
    // One flat string (a concatenation is a tree of its parts until V8 flattens it, which a store that keeps
    // the key for as long as the record may not): 10 bytes less per stored subject.
    return Buffer.from(`tw1:user:${this.#namespace}:${sha256(subject)}`, 'latin1').toString('latin1');
  }

  /** {@link recordId} of a subject, remembered for the last one asked (store reads of one subject come in runs). */
  #recordId(subject: string): string {
    if (this.#lastId?.subject !== subject)
      this.#lastId = { subject, id: recordId(this.issuer, this.clientId, subject) };
    return this.#lastId.id;
  }

  /**
   * Subjects held in the in-process layer: at most `cache.max`, plus any evicted while a refresh of theirs runs or
   * its result waits for the store (held until then).
   */
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
    if (this.client.dpop === undefined && (json['token_type'] as string).toLowerCase() === 'dpop') {
      // Bound to the key the login's proofs were signed with: without it every request with the token fails.
      throw new TokenwardenError(
        'ERR_CONFIG',
        "the login's access token is DPoP-bound (token_type DPoP) and this UserTokens has no dpop key: give it the key pair the login's proofs were signed with",
      );
    }
    const issuedAt: unknown = options.issuedAt;
    // Written into the record: a NaN, an Infinity or a string there would make the record unreadable (JSON null).
    if (issuedAt !== undefined && !(typeof issuedAt === 'number' && issuedAt >= 0 && issuedAt <= MAX_DATE_MS)) {
      throw new TokenwardenError('ERR_CONFIG', 'issuedAt must be a time in milliseconds since the epoch');
    }
    const now = this.#clock.now();
    // The login's token is the subject's default token; `options.scope` is what it covers when the response does not say.
    const want = spec({ resource: options.resource, extraParams: options.extraParams });
    const requested = spec({ scope: options.scope });
    const checkedIdToken = typeof json['id_token'] === 'string';
    if (checkedIdToken) {
      await checkIdToken(json['id_token'] as string, {
        issuer: this.issuer,
        clientId: this.clientId,
        subject,
        ...(this.#verify && { verify: this.#verify }),
      });
    }
    const token = tokenFromResponse(json, { issuedAt: options.issuedAt ?? now });
    const slot = this.#slot(subject, key);
    const previous = await this.#fleet.storeCall(slot, 'get', (s) => s.get(key));
    const before = previous.ok && previous.value ? this.#decode(slot, previous.value.value) : undefined;
    const record: UserRecord = {
      id: this.#recordId(subject),
      session: newSession(),
      ...(token.refreshToken !== undefined && { refreshToken: token.refreshToken }),
      ...refreshExpiry(json, token.issuedAt),
      accessTokens: [],
      updatedAt: now,
    };
    if (checkedIdToken) {
      // The claims are the ID token's: derived from it when asked for (recordClaims), not stored beside it.
      Object.assign(record, { idToken: json['id_token'], claimsUpdatedAt: now, claimsFrom: 'id_token' });
    } else if (before?.state.idToken !== undefined || before?.state.claims !== undefined) {
      const { idToken, claims: c, claimsUpdatedAt, claimsFrom } = before.state;
      Object.assign(record, { idToken, claims: c, claimsUpdatedAt, claimsFrom });
    }
    const stored = accessEntry(want, token, requested.scope);
    record.accessTokens.push(stored);
    // A login is authoritative: written unconditionally, and after every state before it in the subject's
    // history (a refresh racing it fails its compare-and-set and leaves it alone).
    const seq = Math.max((before?.seq ?? this.#cache.peek(subject)?.seq ?? 0) + 1, now);
    this.#fleet.forget(key, 'replaced');
    const written = await this.#fleet.storeCall(slot, 'set', (s) =>
      s.set(key, this.#lineage.encode(record, seq), this.#ttl()),
    );
    if (!written.ok) throw written.error;
    const shared = this.#lineage.shared(record);
    if (this.#unwritten.delete(subject)) this.#cache.unpin(subject); // its pending write was dropped: a login replaces it
    this.#cache.adopt(subject, shared.record, shared.text, seq, written.value ?? undefined);
    return stored.token;
  }

  /**
   * A valid access token of `subject` for `request`: from memory when fresh; when stale, at once while
   * one refresh runs in the background; otherwise after the one shared refresh (down-scoped to
   * `request.scope`, for `request.resource`). Rejects with `ERR_LOGIN_REQUIRED` when the subject has no
   * usable refresh token, with the server's `ERR_OAUTH` (`invalid_scope`, `invalid_target`…) when it
   * refuses the request, and with `ERR_STORE`/`ERR_STORE_TIMEOUT` when a refresh is needed and the store
   * does not answer (a rotating refresh token must not be spent without it). A caller that gets a held,
   * valid token never waits on the store.
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
        const { dflt } = cached;
        const now = this.#clock.now();
        if (dflt !== undefined && now < dflt.staleAt && now < cached.revalidateAt) return Promise.resolve(dflt.token);
      }
    }
    return this.#getSlow(subject, request);
  }

  /**
   * A `fetch` that calls APIs as `subject`: each request carries the subject's access token for `request`
   * (its scope or resource, as {@link UserTokens.getAccessToken} gives it, refreshed when stale), and — when
   * the token is DPoP-bound (`dpop` in the options) — a DPoP proof signed for the request's method and URL,
   * answering a resource server's `use_dpop_nonce` challenge with one more request (RFC 9449). A 401 that
   * matches `retryOn401` (default `'invalid_token'`: `WWW-Authenticate: … error="invalid_token"`, RFC 6750)
   * drops the token ({@link UserTokens.invalidate}) and sends the request once more with a refreshed one —
   * unless two refreshes of the subject were already forced within `forcedRefreshInterval`, or the body cannot
   * be sent again: then the API's 401 is returned. `retryOn401: 'never'` returns every 401 as is. Rejects as
   * `getAccessToken` does (`ERR_LOGIN_REQUIRED`…) before anything is sent, or when the refresh for the retry
   * fails (`ERR_LOGIN_REQUIRED` when the grant itself is gone: the user must sign in again).
   *
   * @example
   * ```ts
   * const api = users.fetchAs(req.session.sub, { scope: 'orders:read' });
   * const orders = await (await api('https://api.example.com/orders')).json();
   * ```
   */
  fetchAs(
    subject: string,
    request?: AccessTokenRequest,
    options: Pick<AuthFetchOptions, 'fetch' | 'retryOn401'> = {},
  ): FetchLike {
    return authFetch(this.tokenProvider(subject, request), {
      ...(options.fetch && { fetch: options.fetch }),
      retryOn401: options.retryOn401 ?? 'invalid_token',
    });
  }

  /**
   * The subject's tokens for `request` as a {@link TokenProvider}: what `authFetch`, `axiosAuth`
   * (`tokenwarden/axios`) and `authInterceptor` (`tokenwarden/undici`) take, so that an axios instance or an
   * undici dispatcher calls APIs as the user — the token attached (with DPoP proofs when bound), a 401
   * `invalid_token` answered by {@link UserTokens.invalidate} and one retry, as {@link UserTokens.fetchAs} does.
   *
   * @example
   * ```ts
   * import axios from 'axios';
   * import { axiosAuth } from 'tokenwarden/axios';
   * const api = axios.create({ baseURL: 'https://api.example.com' });
   * axiosAuth(api, users.tokenProvider(req.session.sub, { scope: 'orders:read' }));
   * const { data } = await api.get('/orders');
   * ```
   */
  tokenProvider(subject: string, request?: AccessTokenRequest): TokenProvider {
    return {
      getToken: (o) => this.getAccessToken(subject, o?.signal ? { ...request, signal: o.signal } : request),
      invalidate: (accessToken) =>
        accessToken === undefined ? Promise.resolve() : this.invalidate(subject, accessToken),
      dpop: this.client.dpop,
    };
  }

  /**
   * Drops one of the subject's access tokens (an API answered 401 `invalid_token` to it: revoked at the
   * server, or refused by the API before its expiry), here and in the store, so that the next
   * {@link UserTokens.getAccessToken} for its request refreshes — on every instance, within `cache.revalidate`.
   * The refresh token and the subject's other access tokens are kept. Nothing happens when the token is no
   * longer held (another instance replaced it already: this instance takes the newer record), when two
   * refreshes of the subject were already forced within `forcedRefreshInterval` (default 30 s) by any
   * instance, or when the store does not answer (a new token needs the store anyway). Never rejects for
   * these; `ERR_CONFIG` for a malformed subject, `ERR_CLOSED` after `close()`.
   *
   * @example
   * ```ts
   * const token = await users.getAccessToken(sub);
   * const res = await fetch(url, { headers: { authorization: `Bearer ${token.accessToken}` } });
   * if (res.status === 401) await users.invalidate(sub, token.accessToken); // the next call gets a new token
   * ```
   */
  async invalidate(subject: string, accessToken: string): Promise<void> {
    this.#checkOpen();
    checkSubject(subject);
    if (typeof accessToken !== 'string' || accessToken === '') {
      throw new TokenwardenError('ERR_CONFIG', 'invalidate() needs the access token that was refused');
    }
    const now = this.#clock.now();
    await this.#update(subject, (record) => {
      if (!record.accessTokens.some((e) => e.token.accessToken === accessToken)) return undefined;
      const forced = forceRefresh(record.forced, now, this.#forcedIntervalMs);
      if (forced === undefined) return undefined;
      // Kept in the record, seq unchanged: every instance reading it takes it (same place, another version).
      return {
        ...record,
        accessTokens: record.accessTokens.filter((e) => e.token.accessToken !== accessToken),
        forced,
      };
    });
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
    const record = await this.#read(subject);
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
    const record = await this.#read(subject);
    if (record === undefined) return undefined;
    const userinfo = options.userinfo;
    if (userinfo !== undefined) {
      const maxAgeMs =
        userinfo === true || userinfo.maxAge === undefined ? 0 : toMs(userinfo.maxAge, 'userinfo.maxAge');
      const age = this.#clock.now() - (record.claimsUpdatedAt ?? -Infinity);
      if (record.claimsFrom !== 'userinfo' || record.claims === undefined || age >= maxAgeMs) {
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
    return (await this.#read(subject))?.idToken;
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
    const slot = this.#slot(subject, key);
    const lock = await this.#fleet.storeCall(slot, 'lock', (s) =>
      s.lock(key, { ttlMs: this.#lockTtlMs, waitMs: this.#lockWaitMs, signal: this.#stopWaiting.signal }),
    );
    try {
      const record = await this.#read(subject);
      // A refresh here whose write the store has not taken yet (pending: the store refused it, the lock is still
      // its own) holds the newest refresh token, and the store's is spent. A store state as new as this
      // instance's is taken by the read, so a held record that differs from it is the newer one.
      const cached = this.#cache.peek(subject);
      const held = cached === undefined ? undefined : this.#reread(cached);
      const newest = held ?? record;
      let refreshError: TokenwardenError | undefined;
      let revokedRefresh = false;
      let revokedAccess = 0;
      if (newest?.refreshToken !== undefined) {
        try {
          await this.client.revoke(newest.refreshToken, 'refresh_token');
          revokedRefresh = true;
        } catch (err) {
          refreshError = isTokenwardenError(err) ? err : toTokenwardenError(err, 'revocation');
        }
      }
      const spent = record?.refreshToken;
      if (spent !== undefined && spent !== newest?.refreshToken && refreshError?.code !== 'ERR_UNSUPPORTED') {
        // Best effort: a server answers 200 for a token it no longer knows (RFC 7009 §2.2); some revoke the grant.
        await this.client.revoke(spent, 'refresh_token').catch(() => undefined);
      }
      const accessTokens = new Map<string, UserRecord['accessTokens'][number]>();
      for (const entry of [...(newest?.accessTokens ?? []), ...(record?.accessTokens ?? [])]) {
        accessTokens.set(entry.token.accessToken, entry);
      }
      if (newest !== undefined && this.#revokeAccessTokens && refreshError?.code !== 'ERR_UNSUPPORTED') {
        const now = this.#clock.now();
        for (const entry of accessTokens.values()) {
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
        throw restated(
          refreshError,
          `the subject's tokens were removed, but revoking the refresh token failed: ${refreshError.message}`,
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
   * Waits for refreshes in flight (so a rotated refresh token is never lost), writes any the store did not
   * take yet (bounded), and closes the store if this instance created it. Later calls fail with
   * `ERR_CLOSED`.
   *
   * @example
   * ```ts
   * process.on('SIGTERM', () => users.close());
   * ```
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // Refreshes waiting for another process's lock (up to lock.wait) end now with ERR_CLOSED; spends run on.
    this.#stopWaiting.abort(new TokenwardenError('ERR_CLOSED', 'UserTokens was closed'));
    await Promise.allSettled([...this.#inflight.values()]);
    await this.#fleet.flush();
    this.#closing.abort(new TokenwardenError('ERR_CLOSED', 'UserTokens was closed'));
    await this.#fleet.close();
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
    let now = this.#clock.now();
    let cached = this.#cache.get(subject);
    if (cached !== undefined && this.#revalidateMs === 0) {
      // Revalidation on every call was asked for: read first (a store that fails leaves what is held).
      await this.#fleet.sync(this.#slot(subject, this.keyFor(subject)));
      cached = this.#cache.get(subject);
      now = this.#clock.now();
    }
    if (cached !== undefined) {
      const held = find(cached, want, now, 'valid');
      if (held !== undefined) {
        if (now >= cached.revalidateAt && this.#revalidateMs > 0) this.#revalidateInBackground(subject, cached);
        // Renew the stale token itself (which may be a broader one covering this request).
        if (now >= held.staleAt) {
          telemetry.staleServed('refresh_token'); // no per-user attribute
          this.#refreshInBackground(subject, cached, held.spec);
        }
        return held.token;
      }
    }
    const run = this.#single(subject, want, 'valid');
    return request?.signal ? abortable(run, request.signal, 'getAccessToken()') : run;
  }

  /** Reads the subject's record again, off the caller's path: a sign-out elsewhere is noticed, a newer record taken. */
  #revalidateInBackground(subject: string, cached: Cached): void {
    if (this.#revalidating.has(subject) || this.#closed) return;
    this.#revalidating.add(subject);
    // Until it answers, the held token is served without starting another read.
    cached.revalidateAt = this.#clock.now() + Math.max(this.#revalidateMs, 1);
    void this.#fleet
      .sync(this.#slot(subject, this.keyFor(subject)))
      .catch(() => undefined)
      .finally(() => this.#revalidating.delete(subject));
  }

  #refreshInBackground(subject: string, cached: Cached, want: Spec): void {
    if (!cached.hasRefreshToken) return;
    const failure = cached.failures?.byRequest.get(want.key);
    if (failure !== undefined) {
      const tick = this.#tick();
      if (tick < failure.nextAttemptAt || tick < failure.blockedUntil || tick < failure.permanentUntil) return;
    }
    this.#single(subject, want, 'fresh').catch(() => undefined); // reported through 'refreshFailed'
  }

  /** One run per subject and request in this process; later callers join it. */
  #single(subject: string, want: Spec, level: Level): Promise<Token> {
    const flightKey = `${want.key}\u0000${subject}`;
    const joined = this.#inflight.get(flightKey);
    if (joined !== undefined) return joined;
    const run = this.#obtain(subject, want, level).finally(() => {
      if (this.#inflight.get(flightKey) === run) this.#inflight.delete(flightKey);
    });
    this.#inflight.set(flightKey, run);
    return run;
  }

  /** The fleet protocol (src/fleet/) for one subject and request. */
  async #obtain(subject: string, want: Spec, level: Level): Promise<Token> {
    const key = this.keyFor(subject);
    const found = (lvl: Level): Token | undefined => {
      const cached = this.#cache.peek(subject);
      return cached === undefined ? undefined : find(cached, want, this.#clock.now(), lvl)?.token;
    };
    /** Whether the access token the refresh obtained could still be used when its answer arrived. */
    let usableOnArrival: boolean | undefined;
    const attempt: Attempt<UserRecord> = {
      ...this.#slot(subject, key),
      exclusive: true,
      satisfied: () => found(level) !== undefined,
      precheck: () => this.#mayRefresh(subject, want),
      spend: async (current, signal) => {
        const next = await this.#spend(subject, want, current, signal);
        const newest = newestOf(next);
        usableOnArrival = newest !== undefined && isValid(newest.token, this.#clock.now());
        return next;
      },
    };
    // Held until the run ends, however many other subjects the LRU takes in meanwhile: the run reads the
    // subject's record from the in-process layer (to check it, to spend it, to serve its token).
    this.#cache.pin(subject);
    try {
      await this.#fleet.run(attempt);
      // What the run left (a token just obtained on a slow day may be inside its last moments: still valid).
      const cached = this.#cache.peek(subject);
      const token = found('valid') ?? (cached && find(cached, want, this.#clock.now(), 'unexpired'))?.token;
      if (token === undefined) {
        if (cached === undefined) throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'the subject was signed out');
        // Still signed in, with the new refresh token: the access token just issued is useless, not the grant —
        // expired when it arrived, or while the store held the run up afterwards (its write, a frozen server).
        if (usableOnArrival !== true) throw expiredOnArrival();
        throw new TokenwardenError(
          'ERR_STORE_TIMEOUT',
          'the store held the refresh up until the access token it obtained had expired (the refresh token is kept)',
        );
      }
      // Served: the request's failures are over (the next one backs off from the start again).
      this.#cache.peek(subject)?.failures?.byRequest.delete(want.key);
      return token;
    } catch (err) {
      throw this.#failed(subject, want, err);
    } finally {
      this.#cache.unpin(subject);
    }
  }

  /** The subject as the fleet core sees it: one key, the record this process holds. */
  #slot(subject: string, key: string): Slot<UserRecord> {
    // The sign-outs done here before this operation started: a read of its answering after a later one holds what
    // that sign-out deleted.
    const removals = this.#removals;
    return {
      key,
      held: () => {
        const cached = this.#cache.peek(subject);
        if (cached === undefined) return undefined;
        const recordOf = (): UserRecord => this.#recordOf(cached);
        // Read again only if the core needs the record itself (a spend, a write-back), not for its place.
        return {
          get state() {
            return recordOf();
          },
          seq: cached.seq,
          version: cached.version,
        };
      },
      take: (value, from) => {
        if (from === 'store' && this.#signedOutSince(subject, removals)) return;
        this.#take(subject, key, value, from);
      },
      missing: () => this.#forgetSubject(subject),
      owns: (record) => isRecordOf(record, this.#recordId(subject)),
      abandoned: (record) => {
        // Signed out while we refreshed: the new refresh token is not brought back; revoke it (best effort).
        if (record.refreshToken !== undefined) {
          this.client.revoke(record.refreshToken, 'refresh_token').catch(() => undefined);
        }
      },
      storeFailed: (operation, error) => this.emit('storeError', { subject, operation, error }),
      storeRecovered: () => this.emit('storeRecovered'),
    };
  }

  /** The subjects that hold something worth writing back into a store that lost it. */
  *#heldSlots(): Iterable<Slot<UserRecord>> {
    for (const [subject, cached] of this.#cache.entries()) {
      if (cached.hasRefreshToken) yield this.#slot(subject, this.keyFor(subject));
    }
  }

  #take(subject: string, key: string, value: Versioned<UserRecord>, from: 'store' | 'source'): void {
    const held = this.#cache.peek(subject);
    // A read that left before a write of ours landed (a concurrent invalidate(), a refresh) is older: not taken.
    // At one place in the history (seq), the later write has the higher version (a store's versions only grow).
    if (from === 'store' && held !== undefined && value.version !== undefined) {
      const older = held.seq === value.seq && held.version !== undefined && value.version < held.version;
      if (held.seq > value.seq || older) return;
    }
    const hadSubject = held !== undefined;
    const shared = this.#lineage.shared(value.state);
    const { added } = this.#cache.adopt(subject, shared.record, shared.text, value.seq, value.version);
    // A refresh the store did not take (yet) is held only here and in the fleet core's pending write: the
    // subject stays in the in-process layer until a write lands, so that no attempt starts from the older
    // record the store still has (and spends its refresh token, already rotated).
    if (value.version === undefined) {
      if (!this.#unwritten.has(subject)) {
        this.#unwritten.add(subject);
        this.#cache.pin(subject);
      }
    } else if (this.#unwritten.delete(subject)) this.#cache.unpin(subject);
    if (from === 'store' && !hadSubject) return;
    for (const { token } of added) {
      this.emit('token', { subject, from, scope: token.scope, expiresAt: token.expiresAt });
    }
  }

  /** The record a subject's cached state comes from (read again from its stored text). */
  #recordOf(cached: Cached): UserRecord {
    const record = this.#reread(cached);
    if (record === undefined) throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'nothing is stored for this subject');
    return record;
  }

  /** The record of a subject's cached state; `undefined` when its stored text no longer reads as one. */
  #reread(cached: Cached): UserRecord | undefined {
    const { source } = cached;
    return typeof source === 'string' ? this.#lineage.reread(source) : source;
  }

  /** Throws when the subject cannot be refreshed now: no record, no refresh token, or a recent failure. */
  #mayRefresh(subject: string, want: Spec): void {
    const cached = this.#cache.peek(subject);
    if (cached === undefined) {
      throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'nothing is stored for this subject: the user must sign in');
    }
    const now = this.#clock.now();
    const record = this.#recordOf(cached);
    if (
      record.refreshToken === undefined ||
      (record.refreshExpiresAt !== undefined && record.refreshExpiresAt <= now)
    ) {
      throw new TokenwardenError(
        'ERR_LOGIN_REQUIRED',
        'no usable refresh token is stored for this subject: the user must sign in again',
      );
    }
    const failure = cached.failures?.byRequest.get(want.key);
    if (failure !== undefined) {
      const tick = this.#tick();
      if (tick < failure.blockedUntil) {
        throw new TokenwardenError(
          'ERR_RETRY_LATER',
          'the authorization server asked to wait before the next refresh',
          {
            cause: failure.lastError,
            retryAfterMs: failure.blockedUntil - tick,
            ...(failure.lastError.status !== undefined && { status: failure.lastError.status }),
          },
        );
      }
      if (tick < failure.permanentUntil || tick < failure.failFastUntil) throw failure.lastError;
    }
  }

  /**
   * Spends the subject's refresh token (the fleet holds the lock and has just re-read) and returns the next
   * record. A refresh token the server rejects, or an answer about another subject, ends the grant: the
   * record without its refresh token is written before the error is reported.
   */
  async #spend(
    subject: string,
    want: Spec,
    current: Versioned<UserRecord> | undefined,
    signal: AbortSignal,
  ): Promise<UserRecord> {
    const record = current?.state;
    const spent = record?.refreshToken;
    if (record === undefined || spent === undefined) {
      throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'no usable refresh token is stored for this subject');
    }
    const params = new URLSearchParams({ refresh_token: spent });
    if (want.scope !== null) params.set('scope', want.scope.join(' '));
    for (const r of want.resource ?? []) params.append('resource', r);
    for (const [name, values] of Object.entries(want.params ?? {})) for (const v of values) params.append(name, v);
    let token: Token;
    try {
      token = await this.client.tokenRequest('refresh_token', params, { refreshToken: spent, signal });
    } catch (err) {
      const now = this.#clock.now();
      const rotated = rotatedRefreshToken(err);
      if (rotated !== undefined) {
        // The server rotated the refresh token before a later check of its answer failed: keep the new one.
        throw withRotated(err as Error, { ...record, refreshToken: rotated, updatedAt: now });
      }
      if (isRefreshTokenRejected(err)) {
        // The refresh token is dead (expired, revoked, or reused): no process may try it again.
        const error = new TokenwardenError(
          'ERR_LOGIN_REQUIRED',
          `the authorization server rejected the refresh token (${err.error}): the user must sign in again`,
          { cause: err, error: err.error, ...(err.status !== undefined && { status: err.status }) },
        );
        throw withRotated(error, withoutRefreshToken(record, now));
      }
      throw err;
    }
    const now = this.#clock.now();
    let newIdToken = false;
    if (token.idToken !== undefined) {
      // oauth4webapi checked iss, aud, azp, exp and iat; the subject must be the one that logged in (OIDC Core §12.2).
      const payload = safeDecode(token.idToken);
      if (payload?.sub !== subject) {
        const error = new TokenwardenError(
          'ERR_ID_TOKEN_INVALID',
          'the refresh response carries an ID token about another subject',
        );
        throw withRotated(error, withoutRefreshToken(record, now));
      }
      newIdToken = true;
    }
    const entry = accessEntry(want, token, want.scope);
    const others = record.accessTokens.filter((e) => specKey(e.spec) !== want.key);
    const next: UserRecord = {
      ...record,
      accessTokens: prune([...others, entry], now, entry, this.#maxAccessTokens),
      updatedAt: now,
    };
    if (token.refreshToken !== undefined) {
      next.refreshToken = token.refreshToken;
      const expiry = refreshExpiry(token.raw, token.issuedAt).refreshExpiresAt;
      if (expiry !== undefined) next.refreshExpiresAt = expiry;
    }
    if (newIdToken) {
      // A new ID token replaces the claims (UserInfo-merged ones too): derived from it from now on.
      delete next.claims;
      Object.assign(next, { idToken: token.idToken, claimsUpdatedAt: now, claimsFrom: 'id_token' });
    }
    return next;
  }

  /**
   * Compare-and-set update of a subject's record that spends nothing (merged claims): `change` maps the
   * current record to the next one (or `undefined`: leave it). Retries on a concurrent write. `'gone'` when
   * the record was deleted.
   */
  async #update(
    subject: string,
    change: (record: UserRecord) => UserRecord | undefined,
  ): Promise<'written' | 'unchanged' | 'gone' | 'failed'> {
    const key = this.keyFor(subject);
    for (let attempt = 0; attempt < 5; attempt++) {
      const slot = this.#slot(subject, key); // one per read (see #slot)
      const read = await this.#fleet.storeCall(slot, 'get', (s) => s.get(key));
      if (!read.ok) return 'failed';
      const current = read.value === undefined ? undefined : this.#decode(slot, read.value.value);
      if (current === undefined || read.value === undefined) {
        const held = await this.#missing(subject, slot);
        if (held !== true) return held === false ? 'gone' : 'failed';
        continue; // written back: the store had lost it (a reset)
      }
      const next = change(current.state);
      if (next === undefined) {
        slot.take({ state: current.state, seq: current.seq, version: read.value.version }, 'store');
        return 'unchanged';
      }
      const written = await this.#fleet.storeCall(slot, 'set', (s) =>
        s.set(key, this.#lineage.encode(next, current.seq), { ...this.#ttl(), ifVersion: read.value?.version ?? 0 }),
      );
      if (!written.ok) return 'failed';
      if (written.value !== null) {
        slot.take({ state: next, seq: current.seq, version: written.value }, 'store');
        return 'written';
      }
    }
    return 'failed';
  }

  async #userinfo(subject: string, request: AccessTokenRequest | undefined): Promise<ClaimsInfo> {
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
    const outcome = await this.#update(subject, (r) => {
      const claims = {
        ...(recordClaims(r) ?? {}),
        ...(fetched as Record<string, unknown>),
        sub: subject,
      } as UserClaims;
      result = { claims, updatedAt: now, from: 'userinfo' };
      return { ...r, claims, claimsUpdatedAt: now, claimsFrom: 'userinfo', updatedAt: now };
    });
    if (outcome === 'gone') throw new TokenwardenError('ERR_LOGIN_REQUIRED', 'the subject was signed out');
    return result as ClaimsInfo;
  }

  /** One store read of the subject's record (taken into the in-process layer). Store failures reject. */
  async #read(subject: string): Promise<UserRecord | undefined> {
    this.#checkOpen();
    const key = this.keyFor(subject);
    const slot = this.#slot(subject, key);
    const result = await this.#fleet.storeCall(slot, 'get', (s) => s.get(key));
    if (!result.ok) throw result.error;
    const current = result.value === undefined ? undefined : this.#decode(slot, result.value.value);
    if (current === undefined || result.value === undefined) {
      const held = await this.#missing(subject, slot);
      if (held !== true) {
        if (held === false) return undefined;
        throw held;
      }
      const cached = this.#cache.peek(subject);
      return cached === undefined ? undefined : this.#reread(cached);
    }
    slot.take({ state: current.state, seq: current.seq, version: result.value.version }, 'store');
    return current.state;
  }

  /**
   * The subject's record was not in the store: signed out elsewhere (dropped here too) — or lost by a store
   * emptied or failed over (a reset), when what this instance holds goes back in. The fleet core tells the two
   * apart (by the settle after a reset, and writes pending here), as it does on every other read. Whether the
   * subject is still held, or the store's error when it did not answer that second look.
   */
  async #missing(subject: string, slot: Slot<UserRecord>): Promise<boolean | TokenwardenError> {
    if (this.#cache.peek(subject) === undefined) return false;
    return (await this.#fleet.sync(slot)) ?? this.#cache.peek(subject) !== undefined;
  }

  /** Parses a stored record; anything that is not this subject's record (corrupt, foreign, collided) is a miss. */
  #decode(slot: Slot<UserRecord>, text: string): { state: UserRecord; seq: number } | undefined {
    const decoded = this.#lineage.decode(slot.key, text);
    if (decoded === undefined || slot.owns?.(decoded.state) === false) {
      slot.storeFailed(
        'get',
        new TokenwardenError('ERR_STORE', "the stored entry is not this subject's record; ignoring it"),
      );
      return undefined;
    }
    return decoded;
  }

  async #remove(subject: string, key: string): Promise<void> {
    this.#fleet.forget(key);
    const result = await this.#fleet.storeCall(this.#slot(subject, key), 'delete', (s) => s.delete(key));
    this.#forgetSubject(subject);
    this.#markSignedOut(subject);
    if (!result.ok) throw result.error;
  }

  /**
   * Remembers that the subject was signed out here just now: what a read that left before holds is not taken
   * (`#slot`). Entries older than a store call can take are dropped as new ones come.
   */
  #markSignedOut(subject: string): void {
    const now = this.#tick();
    for (const [s, { at }] of this.#signedOut) {
      if (now - at < this.#signedOutKeepMs()) break; // in the order they were made
      this.#signedOut.delete(s);
    }
    this.#signedOut.delete(subject); // to the end of the order
    this.#signedOut.set(subject, { removal: ++this.#removals, at: now });
  }

  /**
   * Whether the subject was signed out here after the operation that counted `removals` sign-outs started, recently
   * enough for a read of that operation to have left before it.
   */
  #signedOutSince(subject: string, removals: number): boolean {
    const out = this.#signedOut.get(subject);
    return out !== undefined && out.removal > removals && this.#tick() - out.at < this.#signedOutKeepMs();
  }

  /** How long after a sign-out a read that left before it may still answer (a store call gives up after `storeTimeout`). */
  #signedOutKeepMs(): number {
    return this.#storeTimeoutMs + 1000;
  }

  /** Drops the subject from the in-process layer (signed out, or gone from the store). */
  #forgetSubject(subject: string): void {
    if (this.#unwritten.delete(subject)) this.#cache.unpin(subject);
    this.#cache.delete(subject);
  }

  /**
   * Releases a lock without making the caller wait: a slow store must not hold up a sign-out's answer.
   * `close()` waits for releases still running.
   */
  #release(lock: StoreLock): void {
    const released = lock.release().catch(() => undefined);
    this.#releasing.add(released);
    void released.then(() => this.#releasing.delete(released));
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
    const now = this.#tick();
    let failure: Failure | undefined;
    if (cached !== undefined) {
      cached.failures ??= { session: this.#reread(cached)?.session ?? '', byRequest: new Map() };
      failure = cached.failures.byRequest.get(want.key);
      // The last failure again, without a request (#mayRefresh): not another failure — counting it would push the
      // next attempt further with every call, and report refreshes that never happened.
      if (failure?.lastError === error) return error;
      if (failure === undefined) {
        failure = {
          failures: 0,
          lastError: error,
          nextAttemptAt: 0,
          failFastUntil: 0,
          blockedUntil: 0,
          permanentUntil: 0,
        };
        cached.failures.byRequest.set(want.key, failure);
      }
      failure.failures += 1;
      failure.lastError = error;
      const delay = backoffDelay(this.#policy, failure.failures, this.#random(), error.retryAfterMs);
      if (error.retryAfterMs !== undefined) failure.blockedUntil = now + blockedForMs(error.retryAfterMs);
      if (isTransient(error)) {
        failure.nextAttemptAt = now + delay;
        // As TokenManager does: right after the server failed, the subject's callers get that failure at once (for
        // the backoff, a second at most) instead of each sending a request it is failing. A store problem is not
        // the server's fault.
        if (!isStoreFailure(error)) failure.failFastUntil = now + Math.min(delay, DEMAND_RETRY_FLOOR_MS);
      } else failure.permanentUntil = now + delay;
    }
    this.emit('refreshFailed', { subject, error, failures: failure?.failures ?? 1 });
    return error;
  }

  /**
   * The monotonic clock (the wall clock when the clock has none): backoff deadlines are kept on it, so that a wall
   * clock stepped back (NTP, a VM restored) does not stretch them by the size of the step.
   */
  #tick(): number {
    return this.#clock.monotonic?.() ?? this.#clock.now();
  }

  #ttl(): { ttlMs?: number } {
    return this.#recordTtlMs === undefined ? {} : { ttlMs: this.#recordTtlMs };
  }

  #checkOpen(): void {
    if (this.#closed) throw new TokenwardenError('ERR_CLOSED', 'UserTokens was closed');
  }
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
  // A lone UTF-16 surrogate becomes U+FFFD in UTF-8: '\ud800' and '\udc00' would hash to one key.
  if (!isWellFormedUnicode(subject)) {
    throw new TokenwardenError('ERR_CONFIG', 'subject is not well-formed Unicode (it has a lone surrogate)');
  }
}

function safeDecode(jwt: string): JWTPayload | undefined {
  try {
    return decodeJwt(jwt);
  } catch {
    return undefined;
  }
}

function claimsInfo(record: UserRecord): ClaimsInfo | undefined {
  const claims = recordClaims(record);
  if (claims === undefined) return undefined;
  return {
    claims,
    updatedAt: record.claimsUpdatedAt ?? record.updatedAt,
    from: record.claimsFrom ?? 'id_token',
  };
}
