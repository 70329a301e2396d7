/**
 * `createVerifier()`: validates access tokens for a resource server, bearer and DPoP-bound. One function,
 * `verify(input)`, that never throws for a bad token: it resolves to `{ ok: true, auth }` or
 * `{ ok: false, failure }`.
 *
 * The data path of `verify()`: extract the one token and its scheme (refusing oversized input before
 * parsing it) → for `DPoP`, the proof (every request, never cached) → validation cache (SHA-256 of the
 * token; the entry's deadline re-checked against the clock) → single flight → strategy (JWT against the
 * JWKS, introspection, or your provider) → cache → the token's key binding (`cnf`) against the scheme and
 * the proof, and the proof id against replay → scope and claim checks (on every call, never cached).
 *
 * @module
 */
import { EventEmitter } from 'node:events';
import { abortable } from '../abort.js';
import { type Clock, systemClock } from '../clock.js';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError, isTokenwardenError } from '../errors.js';
import { DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_TIMEOUT_MS, type FetchLike } from '../http/transport.js';
import { type ProxyOption, resolveTransport } from '../http/proxy.js';
import { type BackoffOptions, type RefreshPolicy, resolvePolicy } from '../policy.js';
import { type ClientAuthMethod, type PrivateKeyInput, checkUrl } from '../sources/client.js';
import * as telemetry from '../telemetry/hooks.js';
import type { DiscoveryAlgorithm } from '../sources/discovery.js';
import type * as oauth from 'oauth4webapi';
import { RecentKeys, ValidationCache, cacheKey } from './cache.js';
import { type CheckedProof, type DPoPOptions, type DPoPVerifier, dpopVerifier } from './dpop.js';
import { type VerifyErrorCode, type VerifyFailure, failure, isScopeToken } from './errors.js';
import {
  type PresentedToken,
  type TokenLocation,
  type TokenScheme,
  type VerifyInput,
  extractPresented,
  malformation,
  hasFormBody,
  isFetchRequest,
  readFormBody,
} from './extract.js';
import { introspectionStrategy } from './introspection.js';
import { ASYMMETRIC_ALGORITHMS, type IssuerPolicy, type JwtStrategy, jwtStrategy, trustsIssuer } from './jwt.js';
import { type KeySetEvents, type KeySetHealth, KeySets } from './keys.js';
import {
  type Auth,
  type AuthExtra,
  type Claims,
  type PayloadResult,
  type ProviderContext,
  type VerifierProvider,
  expiresAtOf,
  freezeDeep,
  infoOf,
  numericDatesValid,
  scopesOf,
  stringClaim,
  uidOf,
} from './provider.js';
import { type EndpointHealth, type UpstreamEvents, Upstreams, type UpstreamsOptions } from './upstream.js';

/**
 * The outcome of `verify()`. A success may carry response `headers` to send with the answer: a new
 * `DPoP-Nonce` when the client's proof used the previous server nonce.
 *
 * @example
 * ```ts
 * const result: VerifyResult = await verify(req);
 * if (result.ok) use(result.auth);
 * else res.status(result.failure.status).json({ error: result.failure.error });
 * ```
 */
export type VerifyResult =
  | { readonly ok: true; readonly auth: Auth; readonly headers?: Readonly<Record<string, string>> }
  | { readonly ok: false; readonly failure: VerifyFailure };

/**
 * How tokens are checked. See {@link VerifierOptions.strategy}.
 *
 * @example
 * ```ts
 * createVerifier({ issuer, audience, introspection: { clientId, clientSecret }, strategy: 'introspection' });
 * ```
 */
export type Strategy = 'jwt' | 'introspection' | 'auto';

/**
 * A check on a verified token; `false` refuses it with 403 `insufficient_scope`.
 *
 * @example
 * ```ts
 * const sameTenant: ClaimCheck = (auth) => auth.extra.claims['tenant'] === 'acme';
 * createVerifier({ issuer, audience, claimCheck: sameTenant });
 * ```
 */
export type ClaimCheck = (auth: Auth) => boolean | Promise<boolean>;

/**
 * Scope, app role and claim requirements; set on the verifier, or per call (per route) to override. All that
 * are set must hold.
 *
 * @example
 * ```ts
 * const admin: AuthorizationRequirements = { requiredScopes: ['admin'], claimCheck: (a) => a.info.email?.endsWith('@acme.test') === true };
 * await verify(req, admin);
 * // Microsoft Entra ID: a delegated token with scope Orders.Read, or an app-only token with app role Orders.Read.All
 * await verify(req, { anyScopes: ['Orders.Read'], anyRoles: ['Orders.Read.All'] });
 * ```
 */
export interface AuthorizationRequirements {
  /**
   * Scopes the token must all have. Scope names (here and in `anyScopes`) are RFC 6749 §3.3 scope-tokens, as a
   * challenge names them to the client: no spaces, quotes, backslashes or non-ASCII characters (`ERR_CONFIG`).
   */
  requiredScopes?: readonly string[];
  /**
   * Scopes of which the token must have at least one — or, with {@link AuthorizationRequirements.anyRoles},
   * one of those app roles instead.
   */
  anyScopes?: readonly string[];
  /**
   * App roles, from the token's `roles` claim (an array, or a space-separated string), of which the token must
   * have at least one — or, with {@link AuthorizationRequirements.anyScopes}, one of those scopes instead: the
   * two lists are one "any of" requirement, as Microsoft.Identity.Web's `RequiredScopeOrAppPermission`.
   * Microsoft Entra ID puts application permissions (client credentials tokens) in `roles` and delegated
   * permissions in `scp`, so "scope X or app role Y" is `{ anyScopes: ['X'], anyRoles: ['Y'] }`. A role never
   * counts as a scope (nor a scope as a role). Per call (per route), setting either list replaces both of the
   * verifier's. Refused: 403 `insufficient_scope`, the challenge's `scope` naming `anyScopes` (roles are not
   * scopes a client can ask for).
   *
   * @example
   * ```ts
   * app.get('/orders', bearerAuth({ verifier, anyScopes: ['Orders.Read'], anyRoles: ['Orders.Read.All'] }), list);
   * app.post('/sync', bearerAuth({ verifier, anyRoles: ['Orders.Sync'] }), sync); // app-only tokens
   * ```
   */
  anyRoles?: readonly string[];
  /** A last check on the verified token (claims, tenant, roles…). */
  claimCheck?: ClaimCheck;
}

/**
 * Introspection (RFC 7662) settings: the resource server's own client credentials, and caching.
 *
 * @example
 * ```ts
 * createVerifier({ issuer, introspection: { clientId: 'orders-api', clientSecret, cacheMaxAge: '30s' } });
 * ```
 */
export interface IntrospectionOptions {
  /**
   * The introspection endpoint. Default: `introspection_endpoint` from the issuer's metadata. Same as the
   * verifier's `introspectionEndpoint`.
   */
  endpoint?: string;
  /** The resource server's client id at the authorization server. */
  clientId: string;
  /** Its secret (for `client_secret_*`). */
  clientSecret?: string;
  /**
   * How it authenticates. Default: as for grants (`client_secret_basic` with a secret). An `oauth4webapi`
   * `ClientAuth` function may set anything else — an access token of the resource server's own (RFC 7662 §2.1):
   * `async (_as, _client, _body, headers) => headers.set('authorization', 'Bearer ' + (await own.getToken()).accessToken)`.
   */
  clientAuth?: ClientAuthMethod | oauth.ClientAuth;
  /** The private key for `private_key_jwt`. */
  privateKey?: PrivateKeyInput;
  /** Longest an active answer is reused (never past the token's `exp`). Default `'1m'`. */
  cacheMaxAge?: Duration;
  /** How long an inactive answer is remembered. Default `'10s'`. */
  inactiveCacheMaxAge?: Duration;
  /**
   * Ask for a signed answer (RFC 9701, `Accept: application/token-introspection+jwt`). A signed answer is
   * believed only when it verifies against the issuer's JWKS with `iss` the issuer and `aud` this
   * `clientId` — whether asked for or not; otherwise it is an invalid response (503). Default `false`.
   */
  jwtResponse?: boolean;
}

/**
 * JWKS fetching and caching. Keys are refreshed in the background ahead of `cacheMaxAge`; while the JWKS
 * cannot be fetched, the last keys fetched keep verifying tokens for up to `maxStale` more.
 *
 * @example
 * ```ts
 * createVerifier({ issuer, audience, jwks: { cooldown: '1m', cacheMaxAge: '1h', maxStale: '1d' } });
 * ```
 */
export interface JwksOptions {
  /** After a fetch, how long before an unknown `kid` may trigger another. Default `'30s'`. */
  cooldown?: Duration;
  /** How long keys are used before they are fetched again (while the JWKS answers). Default `'10m'`. */
  cacheMaxAge?: Duration;
  /**
   * How long past `cacheMaxAge` the last keys fetched are still used while refetching fails (an outage of
   * the authorization server). After that, JWTs are answered 503 until a fetch succeeds. Default `'12h'`.
   */
  maxStale?: Duration;
}

/**
 * Options of {@link createVerifier}.
 *
 * @example
 * ```ts
 * const options: VerifierOptions = {
 *   issuer: 'https://login.example.com',
 *   audience: 'https://api.example.com',
 *   requiredScopes: ['orders:read'],
 *   cache: { maxEntries: 50_000, maxAge: '5m' },
 * };
 * ```
 */
export interface VerifierOptions extends AuthorizationRequirements {
  /**
   * The trusted issuer(s): one URL, several (their metadata is discovered on first use), or a function
   * deciding for an `iss`, which trusts it only by returning `true` (or a promise of `true`): any other answer,
   * truthy or not, refuses it. A function needs `jwksUri` for JWTs, and `introspectionEndpoint` for
   * introspection (there is no one issuer to discover them from). JWT `iss` must match; an introspection
   * response's `iss`, when present, too.
   */
  issuer?: string | readonly string[] | ((iss: string) => boolean | Promise<boolean>);
  /**
   * The audience(s) the token must be for (`aud`); required for JWTs (RFC 9068 §4), unless
   * {@link VerifierOptions.clientIdsWithoutAudience} is set.
   */
  audience?: string | readonly string[];
  /**
   * For authorization servers whose JWT access tokens carry no `aud` (Amazon Cognito): a JWT **without**
   * `aud` is accepted when its `client_id` (RFC 9068 §2.2) is one of these — the app clients whose tokens this
   * API takes. A JWT **with** `aud` is still judged by `aud` against `audience` alone, never by `client_id`
   * (without `audience`, every token with `aud` is refused). With this option, a token whose `token_use`
   * claim is present and not `access` is refused, so that a Cognito ID token (`aud` = the client id,
   * `token_use: "id"`) never passes for an access token. As `clientId` in aws-jwt-verify's
   * `CognitoJwtVerifier` with `tokenUse: 'access'`. `client_id` says which client asked, not for which API:
   * with several APIs in one user pool, also require this API's scopes. JWTs only; not with `strict`.
   *
   * @example
   * ```ts
   * createVerifier({
   *   issuer: 'https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123',
   *   clientIdsWithoutAudience: ['4a1b2c3d4e5f6g7h8i9j0k1l2m'],
   *   requiredScopes: ['orders-api/read'],
   * });
   * ```
   */
  clientIdsWithoutAudience?: string | readonly string[];
  /**
   * How tokens are checked:
   * - `'jwt'`: locally, against the issuer's JWKS. Default without `introspection`.
   * - `'introspection'`: every token is introspected. Default with `introspection` and no `audience`/`jwksUri`.
   * - `'auto'`: tokens shaped like a JWT (three base64url parts, a JSON header) are verified locally, any
   *   other token is introspected. Default with `introspection` and an `audience` or `jwksUri`.
   */
  strategy?: Strategy;
  /** A custom token scheme. With it, `strategy`, `introspection` and the JWT options are not used. */
  provider?: VerifierProvider<any>; // eslint-disable-line @typescript-eslint/no-explicit-any
  /** The JWKS URL. Default: `jwks_uri` from the issuer's metadata. */
  jwksUri?: string;
  /** Accepted JWS algorithms; asymmetric only. Default: RS, PS, ES 256/384/512 and EdDSA. */
  algorithms?: readonly string[];
  /** Leeway for `exp`, `nbf` and `iat`. Default `0`. */
  clockTolerance?: Duration;
  /** Refuse JWTs whose `iat` is older than this. Default: no limit. */
  maxTokenAge?: Duration;
  /**
   * RFC 9068 profile: `typ` must be `at+jwt`, and `iss`, `exp`, `aud`, `sub`, `client_id`, `iat`, `jti`
   * must be present. Default `false`: `exp` is required and a `typ`, when present, must be `JWT` or
   * `at+jwt`.
   */
  strict?: boolean;
  /** More claims a JWT must carry. */
  requiredClaims?: readonly string[];
  /** JWKS fetching and caching, and how long last-known keys are used during an outage. */
  jwks?: JwksOptions;
  /** Introspect tokens with these resource server credentials. */
  introspection?: IntrospectionOptions;
  /**
   * The introspection endpoint, when the issuer's metadata has none (or to skip discovery). Same as
   * `introspection.endpoint`.
   */
  introspectionEndpoint?: string;
  /**
   * Backoff between failed requests to the authorization server, per endpoint (discovery, JWKS,
   * introspection): the n-th consecutive failure waits `min(max, initial × multiplier^(n−1))`, jittered into
   * its upper half, and at least the server's `Retry-After`. Meanwhile tokens that need the endpoint are
   * answered 503 at once (with `Retry-After`), and the last known keys keep verifying JWTs. Default
   * `{ initial: '1s', max: '30s', multiplier: 2 }`.
   */
  backoff?: BackoffOptions;
  /** The claim that becomes `auth.uid`. Default: `sub`, else `client_id`. */
  uid?: string;
  /**
   * The validation cache: `false` to disable, or its bounds. Default `{ maxEntries: 10_000, maxAge: '5m' }`.
   * Entries never outlive the token's `exp`. `maxEntries` bounds the accepted tokens; refusals remembered
   * (`negativeCacheMaxAge`, inactive introspection answers, a provider's `cacheForMs`) have an LRU of their
   * own of a quarter of it, so that a flood of distinct bad tokens never pushes valid ones out.
   */
  cache?: false | { maxEntries?: number; maxAge?: Duration };
  /** How long a JWT whose signature is good but whose claims are not (expired, wrong audience…) is remembered. Default `'30s'`. */
  negativeCacheMaxAge?: Duration;
  /** Longest token accepted, in characters; larger input is refused before it is parsed. Default 16 384. */
  maxTokenLength?: number;
  /** Where a token may be sent. Default `['header']`. */
  tokenLocations?: readonly TokenLocation[];
  /**
   * DPoP (RFC 9449): by default a token presented with `Authorization: DPoP` and a valid proof in the
   * `DPoP` header is accepted (tokens bound to a key, `cnf`, are refused as `Bearer`); options set the
   * policy (`required`), server nonces, the proof window and how the request URL is known behind a proxy.
   * `false` takes no DPoP tokens at all (the scheme is then as unknown as `Basic`).
   */
  dpop?: DPoPOptions | false;
  /** The clock for the cache and `exp`/`nbf` checks. Default: the system clock. */
  clock?: Clock;
  /** The `fetch` for discovery, JWKS and introspection. Not with `proxy`. */
  fetch?: FetchLike;
  /**
   * Send discovery, JWKS and introspection requests through an HTTP(S) proxy: a URL (credentials allowed,
   * never shown) or `'env'` (`HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY`, read like curl). Not with `fetch`.
   */
  proxy?: ProxyOption;
  /** Time limit per request to the authorization server. Default `'10s'`. */
  timeout?: Duration;
  /** Largest response accepted from the authorization server, in bytes. Default 1 MiB. */
  maxResponseBytes?: number;
  /** Which discovery document to read. Default `'auto'`. */
  discovery?: DiscoveryAlgorithm;
  /** Allow `http:` URLs. Only for local development and tests. Default `false`. */
  allowInsecureRequests?: boolean;
  /**
   * Called when a token could not be checked (answered 503): discovery, JWKS or introspection failed
   * (`ERR_RETRY_LATER` while backing off, with the last failure as `cause`), or a provider threw. The error
   * never contains the token.
   */
  onError?: (error: TokenwardenError) => void;
}

/**
 * Per-call options of `verify()`: requirements that override the verifier's, and a parsed body. Requirements
 * checked as `createVerifier()` checks its own (a scope name outside RFC 6749 §3.3 `scope-token` syntax…) make
 * `verify()` reject with `ERR_CONFIG`: the caller's mistake, never a request's.
 *
 * @example
 * ```ts
 * await verify(req, { requiredScopes: ['orders:write'], body: req.body });
 * ```
 */
export interface VerifyCallOptions extends AuthorizationRequirements {
  /** A form body the framework already parsed (for `tokenLocations: ['body']`). */
  body?: unknown;
  /**
   * The request target as the client sent it (path and query), when the framework rewrote the Node
   * request's `url` and did not keep `originalUrl` on it (Koa's `ctx.originalUrl`). Read for DPoP's `htu`.
   */
  originalUrl?: string;
}

/**
 * The verify function returned by {@link createVerifier}, with a few properties.
 *
 * @example
 * ```ts
 * const verify: Verifier = createVerifier({ issuer, audience });
 * const result = await verify(request, { requiredScopes: ['write'] });
 * ```
 */
export interface Verifier {
  (input: VerifyInput, options?: VerifyCallOptions): Promise<VerifyResult>;
  /** How tokens are checked: `'jwt'`, `'introspection'`, `'auto'` or `'provider'`. */
  readonly strategy: Strategy | 'provider';
  /** Whether DPoP tokens are accepted (with their proof). */
  readonly dpop: boolean;
  /** Entries in the validation cache. */
  readonly cacheSize: number;
  /** Forgets every cached result (e.g. after revoking tokens out of band). */
  clearCache(): void;
  /**
   * Fetches now what the first request would otherwise wait for: the issuer's metadata and JWKS (and the
   * introspection endpoint's metadata), so that `await verify.ready()` before listening makes the first
   * request as fast as the others. Resolves with {@link Verifier.health}; rejects with the
   * {@link TokenwardenError} of the step that failed (`ERR_RETRY_LATER` while backing off after a failure) —
   * the verifier keeps working either way and tries again on demand.
   */
  ready(options?: { signal?: AbortSignal }): Promise<VerifierHealth>;
  /** The verifier's view of the authorization server, for a readiness probe or a status page. No I/O. */
  health(): VerifierHealth;
  /** Listens to an event (see {@link VerifierEvents}); listeners that throw are ignored. */
  on<K extends keyof VerifierEvents>(name: K, listener: (...args: VerifierEvents[K]) => void): Verifier;
  /** Removes a listener. */
  off<K extends keyof VerifierEvents>(name: K, listener: (...args: VerifierEvents[K]) => void): Verifier;
}

/**
 * What `verify.health()` reports. `status` is `'ok'` when nothing is failing; `'degraded'` when something is
 * (an endpoint failing, last-known keys past `cacheMaxAge` in use) but tokens can still be judged;
 * `'unavailable'` when the tokens this verifier takes cannot be judged now (no usable keys and the JWKS or
 * discovery failing; the introspection endpoint failing) and are answered 503. `ready` is
 * `status !== 'unavailable'`: what a readiness probe should report. Before the first request (or
 * `ready()`), nothing is known to fail and `status` is `'ok'`.
 *
 * @example
 * ```ts
 * app.get('/ready', (_req, res) => {
 *   const health = verify.health();
 *   res.status(health.ready ? 200 : 503).json({ status: health.status, error: health.lastError?.code });
 * });
 * ```
 */
export interface VerifierHealth {
  readonly status: 'ok' | 'degraded' | 'unavailable';
  readonly ready: boolean;
  /** Some key set is older than `cacheMaxAge` and in use because the JWKS cannot be fetched. */
  readonly servingStale: boolean;
  /** Each key set (one per issuer, or the configured `jwksUri`): its age and whether it is stale. */
  readonly keys: readonly (KeySetHealth & { readonly failing: boolean })[];
  /** Each endpoint of the authorization server used so far: failures, last error, next attempt. */
  readonly endpoints: readonly EndpointHealth[];
  /** The most recent failure of any endpoint (a {@link TokenwardenError}, safe to log with `toJSON()`). */
  readonly lastError?: TokenwardenError;
}

/**
 * Events of a verifier (`verify.on(name, listener)`). None carries a token or a secret.
 *
 * - `verify`: every call of `verify()`, with its outcome (`'ok'`, the error code, or `'unavailable'` for a
 *   503) and whether the validation cache answered (`cache`, when it was consulted).
 * - `request`: every request to the authorization server (`endpoint`: `'discovery'`, `'jwks'`,
 *   `'introspection'`), `outcome` `'ok'` or `'error'`.
 * - `unavailable`: a request to an endpoint failed; it is left alone for `retryInMs`.
 * - `recovered`: an endpoint that had failed answered again (`downForMs`).
 * - `staleKeys`: keys older than `cacheMaxAge` are in use because the JWKS cannot be fetched (once per
 *   episode, with `usableForMs` left).
 * - `keysExpired`: those keys passed `maxStale` and were dropped.
 *
 * @example
 * ```ts
 * verify.on('staleKeys', ({ url, ageMs }) => log.warn({ url, ageMs }, 'authorization server down: serving last known keys'));
 * verify.on('verify', ({ outcome, cache }) => counter.add(1, { outcome, cache }));
 * ```
 */
export interface VerifierEvents extends UpstreamEvents, KeySetEvents {
  verify: [
    {
      outcome: 'ok' | 'unavailable' | Exclude<VerifyErrorCode, 'temporarily_unavailable'>;
      cache?: 'hit' | 'miss';
      strategy?: AuthExtra['strategy'];
    },
  ];
}

/** What a token's `cnf` claim binds it to: a DPoP key (`jkt`), and whether anything else (mTLS…). */
interface Binding {
  jkt: string | undefined;
  other: boolean;
}

/** A cached verification: the request-independent part of an {@link Auth}, or a remembered failure. */
type Outcome =
  | {
      ok: true;
      auth: Omit<Auth, 'ttl' | 'credentials'> & {
        credentials: Omit<Auth['credentials'], 'token' | 'tokenType' | 'jkt'>;
      };
      binding: Binding | undefined;
      until: number;
    }
  | { ok: false; failure: VerifyFailure; until: number };

const TOO_LARGE = failure('invalid_token', 'token too large');
const INVALID = failure('invalid_token', 'token is not valid');
const UNAVAILABLE = failure('temporarily_unavailable', 'token could not be verified now');

/** 503: the token could not be checked; `retryAfterMs` is when the verifier next tries (default 5 s). */
function unavailable(retryAfterMs: number | undefined): VerifyFailure {
  if (retryAfterMs === undefined || !Number.isFinite(retryAfterMs)) return UNAVAILABLE;
  return { ...UNAVAILABLE, retryAfter: Math.max(1, Math.ceil(retryAfterMs / 1000)) };
}
const BOUND_AS_BEARER = failure('invalid_token', 'sender-constrained token presented as bearer');
const NOT_DPOP_BOUND = failure('invalid_token', 'token is not bound to a DPoP key');
const KEY_MISMATCH = failure('invalid_token', 'invalid DPoP key binding');
const DPOP_REQUIRED = failure('missing_token', 'DPoP-bound token required');
const CLAIM_CHECK_FAILED = failure('insufficient_scope', 'claim check failed');
const INSUFFICIENT_ROLE = failure('insufficient_scope', 'insufficient role');
/**
 * Where a verifier keeps the call the framework adapters use: `verify()` without the promise when the answer
 * is ready at once (see `run` in {@link createVerifier}). Not part of the public API.
 *
 * @internal
 */
export const VERIFY_NOW: unique symbol = Symbol('tokenwarden.verifyNow');

/** A verifier's {@link VERIFY_NOW} call, as the adapters see it. */
export type VerifyNow = (input: VerifyInput, options?: VerifyCallOptions) => VerifyResult | Promise<VerifyResult>;

/** A success, with the new `DPoP-Nonce` to send when the proof check chose one. */
function accepted(auth: Auth, nonce: string | undefined): VerifyResult {
  return nonce === undefined ? { ok: true, auth } : { ok: true, auth, headers: { 'dpop-nonce': nonce } };
}

const BOTH_SCHEMES: readonly TokenScheme[] = ['Bearer', 'DPoP'];
const BEARER_SCHEME: readonly TokenScheme[] = ['Bearer'];

/**
 * Creates an access token verifier. Throws `ERR_CONFIG` (or `ERR_INSECURE_ISSUER`) at construction for
 * misconfiguration; `verify()` itself never throws for a bad token or an unreachable server.
 *
 * DPoP-bound tokens (RFC 9449) are accepted with their proof (`Authorization: DPoP` and a `DPoP` header
 * in a Fetch or Node request: a raw token or a header value cannot carry one); see
 * {@link VerifierOptions.dpop}. mTLS-bound tokens (RFC 8705) are not checked: a token bound by anything
 * but a DPoP key is refused.
 *
 * @example
 * ```ts
 * import { createVerifier } from 'tokenwarden/server';
 * const verify = createVerifier({ issuer: 'https://login.example.com', audience: 'https://api.example.com' });
 * const result = await verify(req.headers.authorization);
 * if (result.ok) console.log(result.auth.uid, result.auth.credentials.scopes);
 * else console.log(result.failure.status, result.failure.error); // 401 invalid_token
 * ```
 */
export function createVerifier(options: VerifierOptions): Verifier {
  if (options === null || typeof options !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', 'options must be an object');
  }
  const clock = options.clock ?? systemClock;
  const maxLength = options.maxTokenLength ?? 16_384;
  if (!(Number.isInteger(maxLength) && maxLength > 0)) {
    throw new TokenwardenError('ERR_CONFIG', 'maxTokenLength must be a positive integer');
  }
  const locations = options.tokenLocations ?? ['header'];
  if (locations.length === 0 || locations.some((l) => l !== 'header' && l !== 'query' && l !== 'body')) {
    throw new TokenwardenError('ERR_CONFIG', "tokenLocations must list 'header', 'query' and/or 'body'");
  }
  const cacheOptions = options.cache === false ? { maxEntries: 0 } : (options.cache ?? {});
  const maxEntries = cacheOptions.maxEntries ?? 10_000;
  if (!(Number.isInteger(maxEntries) && maxEntries >= 0)) {
    throw new TokenwardenError('ERR_CONFIG', 'cache.maxEntries must be a non-negative integer');
  }
  const cacheMaxAgeMs = toMs(('maxAge' in cacheOptions ? cacheOptions.maxAge : undefined) ?? '5m', 'cache.maxAge');
  const defaults = requirements(options);

  const events = new EventEmitter<VerifierEvents>();
  const emit = <K extends keyof VerifierEvents>(name: K, ...args: VerifierEvents[K]): void => {
    if (events.listenerCount(name) === 0) return;
    try {
      (events.emit as (name: K, ...args: VerifierEvents[K]) => boolean)(name, ...args);
    } catch {
      // A failing observer must not change the answer.
    }
  };
  const { strategy, provider, jwt, keySets, upstreams, prepare } = resolveStrategy(options, clock, emit);
  const cache = new ValidationCache<Outcome>({ max: maxEntries });
  const recent = new RecentKeys(clock);
  const onError = options.onError;
  const dpop: DPoPVerifier | undefined =
    options.dpop === false
      ? undefined
      : dpopVerifier(options.dpop ?? {}, {
          clockToleranceMs: toMs(options.clockTolerance ?? 0, 'clockTolerance'),
          onError: (err) => report(onError, err),
        });
  const schemes = dpop === undefined ? BEARER_SCHEME : BOTH_SCHEMES;
  const extraction = { locations, maxLength, schemes };
  const readsBody = locations.includes('body');
  const advertiseDpop = options.dpop !== undefined && options.dpop !== false;

  /**
   * A failure as answered: with the DPoP scheme when the token came with it, and with what the challenge
   * must say about DPoP when it offers or answers in that scheme.
   */
  const refuse = (refused: VerifyFailure, scheme: TokenScheme = 'Bearer'): { ok: false; failure: VerifyFailure } => {
    if (dpop === undefined || refused.error === 'temporarily_unavailable') return { ok: false, failure: refused };
    if (refused.scheme === 'DPoP' || scheme === 'DPoP') {
      return { ok: false, failure: { ...refused, scheme: 'DPoP', dpop: refused.dpop ?? dpop.challenge } };
    }
    // DPoP proofs are accepted by default, but offered in the no-token challenge only when configured: the
    // plain `Bearer realm="…"` challenge stays what RFC 6750 clients expect unless you opt into DPoP.
    if (refused.error === 'missing_token' && advertiseDpop) {
      return { ok: false, failure: { ...refused, dpop: dpop.challenge } };
    }
    // A DPoP-bound token presented as Bearer: the challenge names the DPoP scheme too (RFC 9449 §7.1–7.2), so the
    // client learns which scheme, and which algorithms, the token needs.
    if (refused === BOUND_AS_BEARER) return { ok: false, failure: { ...refused, dpop: dpop.challenge } };
    return { ok: false, failure: refused };
  };

  /**
   * One verification of a token by its strategy, cached unless unavailable. A value when the strategy
   * answers at once (a JWT whose keys are known: no promise at all), else a promise that concurrent callers
   * share (see `cache.flight`).
   */
  const check = (token: string, key: string): Outcome | Promise<Outcome> => {
    const now = clock.now();
    const generation = cache.generation;
    const isJwt = strategy === 'jwt' || (strategy === 'auto' && looksLikeJwt(token));
    const selected = isJwt ? (jwt as JwtStrategy) : provider;
    const name = strategyName(strategy, isJwt);
    const context: ProviderContext = { now, clock };
    let result: PayloadResult<unknown> | Promise<PayloadResult<unknown>>;
    try {
      result = isJwt ? (jwt as JwtStrategy).check(token, now) : selected.getPayload(token, context);
    } catch (err) {
      return providerFailed(err);
    }
    if (result instanceof Promise) {
      return result.then((r) => settle(selected, r, context, name, key, generation)).then(undefined, providerFailed);
    }
    try {
      return settle(selected, result, context, name, key, generation);
    } catch (err) {
      return providerFailed(err);
    }
  };

  /** A provider's answer, judged (after its `isValid`) and cached. */
  const settle = (
    selected: VerifierProvider<unknown>,
    result: PayloadResult<unknown>,
    context: ProviderContext,
    name: AuthExtra['strategy'],
    key: string,
    generation: number,
  ): Outcome | Promise<Outcome> => {
    let valid: boolean | Promise<boolean> = true;
    if (result.ok) {
      valid = selected.isValid
        ? selected.isValid(result.payload, context)
        : defaultIsValid((result.payload ?? {}) as Claims, context.now);
    }
    if (valid instanceof Promise) {
      return valid.then((v) => store(key, judge(selected, result, v, context, name), generation));
    }
    return store(key, judge(selected, result, valid, context, name), generation);
  };

  /** Caches a judged token, unless it could not be judged or the cache was cleared since the check began. */
  const store = (key: string, outcome: Outcome, generation: number): Outcome => {
    if (outcome.ok || outcome.failure.error !== 'temporarily_unavailable') {
      cache.set(key, outcome, outcome.until, clock.now(), !outcome.ok, generation);
    }
    return outcome;
  };

  /** A provider that threw: not judged (503), reported, never cached. */
  const providerFailed = (err: unknown): Outcome => {
    report(
      onError,
      isTokenwardenError(err) ? err : new TokenwardenError('ERR_PROVIDER', 'token provider failed', { cause: err }),
    );
    return { ok: false, failure: unavailable(undefined), until: 0 };
  };

  /**
   * `verify()` itself; `probe`, when an observer listens (the `verify` event, telemetry), learns whether the
   * cache answered, and traces a miss. The answer comes at once, without a promise, when nothing needs
   * waiting for — a bearer token found in the cache with synchronous checks, the path most requests take —
   * and as a promise otherwise (a body to read, a DPoP proof, a cache miss that fetches, an async check).
   */
  const run = (
    input: VerifyInput,
    call: VerifyCallOptions,
    probe: telemetry.VerifyProbe | undefined,
  ): VerifyResult | Promise<VerifyResult> => {
    const body = call.body;
    if (body === undefined && readsBody && typeof input === 'object' && input !== null) {
      if (isFetchRequest(input) && hasFormBody(input)) {
        return readFormBody(input, maxLength + 4096).then((read) => present(input, call, probe, read));
      }
    }
    return present(input, call, probe, body);
  };

  /** Finds the token and, for DPoP, checks the proof (never cached) before the cache is consulted. */
  const present = (
    input: VerifyInput,
    call: VerifyCallOptions,
    probe: telemetry.VerifyProbe | undefined,
    body: unknown,
  ): VerifyResult | Promise<VerifyResult> => {
    const presented = extractPresented(input, extraction, body);
    if ('error' in presented) return refuse(presented);
    const { token, scheme } = presented;
    if (token.length > maxLength) return refuse(TOO_LARGE, scheme);
    // An unsupported scheme for this verifier: no error in the challenge (RFC 6750 §3.1).
    if (scheme === 'Bearer' && dpop?.required === true) return refuse(DPOP_REQUIRED);
    const now = clock.now();
    // base64url(SHA-256(token)), also the proof's `ath`; from memory for a valid token seen a moment ago.
    const known = recent.known(token, now);
    const key = known ?? cacheKey(token);
    if (scheme === 'Bearer') return lookUp(presented, key, known !== undefined, undefined, call, probe, now);
    const malformed = malformation(presented);
    if (malformed !== undefined) return refuse(malformed, scheme);
    // A raw token or a header value has no DPoP header: nothing proves possession.
    if (typeof input !== 'object' || input === null) {
      return refuse(failure('invalid_dpop_proof', 'DPoP proof required'), scheme);
    }
    return (dpop as DPoPVerifier).check(input, key, now, call.originalUrl).then((checked) => {
      if ('error' in checked) return refuse(checked, scheme);
      return lookUp(presented, key, known !== undefined, checked, call, probe, clock.now());
    });
  };

  /**
   * The cache, or the strategy on a miss. The token's syntax is checked only on a miss: an entry exists only
   * for a token that passed it, and its key is the SHA-256 of every character.
   */
  const lookUp = (
    presented: PresentedToken,
    key: string,
    remembered: boolean,
    proof: CheckedProof | undefined,
    call: VerifyCallOptions,
    probe: telemetry.VerifyProbe | undefined,
    now: number,
  ): VerifyResult | Promise<VerifyResult> => {
    const { token } = presented;
    // cache.get() re-checks the entry's deadline (never later than the token's exp) against the clock.
    const cached = cache.get(key, now);
    if (cached !== undefined) {
      if (probe !== undefined) probe.cache = 'hit';
      // Only tokens found valid are held as strings (never garbage, forgeries or unknown tokens).
      if (cached.ok && !remembered) recent.remember(token, key, now);
      return answer(cached, token, presented.scheme, proof, call, now);
    }
    if (proof === undefined) {
      // Not a token at all: refused as before any lookup (no cache use reported).
      const malformed = malformation(presented);
      if (malformed !== undefined) return refuse(malformed, presented.scheme);
    }
    if (probe !== undefined) probe.cache = 'miss';
    const miss = (): Outcome | Promise<Outcome> => cache.flight(key, () => check(token, key));
    const outcome = probe?.traced === undefined ? miss() : probe.traced(async () => miss());
    if (outcome instanceof Promise) {
      return outcome.then((o) => answer(o, token, presented.scheme, proof, call, clock.now()));
    }
    return answer(outcome, token, presented.scheme, proof, call, clock.now());
  };

  /** A judged token, with this request's parts: the key binding against the proof, scopes and claims. */
  const answer = (
    outcome: Outcome,
    token: string,
    scheme: TokenScheme,
    proof: CheckedProof | undefined,
    call: VerifyCallOptions,
    now: number,
  ): VerifyResult | Promise<VerifyResult> => {
    if (!outcome.ok) return refuse(outcome.failure, scheme);
    const binding = outcome.binding;
    if (proof === undefined) {
      // RFC 9449 §7.2: a token bound to a key is worthless without the proof; never accept it as bearer.
      if (binding !== undefined) return refuse(BOUND_AS_BEARER);
    } else {
      if (binding?.jkt === undefined || binding.other) return refuse(NOT_DPOP_BOUND, scheme);
      if (binding.jkt !== proof.jkt) return refuse(KEY_MISMATCH, scheme);
      // Recorded only now, with a valid token bound to the proof's key: strangers cannot fill the cache.
      const replayed = (dpop as DPoPVerifier).remember(proof, now);
      if (replayed instanceof Promise) {
        return replayed.then((r) =>
          r !== undefined ? refuse(r, scheme) : admit(outcome, token, scheme, proof, call, now),
        );
      }
      if (replayed !== undefined) return refuse(replayed, scheme);
    }
    return admit(outcome, token, scheme, proof, call, now);
  };

  /** A valid token (and proof): the request's auth, then the route's requirements. */
  const admit = (
    outcome: Extract<Outcome, { ok: true }>,
    token: string,
    scheme: TokenScheme,
    proof: CheckedProof | undefined,
    call: VerifyCallOptions,
    now: number,
  ): VerifyResult | Promise<VerifyResult> => {
    // The request's own parts (token, scheme, key, ttl) around the cached, frozen ones: no spreads.
    const base = outcome.auth;
    const auth: Auth = {
      uid: base.uid,
      issuer: base.issuer,
      credentials:
        proof === undefined
          ? { token, tokenType: scheme, scopes: base.credentials.scopes, expiresAt: base.credentials.expiresAt }
          : {
              token,
              tokenType: scheme,
              jkt: proof.jkt,
              scopes: base.credentials.scopes,
              expiresAt: base.credentials.expiresAt,
            },
      info: base.info,
      extra: base.extra,
      ttl: Math.max(0, outcome.until - now),
    };
    const nonce = proof?.nonce;
    const refused = authorize(auth, call, defaults);
    if (refused instanceof Promise) {
      return refused.then((r) => (r !== undefined ? refuse(r, scheme) : accepted(auth, nonce)));
    }
    if (refused !== undefined) return refuse(refused, scheme);
    return accepted(auth, nonce);
  };

  /** `run`, and the `verify` event when someone listens. */
  const observed = (
    input: VerifyInput,
    call: VerifyCallOptions,
    observer: telemetry.VerifyProbe | undefined,
  ): VerifyResult | Promise<VerifyResult> => {
    if (events.listenerCount('verify') === 0) return run(input, call, observer);
    const probe: telemetry.VerifyProbe = observer ?? {};
    const told = (result: VerifyResult): VerifyResult => {
      const error = result.ok ? undefined : result.failure.error;
      emit('verify', {
        outcome: error === undefined ? 'ok' : error === 'temporarily_unavailable' ? 'unavailable' : error,
        ...(probe.cache !== undefined && { cache: probe.cache }),
        ...(result.ok && { strategy: result.auth.extra.strategy }),
      });
      return result;
    };
    const result = run(input, call, probe);
    return result instanceof Promise ? result.then(told) : told(result);
  };

  // Counted, timed and traced by telemetry (nothing is done when nothing records). `now` is what the
  // framework adapters call: no promise for an answer that is ready.
  const now = (input: VerifyInput, call: VerifyCallOptions = {}): VerifyResult | Promise<VerifyResult> =>
    telemetry.verification(observed, input, call);
  const verify = (input: VerifyInput, call?: VerifyCallOptions): Promise<VerifyResult> => {
    try {
      // A route's requirements are checked once, when its middleware is made (adapters call `now`); here, per call.
      if (call !== undefined) checkRequirements(call);
      const result = now(input, call);
      return result instanceof Promise ? result : Promise.resolve(result);
    } catch (err) {
      return Promise.reject(err as Error);
    }
  };

  const health = (): VerifierHealth => {
    const now = clock.now();
    const endpoints = upstreams?.endpoints().map((e) => e.health()) ?? [];
    const keys = (keySets?.all() ?? []).map((set) => ({ ...set.health(now), failing: set.failing }));
    let lastError: EndpointHealth | undefined;
    for (const e of endpoints) {
      if (
        e.lastError !== undefined &&
        (lastError === undefined || (e.lastFailureAt ?? 0) >= (lastError.lastFailureAt ?? 0))
      ) {
        lastError = e;
      }
    }
    // What can be judged now: JWTs when every key set has usable keys or is not failing; opaque tokens when
    // the introspection endpoint (and the discovery it needs) is not failing.
    // (With several issuers, one that cannot be judged leaves the verifier degraded, not unavailable.)
    const blindSets = keys.filter((k) => k.keys === 0 && k.failing).length;
    const jwtBlind = blindSets > 0 && blindSets === keys.length;
    const introspectionBlind = upstreams?.introspectionFailing() === true;
    const blind =
      strategy === 'jwt'
        ? jwtBlind
        : strategy === 'introspection'
          ? introspectionBlind
          : strategy === 'auto' && jwtBlind && introspectionBlind;
    const servingStale = keys.some((k) => k.stale);
    const degraded = servingStale || blindSets > 0 || introspectionBlind || endpoints.some((e) => e.failing);
    const status = blind ? 'unavailable' : degraded ? 'degraded' : 'ok';
    return {
      status,
      ready: status !== 'unavailable',
      servingStale,
      keys,
      endpoints,
      ...(lastError?.lastError !== undefined && { lastError: lastError.lastError }),
    };
  };

  const ready = async ({ signal }: { signal?: AbortSignal } = {}): Promise<VerifierHealth> => {
    const work = prepare();
    if (signal !== undefined) work.catch(() => undefined); // the caller may stop waiting; the work goes on
    await (signal === undefined ? work : abortable(work, signal, 'ready()'));
    return health();
  };

  /** Turns a provider's answer into a cacheable {@link Outcome}. */
  function judge(
    selected: VerifierProvider<unknown>,
    result: PayloadResult<unknown>,
    valid: boolean,
    context: ProviderContext,
    name: AuthExtra['strategy'],
  ): Outcome {
    if (!result.ok) {
      if (result.error === 'temporarily_unavailable') {
        const cause = asError(result.cause);
        report(onError, cause);
        return { ok: false, failure: unavailable(result.retryAfterMs ?? cause.retryAfterMs), until: 0 };
      }
      return {
        ok: false,
        failure: failure('invalid_token', result.description),
        until: context.now + Math.max(0, result.cacheForMs ?? 0),
      };
    }
    const payload = result.payload;
    const claims = (payload ?? {}) as Claims;
    if (!valid) return { ok: false, failure: INVALID, until: 0 };
    const credentials = selected.getCredentials?.(payload) ?? {};
    const expiresAt = 'expiresAt' in credentials ? credentials.expiresAt : expiresAtOf(claims);
    const ttl = selected.getTtl?.(payload, context);
    const until = Math.min(expiresAt ?? Infinity, context.now + cacheMaxAgeMs, context.now + (ttl ?? Infinity));
    // Frozen once, here: the cached result is shared by every request that presents the token.
    const extra = selected.getExtra ? selected.getExtra(payload) : { claims };
    const auth = Object.freeze({
      uid: selected.getUid ? selected.getUid(payload) : uidOf(claims, options.uid),
      issuer: selected.getIssuer ? selected.getIssuer(payload) : stringClaim(claims, 'iss'),
      credentials: Object.freeze({ scopes: freezeDeep(credentials.scopes ?? scopesOf(claims)), expiresAt }),
      info: freezeDeep(selected.getInfo ? selected.getInfo(payload) : infoOf(claims)),
      extra: Object.freeze(freezeDeep({ ...extra, strategy: name })),
    });
    // A result already past its deadline (accepted within the clock tolerance) is answered, not cached.
    return { ok: true, auth, binding: bindingOf(auth.extra.claims), until };
  }

  const verifier = Object.defineProperties(verify, {
    strategy: { value: strategy, enumerable: true },
    dpop: { value: dpop !== undefined, enumerable: true },
    cacheSize: { get: () => cache.size, enumerable: true },
    clearCache: {
      value: () => {
        cache.clear();
        recent.clear();
        // After an emergency key revocation: the keys held are fetched again before the next token is judged.
        for (const set of keySets?.all() ?? []) set.expire();
      },
      enumerable: true,
    },
    ready: { value: ready, enumerable: true },
    health: { value: health, enumerable: true },
    [VERIFY_NOW]: { value: now },
    on: {
      value: (name: keyof VerifierEvents, listener: (...args: never[]) => void) => {
        events.on(name, listener as never);
        return verifier;
      },
      enumerable: true,
    },
    off: {
      value: (name: keyof VerifierEvents, listener: (...args: never[]) => void) => {
        events.off(name, listener as never);
        return verifier;
      },
      enumerable: true,
    },
  }) as Verifier;
  return verifier;
}

/**
 * Scope, role and claim checks, on every call: 403 `insufficient_scope` when they fail. Synchronous unless an
 * asynchronous claim check runs (an extra promise per call is measurable on the cached path).
 */
function authorize(
  auth: Auth,
  call: AuthorizationRequirements,
  defaults: AuthorizationRequirements,
): VerifyFailure | undefined | Promise<VerifyFailure | undefined> {
  const required = call.requiredScopes ?? defaults.requiredScopes;
  // anyScopes and anyRoles are one requirement ("one of these scopes or one of these roles"): a call that
  // sets either replaces both.
  const either = call.anyScopes !== undefined || call.anyRoles !== undefined ? call : defaults;
  const any = either.anyScopes;
  const anyRoles = either.anyRoles;
  const claimCheck = call.claimCheck ?? defaults.claimCheck;
  const scopes = auth.credentials.scopes;
  if (required !== undefined && required.length > 0 && !required.every((s) => scopes.includes(s))) {
    return failure('insufficient_scope', 'insufficient scope', required.join(' '));
  }
  const byScope = any !== undefined && any.length > 0;
  const byRole = anyRoles !== undefined && anyRoles.length > 0;
  if (
    (byScope || byRole) &&
    !(byScope && any.some((s) => scopes.includes(s))) &&
    !(byRole && hasAnyRole(auth, anyRoles))
  ) {
    return byScope ? failure('insufficient_scope', 'insufficient scope', any.join(' ')) : INSUFFICIENT_ROLE;
  }
  if (claimCheck === undefined) return undefined;
  const passed = claimCheck(auth);
  if (passed instanceof Promise) return passed.then((ok) => (ok === true ? undefined : CLAIM_CHECK_FAILED));
  return passed === true ? undefined : CLAIM_CHECK_FAILED;
}

/** Whether the token's `roles` claim (an array, or a space-separated string) names one of `wanted`. */
function hasAnyRole(auth: Auth, wanted: readonly string[]): boolean {
  const roles = auth.extra.claims['roles'];
  if (typeof roles === 'string') return roles.split(' ').some((r) => r !== '' && wanted.includes(r));
  return Array.isArray(roles) && roles.some((r) => typeof r === 'string' && wanted.includes(r));
}

/** The key binding of a token (RFC 7800 `cnf`, RFC 9449 §6), from its claims or introspection response. */
function bindingOf(claims: Claims | undefined): Binding | undefined {
  const cnf = claims?.['cnf'];
  if (cnf === undefined) return undefined;
  if (cnf === null || typeof cnf !== 'object' || Array.isArray(cnf)) return { jkt: undefined, other: true };
  const jkt = (cnf as Record<string, unknown>)['jkt'];
  return {
    jkt: typeof jkt === 'string' && jkt !== '' ? jkt : undefined,
    other: Object.keys(cnf).some((name) => name !== 'jkt'),
  };
}

/**
 * Default `valid_token?` for providers: `exp` in the future and `nbf` in the past, when present, and every
 * numeric date a finite number in range (an `exp` of `1e400` is not "no expiry").
 */
function defaultIsValid(claims: Claims, now: number): boolean {
  if (!numericDatesValid(claims)) return false;
  const exp = expiresAtOf(claims);
  const nbf = claims['nbf'];
  return (exp === undefined || exp > now) && (typeof nbf !== 'number' || nbf * 1000 <= now);
}

/** Three base64url segments and a header that starts as a JSON object: worth a local JWT check. */
function looksLikeJwt(token: string): boolean {
  const first = token.indexOf('.');
  const second = first < 0 ? -1 : token.indexOf('.', first + 1);
  return token.startsWith('eyJ') && first > 0 && second > first && token.indexOf('.', second + 1) < 0;
}

function strategyName(strategy: Strategy | 'provider', isJwt: boolean): AuthExtra['strategy'] {
  if (strategy === 'provider') return 'provider';
  if (strategy === 'auto') return isJwt ? 'jwt' : 'introspection';
  return strategy;
}

function report(onError: VerifierOptions['onError'], error: TokenwardenError): void {
  if (onError === undefined) return;
  try {
    onError(error);
  } catch {
    // A failing observer must not change the answer.
  }
}

function asError(cause: unknown): TokenwardenError {
  return isTokenwardenError(cause)
    ? cause
    : new TokenwardenError('ERR_PROVIDER', 'token could not be verified', { cause });
}

/** What {@link resolveStrategy} builds. */
interface Resolved {
  strategy: Strategy | 'provider';
  provider: VerifierProvider<unknown>;
  jwt?: JwtStrategy;
  /** The authorization server's endpoints and key sets (not for a provider). */
  upstreams?: Upstreams;
  keySets?: KeySets;
  /** Fetches what the first request would need (for `ready()`). */
  prepare: () => Promise<void>;
}

/** The default backoff between failed requests to the authorization server. */
const DEFAULT_BACKOFF = { initial: '1s', max: '30s', multiplier: 2 } as const;

/** The verifier's backoff as the shared policy type (only its `backoff*` fields are used). */
function backoffPolicy(backoff: BackoffOptions | undefined): RefreshPolicy {
  if (backoff !== undefined && (backoff === null || typeof backoff !== 'object')) {
    throw new TokenwardenError('ERR_CONFIG', 'backoff must be an object: { initial, max, multiplier }');
  }
  const multiplier = backoff?.multiplier ?? DEFAULT_BACKOFF.multiplier;
  if (typeof multiplier !== 'number' || !(multiplier >= 1 && multiplier <= 100)) {
    throw new TokenwardenError('ERR_CONFIG', 'backoff.multiplier must be a number from 1 to 100');
  }
  const initial = toMs(backoff?.initial ?? DEFAULT_BACKOFF.initial, 'backoff.initial');
  const max = toMs(backoff?.max ?? DEFAULT_BACKOFF.max, 'backoff.max');
  if (max < initial) throw new TokenwardenError('ERR_CONFIG', 'backoff.max must not be less than backoff.initial');
  return resolvePolicy({ backoff: { initial, max, multiplier } });
}

/** Picks the strategy and builds its provider(s), checking every option it uses. */
function resolveStrategy(
  options: VerifierOptions,
  clock: Clock,
  emit: <K extends keyof VerifierEvents>(name: K, ...args: VerifierEvents[K]) => void,
): Resolved {
  if (options.provider !== undefined) {
    if (typeof options.provider?.getPayload !== 'function') {
      throw new TokenwardenError('ERR_CONFIG', 'provider must have a getPayload(token, context) method');
    }
    return { strategy: 'provider', provider: options.provider, prepare: () => Promise.resolve() };
  }
  const allowInsecureRequests = options.allowInsecureRequests === true;
  const fetch = resolveTransport(options.fetch, options.proxy);
  const timeoutMs = toMs(options.timeout ?? DEFAULT_TIMEOUT_MS, 'timeout');
  const maxResponseBytes = options.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
  if (!(Number.isInteger(maxResponseBytes) && maxResponseBytes > 0)) {
    throw new TokenwardenError('ERR_CONFIG', 'maxResponseBytes must be a positive integer');
  }
  const issuers = issuerPolicy(options.issuer, allowInsecureRequests);
  const audience = stringList(options.audience, 'audience');
  const clientIds = stringList(options.clientIdsWithoutAudience, 'clientIdsWithoutAudience');
  const clockToleranceMs = toMs(options.clockTolerance ?? 0, 'clockTolerance');
  const jwksUri =
    options.jwksUri === undefined ? undefined : checkUrl(options.jwksUri, 'jwksUri', allowInsecureRequests);
  const introspectionEndpoint = introspectionEndpointOf(options);
  const strategy: Strategy =
    options.strategy ??
    (options.introspection === undefined
      ? 'jwt'
      : audience !== undefined || clientIds !== undefined || jwksUri !== undefined
        ? 'auto'
        : 'introspection');
  if (strategy !== 'jwt' && strategy !== 'introspection' && strategy !== 'auto') {
    throw new TokenwardenError('ERR_CONFIG', "strategy must be 'jwt', 'introspection' or 'auto'");
  }
  const algorithms = [...(options.algorithms ?? ASYMMETRIC_ALGORITHMS)];
  const allowed: readonly string[] = ASYMMETRIC_ALGORITHMS;
  if (algorithms.length === 0 || algorithms.some((a) => !allowed.includes(a))) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      `algorithms must be a non-empty list of ${ASYMMETRIC_ALGORITHMS.join(', ')} (no 'none', no HMAC: a JWKS holds public keys)`,
    );
  }
  const jwks = options.jwks ?? {};
  const upstreams = new Upstreams({
    clock,
    policy: backoffPolicy(options.backoff),
    fetch,
    timeoutMs,
    maxResponseBytes,
    allowInsecureRequests,
    discovery: options.discovery ?? 'auto',
    emit: emit as UpstreamsOptions['emit'], // VerifierEvents extends what Upstreams reports
  });
  const keySets = new KeySets(upstreams, {
    cooldownMs: toMs(jwks.cooldown ?? '30s', 'jwks.cooldown'),
    cacheMaxAgeMs: toMs(jwks.cacheMaxAge ?? '10m', 'jwks.cacheMaxAge'),
    maxStaleMs: toMs(jwks.maxStale ?? '12h', 'jwks.maxStale'),
  });
  const preparing: (() => Promise<unknown>)[] = [];
  const prepare = async (): Promise<void> => {
    await Promise.all(preparing.map((step) => step()));
  };

  if (clientIds !== undefined && strategy === 'introspection') {
    throw new TokenwardenError(
      'ERR_CONFIG',
      "clientIdsWithoutAudience applies to JWTs: not with strategy 'introspection'",
    );
  }
  if (clientIds !== undefined && options.strict === true) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      'clientIdsWithoutAudience accepts tokens without aud, which strict (RFC 9068: aud required) refuses: set one',
    );
  }

  let jwt: JwtStrategy | undefined;
  if (strategy !== 'introspection') {
    if (issuers === undefined) {
      throw new TokenwardenError('ERR_CONFIG', 'issuer is required to verify JWTs');
    }
    if (audience === undefined && clientIds === undefined) {
      throw new TokenwardenError(
        'ERR_CONFIG',
        'audience is required to verify JWTs (RFC 9068: a resource server must check the token is meant for it); ' +
          'for tokens without aud (Amazon Cognito), clientIdsWithoutAudience',
      );
    }
    if (jwksUri === undefined && !('list' in issuers)) {
      throw new TokenwardenError('ERR_CONFIG', 'an issuer resolver needs jwksUri, or a list of issuers');
    }
    // The key sets known from the configuration, so that health() lists them and ready() loads them.
    const sets =
      jwksUri !== undefined
        ? [keySets.forUri(jwksUri)]
        : (issuers as { list: readonly string[] }).list.map((i) => keySets.forIssuer(i));
    for (const set of sets) preparing.push(() => set.load());
    const maxTokenAgeMs = options.maxTokenAge === undefined ? undefined : toMs(options.maxTokenAge, 'maxTokenAge');
    const strategyOfJwt = jwtStrategy({
      issuers,
      audience: [...(audience ?? [])],
      clientIdsWithoutAudience: clientIds && [...clientIds],
      jwksUri,
      algorithms,
      clockToleranceSec: clockToleranceMs / 1000,
      maxTokenAgeSec: maxTokenAgeMs === undefined ? undefined : maxTokenAgeMs / 1000,
      strict: options.strict === true,
      requiredClaims: [...(options.requiredClaims ?? [])],
      uidClaim: options.uid,
      negativeCacheMs: toMs(options.negativeCacheMaxAge ?? '30s', 'negativeCacheMaxAge'),
      keySets,
    });
    // maxTokenAge is a deadline too (`iat` + maxTokenAge): a cached result must not outlive it, or a token
    // verified a moment before it turned too old would be accepted for the rest of cache.maxAge.
    jwt =
      maxTokenAgeMs === undefined
        ? strategyOfJwt
        : {
            ...strategyOfJwt,
            getTtl: (p, context) => {
              const iat = (p.claims as Claims)['iat'];
              return typeof iat === 'number' ? iat * 1000 + maxTokenAgeMs - context.now : 0;
            },
          };
    if (strategy === 'jwt')
      return { strategy, provider: jwt as VerifierProvider<unknown>, jwt, upstreams, keySets, prepare };
  }

  const introspection = options.introspection;
  if (introspection === undefined || introspection === null || typeof introspection !== 'object') {
    throw new TokenwardenError('ERR_CONFIG', `strategy '${strategy}' needs the introspection option`);
  }
  const single = issuers !== undefined && 'list' in issuers && issuers.list.length === 1 ? issuers.list[0] : undefined;
  if (introspectionEndpoint === undefined && single === undefined) {
    throw new TokenwardenError(
      'ERR_CONFIG',
      'introspection needs an endpoint (introspectionEndpoint), or exactly one issuer to discover it from',
    );
  }
  if (introspection.jwtResponse !== undefined && typeof introspection.jwtResponse !== 'boolean') {
    throw new TokenwardenError('ERR_CONFIG', 'introspection.jwtResponse must be a boolean');
  }
  const issuerCheck = issuers === undefined ? () => true : (iss: string) => trustsIssuer(issuers, iss);
  if (introspectionEndpoint === undefined) preparing.push(() => upstreams.metadata(single as string));
  const provider = introspectionStrategy({
    client: {
      ...(single !== undefined && { issuer: single }),
      clientId: introspection.clientId,
      ...(introspection.clientSecret !== undefined && { clientSecret: introspection.clientSecret }),
      ...(introspection.clientAuth !== undefined && { clientAuth: introspection.clientAuth }),
      ...(introspection.privateKey !== undefined && { privateKey: introspection.privateKey }),
      ...(options.discovery !== undefined && { discovery: options.discovery }),
      ...(fetch !== undefined && { fetch }),
      timeout: timeoutMs,
      maxResponseBytes,
      allowInsecureRequests,
      clock,
    },
    endpoint: introspectionEndpoint,
    issuer: single,
    issuerCheck,
    audience: audience === undefined ? undefined : [...audience],
    uidClaim: options.uid,
    clockToleranceMs,
    cacheMaxAgeMs: toMs(introspection.cacheMaxAge ?? '1m', 'introspection.cacheMaxAge'),
    inactiveCacheMaxAgeMs: toMs(introspection.inactiveCacheMaxAge ?? '10s', 'introspection.inactiveCacheMaxAge'),
    jwtResponse: introspection.jwtResponse === true,
    algorithms,
    jwksUri,
    upstreams,
    keySets,
  }) as VerifierProvider<unknown>;
  return jwt === undefined
    ? { strategy, provider, upstreams, keySets, prepare }
    : { strategy, provider, jwt, upstreams, keySets, prepare };
}

/** `introspectionEndpoint` or `introspection.endpoint` (the same option, in two places); both must agree. */
function introspectionEndpointOf(options: VerifierOptions): string | undefined {
  const top = options.introspectionEndpoint;
  const nested = options.introspection?.endpoint;
  if (top !== undefined && nested !== undefined && top !== nested) {
    throw new TokenwardenError('ERR_CONFIG', 'introspectionEndpoint and introspection.endpoint differ: set one');
  }
  return top ?? nested;
}

function issuerPolicy(issuer: VerifierOptions['issuer'], allowInsecure: boolean): IssuerPolicy | undefined {
  if (issuer === undefined) return undefined;
  if (typeof issuer === 'function') return { resolve: issuer };
  const list = typeof issuer === 'string' ? [issuer] : issuer;
  if (!Array.isArray(list) || list.length === 0) {
    throw new TokenwardenError('ERR_CONFIG', 'issuer must be a URL, a non-empty list of URLs, or a function');
  }
  return { list: list.map((i, n) => checkUrl(i, list.length === 1 ? 'issuer' : `issuer[${n}]`, allowInsecure)) };
}

/** A string or a non-empty list of non-empty strings (`audience`, `clientIdsWithoutAudience`), as a list. */
function stringList(value: string | readonly string[] | undefined, name: string): readonly string[] | undefined {
  if (value === undefined) return undefined;
  const list = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(list) || list.length === 0 || list.some((a) => typeof a !== 'string' || a === '')) {
    throw new TokenwardenError('ERR_CONFIG', `${name} must be a non-empty string or list of strings`);
  }
  return list;
}

/**
 * Checks scope and role lists and the claim check of `options` (throwing `ERR_CONFIG`) and returns only the
 * requirements that are set.
 *
 * @example
 * ```ts
 * requirements({ requiredScopes: ['write'] }); // { requiredScopes: ['write'] }
 * requirements({ requiredScopes: ['read write'] }); // throws ERR_CONFIG (two names in one)
 * requirements({ anyScopes: ['Orders.Read', 'écrire'] }); // throws ERR_CONFIG (not an RFC 6749 scope-token)
 * ```
 */
export function requirements(options: AuthorizationRequirements): AuthorizationRequirements {
  checkRequirements(options);
  const result: AuthorizationRequirements = {};
  for (const name of REQUIREMENT_LISTS) {
    const names = options[name];
    if (names !== undefined) result[name] = [...names];
  }
  if (options.claimCheck !== undefined) result.claimCheck = options.claimCheck;
  return result;
}

const REQUIREMENT_LISTS = ['requiredScopes', 'anyScopes', 'anyRoles'] as const;

/**
 * Throws `ERR_CONFIG` unless the requirements that are set are well formed: scope names RFC 6749 §3.3
 * scope-tokens (what a challenge's `scope` can name, and a client ask for), role names non-empty without
 * spaces, the claim check a function.
 */
function checkRequirements(options: AuthorizationRequirements): void {
  for (const name of REQUIREMENT_LISTS) {
    const names: unknown = options[name];
    if (names === undefined) continue;
    if (name === 'anyRoles') {
      if (!Array.isArray(names) || names.some((r) => typeof r !== 'string' || r === '' || r.includes(' '))) {
        throw new TokenwardenError('ERR_CONFIG', 'anyRoles must be a list of role names (no spaces)');
      }
    } else if (!Array.isArray(names) || !names.every(isScopeToken)) {
      throw new TokenwardenError(
        'ERR_CONFIG',
        `${name} must be a list of scope names (RFC 6749: no spaces, quotes, backslashes or non-ASCII characters)`,
      );
    }
  }
  if (options.claimCheck !== undefined && typeof options.claimCheck !== 'function') {
    throw new TokenwardenError('ERR_CONFIG', 'claimCheck must be a function');
  }
}
