/**
 * Testing an Express API that checks access tokens — with vitest (jest: the same code, `@jest/globals`
 * instead of `vitest`). A real authorization server on loopback issues the tokens; no mocks, no network.
 *
 *   npx vitest run examples/testing/express-api.test.ts
 */
import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { bearerAuth } from 'tokenwarden/express';
import { type Verifier, createVerifier } from 'tokenwarden/server';
import { type TestAuthorizationServer, createTestAuthorizationServer } from 'tokenwarden/testing';

/** The application under test: in your code base, imported from where it lives. */
function createApp(verifier: Verifier) {
  const app = express();
  app.get('/invoices', bearerAuth({ verifier, requiredScopes: ['invoices:read'] }), (req, res) => {
    res.json({ for: req.auth?.uid });
  });
  return app;
}

let as: TestAuthorizationServer;
let server: Server;
let api: string;

beforeAll(async () => {
  as = await createTestAuthorizationServer({ audience: 'https://api.example.com' });
  // Point the app at the test server: the only difference from production.
  const verifier = createVerifier({
    issuer: as.issuer,
    audience: 'https://api.example.com',
    allowInsecureRequests: true,
  });
  server = createServer(createApp(verifier)).listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  api = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
  await as.close();
});
afterEach(() => as.fault('ok'));

const get = (token?: string) =>
  fetch(`${api}/invoices`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });

describe('GET /invoices', () => {
  it('serves a caller with invoices:read', async () => {
    const res = await get(await as.mintAccessToken({ sub: 'alice', scope: 'invoices:read' }));
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ for: 'alice' });
  });

  it('refuses a missing, expired or foreign token with 401, a token without the scope with 403', async () => {
    expect((await get()).status).toBe(401);
    const expired = await as.mintAccessToken({
      scope: 'invoices:read',
      issuedAt: Date.now() - 600_000,
      expiresIn: '5m',
    });
    expect((await get(expired)).status).toBe(401);
    const foreign = await as.mintAccessToken({ scope: 'invoices:read', audience: 'https://other.example.com' });
    expect((await get(foreign)).status).toBe(401);
    expect((await get(await as.mintAccessToken({ scope: 'invoices:write' }))).status).toBe(403);
  });

  it('keeps accepting tokens across a key rotation', async () => {
    await as.rotateKeys();
    expect((await get(await as.mintAccessToken({ scope: 'invoices:read' }))).status).toBe(200);
  });

  it('answers 503, not 401, when the keys cannot be fetched', async () => {
    const verifier = createVerifier({
      issuer: as.issuer,
      audience: 'https://api.example.com',
      allowInsecureRequests: true,
    });
    const cold = createServer(createApp(verifier)).listen(0, '127.0.0.1');
    await new Promise((resolve) => cold.once('listening', resolve));
    try {
      await as.fault('down');
      const res = await fetch(`http://127.0.0.1:${(cold.address() as AddressInfo).port}/invoices`, {
        headers: { authorization: `Bearer ${await as.mintAccessToken({ scope: 'invoices:read' })}` },
      });
      expect(res.status).toBe(503);
    } finally {
      cold.closeAllConnections();
      await new Promise((resolve) => cold.close(resolve));
    }
  });
});
