import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryStore, TokenManager, authFetch, clientCredentials } from '../src/index.js';
import {
  API_RESOURCE,
  type TestAuthorizationServer,
  startAuthorizationServer,
} from './support/authorization-server.js';

/** A real protected API: verifies tokens against the AS's JWKS; tokens whose jti is revoked get 401 invalid_token. */
let as: TestAuthorizationServer;
let api: Server;
let apiUrl: string;
const revoked = new Set<string>();
let answerEvery401 = false;
/** Rejects every token with 401 invalid_token (a broken or hostile API). */
let rejectEverything = false;
const seen: { authorization: string | undefined; body: string }[] = [];

beforeAll(async () => {
  as = await startAuthorizationServer({ accessTokenTtl: 60 });
  const jwks = createRemoteJWKSet(new URL(`${as.issuer}/jwks`));
  api = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', async () => {
      seen.push({ authorization: req.headers.authorization, body });
      const token = req.headers.authorization?.replace(/^Bearer /, '') ?? '';
      try {
        if (rejectEverything) throw new Error('rejected');
        const { payload } = await jwtVerify(token, jwks, { issuer: as.issuer, audience: API_RESOURCE });
        if (answerEvery401) {
          res.writeHead(401, { 'www-authenticate': 'Bearer realm="api"' }).end();
          return;
        }
        if (revoked.has(payload.jti as string)) throw new Error('revoked');
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: true, body }));
      } catch {
        res
          .writeHead(401, { 'www-authenticate': 'Bearer error="invalid_token", error_description="token revoked"' })
          .end();
      }
    });
  });
  await new Promise<void>((r) => api.listen(0, '127.0.0.1', r));
  apiUrl = `http://127.0.0.1:${(api.address() as AddressInfo).port}`;
});
afterAll(async () => {
  api.close();
  await as.close();
});

function manager(options: { store?: MemoryStore } = {}) {
  return new TokenManager({
    ...options,
    source: clientCredentials({
      issuer: as.issuer,
      clientId: as.clients.svc.clientId,
      clientSecret: as.clients.svc.clientSecret,
      scope: 'read',
      allowInsecureRequests: true,
    }),
  });
}

describe('authenticated fetch', () => {
  it('attaches the token as Authorization: Bearer', async () => {
    const m = manager();
    const res = await m.fetch(`${apiUrl}/things`);
    expect(res.status).toBe(200);
    expect(seen.at(-1)?.authorization).toBe(`Bearer ${(await m.getToken()).accessToken}`);
    await m.close();
  });

  it('on 401 invalid_token: invalidates, gets a new token, retries once with the same body', async () => {
    const m = manager();
    const first = await m.getToken();
    revoked.add(decodeJwt(first.accessToken).jti as string);
    seen.length = 0;
    const res = await m.fetch(`${apiUrl}/orders`, { method: 'POST', body: JSON.stringify({ n: 1 }) });
    expect(res.status).toBe(200);
    expect(seen).toHaveLength(2);
    expect(seen[1]?.body).toBe('{"n":1}');
    expect((await m.getToken()).accessToken).not.toBe(first.accessToken);
    await m.close();
  });

  it('retries a Request object with its body (cloned before the first send)', async () => {
    const m = manager();
    revoked.add(decodeJwt((await m.getToken()).accessToken).jti as string);
    seen.length = 0;
    const res = await m.fetch(new Request(`${apiUrl}/orders`, { method: 'POST', body: 'payload' }));
    expect(res.status).toBe(200);
    expect(seen.map((s) => s.body)).toEqual(['payload', 'payload']);
    await m.close();
  });

  it('never loops: a second 401 is returned to the caller', async () => {
    const m = manager();
    answerEvery401 = true;
    const api401 = authFetch(m, { retryOn401: 'always' });
    seen.length = 0;
    const res = await api401(`${apiUrl}/things`);
    answerEvery401 = false;
    expect(res.status).toBe(401);
    expect(seen).toHaveLength(2);
    await m.close();
  });

  it('by default does not retry a 401 that does not say invalid_token', async () => {
    const m = manager();
    answerEvery401 = true;
    seen.length = 0;
    const res = await m.fetch(`${apiUrl}/things`);
    answerEvery401 = false;
    expect(res.status).toBe(401);
    expect(seen).toHaveLength(1);
    await m.close();
  });

  it('does not retry a streamed body it cannot send again, but the next request has a new token', async () => {
    const m = manager();
    revoked.add(decodeJwt((await m.getToken()).accessToken).jti as string);
    seen.length = 0;
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('streamed'));
        controller.close();
      },
    });
    const res = await m.fetch(`${apiUrl}/upload`, { method: 'POST', body, duplex: 'half' } as RequestInit);
    expect(res.status).toBe(401);
    expect(seen).toHaveLength(1);
    // The rejected token was dropped all the same: the next request carries a new one.
    const next = await m.fetch(`${apiUrl}/after`);
    expect(next.status).toBe(200);
    expect(seen[1]?.authorization).not.toBe(seen[0]?.authorization);
    await m.close();
  });

  it('an API that rejects every token costs two forced refreshes per interval, fleet-wide — not a token request per call', async () => {
    const store = new MemoryStore();
    const [a, b] = [manager({ store }), manager({ store })];
    rejectEverything = true;
    try {
      await a.getToken();
      await b.getToken(); // taken from the store: one token so far
      const before = as.counts.byGrant['client_credentials'] ?? 0;
      const answers = [];
      for (let i = 0; i < 25; i++)
        answers.push((await a.fetch(`${apiUrl}/x`)).status, (await b.fetch(`${apiUrl}/x`)).status);
      expect(answers.every((status) => status === 401)).toBe(true);
      // Two rejections force a new token each (for both processes); the other 48 are answered as they are.
      expect((as.counts.byGrant['client_credentials'] ?? 0) - before).toBe(2);
    } finally {
      rejectEverything = false;
      await a.close();
      await b.close();
    }
  });
});
