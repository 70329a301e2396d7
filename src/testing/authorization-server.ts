/**
 * `createTestAuthorizationServer()`: a real, standards-following OAuth 2.0 authorization server on
 * `127.0.0.1` and a free port, for the tests of applications that obtain or check tokens — with faults on
 * demand, request counters, key rotation, and tokens minted or issued without a request.
 *
 * Built on `node:http` and jose rather than on a full OpenID provider: it starts in milliseconds with no
 * dependency to install, its time can be a `ManualClock`, its keys rotate while it runs, and its faults sit
 * in front of every endpoint. It implements what services and resource servers talk to: discovery (OpenID
 * Connect and RFC 8414), JWKS, the token endpoint (client credentials; refresh tokens, single use and
 * rotated, reuse revoking the grant), introspection (RFC 7662), revocation (RFC 7009) and UserInfo. It has
 * no authorization endpoint: a test starts from a login's result with `issueTokens()`.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { JWK } from 'jose';
import { type Clock, systemClock } from '../clock.js';
import { type Duration, toMs } from '../duration.js';
import { TokenwardenError } from '../errors.js';
import {
  ASSERTION_ALGORITHMS,
  ClientAuthenticator,
  type OAuthError,
  type RegisteredClient,
  clientKeys,
  oauthError,
} from './client-auth.js';
import { DPOP_ALGORITHMS, DPoPProofs } from './dpop.js';
import { type Answer, Grants, type Subject, type TokenResponse, errorAnswer } from './grants.js';
import { KeyRing, type SigningAlgorithm } from './keys.js';

/**
 * Options of {@link createTestAuthorizationServer}. Every one is optional.
 *
 * @example
 * ```ts
 * const as = await createTestAuthorizationServer({
 *   accessTokenTtl: '60s',
 *   audience: 'https://api.test',
 *   scopes: ['openid', 'read', 'write'],
 *   userClaims: (sub) => ({ email: `${sub}@example.test` }),
 * });
 * ```
 */
export interface TestAuthorizationServerOptions {
  /** Lifetime of access tokens (`expires_in`, JWT `exp`). Default `'5m'`; at least one second. */
  accessTokenTtl?: Duration;
  /** Lifetime of each refresh token from its issue (rotation issues a new one). Default `'1d'`. */
  refreshTokenTtl?: Duration;
  /** Lifetime of ID tokens. Default `'5m'`. */
  idTokenTtl?: Duration;
  /**
   * The resource(s) tokens may be issued for (RFC 8707 `resource`; JWT `aud`). The first is the audience of
   * tokens whose request names no resource. Any other `resource` is refused with `invalid_target`. Default
   * `'https://api.test'`.
   */
  audience?: string | readonly string[];
  /** Access tokens as RFC 9068 JWTs (default), or opaque strings that only introspection can check. */
  accessTokenFormat?: 'jwt' | 'opaque';
  /** Rotate refresh tokens on every use (the spent one is dead; using it again revokes the grant). Default `true`. */
  rotateRefreshTokens?: boolean;
  /** The scopes the server knows; a request for another gets `invalid_scope`. Default: any well-formed scope. */
  scopes?: readonly string[];
  /** Signing algorithm of its keys. Default `'RS256'`. */
  algorithm?: SigningAlgorithm;
  /** Credentials of {@link TestAuthorizationServer.client}. Default: client id `'test-client'` and a random secret. */
  client?: { clientId?: string; clientSecret?: string };
  /** Claims of a user, for ID tokens and UserInfo (`sub` is always the subject). Default: none. */
  userClaims?: (sub: string) => Readonly<Record<string, unknown>>;
  /** A path for the issuer (`'/realms/test'`), to exercise discovery of issuers with a path. Default: none. */
  path?: string;
  /** The port. Default: a free one. */
  port?: number;
  /** Where time comes from: issue times, lifetimes and expiry checks. Pass the `ManualClock` your test moves. */
  clock?: Clock;
}

/**
 * A client registered at the test server: spread it into a source's options.
 *
 * @example
 * ```ts
 * clientCredentials({ issuer: as.issuer, ...as.client, allowInsecureRequests: true });
 * ```
 */
export interface TestClient {
  readonly clientId: string;
  readonly clientSecret: string;
}

/**
 * What {@link TestAuthorizationServer.fault} can make the server do.
 *
 * | fault | the faulted endpoints… | a tokenwarden client sees |
 * | --- | --- | --- |
 * | `'ok'` | answer normally (clears any fault) | — |
 * | `'down'` | refuse connections: the whole server stops listening, open connections are cut | `ERR_NETWORK` |
 * | `'reset'` | accept the request, then reset the connection (TCP RST: `ECONNRESET`) | `ERR_NETWORK` |
 * | `'500'` | answer 500 with an HTML page | `ERR_HTTP_STATUS` (`status` 500) |
 * | `'503'` | answer 503 with `Retry-After: 1` and an HTML page | `ERR_HTTP_STATUS` (`status` 503, `retryAfterMs`) |
 * | `'slow'` | answer normally after `delay` (default `'5s'`), or as soon as the fault is cleared | `ERR_TIMEOUT` with a shorter `timeout` |
 * | `'garbage'` | answer 200 with a body that is not JSON | `ERR_INVALID_RESPONSE` |
 *
 * @example
 * ```ts
 * await as.fault('down');
 * await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_NETWORK' });
 * await as.fault('ok');
 * ```
 */
export type Fault = 'ok' | 'down' | 'reset' | '500' | '503' | 'slow' | 'garbage';

/**
 * The endpoints of the test server, as faults and counters name them.
 *
 * @example
 * ```ts
 * await as.fault('500', { endpoints: ['introspection'] });
 * ```
 */
export type TestEndpoint = 'token' | 'jwks' | 'discovery' | 'introspection' | 'revocation' | 'userinfo';

/**
 * Where and for how long a fault applies.
 *
 * @example
 * ```ts
 * await as.fault('500', { times: 1 });                      // the next token or JWKS request only
 * await as.fault('slow', { delay: '2s', endpoints: 'all' }); // every endpoint, two seconds late
 * ```
 */
export interface FaultOptions {
  /** The endpoints that misbehave. Default `['token', 'jwks']`. `'down'` always takes the whole server down. */
  endpoints?: readonly TestEndpoint[] | 'all';
  /** For `'slow'`: how late the answer comes. Default `'5s'`. */
  delay?: Duration;
  /**
   * Misbehave for this many requests, then answer normally again. Default: until the next `fault()`. Not with
   * `'down'`, which receives no requests (`ERR_CONFIG`): end it with `fault('ok')`.
   */
  times?: number;
}

/**
 * Requests the server received, per endpoint (faulted ones included; none while it is down).
 *
 * @example
 * ```ts
 * const before = as.stats().token;
 * await manager.getToken();
 * expect(as.stats().token - before).toBe(1);
 * ```
 */
export interface TestServerStats {
  token: number;
  jwks: number;
  discovery: number;
  introspection: number;
  revocation: number;
  userinfo: number;
  /** Token requests per `grant_type`. */
  grants: Record<string, number>;
  /** Token endpoint error answers per OAuth `error` (`invalid_grant`, …). */
  errors: Record<string, number>;
}

/**
 * What {@link TestAuthorizationServer.mintAccessToken} signs.
 *
 * @example
 * ```ts
 * await as.mintAccessToken({ sub: 'alice', scope: 'read', expiresIn: '5m' });
 * await as.mintAccessToken({ sub: 'alice', issuedAt: Date.now() - 3_600_000 }); // expired an hour ago… minus the lifetime
 * await as.mintAccessToken({ audience: 'https://other.test', claims: { tenant: 'acme' } });
 * ```
 */
export interface MintAccessTokenOptions {
  /** `sub`. Default: the client id (a client credentials token). */
  sub?: string;
  /** `scope`. Default: none. */
  scope?: string | readonly string[];
  /** Lifetime from `issuedAt` (`'0s'` is already expired). Default: the server's `accessTokenTtl`. */
  expiresIn?: Duration;
  /** `aud`, any value (tests of refusal). Default: the server's first audience. */
  audience?: string | readonly string[];
  /** `client_id`. Default: {@link TestAuthorizationServer.client}'s. */
  clientId?: string;
  /** When it was issued (epoch milliseconds; `iat`). Default: now. */
  issuedAt?: number;
  /** More claims, or replacements (`iss`, `tenant`, `cnf`…). */
  claims?: Readonly<Record<string, unknown>>;
}

/**
 * Whom {@link TestAuthorizationServer.issueRefreshToken} and {@link TestAuthorizationServer.issueTokens}
 * issue for: the grant a login would have produced.
 *
 * @example
 * ```ts
 * const rt = await as.issueRefreshToken({ sub: 'alice', scope: 'openid read' });
 * ```
 */
export interface IssueOptions {
  /** The user. Default `'user'`. */
  sub?: string;
  /** The granted scope; refreshes may narrow it. Default: none. */
  scope?: string | readonly string[];
  /** The resource(s) of the grant (among the server's `audience`). Default: the first audience. */
  resource?: string | readonly string[];
  /** The client the grant belongs to. Default: {@link TestAuthorizationServer.client}'s id. */
  clientId?: string;
}

/**
 * A running test authorization server. See {@link createTestAuthorizationServer}.
 *
 * @example
 * ```ts
 * const as = await createTestAuthorizationServer({ audience: 'https://api.test' });
 * const manager = new TokenManager({ source: clientCredentials({ issuer: as.issuer, ...as.client, allowInsecureRequests: true }) });
 * await manager.getToken();
 * await as.close();
 * ```
 */
export interface TestAuthorizationServer {
  /** `http://127.0.0.1:PORT` (plus the `path` option). Pass `allowInsecureRequests: true` to tokenwarden. */
  readonly issuer: string;
  /** A confidential client allowed `client_credentials` and `refresh_token`. */
  readonly client: TestClient;
  /** The audience of tokens that name no resource (the first `audience` option). */
  readonly audience: string;
  /** The authorization server metadata (RFC 8414), as served; frozen, its lists too. */
  readonly metadata: Readonly<Record<string, unknown>>;
  /**
   * Registers another confidential client (a resource server that introspects, a second app). With `jwks`
   * (public JWKs), it may also authenticate with `private_key_jwt`.
   */
  addClient(options?: { clientId?: string; clientSecret?: string; jwks?: readonly JWK[] }): TestClient;
  /** A JWT access token (RFC 9068) signed with the current key, verifiable with the JWKS. No request is made. */
  mintAccessToken(options?: MintAccessTokenOptions): Promise<string>;
  /** A refresh token of a new grant, as a login would have issued it: single use, rotated on every use. */
  issueRefreshToken(options?: IssueOptions): Promise<string>;
  /**
   * A login's token endpoint response (`access_token`, `token_type`, `expires_in`, `scope`, `refresh_token`,
   * and `id_token` with `openid`) for a new grant — what `UserTokens.save()` takes.
   */
  issueTokens(options?: IssueOptions): Promise<TokenResponse>;
  /**
   * What the endpoints do from now on (see {@link Fault}); resolves once it holds. `'down'` holds as soon as
   * it is called; coming back from it waits for the port to listen again.
   */
  fault(fault: Fault, options?: FaultOptions): Promise<void>;
  /** A copy of the request counters. */
  stats(): TestServerStats;
  /** Sets every counter back to zero. */
  resetStats(): void;
  /**
   * Rotates the signing key: the already published next key signs from now on, a new next key is published,
   * and the previous key stays published for a grace (tokens it signed still verify) unless `keepPrevious:
   * false`, which removes it at once. One previous key is kept: a second rotation drops the first.
   */
  rotateKeys(options?: { keepPrevious?: boolean }): Promise<void>;
  /** Ends the grace of the previous key: tokens it signed no longer verify once a verifier refetches the JWKS. */
  dropPreviousKey(): void;
  /** The published key set (public keys): current, next, and previous during its grace. */
  jwks(): { keys: JWK[] };
  /** Stops the server and cuts open connections. Idempotent. */
  close(): Promise<void>;
}

const FORM = 'application/x-www-form-urlencoded';
const MAX_BODY = 64 * 1024;
const DEFAULT_FAULT_ENDPOINTS: readonly TestEndpoint[] = ['token', 'jwks'];
const ALL_ENDPOINTS: readonly TestEndpoint[] = [
  'token',
  'jwks',
  'discovery',
  'introspection',
  'revocation',
  'userinfo',
];
const FAULTS: readonly Fault[] = ['ok', 'down', 'reset', '500', '503', 'slow', 'garbage'];
const ALGORITHMS: readonly SigningAlgorithm[] = ['RS256', 'RS384', 'RS512', 'PS256', 'ES256', 'ES384', 'EdDSA'];
const AUTH_METHODS = ['client_secret_basic', 'client_secret_post', 'client_secret_jwt', 'private_key_jwt'];

function config(message: string): TokenwardenError {
  return new TokenwardenError('ERR_CONFIG', message);
}

function seconds(value: Duration, name: string, min: number): number {
  const s = Math.round(toMs(value, name) / 1000);
  if (s < min) throw config(`${name} must be at least ${min} second${min === 1 ? '' : 's'}`);
  return s;
}

function scopeList(scope: string | readonly string[] | undefined, name: string): string[] {
  if (scope === undefined) return [];
  const list = typeof scope === 'string' ? scope.split(' ').filter((s) => s !== '') : [...scope];
  if (list.some((s) => typeof s !== 'string' || !/^[\x21\x23-\x5b\x5d-\x7e]+$/.test(s))) {
    throw config(`${name} must be scope names (no spaces, quotes or backslashes)`);
  }
  return [...new Set(list)];
}

function emptyStats(): TestServerStats {
  return { token: 0, jwks: 0, discovery: 0, introspection: 0, revocation: 0, userinfo: 0, grants: {}, errors: {} };
}

function listen(server: Server, port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/**
 * Starts a test authorization server on `127.0.0.1` and a free port. It is a real server over HTTP —
 * tokenwarden, oauth4webapi, openid-client or any other client talks to it as to a production one — with
 * short-lived state in memory, nothing written to disk, and every timer `unref()`'d. Stop it with `close()`.
 *
 * Endpoints (under `issuer`): `/.well-known/openid-configuration`, `/.well-known/oauth-authorization-server`
 * (RFC 8414, path inserted for an issuer with a path), `/jwks`, `/token` (`client_credentials`,
 * `refresh_token`; client authentication `client_secret_basic`, `client_secret_post`, `client_secret_jwt`,
 * and `private_key_jwt` for clients added with `jwks`; a request with a DPoP proof gets a token bound to its
 * key, RFC 9449), `/introspect`, `/revoke`, `/userinfo`. Not offered: an authorization endpoint (use
 * `issueTokens()`), DPoP server nonces, token exchange.
 *
 * Keys: the JWKS always holds the current key and the next one, published ahead of use, so a verifier that
 * fetched it before `rotateKeys()` already knows the key of tokens signed after; the previous key stays
 * published after a rotation until `dropPreviousKey()` or the next rotation.
 *
 * @example
 * ```ts
 * import { createTestAuthorizationServer } from 'tokenwarden/testing';
 * import { TokenManager, clientCredentials } from 'tokenwarden';
 * import { createVerifier } from 'tokenwarden/server';
 *
 * const as = await createTestAuthorizationServer({ accessTokenTtl: '60s', audience: 'https://api.test' });
 * const manager = new TokenManager({ source: clientCredentials({ issuer: as.issuer, ...as.client, allowInsecureRequests: true }) });
 * const verify = createVerifier({ issuer: as.issuer, audience: 'https://api.test', allowInsecureRequests: true });
 * (await verify(await manager.getAccessToken())).ok;                             // true
 * (await verify(await as.mintAccessToken({ sub: 'alice', scope: 'read' }))).ok; // true
 * await as.fault('down');   // refreshes now fail with ERR_NETWORK; getToken() serves the valid token
 * as.stats().token;         // requests the token endpoint received
 * await as.close();
 * ```
 */
export async function createTestAuthorizationServer(
  options: TestAuthorizationServerOptions = {},
): Promise<TestAuthorizationServer> {
  if (options === null || typeof options !== 'object') throw config('options must be an object');
  const clock = options.clock ?? systemClock;
  const accessTokenTtlS = seconds(options.accessTokenTtl ?? '5m', 'accessTokenTtl', 1);
  const refreshTokenTtlS = seconds(options.refreshTokenTtl ?? '1d', 'refreshTokenTtl', 1);
  const idTokenTtlS = seconds(options.idTokenTtl ?? '5m', 'idTokenTtl', 1);
  const audienceList: unknown =
    typeof options.audience === 'string' ? [options.audience] : (options.audience ?? ['https://api.test']);
  const audiences: string[] = Array.isArray(audienceList) ? [...new Set(audienceList as string[])] : [];
  if (audiences.length === 0 || audiences.some((a) => typeof a !== 'string' || !URL.canParse(a) || a.includes('#'))) {
    throw config('audience must be one or more absolute URIs without a fragment');
  }
  const format = options.accessTokenFormat ?? 'jwt';
  if (format !== 'jwt' && format !== 'opaque') throw config("accessTokenFormat must be 'jwt' or 'opaque'");
  const algorithm = options.algorithm ?? 'RS256';
  if (!ALGORITHMS.includes(algorithm)) throw config(`algorithm must be one of ${ALGORITHMS.join(', ')}`);
  const scopes = options.scopes === undefined ? undefined : new Set(scopeList(options.scopes, 'scopes'));
  const path = options.path ?? '';
  if (path !== '' && !/^(\/[A-Za-z0-9\-._~!$&'()*+,;=:@%]+)+$/.test(path)) {
    throw config("path must look like '/tenant' (no trailing slash, query or fragment)");
  }
  const wantedPort = options.port ?? 0;
  if (!Number.isInteger(wantedPort) || wantedPort < 0 || wantedPort > 65_535)
    throw config('port must be an integer from 0 to 65535');
  const userClaims = options.userClaims ?? (() => ({}));
  if (typeof userClaims !== 'function') throw config('userClaims must be a function');

  const keys = await KeyRing.create(algorithm);
  const server = createServer();
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await listen(server, wantedPort);
  const port = (server.address() as AddressInfo).port;
  const origin = `http://127.0.0.1:${port}`;
  const issuer = `${origin}${path}`;
  const url = (p: string) => `${issuer}${p}`;
  const endpoints = {
    token: url('/token'),
    jwks: url('/jwks'),
    introspection: url('/introspect'),
    revocation: url('/revoke'),
    userinfo: url('/userinfo'),
  };
  const routes = new Map<string, TestEndpoint>([
    [`${path}/.well-known/openid-configuration`, 'discovery'],
    [`/.well-known/oauth-authorization-server${path}`, 'discovery'],
    [`${path}/jwks`, 'jwks'],
    [`${path}/token`, 'token'],
    [`${path}/introspect`, 'introspection'],
    [`${path}/revoke`, 'revocation'],
    [`${path}/userinfo`, 'userinfo'],
  ]);
  // Frozen to the leaves, every list its own copy: a test that changes the document it read must change
  // neither what this server enforces (`protected_resources` is its audience list) nor the library's own
  // lists (`dpop_signing_alg_values_supported` would be the verifier's algorithm list), nor another server.
  const metadata = freezeDocument({
    issuer,
    token_endpoint: endpoints.token,
    jwks_uri: endpoints.jwks,
    introspection_endpoint: endpoints.introspection,
    revocation_endpoint: endpoints.revocation,
    userinfo_endpoint: endpoints.userinfo,
    grant_types_supported: ['client_credentials', 'refresh_token'],
    response_types_supported: [],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: [algorithm],
    token_endpoint_auth_methods_supported: [...AUTH_METHODS],
    token_endpoint_auth_signing_alg_values_supported: [...ASSERTION_ALGORITHMS],
    introspection_endpoint_auth_methods_supported: [...AUTH_METHODS],
    introspection_endpoint_auth_signing_alg_values_supported: [...ASSERTION_ALGORITHMS],
    revocation_endpoint_auth_methods_supported: [...AUTH_METHODS],
    revocation_endpoint_auth_signing_alg_values_supported: [...ASSERTION_ALGORITHMS],
    ...(scopes !== undefined && { scopes_supported: [...scopes] }),
    dpop_signing_alg_values_supported: [...DPOP_ALGORITHMS],
    claims_parameter_supported: false,
    protected_resources: [...audiences], // RFC 9728 §4
  });

  const clients = new Map<string, RegisteredClient>();
  const addClient = (given: { clientId?: string; clientSecret?: string; jwks?: readonly JWK[] } = {}): TestClient => {
    const clientId = given.clientId ?? `client-${randomBytes(4).toString('hex')}`;
    const clientSecret = given.clientSecret ?? randomBytes(24).toString('base64url');
    if (typeof clientId !== 'string' || clientId === '' || typeof clientSecret !== 'string' || clientSecret === '') {
      throw config('clientId and clientSecret must be non-empty strings');
    }
    if (clients.has(clientId)) throw config('a client with this clientId is already registered');
    let keys: RegisteredClient['keys'];
    if (given.jwks !== undefined) {
      if (!Array.isArray(given.jwks) || given.jwks.length === 0 || given.jwks.some((k) => k?.kty === 'oct')) {
        throw config('jwks must be a non-empty list of public JWKs');
      }
      keys = clientKeys(given.jwks);
    }
    clients.set(clientId, {
      clientId,
      clientSecret,
      keys,
      grantTypes: new Set(['client_credentials', 'refresh_token']),
    });
    return Object.freeze({ clientId, clientSecret });
  };
  const client = addClient({ clientId: options.client?.clientId ?? 'test-client', ...options.client });
  const authenticator = new ClientAuthenticator({
    clients,
    issuer,
    tokenEndpoint: endpoints.token,
    now: () => clock.now(),
  });
  const proofs = new DPoPProofs(() => clock.now());
  const grants = new Grants({
    issuer,
    keys,
    clock,
    accessTokenTtlS,
    refreshTokenTtlS,
    idTokenTtlS,
    audiences,
    accessTokenFormat: format,
    rotateRefreshTokens: options.rotateRefreshTokens !== false,
    scopes,
    userClaims,
  });

  let stats = emptyStats();
  let fault: { kind: Fault; endpoints: ReadonlySet<TestEndpoint>; delayMs: number; remaining: number } = {
    kind: 'ok',
    endpoints: new Set(),
    delayMs: 0,
    remaining: Infinity,
  };
  let listening = true;
  let closed = false;
  const waiting = new Set<() => void>();
  const release = (): void => {
    for (const done of waiting) done();
    waiting.clear();
  };
  const disconnect = (): Promise<void> => {
    listening = false;
    const stopped = new Promise<void>((resolve) => server.close(() => resolve()));
    for (const socket of sockets) socket.destroy();
    return stopped;
  };

  /** The fault for a request to `endpoint`, counting it down. */
  const faultFor = (endpoint: TestEndpoint): Fault => {
    if (fault.kind === 'ok' || !fault.endpoints.has(endpoint)) return 'ok';
    const kind = fault.kind;
    if (--fault.remaining <= 0) fault = { ...fault, kind: 'ok' };
    return kind;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const target = req.url ?? '/';
    const pathname = target.split('?')[0] as string;
    const endpoint = routes.get(pathname);
    if (endpoint === undefined) return send(res, { status: 404, body: { error: 'not_found' } });
    stats[endpoint]++;
    const applied = faultFor(endpoint);
    // A TCP RST (ECONNRESET at the client), as a crashed server or a load balancer sends, not a clean close.
    if (applied === 'reset') return void req.socket.resetAndDestroy();
    if (applied === '500' || applied === '503') {
      res.writeHead(Number(applied), {
        'content-type': 'text/html; charset=utf-8',
        ...(applied === '503' && { 'retry-after': '1' }),
      });
      return void res.end(
        `<html><body><h1>${applied === '500' ? 'Internal Server Error' : 'Service Unavailable'}</h1></body></html>`,
      );
    }
    if (applied === 'garbage') {
      res.writeHead(200, { 'content-type': 'application/json; charset=utf-8' });
      return void res.end('{"access_token": "<html>not json');
    }
    if (applied === 'slow') {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(done, fault.delayMs);
        timer.unref();
        function done(): void {
          clearTimeout(timer);
          waiting.delete(done);
          resolve();
        }
        waiting.add(done);
      });
      if (res.destroyed || closed) return;
    }
    const method = req.method ?? 'GET';
    if (endpoint === 'discovery' || endpoint === 'jwks') {
      if (method !== 'GET' && method !== 'HEAD') return methodNotAllowed(res, 'GET, HEAD');
      return send(res, { status: 200, body: endpoint === 'jwks' ? keys.jwks() : metadata });
    }
    if (endpoint === 'userinfo') {
      if (method !== 'GET' && method !== 'POST') return methodNotAllowed(res, 'GET, POST');
      const authorization = req.headers.authorization;
      const match =
        typeof authorization === 'string' ? /^(Bearer|DPoP) ([A-Za-z0-9\-._~+/]+=*)$/i.exec(authorization) : null;
      const token = match?.[2];
      if (token === undefined || match?.[1]?.toLowerCase() === 'bearer') return send(res, await grants.userinfo(token));
      // RFC 9449 §7: the DPoP scheme comes with a proof for this request and this token.
      const jkt = await proofs.check(req.headers['dpop'], method, endpoints.userinfo, token);
      return send(
        res,
        await grants.userinfo(token, jkt ?? oauthError(401, 'invalid_dpop_proof', 'DPoP proof required')),
      );
    }
    if (method !== 'POST') return methodNotAllowed(res, 'POST');
    const params = await readForm(req);
    if (!(params instanceof URLSearchParams)) return send(res, errorAnswer(params));
    if (repeatsParameter(params))
      return send(res, errorAnswer(oauthError(400, 'invalid_request', 'repeated parameter')));
    if (endpoint === 'token') {
      const grantType = params.get('grant_type') ?? 'none';
      stats.grants[grantType] = (stats.grants[grantType] ?? 0) + 1;
    }
    const authorization = req.headers.authorization;
    const authenticated = await authenticator.authenticate(
      typeof authorization === 'string' ? authorization : undefined,
      params,
      endpoints[endpoint],
    );
    let answer: Answer;
    if ('error' in authenticated) answer = errorAnswer(authenticated.error);
    else if (endpoint === 'token') {
      const jkt = await proofs.check(req.headers['dpop'], 'POST', endpoints.token);
      answer = typeof jkt === 'object' ? errorAnswer(jkt) : await grants.token(params, authenticated.client, jkt);
    } else {
      const token = params.get('token');
      if (token === null || token === '') answer = errorAnswer(oauthError(400, 'invalid_request', 'token required'));
      else if (endpoint === 'introspection') answer = await grants.introspect(token, authenticated.client);
      else answer = await grants.revoke(token, authenticated.client);
    }
    if (endpoint === 'token' && answer.status >= 400) {
      const error = String(answer.body?.['error'] ?? answer.status);
      stats.errors[error] = (stats.errors[error] ?? 0) + 1;
    }
    send(res, answer);
  };

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) send(res, errorAnswer(oauthError(500, 'server_error', 'unexpected error')));
      else res.destroy();
    });
  });

  const subjectOf = (given: IssueOptions): Subject => {
    const clientId = given.clientId ?? client.clientId;
    if (!clients.has(clientId)) throw config('clientId is not a registered client');
    const sub = given.sub ?? 'user';
    if (typeof sub !== 'string' || sub === '') throw config('sub must be a non-empty string');
    const resource = given.resource === undefined ? [audiences[0] as string] : ([] as string[]).concat(given.resource);
    const checked = grants.checkResources(resource);
    if (!Array.isArray(checked) || checked.length === 0) throw config('resource must be among the server audiences');
    return { sub, clientId, scope: scopeList(given.scope, 'scope'), resources: checked };
  };

  const as: TestAuthorizationServer = {
    issuer,
    client,
    audience: audiences[0] as string,
    metadata,
    addClient,
    async mintAccessToken(mint = {}) {
      const issuedAtS = Math.floor((mint.issuedAt ?? clock.now()) / 1000);
      const ttl = mint.expiresIn === undefined ? accessTokenTtlS : seconds(mint.expiresIn, 'expiresIn', 0);
      const audience = mint.audience ?? audiences[0];
      const scope = scopeList(mint.scope, 'scope');
      return grants.mint({
        iss: issuer,
        sub: mint.sub ?? mint.clientId ?? client.clientId,
        aud: typeof audience === 'string' ? audience : [...(audience as readonly string[])],
        exp: issuedAtS + ttl,
        iat: issuedAtS,
        jti: randomBytes(12).toString('base64url'),
        client_id: mint.clientId ?? client.clientId,
        ...(scope.length > 0 && { scope: scope.join(' ') }),
        ...mint.claims,
      });
    },
    async issueRefreshToken(given = {}) {
      return (await grants.login(subjectOf(given)))['refresh_token'] as string;
    },
    issueTokens: (given = {}) => grants.login(subjectOf(given)),
    async fault(kind, faultOptions = {}) {
      if (!FAULTS.includes(kind)) throw config(`fault must be one of ${FAULTS.join(', ')}`);
      if (closed) throw new TokenwardenError('ERR_CLOSED', 'the test authorization server is closed');
      const selected = faultOptions.endpoints ?? DEFAULT_FAULT_ENDPOINTS;
      const list = selected === 'all' ? ALL_ENDPOINTS : selected;
      if (!Array.isArray(list) || list.some((e) => !ALL_ENDPOINTS.includes(e))) {
        throw config(`endpoints must be 'all' or a list of ${ALL_ENDPOINTS.join(', ')}`);
      }
      const times = faultOptions.times ?? Infinity;
      if (!(times === Infinity || (Number.isInteger(times) && times > 0)))
        throw config('times must be a positive integer');
      // 'down' refuses connections, so no request ever reaches it to count: it would never end.
      if (kind === 'down' && faultOptions.times !== undefined) {
        throw config("times does not apply to 'down' (it receives no requests); call fault('ok') to end it");
      }
      const delayMs = toMs(faultOptions.delay ?? '5s', 'delay');
      fault = { kind, endpoints: new Set(list), delayMs, remaining: times };
      release(); // requests held by 'slow' go on
      if (kind === 'down') {
        if (listening) void disconnect();
        return;
      }
      if (!listening) {
        await listen(server, port);
        listening = true;
      }
    },
    stats: () => ({ ...stats, grants: { ...stats.grants }, errors: { ...stats.errors } }),
    resetStats() {
      stats = emptyStats();
    },
    async rotateKeys(rotate = {}) {
      await keys.rotate(rotate.keepPrevious !== false);
    },
    dropPreviousKey() {
      keys.dropPrevious();
    },
    jwks: () => keys.jwks(),
    async close() {
      if (closed) return;
      closed = true;
      release();
      if (listening) await disconnect();
    },
  };
  return Object.freeze(as);
}

/**
 * Whether a parameter other than `resource` (RFC 8707 §2 allows it several times) appears more than once
 * (RFC 6749 §3.1). One pass: a 64 KiB body of distinct names must not cost a scan per name.
 */
function repeatsParameter(params: URLSearchParams): boolean {
  const seen = new Set<string>();
  for (const name of params.keys()) {
    if (name === 'resource') continue;
    if (seen.has(name)) return true;
    seen.add(name);
  }
  return false;
}

/** `document` with itself and every list in it frozen. */
function freezeDocument<T extends Record<string, unknown>>(document: T): Readonly<T> {
  for (const value of Object.values(document)) if (Array.isArray(value)) Object.freeze(value);
  return Object.freeze(document);
}

function methodNotAllowed(res: ServerResponse, allow: string): void {
  send(res, { ...errorAnswer(oauthError(405, 'invalid_request', 'method not allowed')), headers: { allow } });
}

function send(res: ServerResponse, answer: Answer): void {
  if (res.headersSent || res.destroyed) return;
  const headers: Record<string, string> = { ...answer.headers };
  if (answer.body === undefined) {
    res.writeHead(answer.status, headers).end();
    return;
  }
  headers['content-type'] ??= 'application/json; charset=utf-8';
  res.writeHead(answer.status, headers).end(JSON.stringify(answer.body));
}

/** The form body of a POST (RFC 6749 §3.2: `application/x-www-form-urlencoded`, UTF-8), at most 64 KiB. */
async function readForm(req: IncomingMessage): Promise<URLSearchParams | OAuthError> {
  const type = (req.headers['content-type'] ?? '').split(';')[0]?.trim().toLowerCase();
  if (type !== FORM) return oauthError(400, 'invalid_request', `the body must be ${FORM}`);
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY) return oauthError(400, 'invalid_request', 'request body too large');
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  if (text.includes('\ufffd')) return oauthError(400, 'invalid_request', 'the body is not UTF-8');
  return new URLSearchParams(text);
}
