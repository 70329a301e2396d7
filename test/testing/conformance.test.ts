/**
 * Where the test server must be as strict as real authorization servers (oidc-provider, which tokenwarden's
 * own suites run, and the RFCs it follows): an application tested against a laxer server passes its tests and
 * fails in production. ID tokens are not access tokens (RFC 9068 §4), a client assertion is checked against
 * the algorithms the metadata advertises and an audience of this server (RFC 7523 §3), an ID token only comes
 * with `openid` (OpenID Connect Core §12.2), empty parameters are omitted ones (RFC 6749 §3.1); and faults
 * stay with their server.
 */
import { createServer } from 'node:http';
import { connect } from 'node:net';
import { createHash } from 'node:crypto';
import { SignJWT, exportJWK, generateKeyPair } from 'jose';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { clientCredentials } from '../../src/index.js';
import { ASYMMETRIC_ALGORITHMS } from '../../src/server/jwt.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ algorithm: 'ES256', scopes: ['openid', 'read'] });
});
afterAll(() => as.close());
afterEach(() => as.fault('ok'));

const insecure = { allowInsecureRequests: true } as const;
const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const basic = (id: string, secret: string) =>
  `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  fetch(`${as.issuer}${path}`, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: basic(as.client.clientId, as.client.clientSecret),
      ...headers,
    },
    body,
  });

describe('an ID token is not an access token (RFC 9068 §4)', () => {
  it('introspection answers active: false for it, UserInfo 401 invalid_token; the access token of the same login passes', async () => {
    const login = await as.issueTokens({ sub: 'alice', scope: 'openid read' });
    const idToken = login['id_token'] as string;
    const accessToken = login['access_token'] as string;
    expect(await (await post('/introspect', `token=${idToken}`)).json()).toEqual({ active: false });
    expect(await (await post('/introspect', `token=${accessToken}`)).json()).toMatchObject({ active: true });

    const userinfo = (token: string) =>
      fetch(`${as.issuer}/userinfo`, { headers: { authorization: `Bearer ${token}` } });
    const refused = await userinfo(idToken);
    expect(refused.status).toBe(401);
    expect(refused.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');
    expect((await userinfo(accessToken)).status).toBe(200);
  });
});

describe('UserInfo with a DPoP-bound token (RFC 9449 §7)', () => {
  it('refuses it as a Bearer token; takes it with the DPoP scheme and a proof of its key for this request', async () => {
    const keyPair = await generateKeyPair('ES256', { extractable: true });
    const jwk = await exportJWK(keyPair.publicKey);
    const source = clientCredentials({ issuer: as.issuer, ...as.client, scope: 'openid', dpop: keyPair, ...insecure });
    const { accessToken, tokenType } = await source.fetchToken({});
    expect(tokenType).toBe('DPoP');
    const userinfo = as.metadata['userinfo_endpoint'] as string;
    const ath = createHash('sha256').update(accessToken).digest('base64url');
    const proof = (claims: Record<string, unknown> = {}, signer = keyPair.privateKey, key = jwk) =>
      new SignJWT({
        jti: crypto.randomUUID(),
        htm: 'GET',
        htu: userinfo,
        iat: Math.floor(Date.now() / 1000),
        ath,
        ...claims,
      })
        .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk: key })
        .sign(signer);
    const get = (authorization: string, dpop?: string) =>
      fetch(userinfo, { headers: { authorization, ...(dpop !== undefined && { dpop }) } });

    // A stolen DPoP-bound token replayed as a bearer token: refused, as a real server refuses it.
    const asBearer = await get(`Bearer ${accessToken}`);
    expect(asBearer.status).toBe(401);
    expect(asBearer.headers.get('www-authenticate')).toBe('Bearer error="invalid_token"');

    const ok = await get(`DPoP ${accessToken}`, await proof());
    expect(ok.status).toBe(200);
    expect(await ok.json()).toEqual({ sub: as.client.clientId });

    const other = await generateKeyPair('ES256', { extractable: true });
    const refusals: [string, string | undefined][] = [
      ['no proof', undefined],
      ['a proof for another token', await proof({ ath: 'x' })],
      ['a proof for POST', await proof({ htm: 'POST' })],
      ['a proof of another key', await proof({}, other.privateKey, await exportJWK(other.publicKey))],
    ];
    for (const [name, dpop] of refusals) {
      const res = await get(`DPoP ${accessToken}`, dpop);
      expect(res.status, name).toBe(401);
      expect(res.headers.get('www-authenticate'), name).toMatch(/^DPoP error="invalid_(dpop_proof|token)"$/);
    }
    // A bearer token is not a DPoP token either.
    const bearer = await as.mintAccessToken({ sub: 'alice', scope: 'openid' });
    expect(
      (await get(`DPoP ${bearer}`, await proof({ ath: createHash('sha256').update(bearer).digest('base64url') })))
        .status,
    ).toBe(401);
    expect((await get(`Bearer ${bearer}`)).status).toBe(200);
  });
});

describe('refresh (RFC 6749 §6, OpenID Connect Core §12.2)', () => {
  it('an ID token comes only when the refreshed scope keeps openid; the grant keeps its full scope', async () => {
    const rt = await as.issueRefreshToken({ sub: 'alice', scope: 'openid read' });
    const narrowed = (await (
      await post('/token', `grant_type=refresh_token&refresh_token=${rt}&scope=read`)
    ).json()) as Record<string, unknown>;
    expect(narrowed).toMatchObject({ scope: 'read' });
    expect(narrowed).not.toHaveProperty('id_token');
    // The new refresh token carries the grant's scope, not the narrowed one: openid comes back.
    const full = (await (
      await post('/token', `grant_type=refresh_token&refresh_token=${narrowed['refresh_token'] as string}`)
    ).json()) as Record<string, unknown>;
    expect(full).toMatchObject({ scope: 'openid read', id_token: expect.any(String) });
  });
});

describe('client assertions (RFC 7523 §3)', () => {
  const assertion = (
    key: CryptoKey,
    alg: string,
    clientId: string,
    aud: string,
    jti = Math.random().toString(36).slice(2),
  ) =>
    new SignJWT({ jti })
      .setProtectedHeader({ alg })
      .setIssuer(clientId)
      .setSubject(clientId)
      .setAudience(aud)
      .setIssuedAt()
      .setExpirationTime('1m')
      .sign(key);
  const withAssertion = (path: string, jwt: string) =>
    post(
      path,
      new URLSearchParams({
        client_assertion_type: JWT_BEARER,
        client_assertion: jwt,
        token: 'x',
        grant_type: 'client_credentials',
      }).toString(),
      {
        authorization: '',
      },
    );

  it('the metadata advertises every algorithm the token endpoint accepts, for each authentication endpoint', async () => {
    const advertised = as.metadata['token_endpoint_auth_signing_alg_values_supported'] as string[];
    expect(advertised).toEqual(expect.arrayContaining(['HS256', 'HS384', 'HS512', ...ASYMMETRIC_ALGORITHMS]));
    expect(as.metadata['introspection_endpoint_auth_signing_alg_values_supported']).toEqual(advertised);
    expect(as.metadata['revocation_endpoint_auth_signing_alg_values_supported']).toEqual(advertised);
    // An algorithm the server takes is one a client reading the metadata may choose.
    for (const alg of ['RS384', 'PS512', 'ES512'] as const) {
      const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
      const keyed = as.addClient({ jwks: [await exportJWK(publicKey)] });
      const response = await withAssertion('/token', await assertion(privateKey, alg, keyed.clientId, as.issuer));
      expect(response.status, alg).toBe(200);
      expect(advertised, alg).toContain(alg);
    }
  });

  it('aud names the issuer, the token endpoint or the endpoint called; an assertion meant for another endpoint is refused', async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const keyed = as.addClient({ jwks: [await exportJWK(publicKey)] });
    const sign = (aud: string) => assertion(privateKey, 'ES256', keyed.clientId, aud);
    const token = `${as.issuer}/token`;
    const revocation = `${as.issuer}/revoke`;
    const introspection = `${as.issuer}/introspect`;

    // tokenwarden's own client, configured with the wrong URL: refused as oidc-provider refuses it.
    const source = (clientAssertionAudience: string) =>
      clientCredentials({
        issuer: as.issuer,
        clientId: keyed.clientId,
        privateKey,
        clientAssertionAudience,
        ...insecure,
      });
    await expect(source(introspection).fetchToken({})).rejects.toMatchObject({ error: 'invalid_client', status: 401 });
    await expect(source(`${as.issuer}/userinfo`).fetchToken({})).rejects.toMatchObject({ error: 'invalid_client' });
    await expect(source('token_endpoint').fetchToken({})).resolves.toMatchObject({ accessToken: expect.any(String) });
    await expect(source('issuer').fetchToken({})).resolves.toMatchObject({ accessToken: expect.any(String) });

    expect((await withAssertion('/token', await sign(revocation))).status).toBe(401);
    expect((await withAssertion('/revoke', await sign(revocation))).status).toBe(200);
    expect((await withAssertion('/revoke', await sign(token))).status).toBe(200);
    expect((await withAssertion('/revoke', await sign(introspection))).status).toBe(401);
    expect((await withAssertion('/introspect', await sign(introspection))).status).toBe(200);
    expect((await withAssertion('/introspect', await sign(as.issuer))).status).toBe(200);
  });
});

describe('parameters (RFC 6749 §3.1)', () => {
  it('an empty client_id next to Basic credentials is an omitted one, not a different client', async () => {
    const response = await post('/token', 'grant_type=client_credentials&client_id=');
    expect(response.status).toBe(200);
    expect((await post('/token', 'grant_type=client_credentials&client_id=someone-else')).status).toBe(400);
  });
});

describe('parameters (RFC 6749 §3.1), hostile bodies', () => {
  it('a repeated parameter is found in one pass: a 64 KiB body of distinct names costs no scan per name', async () => {
    let body = 'grant_type=client_credentials';
    for (let i = 0; body.length < 60_000; i++) body += `&${i.toString(36)}=`;
    const getAll = vi.spyOn(URLSearchParams.prototype, 'getAll');
    try {
      const response = await post('/token', body);
      expect(response.status).toBe(200); // unknown parameters are ignored (RFC 6749 §3.2)
      // Without the one-pass check: one getAll() per name, each a scan of the whole list (~10^8 steps, a
      // second of a blocked event loop in the user's test process per request).
      expect(getAll.mock.calls.length).toBeLessThan(10);
    } finally {
      getAll.mockRestore();
    }
    expect((await post('/token', 'grant_type=client_credentials&a=1&a=2')).status).toBe(400);
    expect(
      (
        await post(
          '/token',
          `grant_type=client_credentials&resource=${encodeURIComponent(as.audience)}&resource=${encodeURIComponent(as.audience)}`,
        )
      ).status,
    ).toBe(200);
  });
});

describe('metadata (RFC 8414)', () => {
  it('as.metadata is frozen to its lists: changing it changes neither what the server enforces nor the library', async () => {
    const resources = as.metadata['protected_resources'] as string[];
    expect(() => resources.push('https://elsewhere.test')).toThrow(TypeError);
    const dpopAlgorithms = as.metadata['dpop_signing_alg_values_supported'] as string[];
    expect(() => dpopAlgorithms.push('none')).toThrow(TypeError);
    expect(ASYMMETRIC_ALGORITHMS).not.toContain('none');
    const elsewhere = encodeURIComponent('https://elsewhere.test');
    expect((await post('/token', `grant_type=client_credentials&resource=${elsewhere}`)).status).toBe(400);
    expect(await (await fetch(`${as.issuer}/.well-known/oauth-authorization-server`)).json()).toEqual(as.metadata);
  });
});

describe('faults and lifecycle', () => {
  it("'reset' resets the connection (ECONNRESET, a TCP RST), as a crashed server or load balancer does, not a clean close", async () => {
    await as.fault('reset', { endpoints: 'all' });
    const port = Number(new URL(as.issuer).port);
    const raw = (request: string) =>
      new Promise<string>((resolve) => {
        const socket = connect(port, '127.0.0.1', () => socket.write(request));
        socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? 'error'));
        socket.on('end', () => resolve('closed cleanly'));
        socket.resume();
      });
    expect(await raw('GET /jwks HTTP/1.1\r\nHost: test\r\n\r\n')).toBe('ECONNRESET');
    expect(await raw('POST /token HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n')).toBe('ECONNRESET');
    await expect(fetch(`${as.issuer}/jwks`)).rejects.toMatchObject({ cause: { code: 'ECONNRESET' } });
  });

  it("'down' with times is refused: no request ever reaches a server that is down, so it would never end", async () => {
    await expect(as.fault('down', { times: 1 })).rejects.toMatchObject({ code: 'ERR_CONFIG' });
    expect((await fetch(`${as.issuer}/jwks`)).status).toBe(200); // and nothing changed
  });

  it('a fault stays with its server: another one started in the same process answers normally', async () => {
    const other = await createTestAuthorizationServer({ algorithm: 'ES256' });
    as.resetStats();
    try {
      for (const kind of ['500', 'garbage', 'down'] as const) {
        await other.fault(kind, { endpoints: 'all' });
        expect((await post('/token', 'grant_type=client_credentials')).status, kind).toBe(200);
        expect((await fetch(`${as.issuer}/jwks`)).status, kind).toBe(200);
      }
      await other.fault('ok');
      expect((await fetch(`${other.issuer}/jwks`)).status).toBe(200);
      expect(as.stats().errors).toEqual({});
    } finally {
      await other.close();
    }
  });

  it.each(['ok', 'down', 'slow'] as const)('close() with the fault %s frees the port at once', async (kind) => {
    const short = await createTestAuthorizationServer({ algorithm: 'ES256' });
    const port = Number(new URL(short.issuer).port);
    await short.fault(kind, { delay: '1h' });
    const held = kind === 'slow' ? fetch(`${short.issuer}/jwks`).catch(() => 'cut') : undefined;
    while (kind === 'slow' && short.stats().jwks < 1) await new Promise((r) => setImmediate(r));
    await short.close();
    expect(await held).toBe(kind === 'slow' ? 'cut' : undefined);
    // The same port listens again, for another server: nothing of the first holds it.
    const again = createServer();
    await new Promise<void>((resolve, reject) => {
      again.once('error', reject);
      again.listen(port, '127.0.0.1', resolve);
    });
    await new Promise((resolve) => again.close(resolve));
  });
});
