/**
 * The test kit against tokenwarden itself: the issue's acceptance, every grant through TokenManager, tokens
 * checked by createVerifier, key rotation, and time from a ManualClock.
 */
import express from 'express';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { SignJWT, calculateJwkThumbprint, decodeJwt, decodeProtectedHeader, exportJWK, generateKeyPair } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TokenManager, clientCredentials, refreshToken } from '../../src/index.js';
import { bearerAuth } from '../../src/server/adapters/express.js';
import { createVerifier } from '../../src/server/index.js';
import { ManualClock, type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

const API = 'https://api.test';
let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ accessTokenTtl: '60s', audience: API });
});
afterAll(() => as.close());

const insecure = { allowInsecureRequests: true } as const;
const newVerifier = () => createVerifier({ issuer: as.issuer, audience: API, ...insecure });

describe('acceptance (issue 14)', () => {
  it('TokenManager gets a token; as.stats().token counts the requests', async () => {
    const before = as.stats().token;
    const manager = new TokenManager({ source: clientCredentials({ issuer: as.issuer, ...as.client, ...insecure }) });
    try {
      const token = await manager.getToken();
      expect(token.tokenType).toBe('Bearer');
      expect(decodeJwt(token.accessToken)).toMatchObject({ iss: as.issuer, aud: API, client_id: as.client.clientId });
      expect(as.stats().token - before).toBe(1);
      await manager.refresh();
      expect(as.stats().token - before).toBe(2);
    } finally {
      await manager.close();
    }
  });

  it('createVerifier accepts a minted token, and after rotateKeys() one signed by the new key; the old one while its key is published', async () => {
    const verify = newVerifier();
    const old = await as.mintAccessToken({ sub: 'alice', scope: 'read' });
    const checked = await verify(old);
    expect(checked.ok && checked.auth.uid).toBe('alice');
    expect(checked.ok && checked.auth.credentials.scopes).toEqual(['read']);

    await as.rotateKeys();
    const fresh = await as.mintAccessToken({ sub: 'alice', scope: 'read' });
    expect(decodeProtectedHeader(fresh).kid).not.toBe(decodeProtectedHeader(old).kid);
    // The verifier fetched the key set a moment ago (its cooldown forbids another fetch): the new key was
    // already published as the next one.
    expect((await verify(fresh)).ok).toBe(true);
    expect((await newVerifier()(old)).ok).toBe(true); // grace: the previous key is still published

    as.dropPreviousKey();
    const refused = await newVerifier()(old);
    expect(refused.ok).toBe(false);
    expect(!refused.ok && refused.failure).toMatchObject({ status: 401, error: 'invalid_token' });
    expect((await newVerifier()(fresh)).ok).toBe(true);
  });

  it("fault('down'): a forced refresh fails with ERR_NETWORK while getToken() serves the valid token", async () => {
    const manager = new TokenManager({ source: clientCredentials({ issuer: as.issuer, ...as.client, ...insecure }) });
    try {
      const token = await manager.getToken();
      as.fault('down'); // not awaited: it holds at once
      await expect(manager.refresh()).rejects.toMatchObject({ code: 'ERR_NETWORK' });
      expect((await manager.getToken()).accessToken).toBe(token.accessToken);
      await as.fault('ok');
      expect((await manager.refresh()).accessToken).not.toBe(token.accessToken);
    } finally {
      await as.fault('ok');
      await manager.close();
    }
  });

  it('an Express API with protectedResource: metadata, a 401 naming it, and a minted token passes', async () => {
    const verifier = newVerifier();
    const app = express();
    app.use(bearerAuth({ verifier, protectedResource: { resource: API, authorizationServers: [as.issuer] } }));
    app.get('/orders', (req, res) => void res.json({ uid: req.auth?.uid }));
    const server = createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const metadata = await fetch(`${base}/.well-known/oauth-protected-resource`);
      expect(metadata.status).toBe(200);
      expect(metadata.headers.get('content-type')).toMatch(/^application\/json/);
      expect(await metadata.json()).toMatchObject({ resource: API, authorization_servers: [as.issuer] });
      const anonymous = await fetch(`${base}/orders`);
      expect(anonymous.status).toBe(401);
      expect(anonymous.headers.get('www-authenticate')).toContain(
        'resource_metadata="https://api.test/.well-known/oauth-protected-resource"',
      );
      const token = await as.mintAccessToken({ sub: 'alice', scope: 'read' });
      const ok = await fetch(`${base}/orders`, { headers: { authorization: `Bearer ${token}` } });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ uid: 'alice' });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});

describe('grants through TokenManager', () => {
  it('client credentials: scope and resource (RFC 8707) reach the token; an unknown resource is invalid_target', async () => {
    const multi = await createTestAuthorizationServer({ audience: [API, 'https://other.test'], algorithm: 'ES256' });
    try {
      const source = (extra: object) =>
        clientCredentials({ issuer: multi.issuer, ...multi.client, ...insecure, ...extra });
      const other = await source({ scope: 'read write', resource: 'https://other.test' }).fetchToken({});
      expect(decodeJwt(other.accessToken)).toMatchObject({ aud: 'https://other.test', scope: 'read write' });
      expect(other.scope).toBe('read write');
      await expect(source({ resource: 'https://evil.test' }).fetchToken({})).rejects.toMatchObject({
        code: 'ERR_OAUTH',
        error: 'invalid_target',
        status: 400,
      });
    } finally {
      await multi.close();
    }
  });

  it('refresh token: rotated on every use, the newest one always spent; the grant survives many refreshes', async () => {
    const rt = await as.issueRefreshToken({ sub: 'alice', scope: 'openid read' });
    const manager = new TokenManager({
      source: refreshToken({ issuer: as.issuer, ...as.client, refreshToken: rt, ...insecure }),
    });
    try {
      const seen = new Set<string>();
      for (let i = 0; i < 5; i++) {
        const token = await manager.refresh();
        expect(decodeJwt(token.accessToken)).toMatchObject({ sub: 'alice', aud: API, scope: 'openid read' });
        expect(token.refreshToken).toBeDefined();
        expect(seen.has(token.refreshToken as string)).toBe(false);
        seen.add(token.refreshToken as string);
      }
      expect(seen.has(rt)).toBe(false);
    } finally {
      await manager.close();
    }
  });

  it('refresh token reuse: the spent token is refused and the whole grant is revoked (RFC 9700 §4.14.2)', async () => {
    const rt = await as.issueRefreshToken({ sub: 'bob', scope: 'read' });
    const source = refreshToken({ issuer: as.issuer, ...as.client, refreshToken: rt, ...insecure });
    const first = await source.fetchToken({});
    const before = as.stats().errors['invalid_grant'] ?? 0;
    const replay = refreshToken({ issuer: as.issuer, ...as.client, refreshToken: rt, ...insecure });
    await expect(replay.fetchToken({})).rejects.toMatchObject({ code: 'ERR_OAUTH', error: 'invalid_grant' });
    // The newest refresh token died with the grant.
    const newest = refreshToken({ issuer: as.issuer, ...as.client, refreshToken: first.refreshToken!, ...insecure });
    await expect(newest.fetchToken({})).rejects.toMatchObject({ error: 'invalid_grant' });
    expect((as.stats().errors['invalid_grant'] ?? 0) - before).toBe(2);
  });

  it('a refresh token of another client is invalid_grant; the wrong secret is invalid_client 401', async () => {
    const other = as.addClient();
    const rt = await as.issueRefreshToken({ sub: 'carol', clientId: other.clientId });
    const stolen = refreshToken({ issuer: as.issuer, ...as.client, refreshToken: rt, ...insecure });
    await expect(stolen.fetchToken({})).rejects.toMatchObject({ error: 'invalid_grant' });
    const own = refreshToken({ issuer: as.issuer, ...other, refreshToken: rt, ...insecure });
    expect((await own.fetchToken({})).refreshToken).toBeDefined();
    const wrong = clientCredentials({
      issuer: as.issuer,
      clientId: as.client.clientId,
      clientSecret: 'nope',
      ...insecure,
    });
    await expect(wrong.fetchToken({})).rejects.toMatchObject({
      code: 'ERR_OAUTH',
      error: 'invalid_client',
      status: 401,
    });
  });

  it.each(['client_secret_basic', 'client_secret_post', 'client_secret_jwt'] as const)(
    'client authentication %s',
    async (clientAuth) => {
      const token = await clientCredentials({ issuer: as.issuer, ...as.client, clientAuth, ...insecure }).fetchToken(
        {},
      );
      expect(decodeJwt(token.accessToken).client_id).toBe(as.client.clientId);
    },
  );

  it('client_secret_basic with a secret of every awkward character: a server that decodes the credential (RFC 6749 §2.3.1) reads it', async () => {
    const clientSecret = `-._~!*'() +/=%:&?#[]@"\\é€😀${'x'.repeat(8)}`;
    const awkward = as.addClient({ clientId: 'svc:odd~id', clientSecret });
    const token = await clientCredentials({ issuer: as.issuer, ...awkward, ...insecure }).fetchToken({});
    expect(decodeJwt(token.accessToken).client_id).toBe('svc:odd~id');
  });

  it('private_key_jwt for a client registered with its public key; an assertion is good once', async () => {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const keyed = as.addClient({ jwks: [{ ...(await exportJWK(publicKey)), alg: 'ES256' }] });
    const source = clientCredentials({ issuer: as.issuer, clientId: keyed.clientId, privateKey, ...insecure });
    expect(decodeJwt((await source.fetchToken({})).accessToken).client_id).toBe(keyed.clientId);
    // Another key is refused; so is an assertion for a client registered without keys.
    const other = await generateKeyPair('ES256', { extractable: true });
    const wrong = clientCredentials({
      issuer: as.issuer,
      clientId: keyed.clientId,
      privateKey: other.privateKey,
      ...insecure,
    });
    await expect(wrong.fetchToken({})).rejects.toMatchObject({ error: 'invalid_client', status: 401 });
    const keyless = clientCredentials({ issuer: as.issuer, clientId: as.client.clientId, privateKey, ...insecure });
    await expect(keyless.fetchToken({})).rejects.toMatchObject({ error: 'invalid_client' });
    // A replayed assertion (same jti) is refused.
    const assertion = await new SignJWT({ jti: 'once' })
      .setProtectedHeader({ alg: 'ES256' })
      .setIssuer(keyed.clientId)
      .setSubject(keyed.clientId)
      .setAudience(as.issuer)
      .setIssuedAt()
      .setExpirationTime('1m')
      .sign(privateKey);
    const body = new URLSearchParams({
      grant_type: 'client_credentials',
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
      client_assertion: assertion,
    });
    const post = () => fetch(`${as.issuer}/token`, { method: 'POST', body });
    expect((await post()).status).toBe(200);
    expect((await post()).status).toBe(401);
  });

  it('rotateRefreshTokens: false keeps the refresh token usable', async () => {
    const fixed = await createTestAuthorizationServer({ rotateRefreshTokens: false, algorithm: 'ES256' });
    try {
      const rt = await fixed.issueRefreshToken({ sub: 'dan' });
      const source = refreshToken({ issuer: fixed.issuer, ...fixed.client, refreshToken: rt, ...insecure });
      const a = await source.fetchToken({});
      expect(a.refreshToken ?? rt).toBe(rt);
      await refreshToken({ issuer: fixed.issuer, ...fixed.client, refreshToken: rt, ...insecure }).fetchToken({});
    } finally {
      await fixed.close();
    }
  });
});

describe('mintAccessToken', () => {
  it('is an RFC 9068 access token: typ at+jwt and every required claim, so a strict verifier takes it', async () => {
    const token = await as.mintAccessToken({ sub: 'alice', scope: ['read', 'write'], expiresIn: '5m' });
    expect(decodeProtectedHeader(token)).toMatchObject({ alg: 'RS256', typ: 'at+jwt' });
    const claims = decodeJwt(token);
    expect((claims.exp as number) - (claims.iat as number)).toBe(300);
    const strict = createVerifier({ issuer: as.issuer, audience: API, strict: true, ...insecure });
    const result = await strict(token);
    expect(result.ok && result.auth.credentials.scopes).toEqual(['read', 'write']);
  });

  it('makes the tokens a test needs to be refused: expired, another audience, insufficient scope', async () => {
    const verify = newVerifier();
    const expired = await as.mintAccessToken({ sub: 'alice', issuedAt: Date.now() - 120_000, expiresIn: '60s' });
    expect(await verify(expired)).toMatchObject({ ok: false, failure: { description: 'token expired' } });
    const elsewhere = await as.mintAccessToken({ audience: 'https://other.test' });
    expect(await verify(elsewhere)).toMatchObject({ ok: false, failure: { description: 'unexpected audience' } });
    const readOnly = await as.mintAccessToken({ scope: 'read' });
    expect(await verify(readOnly, { requiredScopes: ['write'] })).toMatchObject({
      ok: false,
      failure: { status: 403, error: 'insufficient_scope' },
    });
    const tenant = await as.mintAccessToken({ claims: { tenant: 'acme' } });
    const checked = await verify(tenant);
    expect(checked.ok && checked.auth.extra.claims['tenant']).toBe('acme');
  });
});

describe('key rotation', () => {
  it('keepPrevious: false removes the old key at once; a verifier that refetches refuses its tokens', async () => {
    const verify = newVerifier();
    const old = await as.mintAccessToken({ sub: 'alice' });
    expect((await verify(old)).ok).toBe(true);
    const before = as.jwks().keys.map((k) => k.kid);
    await as.rotateKeys({ keepPrevious: false });
    const after = as.jwks().keys.map((k) => k.kid);
    expect(after).toContain(before[1]); // the next key became current
    expect(after).not.toContain(decodeProtectedHeader(old).kid);
    expect(await newVerifier()(old)).toMatchObject({ ok: false, failure: { description: 'unknown signing key' } });
    expect((await verify(await as.mintAccessToken())).ok).toBe(true);
  });

  it('the JWKS publishes public keys only: current, next, and previous during its grace', async () => {
    const jwks = (await (await fetch(`${as.issuer}/jwks`)).json()) as { keys: Record<string, unknown>[] };
    expect(jwks.keys.length).toBeGreaterThanOrEqual(2);
    for (const key of jwks.keys) {
      expect(key).toMatchObject({ kty: 'RSA', use: 'sig', alg: 'RS256' });
      for (const secret of ['d', 'p', 'q', 'dp', 'dq', 'qi']) expect(key[secret]).toBeUndefined();
    }
    await as.rotateKeys();
    expect(as.jwks().keys).toHaveLength(3);
    await as.rotateKeys();
    expect(as.jwks().keys).toHaveLength(3); // one previous key at most
  });
});

describe('time from a ManualClock', () => {
  it('issue times and lifetimes follow the injected clock, so a test moves time instead of sleeping', async () => {
    const clock = new ManualClock(Date.parse('2030-01-01T00:00:00Z'));
    const timed = await createTestAuthorizationServer({ clock, accessTokenTtl: '10m', algorithm: 'ES256' });
    try {
      const verify = createVerifier({ issuer: timed.issuer, audience: timed.audience, clock, ...insecure });
      const manager = new TokenManager({
        source: clientCredentials({ issuer: timed.issuer, ...timed.client, clock, ...insecure }),
        clock,
        refresh: { background: false, jitter: 0 },
      });
      const first = await manager.getToken();
      expect(decodeJwt(first.accessToken).iat).toBe(Date.parse('2030-01-01T00:00:00Z') / 1000);
      expect((await verify(first.accessToken)).ok).toBe(true);
      await clock.advance(11 * 60_000);
      expect(await verify(first.accessToken)).toMatchObject({ ok: false, failure: { description: 'token expired' } });
      const second = await manager.getToken(); // expired by the same clock: a new one
      expect(second.accessToken).not.toBe(first.accessToken);
      expect((await verify(second.accessToken)).ok).toBe(true);
      await manager.close();
    } finally {
      await timed.close();
    }
  });
});

describe('DPoP (RFC 9449)', () => {
  it('a proof at the token endpoint binds the token to its key; manager.fetch passes a resource server with it', async () => {
    const keyPair = await generateKeyPair('ES256', { extractable: true });
    const jkt = await calculateJwkThumbprint(await exportJWK(keyPair.publicKey));
    const manager = new TokenManager({
      source: clientCredentials({ issuer: as.issuer, ...as.client, dpop: keyPair, ...insecure }),
    });
    const app = express();
    app.get('/me', bearerAuth({ verifier: newVerifier() }), (req, res) => {
      res.json({ type: req.auth?.credentials.tokenType, jkt: req.auth?.credentials.jkt });
    });
    const server = createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const token = await manager.getToken();
      expect(token.tokenType).toBe('DPoP');
      expect(decodeJwt(token.accessToken).cnf).toEqual({ jkt });
      const res = await manager.fetch(`${base}/me`);
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ type: 'DPoP', jkt });
      // Stolen and replayed as a bearer token: refused.
      const stolen = await fetch(`${base}/me`, { headers: { authorization: `Bearer ${token.accessToken}` } });
      expect(stolen.status).toBe(401);
    } finally {
      await manager.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });

  it('a bad or replayed proof is invalid_dpop_proof', async () => {
    const keyPair = await generateKeyPair('ES256', { extractable: true });
    const jwk = await exportJWK(keyPair.publicKey);
    const other = await generateKeyPair('ES256');
    const proof = (
      claims: Record<string, unknown>,
      header: Record<string, unknown> = {},
      signer = keyPair.privateKey,
    ) =>
      new SignJWT({
        jti: crypto.randomUUID(),
        htm: 'POST',
        htu: `${as.issuer}/token`,
        iat: Math.floor(Date.now() / 1000),
        ...claims,
      })
        .setProtectedHeader({ alg: 'ES256', typ: 'dpop+jwt', jwk, ...header } as never)
        .sign(signer);
    const request = (dpop: string) =>
      fetch(`${as.issuer}/token`, {
        method: 'POST',
        headers: {
          dpop,
          authorization: `Basic ${Buffer.from(`${as.client.clientId}:${as.client.clientSecret}`).toString('base64')}`,
        },
        body: new URLSearchParams({ grant_type: 'client_credentials' }),
      });
    const good = await proof({});
    const ok = await request(good);
    expect(ok.status).toBe(200);
    expect(((await ok.json()) as { token_type: string }).token_type).toBe('DPoP');
    const bad = [
      good, // replayed
      await proof({ htu: `${as.issuer}/other` }),
      await proof({ htm: 'GET' }),
      await proof({ iat: Math.floor(Date.now() / 1000) - 600 }),
      await proof({ jti: undefined }),
      await proof({}, { typ: 'JWT' }),
      await proof({}, {}, other.privateKey), // signed by another key than its jwk
      'not.a.proof',
    ];
    for (const dpop of bad) {
      const res = await request(dpop);
      expect(res.status, dpop.slice(0, 20)).toBe(400);
      expect(((await res.json()) as { error: string }).error).toBe('invalid_dpop_proof');
    }
  });
});
