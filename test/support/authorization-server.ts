/**
 * A real authorization server for tests and the demo: oidc-provider on a random loopback port, with
 * short token lifetimes, rotating single-use refresh tokens (reuse revokes the grant), JWT access tokens
 * for `https://api.example.test`, opaque ones for `https://opaque.example.test`, introspection (signed
 * JWT answers, RFC 9701, for the `rs` client when it asks for them),
 * revocation, token exchange (RFC 8693) and JWT bearer (RFC 7523) grants, a scripted authorization-code
 * login, request counters and switchable faults (outage, reset, 503, slow).
 */
import { randomBytes } from 'node:crypto';
import { type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { type JWK, exportJWK, generateKeyPair, jwtVerify, createLocalJWKSet, calculateJwkThumbprint } from 'jose';
import type { Configuration, KoaContextWithOIDC, default as ProviderType } from 'oidc-provider';

type Provider = ProviderType;

/** oidc-provider prints development notices (runtime, in-memory adapter) through console; tests and the demo do not need them. */
async function quietly<T>(fn: () => Promise<T> | T): Promise<T> {
  const { warn, info } = console;
  const filter =
    (original: (...args: unknown[]) => void) =>
    (...args: unknown[]): void => {
      if (typeof args[0] === 'string' && args[0].includes('oidc-provider')) return;
      original(...args);
    };
  console.warn = filter(warn);
  console.info = filter(info);
  try {
    return await fn();
  } finally {
    console.warn = warn;
    console.info = info;
  }
}

export const API_RESOURCE = 'https://api.example.test';
export const OPAQUE_RESOURCE = 'https://opaque.example.test';
export const REDIRECT_URI = 'http://127.0.0.1/callback';
export const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const JWT_BEARER = 'urn:ietf:params:oauth:grant-type:jwt-bearer';

export interface AuthorizationServerOptions {
  /** Access token lifetime in seconds (client credentials and user tokens). Default 4. */
  accessTokenTtl?: number;
  /** Refresh token lifetime in seconds. Default 3600. */
  refreshTokenTtl?: number;
  /** ID token lifetime in seconds. Default = accessTokenTtl. */
  idTokenTtl?: number;
  /** Rotate refresh tokens on every use. Default true. */
  rotateRefreshTokens?: boolean;
  /** Fixed port (to restart on the same issuer). Default: random. */
  port?: number;
  /** Signing keys to reuse (JWKS key rotation tests). Default: a fresh RS256 key. */
  signingKeys?: JWK[];
  /**
   * A login or refresh that names no resource gets an opaque access token for the UserInfo endpoint
   * (log in with `resource: null`) instead of a JWT for https://api.example.test. Default false.
   */
  userinfoTokens?: boolean;
  /** Demand a server-provided nonce in every DPoP proof at the token endpoint (RFC 9449 §8). Default false. */
  dpopNonce?: boolean;
}

export type Fault = 'refuse' | 'reset' | '503' | 'html500' | 'slow' | undefined;

export interface Counters {
  /** Token endpoint requests, all grants, successful or not. */
  token: number;
  /** Token endpoint requests by grant type. */
  byGrant: Record<string, number>;
  /** Token endpoint requests that failed. */
  tokenErrors: number;
  /** Failed token requests by OAuth error. */
  errors: Record<string, number>;
  introspection: number;
  revocation: number;
  jwks: number;
  discovery: number;
  userinfo: number;
}

/** One token endpoint request, with the parameters the workload identity tests check. */
export interface TokenRequestRecord {
  grant: string;
  clientAssertion?: string;
  clientAssertionType?: string;
  subjectToken?: string;
  status: number;
}

export interface TestClient {
  clientId: string;
  clientSecret: string;
}

export interface TestAuthorizationServer {
  readonly issuer: string;
  readonly port: number;
  readonly provider: Provider;
  readonly counts: Counters;
  /** Every token endpoint request since the last `resetCounts()`. */
  readonly tokenRequests: TokenRequestRecord[];
  readonly clients: {
    /** client_secret_basic, client_credentials, scope read write. */
    svc: TestClient;
    /** client_secret_post. */
    post: TestClient;
    /** client_secret_jwt. */
    hmac: TestClient;
    /** private_key_jwt; `privateJwk` signs the assertions. */
    jwt: TestClient & { privateJwk: JWK; publicJwk: JWK };
    /** authorization_code + refresh_token (+ client_credentials), client_secret_basic. */
    app: TestClient;
    /** A resource server that may introspect. */
    rs: TestClient;
    /** Token exchange and JWT bearer grants. */
    exchanger: TestClient;
  };
  /** The signing keys (private), for key rotation tests. */
  readonly signingKeys: JWK[];
  resetCounts(): void;
  /** Makes requests fail in `fault` mode until `clearFault()` (or for `ms`, if given). */
  setFault(fault: Fault, ms?: number): Promise<void>;
  clearFault(): Promise<void>;
  /** Scripted authorization-code login; resolves to the raw token endpoint JSON. */
  login(
    accountId: string,
    options?: { scope?: string; resource?: string | null; clientId?: string },
  ): Promise<Record<string, unknown>>;
  close(): Promise<void>;
}

export async function startAuthorizationServer(
  options: AuthorizationServerOptions = {},
): Promise<TestAuthorizationServer> {
  const accessTtl = options.accessTokenTtl ?? 4;
  const signingKeys = options.signingKeys ?? [await newSigningKey()];
  const clientKeys = await generateKeyPair('ES256', { extractable: true });
  const clientPrivate = { ...(await exportJWK(clientKeys.privateKey)), alg: 'ES256' };
  const clientPublic = { ...(await exportJWK(clientKeys.publicKey)), alg: 'ES256', use: 'sig' };
  clientPrivate.kid = clientPublic.kid = await calculateJwkThumbprint(clientPublic);

  const secret = (name: string): string => `${name}-secret-${randomBytes(8).toString('hex')}`;
  const clients = {
    svc: { clientId: 'svc', clientSecret: secret('svc') },
    post: { clientId: 'svc-post', clientSecret: secret('post') },
    hmac: { clientId: 'svc-hmac', clientSecret: secret('hmac-secret-long-enough-for-hs256') },
    jwt: { clientId: 'svc-jwt', clientSecret: '', privateJwk: clientPrivate as JWK, publicJwk: clientPublic as JWK },
    app: { clientId: 'app', clientSecret: secret('app') },
    rs: { clientId: 'rs', clientSecret: secret('rs') },
    exchanger: { clientId: 'exchanger', clientSecret: secret('exchanger') },
  };

  const counts = emptyCounts();
  const tokenRequests: TokenRequestRecord[] = [];
  let fault: Fault;
  let faultTimer: NodeJS.Timeout | undefined;

  const server: Server = createServer();
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await listen(server, options.port ?? 0);
  const port = (server.address() as AddressInfo).port;
  const issuer = `http://127.0.0.1:${port}`;

  const resourceInfo = (resource: string) =>
    resource === OPAQUE_RESOURCE
      ? {
          scope: 'read write',
          audience: OPAQUE_RESOURCE,
          accessTokenTTL: accessTtl,
          accessTokenFormat: 'opaque' as const,
        }
      : {
          scope: 'read write',
          audience: resource,
          accessTokenTTL: accessTtl,
          accessTokenFormat: 'jwt' as const,
          jwt: { sign: { alg: 'RS256' as const } },
        };

  const configuration: Configuration = {
    clients: [
      {
        client_id: clients.svc.clientId,
        client_secret: clients.svc.clientSecret,
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'read write',
      },
      {
        client_id: clients.post.clientId,
        client_secret: clients.post.clientSecret,
        token_endpoint_auth_method: 'client_secret_post',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'read write',
      },
      {
        client_id: clients.hmac.clientId,
        client_secret: clients.hmac.clientSecret,
        token_endpoint_auth_method: 'client_secret_jwt',
        token_endpoint_auth_signing_alg: 'HS256',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'read write',
      },
      {
        client_id: clients.jwt.clientId,
        token_endpoint_auth_method: 'private_key_jwt',
        token_endpoint_auth_signing_alg: 'ES256',
        jwks: { keys: [clientPublic as never] },
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        scope: 'read write',
      },
      {
        client_id: clients.app.clientId,
        client_secret: clients.app.clientSecret,
        grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
        response_types: ['code'],
        redirect_uris: [REDIRECT_URI],
        scope: 'openid offline_access profile email read write',
      },
      {
        client_id: clients.rs.clientId,
        client_secret: clients.rs.clientSecret,
        // Signed introspection responses (RFC 9701) when asked for with Accept: application/token-introspection+jwt.
        introspection_signed_response_alg: 'RS256',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
      },
      {
        client_id: clients.exchanger.clientId,
        client_secret: clients.exchanger.clientSecret,
        grant_types: ['client_credentials', TOKEN_EXCHANGE, JWT_BEARER],
        response_types: [],
        redirect_uris: [],
        scope: 'read write',
      },
    ],
    jwks: { keys: signingKeys as never[] },
    cookies: { keys: [randomBytes(16).toString('hex')] },
    claims: { openid: ['sub'], email: ['email', 'email_verified'], profile: ['name'] },
    scopes: ['openid', 'offline_access', 'read', 'write', 'profile', 'email'],
    features: {
      devInteractions: { enabled: false },
      ...(options.dpopNonce === true && {
        dPoP: { enabled: true, nonceSecret: randomBytes(32), requireNonce: () => true },
      }),
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: async () => true },
      jwtIntrospection: { enabled: true },
      revocation: { enabled: true, allowedPolicy: async () => true },
      userinfo: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (_ctx, _client, oneOf) => oneOf ?? (options.userinfoTokens ? undefined : API_RESOURCE),
        useGrantedResource: async () => options.userinfoTokens !== true,
        getResourceServerInfo: async (_ctx, resource) => resourceInfo(resource),
      },
    },
    ttl: {
      AccessToken: accessTtl,
      ClientCredentials: accessTtl,
      IdToken: options.idTokenTtl ?? accessTtl,
      RefreshToken: options.refreshTokenTtl ?? 3600,
      AuthorizationCode: 60,
      Grant: 86_400,
      Session: 86_400,
      Interaction: 600,
    },
    rotateRefreshToken: options.rotateRefreshTokens ?? true,
    issueRefreshToken: async (_ctx, client, code) =>
      client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
    findAccount: async (_ctx, sub) => ({
      accountId: sub,
      claims: async () => ({ sub, email: `${sub}@example.test`, email_verified: true, name: `User ${sub}` }),
    }),
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => false },
    clientBasedCORS: () => false,
    renderError: async (ctx, out) => {
      ctx.type = 'json';
      ctx.body = out;
    },
  };

  const { default: ProviderClass } = await quietly(() => import('oidc-provider'));
  const provider = await quietly(() => new ProviderClass(issuer, configuration));
  provider.proxy = false;

  // Counters and faults run before oidc-provider's own routes.
  provider.use(async (ctx, next) => {
    const path = ctx.path;
    if (fault === 'reset') {
      ctx.req.socket.destroy();
      return;
    }
    if (fault === '503') {
      ctx.status = 503;
      ctx.set('retry-after', '1');
      ctx.body = 'down for maintenance';
      return;
    }
    if (fault === 'html500') {
      ctx.status = 500;
      ctx.type = 'html';
      ctx.body = '<html><body><h1>Internal Server Error</h1></body></html>';
      return;
    }
    if (fault === 'slow') await new Promise((r) => setTimeout(r, 5_000));
    if (path === '/token/introspection') counts.introspection++;
    else if (path === '/token/revocation') counts.revocation++;
    else if (path === '/jwks') counts.jwks++;
    else if (path.startsWith('/.well-known/')) counts.discovery++;
    else if (path === '/me') counts.userinfo++;
    if (path === '/interaction/' + path.split('/')[2] && ctx.method === 'GET') {
      await finishInteraction(provider, ctx as unknown as KoaContextWithOIDC);
      return;
    }
    await next();
    if (path === '/token') {
      counts.token++;
      const grant =
        ((ctx as unknown as KoaContextWithOIDC).oidc?.params?.['grant_type'] as string | undefined) ?? 'unknown';
      counts.byGrant[grant] = (counts.byGrant[grant] ?? 0) + 1;
      const body = ((ctx as unknown as KoaContextWithOIDC).oidc?.body ?? {}) as Record<string, unknown>;
      const text = (name: string) => (typeof body[name] === 'string' ? { [name]: body[name] as string } : {});
      const { client_assertion, client_assertion_type, subject_token } = {
        ...text('client_assertion'),
        ...text('client_assertion_type'),
        ...text('subject_token'),
      };
      tokenRequests.push({
        grant,
        ...(client_assertion !== undefined && { clientAssertion: client_assertion }),
        ...(client_assertion_type !== undefined && { clientAssertionType: client_assertion_type }),
        ...(subject_token !== undefined && { subjectToken: subject_token }),
        status: ctx.status,
      });
      if (ctx.status >= 400) {
        counts.tokenErrors++;
        const error = (ctx.body as { error?: string } | undefined)?.error ?? String(ctx.status);
        counts.errors[error] = (counts.errors[error] ?? 0) + 1;
      }
    }
  });

  registerExtensionGrants(provider, issuer, signingKeys, clientPublic as JWK, resourceInfo);

  const callback = provider.callback();
  server.on('request', (req, res) => {
    callback(req, res as ServerResponse);
  });

  const as: TestAuthorizationServer = {
    issuer,
    port,
    provider,
    counts,
    tokenRequests,
    clients,
    signingKeys,
    resetCounts() {
      Object.assign(counts, emptyCounts());
      tokenRequests.length = 0;
    },
    async setFault(next, ms) {
      clearTimeout(faultTimer);
      if (fault === 'refuse' && next !== 'refuse') await listen(server, port);
      fault = next;
      if (next === 'refuse') {
        await new Promise<void>((resolve) => {
          server.close(() => resolve());
          for (const socket of sockets) socket.destroy();
        });
      }
      if (ms !== undefined) {
        faultTimer = setTimeout(() => {
          void as.clearFault();
        }, ms);
      }
    },
    async clearFault() {
      await as.setFault(undefined);
    },
    login: (accountId, loginOptions = {}) => login(issuer, clients, accountId, loginOptions),
    async close() {
      clearTimeout(faultTimer);
      if (fault === 'refuse') return;
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      });
    },
  };
  return as;
}

export async function newSigningKey(): Promise<JWK> {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, alg: 'RS256', use: 'sig', kid: randomBytes(6).toString('hex') };
}

function emptyCounts(): Counters {
  return {
    token: 0,
    byGrant: {},
    tokenErrors: 0,
    errors: {},
    introspection: 0,
    revocation: 0,
    jwks: 0,
    discovery: 0,
    userinfo: 0,
  };
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

/** Completes any interaction at once: logs in the account named by `login_hint` and grants everything asked. */
async function finishInteraction(provider: Provider, ctx: KoaContextWithOIDC): Promise<void> {
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  const accountId = String(details.params['login_hint'] ?? 'user');
  const grant = new provider.Grant({ accountId, clientId: String(details.params['client_id']) });
  grant.addOIDCScope(String(details.params['scope'] ?? 'openid'));
  const resource = details.params['resource'];
  grant.addResourceScope(typeof resource === 'string' ? resource : API_RESOURCE, 'read write');
  const grantId = await grant.save();
  const url = await provider.interactionResult(
    ctx.req,
    ctx.res,
    { login: { accountId }, consent: { grantId } },
    { mergeWithLastSubmission: false },
  );
  ctx.status = 303;
  ctx.redirect(url);
}

async function login(
  issuer: string,
  clients: TestAuthorizationServer['clients'],
  accountId: string,
  options: { scope?: string; resource?: string | null; clientId?: string },
): Promise<Record<string, unknown>> {
  const client =
    options.clientId === undefined
      ? clients.app
      : { clientId: options.clientId, clientSecret: clients.app.clientSecret };
  const authorize = new URL('/auth', issuer);
  authorize.searchParams.set('client_id', client.clientId);
  authorize.searchParams.set('response_type', 'code');
  authorize.searchParams.set('redirect_uri', REDIRECT_URI);
  authorize.searchParams.set('scope', options.scope ?? 'openid offline_access email profile read write');
  authorize.searchParams.set('prompt', 'consent');
  authorize.searchParams.set('login_hint', accountId);
  authorize.searchParams.set('state', randomBytes(8).toString('hex'));
  authorize.searchParams.set('nonce', randomBytes(8).toString('hex'));
  if (options.resource !== null) authorize.searchParams.set('resource', options.resource ?? API_RESOURCE);

  const cookies = new Map<string, string>();
  let url = authorize.href;
  for (let hop = 0; hop < 10; hop++) {
    const res = await fetch(url, {
      redirect: 'manual',
      headers: { cookie: [...cookies].map(([k, v]) => `${k}=${v}`).join('; ') },
    });
    for (const line of res.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const [name, ...value] = (pair as string).split('=');
      cookies.set((name as string).trim(), value.join('='));
    }
    const location = res.headers.get('location');
    await res.body?.cancel();
    if (!location) throw new Error(`login stopped at ${new URL(url).pathname} with status ${res.status}`);
    const next = new URL(location, url);
    if (next.href.startsWith(REDIRECT_URI)) {
      const code = next.searchParams.get('code');
      if (!code)
        throw new Error(
          `login failed: ${next.searchParams.get('error')} ${next.searchParams.get('error_description')}`,
        );
      const tokenRes = await fetch(new URL('/token', issuer), {
        method: 'POST',
        headers: {
          'content-type': 'application/x-www-form-urlencoded',
          authorization: `Basic ${Buffer.from(`${client.clientId}:${client.clientSecret}`).toString('base64')}`,
        },
        body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI }),
      });
      const json = (await tokenRes.json()) as Record<string, unknown>;
      if (!tokenRes.ok) throw new Error(`code exchange failed: ${JSON.stringify(json)}`);
      return json;
    }
    url = next.href;
  }
  throw new Error('login: too many redirects');
}

/**
 * RFC 8693 token exchange (the subject token must be an access token this server signed) and RFC 7523
 * JWT bearer (the assertion must be signed with the `jwt` client's key). Both issue an API access token.
 */
function registerExtensionGrants(
  provider: Provider,
  issuer: string,
  signingKeys: JWK[],
  assertionKey: JWK,
  resourceInfo: (resource: string) => unknown,
): void {
  const serverKeys = createLocalJWKSet({ keys: signingKeys.map(publicJwk) });
  const clientKeys = createLocalJWKSet({ keys: [assertionKey] });
  const issue = async (
    ctx: KoaContextWithOIDC,
    scope: string | undefined,
    audience: string | undefined,
    extra: Record<string, unknown>,
  ): Promise<void> => {
    const client = ctx.oidc.client!;
    const resource = audience ?? API_RESOURCE;
    const token = new provider.ClientCredentials({ client, scope: scope ?? 'read' });
    const ResourceServer = (provider as unknown as { ResourceServer: new (id: string, info: unknown) => unknown })
      .ResourceServer;
    (token as unknown as { resourceServer: unknown }).resourceServer = new ResourceServer(
      resource,
      resourceInfo(resource),
    );
    const value = await token.save();
    ctx.body = {
      access_token: value,
      token_type: 'Bearer',
      expires_in: token.expiration,
      scope: token.scope,
      ...extra,
    };
  };
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    async (ctx) => {
      const params = ctx.oidc.params as Record<string, string | undefined>;
      try {
        await jwtVerify(params['subject_token'] ?? '', serverKeys, { issuer });
      } catch {
        ctx.status = 400;
        ctx.body = { error: 'invalid_grant', error_description: 'subject_token is not valid' };
        return;
      }
      await issue(ctx, params['scope'], params['audience'] ?? params['resource'], {
        issued_token_type: 'urn:ietf:params:oauth:token-type:access_token',
      });
    },
    [
      'subject_token',
      'subject_token_type',
      'actor_token',
      'actor_token_type',
      'requested_token_type',
      'audience',
      'resource',
      'scope',
    ],
    ['audience', 'resource'],
  );
  provider.registerGrantType(
    JWT_BEARER,
    async (ctx) => {
      const params = ctx.oidc.params as Record<string, string | undefined>;
      try {
        await jwtVerify(params['assertion'] ?? '', clientKeys, { audience: issuer });
      } catch {
        ctx.status = 400;
        ctx.body = { error: 'invalid_grant', error_description: 'assertion is not valid' };
        return;
      }
      await issue(ctx, params['scope'], undefined, {});
    },
    ['assertion', 'scope'],
  );
}

/** The public part of a JWK. */
export function publicJwk(jwk: JWK): JWK {
  const { d: _d, p: _p, q: _q, dp: _dp, dq: _dq, qi: _qi, ...pub } = jwk;
  return pub;
}
