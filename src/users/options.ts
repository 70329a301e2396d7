/**
 * The public types of `UserTokens`: its options, requests and events.
 *
 * @module
 */
import type { Duration } from '../duration.js';
import type { TokenwardenError } from '../errors.js';
import type { UserClaims } from '../id-token.js';
import type { RefreshPolicyOptions } from '../policy.js';
import type { ClientOptions } from '../sources/client.js';
import type { TokenStore } from '../stores/store.js';
import type { Token } from '../token.js';

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
  /**
   * The issuer URL. Its metadata (token, revocation, userinfo endpoints, `jwks_uri`) is discovered — unless
   * `tokenEndpoint` is given.
   */
  issuer: string;
  /**
   * The token endpoint, for a server that publishes no metadata (GitHub, an OAuth 2.0 server that is not an
   * OpenID provider): nothing is discovered, the issuer only names the records. Revocation then needs
   * `revocationEndpoint`; UserInfo is not available; an ID token in a login response is checked as usual if
   * it is signed with the client secret (HS256), while one signed with a key is refused with `ERR_DISCOVERY`
   * (there is no `jwks_uri`) unless `verifyIdTokenSignature` is `false`.
   *
   * @example
   * ```ts
   * new UserTokens({ issuer: 'https://github.com', tokenEndpoint: 'https://github.com/login/oauth/access_token', clientId, clientSecret });
   * ```
   */
  tokenEndpoint?: string;
  /**
   * Where each subject's record lives (shared by every instance of the app). Default: a private
   * `MemoryStore` of up to 1 000 000 records (each expires with its login; beyond that bound the least
   * recently used subject must sign in again). Pass a `RedisStore`/`PostgresStore` to share users across
   * instances, or your own `MemoryStore({ max })` to bound it otherwise.
   */
  store?: TokenStore;
  /**
   * When an access token is refreshed. Same options as `TokenManager`'s, with one different default:
   * `maxBeforeExpiryRatio` is `0.25` (a short token is refreshed at ~70 % of its life rather than 50 %),
   * because each user refresh spends a rotating refresh token and there may be many users. `background`
   * does not apply: user tokens are refreshed when asked for, never on a timer.
   */
  refresh?: Omit<RefreshPolicyOptions, 'background'>;
  /**
   * The per-subject refresh lock: `ttl`, its lease — longer than a refresh can take under it (default
   * `'30s'`, or the settle of 3.5 s, the client's `timeout`, twice `storeTimeout` and 5 s together when that is
   * longer; a `ttl` not longer than the settle, the `timeout` and twice `storeTimeout` together is
   * `ERR_CONFIG`) — and `wait` (default = `ttl`).
   */
  lock?: { ttl?: Duration; wait?: Duration };
  /**
   * The time budget of one refresh's store steps (read, lock, re-read, write). Default `'2s'`. A caller
   * holding a valid token never waits on the store.
   */
  storeTimeout?: Duration;
  /**
   * The in-process layer: an LRU of up to `max` subjects (default `10000`) whose access tokens are served
   * without I/O; after `revalidate` (default `'1s'`) the store is read again in the background while the
   * held token keeps being served — so another instance's `revoke()` or `delete()` goes unnoticed here for
   * at most `revalidate` plus one store read. `revalidate: 0` reads the store before every call that
   * needs it.
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
  /**
   * The window for refreshes forced by rejected tokens ({@link UserTokens.invalidate}, which
   * {@link UserTokens.fetchAs} calls on a 401 `invalid_token`): at most two per subject per window, across
   * every instance sharing the store (their times are kept in the subject's record). A rejection beyond that
   * is ignored (the caller gets the API's 401), so an API that refuses every token of a user costs two
   * refreshes per window, not one per call. Default `'30s'`.
   */
  forcedRefreshInterval?: Duration;
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

/**
 * Longest subject accepted (characters). Subjects are hashed into keys, so this only bounds record size.
 *
 * @example
 * ```ts
 * if (sub.length > MAX_SUBJECT_LENGTH) throw new Error('subject too long');
 * ```
 */
export const MAX_SUBJECT_LENGTH = 65_536;
