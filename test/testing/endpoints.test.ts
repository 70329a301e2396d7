/**
 * The test server's endpoints as the RFCs describe them, checked through oauth4webapi (an independent
 * client) and raw HTTP: discovery (OpenID Connect and RFC 8414, issuers with a path), the token endpoint's
 * answers and errors (RFC 6749 §5), introspection (RFC 7662), revocation (RFC 7009), UserInfo, and hostile
 * requests that must get an OAuth error, never a crash or a hang.
 */
import * as oauth from 'oauth4webapi';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { discover } from '../../src/index.js';
import { createVerifier } from '../../src/server/index.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

let as: TestAuthorizationServer;
let tenant: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ scopes: ['openid', 'read', 'write'], algorithm: 'ES256' });
  tenant = await createTestAuthorizationServer({
    path: '/realms/test',
    algorithm: 'ES256',
    accessTokenFormat: 'opaque',
  });
});
afterAll(async () => {
  await as.close();
  await tenant.close();
});

const basic = (id: string, secret: string) =>
  `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
const post = (server: TestAuthorizationServer, path: string, body: string, headers: Record<string, string> = {}) =>
  fetch(`${server.issuer}${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: basic(server.client.clientId, server.client.clientSecret),
      ...headers,
    },
    body,
  });

describe('discovery', () => {
  it.each(['oidc', 'oauth2'] as const)(
    '%s: oauth4webapi validates the document, for an issuer with and without a path',
    async (algorithm) => {
      for (const server of [as, tenant]) {
        const issuer = new URL(server.issuer);
        const response = await oauth.discoveryRequest(issuer, { algorithm, [oauth.allowInsecureRequests]: true });
        const metadata = await oauth.processDiscoveryResponse(issuer, response);
        expect(metadata).toMatchObject({
          issuer: server.issuer,
          token_endpoint: `${server.issuer}/token`,
          jwks_uri: `${server.issuer}/jwks`,
          introspection_endpoint: `${server.issuer}/introspect`,
          revocation_endpoint: `${server.issuer}/revoke`,
          grant_types_supported: ['client_credentials', 'refresh_token'],
        });
      }
      expect(as.stats().discovery).toBeGreaterThan(0);
    },
  );

  it('RFC 8414 inserts the well-known path before the issuer path; OpenID Connect appends it', async () => {
    const origin = new URL(tenant.issuer).origin;
    expect((await fetch(`${origin}/.well-known/oauth-authorization-server/realms/test`)).status).toBe(200);
    expect((await fetch(`${origin}/realms/test/.well-known/openid-configuration`)).status).toBe(200);
    expect((await fetch(`${origin}/.well-known/oauth-authorization-server`)).status).toBe(404);
    const found = await discover(tenant.issuer, {
      algorithm: 'oauth2',
      allowInsecureRequests: true,
      timeoutMs: 5000,
      maxResponseBytes: 1 << 20,
    });
    expect(found.issuer).toBe(tenant.issuer);
  });
});

describe('token endpoint (RFC 6749)', () => {
  it('answers with no-store, a Bearer token, expires_in and the granted scope (oauth4webapi)', async () => {
    const response = await post(as, '/token', 'grant_type=client_credentials&scope=read%20write');
    expect(response.headers.get('cache-control')).toBe('no-store');
    expect(response.headers.get('pragma')).toBe('no-cache');
    const server = { issuer: as.issuer, token_endpoint: `${as.issuer}/token` } as oauth.AuthorizationServer;
    const result = await oauth.processClientCredentialsResponse(server, { client_id: as.client.clientId }, response);
    expect(result).toMatchObject({ token_type: 'bearer', expires_in: 300, scope: 'read write' });
  });

  const cases: [string, string, Record<string, string>, number, string][] = [
    ['no grant_type', '', {}, 400, 'invalid_request'],
    ['an unknown grant_type', 'grant_type=password&username=a&password=b', {}, 400, 'unsupported_grant_type'],
    ['authorization_code (not offered)', 'grant_type=authorization_code&code=x', {}, 400, 'unsupported_grant_type'],
    ['a repeated parameter', 'grant_type=client_credentials&grant_type=client_credentials', {}, 400, 'invalid_request'],
    ['an unknown scope', 'grant_type=client_credentials&scope=admin', {}, 400, 'invalid_scope'],
    ['a malformed scope', 'grant_type=client_credentials&scope=read%20%20write', {}, 400, 'invalid_scope'],
    ['a scope with a quote', 'grant_type=client_credentials&scope=%22', {}, 400, 'invalid_scope'],
    ['a relative resource', 'grant_type=client_credentials&resource=/api', {}, 400, 'invalid_target'],
    [
      'a resource with a fragment',
      'grant_type=client_credentials&resource=https%3A%2F%2Fapi.test%23x',
      {},
      400,
      'invalid_target',
    ],
    ['no refresh_token', 'grant_type=refresh_token', {}, 400, 'invalid_request'],
    ['an unknown refresh_token', 'grant_type=refresh_token&refresh_token=nope', {}, 400, 'invalid_grant'],
    ['no client authentication', 'grant_type=client_credentials', { authorization: '' }, 401, 'invalid_client'],
    [
      'a wrong secret',
      'grant_type=client_credentials',
      { authorization: basic('test-client', 'x') },
      401,
      'invalid_client',
    ],
    [
      'an unknown client',
      'grant_type=client_credentials',
      { authorization: basic('nobody', 'x') },
      401,
      'invalid_client',
    ],
    ['malformed Basic', 'grant_type=client_credentials', { authorization: 'Basic !!!' }, 401, 'invalid_client'],
    [
      'Basic without a colon',
      'grant_type=client_credentials',
      { authorization: 'Basic dGVzdA==' },
      401,
      'invalid_client',
    ],
    [
      'Basic with bad percent-encoding',
      'grant_type=client_credentials',
      { authorization: `Basic ${Buffer.from('%zz:%zz').toString('base64')}` },
      401,
      'invalid_client',
    ],
    ['two authentication methods', 'grant_type=client_credentials&client_secret=x', {}, 400, 'invalid_request'],
    [
      'a client_id that differs from Basic',
      'grant_type=client_credentials&client_id=other',
      {},
      400,
      'invalid_request',
    ],
    [
      'an unknown assertion type',
      'grant_type=client_credentials&client_assertion_type=x&client_assertion=y',
      { authorization: '' },
      400,
      'invalid_request',
    ],
    [
      'a garbage assertion',
      'grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=a.b.c',
      { authorization: '' },
      401,
      'invalid_client',
    ],
    [
      'a JSON body',
      '{"grant_type":"client_credentials"}',
      { 'content-type': 'application/json' },
      400,
      'invalid_request',
    ],
  ];
  it.each(cases)('%s → %i %s', async (_name, body, headers, status, error) => {
    const response = await post(as, '/token', body, headers);
    expect(response.status).toBe(status);
    expect(response.headers.get('cache-control')).toBe('no-store');
    const json = (await response.json()) as Record<string, unknown>;
    expect(json['error']).toBe(error);
    expect(typeof json['error_description']).toBe('string');
    if (status === 401) expect(response.headers.get('www-authenticate')).toMatch(/^Basic realm=/);
  });

  it('a secret with reserved characters works form-encoded in Basic (RFC 6749 §2.3.1)', async () => {
    const odd = as.addClient({ clientId: 'odd:client id', clientSecret: 'p@ss:w+rd/ü' });
    const response = await post(as, '/token', 'grant_type=client_credentials', {
      authorization: basic(odd.clientId, odd.clientSecret),
    });
    expect(response.status).toBe(200);
  });

  it('GET, an oversized body and a huge parameter get an error answer, not a crash', async () => {
    const get = await fetch(`${as.issuer}/token`);
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    const big = await post(as, '/token', `grant_type=client_credentials&x=${'a'.repeat(70_000)}`);
    expect(big.status).toBe(400);
    const unknownPath = await fetch(`${as.issuer}/token/../admin`);
    expect(unknownPath.status).toBe(404);
    expect((await post(as, '/token', 'grant_type=client_credentials')).status).toBe(200);
  });
});

describe('introspection (RFC 7662) and revocation (RFC 7009)', () => {
  it('an opaque token is active until revoked; a verifier with the introspection strategy follows', async () => {
    const rs = tenant.addClient({ clientId: 'resource-server' });
    const verify = createVerifier({
      issuer: tenant.issuer,
      introspection: { ...rs, cacheMaxAge: 0 },
      cache: false,
      allowInsecureRequests: true,
    });
    const login = await tenant.issueTokens({ sub: 'alice', scope: 'read' });
    const accessToken = login['access_token'] as string;
    expect(accessToken.split('.')).toHaveLength(1); // opaque
    const checked = await verify(accessToken);
    expect(checked.ok && checked.auth).toMatchObject({ uid: 'alice', credentials: { scopes: ['read'] } });
    const introspected = (await (await post(tenant, '/introspect', `token=${accessToken}`)).json()) as object;
    expect(introspected).toMatchObject({
      active: true,
      sub: 'alice',
      client_id: tenant.client.clientId,
      token_type: 'Bearer',
      aud: tenant.audience,
    });
    // Revoking the refresh token ends the grant: its access tokens too.
    expect(
      (await post(tenant, '/revoke', `token=${login['refresh_token'] as string}&token_type_hint=refresh_token`)).status,
    ).toBe(200);
    expect(await (await post(tenant, '/introspect', `token=${accessToken}`)).json()).toEqual({ active: false });
    expect(await verify(accessToken)).toMatchObject({ ok: false, failure: { status: 401 } });
    expect(tenant.stats()).toMatchObject({ introspection: expect.any(Number), revocation: 1 });
  });

  it('a JWT access token: active while valid, inactive once revoked, expired or signed by an unknown key', async () => {
    const token = await as.mintAccessToken({ sub: 'bob', scope: 'read' });
    expect(await (await post(as, '/introspect', `token=${token}`)).json()).toMatchObject({ active: true, sub: 'bob' });
    expect((await post(as, '/revoke', `token=${token}`)).status).toBe(200);
    expect(await (await post(as, '/introspect', `token=${token}`)).json()).toEqual({ active: false });
    const expired = await as.mintAccessToken({ expiresIn: 0 });
    expect(await (await post(as, '/introspect', `token=${expired}`)).json()).toEqual({ active: false });
    for (const junk of ['x', 'a.b.c', '', 'eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.']) {
      const res = await post(as, '/introspect', `token=${encodeURIComponent(junk)}`);
      if (junk === '') expect(res.status).toBe(400);
      else expect(await res.json()).toEqual({ active: false });
    }
  });

  it('introspection and revocation require client authentication; another client cannot revoke', async () => {
    expect((await post(as, '/introspect', 'token=x', { authorization: '' })).status).toBe(401);
    expect((await post(as, '/revoke', 'token=x', { authorization: '' })).status).toBe(401);
    const rt = await as.issueRefreshToken({ sub: 'carol' });
    const other = as.addClient();
    expect(
      (await post(as, '/revoke', `token=${rt}`, { authorization: basic(other.clientId, other.clientSecret) })).status,
    ).toBe(200);
    // Still alive: its own client can refresh, and only its own client sees it as active.
    expect(
      await (
        await post(as, '/introspect', `token=${rt}`, { authorization: basic(other.clientId, other.clientSecret) })
      ).json(),
    ).toEqual({ active: false });
    expect(await (await post(as, '/introspect', `token=${rt}`)).json()).toMatchObject({ active: true, sub: 'carol' });
  });
});

describe('UserInfo', () => {
  it('answers the claims of a token with openid; 401 for a bad token, 403 without openid', async () => {
    const withClaims = await createTestAuthorizationServer({
      algorithm: 'ES256',
      userClaims: (sub) => ({ email: `${sub}@example.test`, sub: 'spoofed' }),
    });
    try {
      const get = (token: string) =>
        fetch(`${withClaims.issuer}/userinfo`, { headers: { authorization: `Bearer ${token}` } });
      const login = await withClaims.issueTokens({ sub: 'alice', scope: 'openid' });
      expect(await (await get(login['access_token'] as string)).json()).toEqual({
        sub: 'alice',
        email: 'alice@example.test',
      });
      const bad = await get('garbage');
      expect(bad.status).toBe(401);
      expect(bad.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');
      expect((await get(await withClaims.mintAccessToken({ scope: 'read' }))).status).toBe(403);
      expect(withClaims.stats().userinfo).toBe(3);
    } finally {
      await withClaims.close();
    }
  });
});

describe('configuration', () => {
  it.each([
    ['a negative lifetime', { accessTokenTtl: -1 }],
    ['a sub-second access token', { accessTokenTtl: '100ms' }],
    ['an audience with a fragment', { audience: 'https://api.test#x' }],
    ['no audience', { audience: [] }],
    ['an unknown format', { accessTokenFormat: 'paseto' }],
    ['an unknown algorithm', { algorithm: 'HS256' }],
    ['a path with a trailing slash', { path: '/tenant/' }],
    ['a scope with a space', { scopes: ['read write'] }],
    ['an audience that is neither a string nor a list', { audience: 5 }],
    ['a port out of range', { port: 70_000 }],
    ['a port that is not a number', { port: 'http' }],
  ])('refuses %s with ERR_CONFIG', async (_name, options) => {
    await expect(createTestAuthorizationServer(options as never)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
  });

  it('fault(), addClient() and issue options are checked', async () => {
    await expect(as.fault('boom' as never)).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    await expect(as.fault('500', { endpoints: ['nowhere' as never] })).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    await expect(as.fault('500', { times: 0 })).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    expect(() => as.addClient({ clientId: as.client.clientId })).toThrow(
      expect.objectContaining({ code: 'ERR_CONFIG' }),
    );
    await expect(as.issueRefreshToken({ resource: 'https://elsewhere.test' })).rejects.toMatchObject({
      code: 'ERR_CONFIG',
    });
    await expect(as.issueRefreshToken({ clientId: 'nobody' })).rejects.toMatchObject({ code: 'ERR_CONFIG' });
  });
});
