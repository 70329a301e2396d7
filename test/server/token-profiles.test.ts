/**
 * Access tokens as two major servers shape them, minted by the test kit's authorization server (real keys,
 * real JWKS, real discovery): Amazon Cognito's (no `aud`; `client_id` and `token_use`) and Microsoft Entra
 * ID's (application permissions in `roles`, delegated ones in `scp`).
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bearerAuth } from '../../src/server/adapters/express.js';
import { createVerifier } from '../../src/server/index.js';
import { type TestAuthorizationServer, createTestAuthorizationServer } from '../../src/testing/index.js';

const API = 'https://api.test';
const APP_CLIENT = '4a1b2c3d4e5f6g7h8i9j0k1l2m';
const OTHER_CLIENT = '9z8y7x6w5v4u3t2s1r0q9p8o7n';

let as: TestAuthorizationServer;
beforeAll(async () => {
  as = await createTestAuthorizationServer({ audience: API });
});
afterAll(() => as.close());

const insecure = { allowInsecureRequests: true } as const;

const refused = (description: string) => ({
  ok: false,
  failure: expect.objectContaining({ status: 401, error: 'invalid_token', description }),
});

/** An access token as Cognito issues it: no `aud`, the app client in `client_id`, `token_use: "access"`. */
const cognitoAccessToken = (claims: Record<string, unknown> = {}) =>
  as.mintAccessToken({
    sub: 'b1c2d3e4-user',
    clientId: APP_CLIENT,
    scope: 'orders-api/read',
    claims: { aud: undefined, token_use: 'access', username: 'alice', ...claims },
  });

/** An ID token as Cognito issues it: `aud` = the app client, `token_use: "id"`, no `client_id`. */
const cognitoIdToken = () =>
  as.mintAccessToken({
    sub: 'b1c2d3e4-user',
    audience: APP_CLIENT,
    claims: { client_id: undefined, token_use: 'id', email: 'alice@example.test' },
  });

describe('Amazon Cognito: clientIdsWithoutAudience', () => {
  it('accepts an access token without aud whose client_id is listed; refuses another client, or none', async () => {
    const verify = createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [APP_CLIENT], ...insecure });
    const accepted = await verify(await cognitoAccessToken());
    expect(accepted.ok).toBe(true);
    expect(accepted.ok && accepted.auth).toMatchObject({
      uid: 'b1c2d3e4-user',
      info: { clientId: APP_CLIENT },
      credentials: { scopes: ['orders-api/read'] },
    });
    expect(await verify(await cognitoAccessToken({ client_id: OTHER_CLIENT }))).toEqual(refused('unexpected client'));
    expect(await verify(await cognitoAccessToken({ client_id: undefined }))).toEqual(refused('missing required claim'));
    expect(await verify(await cognitoAccessToken({ client_id: [APP_CLIENT] }))).toEqual(refused('unexpected client'));
  });

  it('refuses a Cognito ID token, with or without the client id configured as the audience', async () => {
    const idToken = await cognitoIdToken();
    const verify = createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: APP_CLIENT, ...insecure });
    expect(await verify(idToken)).toEqual(refused('unexpected token use'));
    // "aud should match the app client id", as guides say of ID tokens: still not an access token.
    const both = createVerifier({
      issuer: as.issuer,
      audience: APP_CLIENT,
      clientIdsWithoutAudience: APP_CLIENT,
      ...insecure,
    });
    expect(await both(idToken)).toEqual(refused('unexpected token use'));
    expect((await both(await cognitoAccessToken())).ok).toBe(true);
  });

  it('a token with aud is judged by aud alone: a listed client_id neither rescues nor is required', async () => {
    const verify = createVerifier({
      issuer: as.issuer,
      audience: API,
      clientIdsWithoutAudience: [APP_CLIENT],
      ...insecure,
    });
    const forOther = await as.mintAccessToken({ audience: 'https://other.test', clientId: APP_CLIENT });
    expect(await verify(forOther)).toEqual(refused('unexpected audience'));
    const emptyAud = await as.mintAccessToken({ audience: [], clientId: APP_CLIENT });
    expect(await verify(emptyAud)).toEqual(refused('unexpected audience'));
    expect((await verify(await as.mintAccessToken({ audience: API, clientId: OTHER_CLIENT }))).ok).toBe(true);
    // Without an audience configured, no token with aud is accepted.
    const cognitoOnly = createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [APP_CLIENT], ...insecure });
    expect(await cognitoOnly(await as.mintAccessToken({ audience: API, clientId: APP_CLIENT }))).toEqual(
      refused('unexpected audience'),
    );
  });

  it('without the option nothing changes: audience required, a token without aud refused', async () => {
    expect(() => createVerifier({ issuer: as.issuer, ...insecure })).toThrow(/audience is required/);
    const verify = createVerifier({ issuer: as.issuer, audience: API, ...insecure });
    expect(await verify(await cognitoAccessToken())).toEqual(refused('missing required claim'));
    expect(() =>
      createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [APP_CLIENT], strict: true, ...insecure }),
    ).toThrow(/strict/);
    expect(() => createVerifier({ issuer: as.issuer, clientIdsWithoutAudience: [''], ...insecure })).toThrow(
      /clientIdsWithoutAudience/,
    );
  });
});

/** Microsoft Entra ID v2 tokens: the client in `azp`, no `client_id`; app-only ones carry `roles`, delegated ones `scp`. */
const entraAppOnly = (roles: unknown) =>
  as.mintAccessToken({ sub: 'f00d-sp', claims: { client_id: undefined, azp: 'daemon-app', roles, ver: '2.0' } });
const entraDelegated = (scp: string) =>
  as.mintAccessToken({ sub: 'f00d-user', claims: { client_id: undefined, azp: 'spa-app', scp, ver: '2.0' } });

const forbidden = (scope?: string, description = 'insufficient scope') => ({
  ok: false,
  failure: {
    error: 'insufficient_scope',
    description,
    status: 403,
    ...(scope !== undefined && { scope }),
  },
});

describe('Microsoft Entra ID: anyRoles with anyScopes ("scope X or app role Y")', () => {
  const orders = { anyScopes: ['Orders.Read'], anyRoles: ['Orders.Read.All'] };

  it('an app role (roles) or a delegated scope (scp) satisfies the requirement; neither is 403', async () => {
    const verify = createVerifier({ issuer: as.issuer, audience: API, ...orders, ...insecure });
    expect((await verify(await entraAppOnly(['Orders.Read.All']))).ok).toBe(true);
    expect((await verify(await entraAppOnly('Other.Role Orders.Read.All'))).ok).toBe(true);
    expect((await verify(await entraDelegated('Profile.Read Orders.Read'))).ok).toBe(true);
    expect(await verify(await entraAppOnly(['Orders.Write.All']))).toEqual(forbidden('Orders.Read'));
    expect(await verify(await entraDelegated('Orders.Write'))).toEqual(forbidden('Orders.Read'));
    expect(await verify(await entraAppOnly(undefined))).toEqual(forbidden('Orders.Read'));
  });

  it('a role never counts as a scope, nor a scope as a role', async () => {
    const verify = createVerifier({ issuer: as.issuer, audience: API, ...insecure });
    const roleNamedLikeScope = await entraAppOnly(['Orders.Read']);
    expect(await verify(roleNamedLikeScope, { anyScopes: ['Orders.Read'] })).toEqual(forbidden('Orders.Read'));
    expect(await verify(roleNamedLikeScope, { requiredScopes: ['Orders.Read'] })).toEqual(forbidden('Orders.Read'));
    const scopeNamedLikeRole = await entraDelegated('Orders.Read.All');
    expect(await verify(scopeNamedLikeRole, { anyRoles: ['Orders.Read.All'] })).toEqual(
      forbidden(undefined, 'insufficient role'),
    );
    expect((await verify(roleNamedLikeScope, { anyRoles: ['Orders.Read'] })).ok).toBe(true);
  });

  it('per call, either list replaces both of the verifier (one requirement)', async () => {
    const verify = createVerifier({ issuer: as.issuer, audience: API, anyScopes: ['Orders.Read'], ...insecure });
    const delegated = await entraDelegated('Orders.Read');
    expect((await verify(delegated)).ok).toBe(true);
    expect(await verify(delegated, { anyRoles: ['Orders.Sync'] })).toEqual(forbidden(undefined, 'insufficient role'));
    expect((await verify(await entraAppOnly(['Orders.Sync']), { anyRoles: ['Orders.Sync'] })).ok).toBe(true);
    expect(() => createVerifier({ issuer: as.issuer, audience: API, anyRoles: ['a b'], ...insecure })).toThrow(
      /anyRoles must be a list of role names/,
    );
  });

  it('per route in the middleware: 200 with the role or the scope, 403 insufficient_scope with an RFC 6750 challenge', async () => {
    const verifier = createVerifier({ issuer: as.issuer, audience: API, ...insecure });
    const app = express();
    app.get('/orders', bearerAuth({ verifier, ...orders }), (req, res) => void res.json({ uid: req.auth?.uid }));
    const server = createServer(app);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/orders`;
    const get = (token: string) => fetch(url, { headers: { authorization: `Bearer ${token}` } });
    try {
      const app = await get(await entraAppOnly(['Orders.Read.All']));
      expect(app.status).toBe(200);
      expect(await app.json()).toEqual({ uid: 'f00d-sp' });
      expect((await get(await entraDelegated('Orders.Read'))).status).toBe(200);
      const neither = await get(await entraAppOnly(['Orders.Write.All']));
      expect(neither.status).toBe(403);
      expect(neither.headers.get('www-authenticate')).toBe(
        'Bearer realm="api", error="insufficient_scope", error_description="insufficient scope", scope="Orders.Read"',
      );
      expect(await neither.json()).toEqual({
        error: 'insufficient_scope',
        error_description: 'insufficient scope',
        scope: 'Orders.Read',
      });
    } finally {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  });
});
