/**
 * The issue's acceptance scenario, through the package's own subpath exports (as users import it: run
 * `npm run build` first, which `npm test` does). The speed criterion (repeated-token verify() ≥ 20× raw
 * jose) is measured by `npm run bench`, not asserted here.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { SignJWT, exportSPKI, generateKeyPair, importJWK } from 'jose';
import { createHmac, randomBytes } from 'node:crypto';
import { createVerifier } from 'tokenwarden/server';
import { bearerAuth } from 'tokenwarden/express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  API_RESOURCE,
  OPAQUE_RESOURCE,
  type TestAuthorizationServer,
  publicJwk,
  startAuthorizationServer,
} from '../support/authorization-server.js';
import { issueToken, segment } from './support.js';

let as: TestAuthorizationServer;
let issuer: string;
let jwt: string;
const audience = API_RESOURCE;

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  issuer = as.issuer;
  jwt = (await issueToken(as, { scope: 'read' })).accessToken;
});
afterAll(() => as.close());

const refused = { ok: false, failure: expect.objectContaining({ error: 'invalid_token', status: 401 }) };

describe('acceptance', () => {
  it('a valid token → ok with uid (sub) and scopes', async () => {
    const verify = createVerifier({ issuer, audience: 'https://api.example.test', allowInsecureRequests: true });
    const r = await verify(`Bearer ${jwt}`);
    expect(r.ok).toBe(true);
    if (!r.ok) return;
    expect(r.auth.uid).toBe('svc');
    expect(r.auth.credentials.scopes).toEqual(['read']);
  });

  it('tampered, alg: none, HS256-with-public-key, garbage and 100 KB tokens → invalid_token 401, no throw', async () => {
    const verify = createVerifier({ issuer, audience: 'https://api.example.test', allowInsecureRequests: true });
    const [h, p, s] = jwt.split('.') as [string, string, string];
    const claims = JSON.parse(Buffer.from(p, 'base64url').toString());
    const pub = publicJwk(as.signingKeys[0]!);
    const pem = await exportSPKI((await importJWK(pub, 'RS256', { extractable: true })) as CryptoKey);
    const hsInput = `${segment({ alg: 'HS256', typ: 'at+jwt', kid: pub.kid })}.${p}`;
    const hostile = [
      `${h}.${segment({ ...claims, scope: 'read write' })}.${s}`,
      `${segment({ alg: 'none', typ: 'at+jwt' })}.${p}.`,
      `${hsInput}.${createHmac('sha256', pem).update(hsInput).digest('base64url')}`,
      'garbage',
      `Bearer ${'A'.repeat(100 * 1024)}`,
    ];
    for (const token of hostile) expect(await verify(token)).toEqual(refused);
  });

  it('another audience is refused', async () => {
    const verify = createVerifier({ issuer, audience: 'https://elsewhere.example.test', allowInsecureRequests: true });
    expect(await verify(`Bearer ${jwt}`)).toEqual(refused);
  });

  it('100 unknown kids → at most 2 JWKS fetches', async () => {
    const verify = createVerifier({ issuer, audience, allowInsecureRequests: true });
    const { privateKey } = await generateKeyPair('RS256');
    as.resetCounts();
    for (let i = 0; i < 100; i++) {
      const token = await new SignJWT({ sub: 'x', aud: audience, iss: issuer, exp: Math.floor(Date.now() / 1000) + 60 })
        .setProtectedHeader({ alg: 'RS256', kid: randomBytes(8).toString('hex') })
        .sign(privateKey);
      expect(await verify(token)).toEqual(refused);
    }
    expect(as.counts.jwks).toBeLessThanOrEqual(2);
  });

  it('50 concurrent checks of one opaque token → 1 introspection call', async () => {
    const { clientId, clientSecret } = as.clients.rs;
    const iv = createVerifier({ issuer, introspection: { clientId, clientSecret }, allowInsecureRequests: true });
    const opaque = (await issueToken(as, { resource: OPAQUE_RESOURCE })).accessToken;
    as.resetCounts();
    const results = await Promise.all(Array.from({ length: 50 }, () => iv(`Bearer ${opaque}`)));
    for (const r of results) expect(r.ok).toBe(true);
    expect(as.counts.introspection).toBe(1);
  });

  it('Express: 200 / 401 WWW-Authenticate: Bearer / 401 invalid_token / 403 insufficient_scope', async () => {
    const app = express();
    const handler = (req: express.Request, res: express.Response) => void res.json({ uid: req.auth?.uid });
    app.get('/read', bearerAuth({ issuer, audience, allowInsecureRequests: true }), handler);
    app.get(
      '/write',
      bearerAuth({ issuer, audience, allowInsecureRequests: true, requiredScopes: ['write'] }),
      handler,
    );
    const server = createServer(app);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      const ok = await fetch(`${base}/read`, { headers: { authorization: `Bearer ${jwt}` } });
      expect(ok.status).toBe(200);
      expect(await ok.json()).toEqual({ uid: 'svc' });

      const none = await fetch(`${base}/read`);
      expect(none.status).toBe(401);
      expect(none.headers.get('www-authenticate')).toMatch(/^Bearer /);

      const bad = await fetch(`${base}/read`, { headers: { authorization: 'Bearer garbage' } });
      expect(bad.status).toBe(401);
      expect(bad.headers.get('www-authenticate')).toContain('error="invalid_token"');

      const scope = await fetch(`${base}/write`, { headers: { authorization: `Bearer ${jwt}` } });
      expect(scope.status).toBe(403);
      expect(scope.headers.get('www-authenticate')).toContain('error="insufficient_scope"');
      expect(scope.headers.get('www-authenticate')).toContain('scope="write"');
    } finally {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    }
  });

  it('a 2 s token verified while valid is refused after it expires', async () => {
    const short = await startAuthorizationServer({ accessTokenTtl: 2 });
    try {
      const verify = createVerifier({ issuer: short.issuer, audience, allowInsecureRequests: true });
      const token = (await issueToken(short)).accessToken;
      expect((await verify(`Bearer ${token}`)).ok).toBe(true);
      const exp = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()).exp as number;
      await new Promise((r) => setTimeout(r, Math.max(0, exp * 1000 - Date.now()) + 50));
      expect(await verify(`Bearer ${token}`)).toEqual({
        ok: false,
        failure: { error: 'invalid_token', description: 'token expired', status: 401 },
      });
    } finally {
      await short.close();
    }
  });
});
